#!/usr/bin/env bash
# Measure (not a test): the resident memory of an `audsync watch` after 100 passes against a
# local fake Cloudflare (interval 50ms), and the size of the stripped release binary.
# Usage: scripts/bench-watch.sh   (AUDSYNC_BIN=path to a release binary; default
#        target/release/audsync, built when missing; PASSES=100)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${AUDSYNC_BIN:-target/release/audsync}
PASSES=${PASSES:-100}
[ -x "$BIN" ] || cargo build --release -q
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CF_PORT=$(free_port)
LISTEN_PORT=$(free_port)
ACCOUNT=0123456789abcdef0123456789abcdef
APP=00000002-0000-4000-8000-000000000000
AUD=$(printf '02%.0s' $(seq 32))

# A minimal Cloudflare: the app list filtered by domain, and the app by id, in the v4 envelope.
cat >"$tmp/fake.py" <<PY
import json, http.server
APP = {"id": "$APP", "name": "App 2", "aud": "$AUD", "type": "self_hosted",
       "domain": "api.example.com", "destinations": [{"type": "public", "uri": "api.example.com"}]}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/accounts/$ACCOUNT/access/apps":
            body = {"success": True, "errors": [], "messages": [], "result": [APP],
                    "result_info": {"page": 1, "per_page": 50, "count": 1, "total_count": 1, "total_pages": 1}}
        elif path == "/accounts/$ACCOUNT/access/apps/$APP":
            body = {"success": True, "errors": [], "messages": [], "result": APP}
        else:
            self.send_response(404); self.end_headers(); return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
http.server.ThreadingHTTPServer(("127.0.0.1", $CF_PORT), H).serve_forever()
PY
python3 "$tmp/fake.py" &
pids+=($!)
printf 'CLOUDFLARE_AUD_TAG=old\n' >"$tmp/.env"
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $CF_PORT))" 2>/dev/null && break; sleep 0.1; done

env -i PATH="$PATH" CLOUDFLARE_API_TOKEN=bench-token CLOUDFLARE_ACCOUNT_ID=$ACCOUNT \
  CLOUDFLARE_API_URL="http://127.0.0.1:$CF_PORT" \
  "$BIN" watch --env-file "$tmp/.env" --domain api.example.com --restart none \
  --interval 50ms --jitter 0 --listen "127.0.0.1:$LISTEN_PORT" -q &
wpid=$!
pids+=($wpid)

passes() {
  curl -s "http://127.0.0.1:$LISTEN_PORT/metrics" 2>/dev/null \
    | awk '/^audsync_passes_total/ {s += $2} END {print s + 0}'
}
start=$(date +%s)
while [ "$(passes)" -lt "$PASSES" ]; do
  kill -0 "$wpid" 2>/dev/null || { echo "watch died" >&2; exit 1; }
  [ $(( $(date +%s) - start )) -lt 120 ] || { echo "fewer than $PASSES passes in 120s" >&2; exit 1; }
  sleep 0.2
done
failed=$(curl -s "http://127.0.0.1:$LISTEN_PORT/metrics" | awk '/^audsync_passes_total\{status="failed"\}/ {print $2}')
rss=$(awk '/^VmRSS/ {print $2}' /proc/$wpid/status)
hwm=$(awk '/^VmHWM/ {print $2}' /proc/$wpid/status)
done_passes=$(passes)
kill -TERM "$wpid"
wait "$wpid" || true
size=$(stat -c %s "$BIN")
stripped=$(file -b "$BIN" 2>/dev/null | grep -o 'not stripped\|stripped' || echo "?")
printf 'watch after %s passes (%s failed), interval 50ms: RSS %s KiB (peak %s KiB)\n' "$done_passes" "${failed:-?}" "$rss" "$hwm"
printf 'binary %s: %s bytes (%.1f MiB, %s)\n' "$BIN" "$size" "$(echo "$size / 1048576" | bc -l)" "$stripped"
