#!/usr/bin/env bash
# Wall time of one `audsync sync --compose-service P/lambda-server --restart recreate` that
# applies a new AUD, for two binaries side by side (alternating runs): most of it is spent
# asking docker-compose (v1) for the service's config hash and configuration, before and after
# the .env write (docs/containers.md, "Compose's config hash").
# Usage: scripts/bench-compose-pass.sh OLD_BIN NEW_BIN [N]   (default 7). Needs docker,
# docker-compose, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
B=$(cd "$(dirname "$2")" && pwd)/$(basename "$2")
N=${3:-7}
IMAGE=${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}
bash scripts/test-image.sh "$IMAGE" >/dev/null

work=$(mktemp -d)
project=audsyncpass$$
fake_pid=
cleanup() {
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
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    environment:
      CLOUDFLARE_AUD_TAG: \${CLOUDFLARE_AUD_TAG}
EOF
echo "CLOUDFLARE_AUD_TAG=$(aud 1)" >"$work/.env"
cd "$work"
env -u CLOUDFLARE_AUD_TAG docker-compose -p "$project" up -d >/dev/null 2>&1

: >"$work/a.txt"
: >"$work/b.txt"
n=1
for i in $(seq 1 "$N"); do
  for which in a b; do
    bin=$A; [ "$which" = b ] && bin=$B
    n=$((n + 1)); aud "$n" >"$work/aud"
    t0=$(date +%s%N)
    env -i PATH="$PATH" CLOUDFLARE_API_URL="http://127.0.0.1:$port" CLOUDFLARE_API_TOKEN=bench \
      CLOUDFLARE_ACCOUNT_ID=0123456789abcdef0123456789abcdef \
      "$bin" -q sync --app-id 00000001-0000-4000-8000-000000000000 --env-file "$work/.env" \
      --compose-service "$project/lambda-server" --restart recreate >/dev/null
    echo $((($(date +%s%N) - t0) / 1000000)) >>"$work/$which.txt"
  done
done
echo "sync that recreates a compose service with a new AUD, $N runs each, alternating (median, all in ms)"
printf '  %-10s %6s ms   (%s)\n' "$(basename "$A")" "$(median <"$work/a.txt")" "$(tr '\n' ' ' <"$work/a.txt")"
printf '  %-10s %6s ms   (%s)\n' "$(basename "$B")" "$(median <"$work/b.txt")" "$(tr '\n' ' ' <"$work/b.txt")"
