#!/usr/bin/env bash
# What a client sees while a compose service gets a new AUD, three ways, side by side in one run:
#   rollout:  `audsync sync --compose-service P/lambda-server --restart rollout`
#   recreate: `audsync sync --compose-service P/lambda-server --restart recreate`
#   compose:  change .env, then `docker-compose up -d --force-recreate`
# The service takes 1 s to listen after it starts (an API that loads before it binds). Two client
# containers on the project network ask http://lambda-server:8080/ (the service's network alias)
# every 20 ms and log each result with the engine's timestamps:
#   one address: busybox wget, one attempt at the first address the name resolves to (1 s timeout);
#   dialer:      every address the name resolves to, in order, moving on only while no connection
#                could be made (refused, or no connect within 1 s), as Go's net.Dialer (Caddy,
#                Traefik, cloudflared), curl and Python do; a connected request is never resent.
# Per way and run: failed requests and the longest gap between two answered requests, from the
# moment the change starts until 3 s after the service is healthy again.
# Usage: scripts/bench-downtime.sh [N]   (default 3). Needs docker, docker-compose, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
IMAGE=${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}
bash scripts/test-image.sh "$IMAGE" >/dev/null
if [ -n "${AUDSYNC_BIN:-}" ]; then
  BIN=$(cd "$(dirname "$AUDSYNC_BIN")" && pwd)/$(basename "$AUDSYNC_BIN")
else
  cargo build --release --quiet
  BIN=$PWD/target/release/audsync
fi

work=$(mktemp -d)
project=audsyncdown$$
client=${project}-client
dialer=${project}-dialer
fake_pid=
cleanup() {
  docker rm -f "$client" "$dialer" >/dev/null 2>&1 || true
  (cd "$work" && docker-compose -p "$project" down -v >/dev/null 2>&1) || true
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source scripts/bench/engine.sh
start_fake

cat >"$work/docker-compose.yml" <<EOF
version: "2.4"
services:
  lambda-server:
    image: $IMAGE
    command: ["sh", "-c", "sleep 1; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    environment:
      CLOUDFLARE_AUD_TAG: \${CLOUDFLARE_AUD_TAG}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 500ms
      retries: 3
      start_period: 10s
EOF
echo "CLOUDFLARE_AUD_TAG=$(aud 1)" >"$work/.env"
cd "$work"
env -u CLOUDFLARE_AUD_TAG docker-compose -p "$project" up -d >/dev/null 2>&1

wait_healthy() {
  for _ in $(seq 1 300); do
    ids=$(docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=lambda-server")
    if [ "$(echo "$ids" | grep -c .)" = 1 ] &&
      [ "$(docker inspect -f '{{.State.Health.Status}}' "$ids" 2>/dev/null)" = healthy ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "service not healthy" >&2
  exit 1
}
wait_healthy
docker run -d --name "$client" --network "${project}_default" "$IMAGE" sh -c \
  'while true; do if timeout 1 wget -q -O /dev/null http://lambda-server:8080/ 2>/dev/null; then echo ok; else echo FAIL; fi; usleep 20000; done' >/dev/null
# The dialer: each resolved address in order until one takes the connection.
docker run -d --name "$dialer" --network "${project}_default" "$IMAGE" sh -c '
while true; do
  r=FAIL
  for ip in $(timeout 1 nslookup lambda-server 2>/dev/null | sed -n "s/^Address: *\([0-9.]*\)$/\1/p"); do
    out=$(printf "GET / HTTP/1.0\r\n\r\n" | timeout 3 nc -w 1 $ip 8080 2>&1)
    case "$out" in
      *" 200 OK"*) r=ok; break;;
      *"can'"'"'t connect"*|*"timed out"*) ;;
      *) break;;
    esac
  done
  echo $r
  usleep 20000
done' >/dev/null
sleep 2

# "<failed> <longest gap ms>" of the client's requests between $1 and $2 (RFC 3339 times).
tally() {
  docker logs --timestamps --since "$1" --until "$2" "$3" 2>&1 | python3 -c '
import sys, datetime
def t(s):
    s = s.rstrip("Z"); base, frac = (s.split(".") + ["0"])[:2]
    return datetime.datetime.fromisoformat(base).timestamp() + float("0." + frac[:6])
oks, failed = [], 0
for line in sys.stdin:
    ts, _, what = line.strip().partition(" ")
    if what == "ok": oks.append(t(ts))
    elif what: failed += 1
gap = max((b - a for a, b in zip(oks, oks[1:])), default=0)
print(failed, int(gap * 1000))'
}
now() { date -u +%Y-%m-%dT%H:%M:%S.%NZ; }

n=1
for way in rollout recreate compose; do : >"$work/$way.txt"; : >"$work/$way.dialer.txt"; done
for i in $(seq 1 "$N"); do
  for way in rollout recreate compose; do
    n=$((n + 1)); aud "$n" >"$work/aud"
    t0=$(now)
    if [ "$way" = compose ]; then
      echo "CLOUDFLARE_AUD_TAG=$(aud "$n")" >"$work/.env"
      env -u CLOUDFLARE_AUD_TAG docker-compose -p "$project" up -d --force-recreate lambda-server >/dev/null 2>&1
    else
      env -i PATH="$PATH" CLOUDFLARE_API_URL="http://127.0.0.1:$port" CLOUDFLARE_API_TOKEN=bench \
        CLOUDFLARE_ACCOUNT_ID=0123456789abcdef0123456789abcdef \
        "$BIN" -q sync --app-id 00000001-0000-4000-8000-000000000000 --env-file "$work/.env" \
        --compose-service "$project/lambda-server" --restart "$way" >/dev/null
    fi
    wait_healthy
    sleep 3
    t1=$(now)
    tally "$t0" "$t1" "$client" >>"$work/$way.txt"
    tally "$t0" "$t1" "$dialer" >>"$work/$way.dialer.txt"
  done
done

echo "requests by network alias every 20 ms, $N runs per way (failed: total (per run); longest gap between answers: median, max)"
for kind in "one address (busybox wget):" "dialer (every address, like Caddy, cloudflared, curl):"; do
  echo "$kind"
  for way in rollout recreate compose; do
    f=$work/$way.txt
    case $kind in dialer*) f=$work/$way.dialer.txt ;; esac
    printf '  %-9s failed %3s (%s)   longest gap median %5s ms, max %5s ms\n' "$way" \
      "$(cut -d' ' -f1 "$f" | paste -sd+ | bc)" "$(cut -d' ' -f1 "$f" | paste -sd' ')" \
      "$(cut -d' ' -f2 "$f" | median)" "$(cut -d' ' -f2 "$f" | sort -n | tail -1)"
  done
done
