#!/usr/bin/env bash
# Downtime of applying a new AUD to a compose service container, two ways, on the local engine:
#   audsync:  `audsync sync --compose-service P/lambda-server --restart recreate` (Engine API;
#             pinned: `auto` picks a rollout for this aliased service, see bench-downtime.sh)
#   compose:  change .env, then `docker-compose up -d --force-recreate`
# Downtime is read from the engine's own event times: the old container's `die` to the new
# container's `start` (no process) and to its `health_status: healthy` (not serving per its
# healthcheck; the check runs every 500ms). Prints the median of N repetitions of each.
# Usage: scripts/bench-recreate.sh [N]   (default 5). Needs docker, docker-compose, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5}
IMAGE=${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}
bash scripts/test-image.sh "$IMAGE" >/dev/null
if [ -n "${AUDSYNC_BIN:-}" ]; then
  BIN=$(cd "$(dirname "$AUDSYNC_BIN")" && pwd)/$(basename "$AUDSYNC_BIN")
else
  cargo build --release --quiet
  BIN=$PWD/target/release/audsync
fi

work=$(mktemp -d)
project=audsyncbench$$
fake_pid=
cleanup() {
  (cd "$work" && docker-compose -p "$project" down -v >/dev/null 2>&1) || true
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A stand-in for the Cloudflare application (scripts/bench/fake_app.py).
source scripts/bench/engine.sh
start_fake

cat >"$work/docker-compose.yml" <<EOF
version: "2.4"
services:
  lambda-server:
    image: $IMAGE
    command: ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]
    env_file: .env
    environment:
      CLOUDFLARE_AUD_TAG: \${CLOUDFLARE_AUD_TAG}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 500ms
      retries: 3
EOF
echo "CLOUDFLARE_AUD_TAG=$(aud 1)" >"$work/.env"
cd "$work"
docker-compose -p "$project" up -d >/dev/null 2>&1

wait_healthy() {
  for _ in $(seq 1 200); do
    id=$(docker ps -q --filter "label=com.docker.compose.project=$project" | head -1)
    [ -n "$id" ] && [ "$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null)" = healthy ] && return 0
    sleep 0.1
  done
  echo "container not healthy" >&2
  exit 1
}

# Print "<die->start ms> <die->healthy ms>" for the events between $1 and $2 (old id $3).
measure() {
  local since=$1 until=$2 old=$3
  docker events --since "$since" --until "$until" \
    --filter "label=com.docker.compose.project=$project" \
    --format '{{.TimeNano}} {{.Actor.ID}} {{.Action}}' |
    awk -v old="$old" '
      $2 == old && $3 == "die" { die = $1 }
      $2 != old && $3 == "start" { start = $1 }
      $2 != old && $3 == "health_status:" && $4 == "healthy" && !healthy { healthy = $1 }
      END { printf "%d %d\n", (start - die) / 1e6, (healthy - die) / 1e6 }'
}


wait_healthy
: >"$work/audsync.txt"
: >"$work/compose.txt"
n=1
for i in $(seq 1 "$N"); do
  # audsync: the source changes, sync recreates through the API.
  n=$((n + 1)); aud "$n" >"$work/aud"
  old=$(docker ps -q --no-trunc --filter "label=com.docker.compose.project=$project" | head -1)
  t0=$(date +%s.%N)
  env -i PATH="$PATH" CLOUDFLARE_API_URL="http://127.0.0.1:$port" CLOUDFLARE_API_TOKEN=bench \
    CLOUDFLARE_ACCOUNT_ID=0123456789abcdef0123456789abcdef \
    "$BIN" -q sync --app-id 00000001-0000-4000-8000-000000000000 --env-file "$work/.env" \
    --compose-service "$project/lambda-server" --restart recreate >/dev/null
  wait_healthy
  sleep 1
  measure "$t0" "$(date +%s.%N)" "$old" >>"$work/audsync.txt"

  # compose: the same change by hand, then a forced recreate.
  n=$((n + 1)); echo "CLOUDFLARE_AUD_TAG=$(aud "$n")" >"$work/.env"; aud "$n" >"$work/aud"
  old=$(docker ps -q --no-trunc --filter "label=com.docker.compose.project=$project" | head -1)
  t0=$(date +%s.%N)
  docker-compose -p "$project" up -d --force-recreate >/dev/null 2>&1
  wait_healthy
  sleep 1
  measure "$t0" "$(date +%s.%N)" "$old" >>"$work/compose.txt"
done

echo "downtime over $N runs (median; old container's die -> new container's start / healthy)"
printf '  %-48s %6s ms to start, %6s ms to healthy\n' \
  "audsync sync --restart recreate (Engine API)" \
  "$(cut -d' ' -f1 "$work/audsync.txt" | median)" "$(cut -d' ' -f2 "$work/audsync.txt" | median)"
printf '  %-48s %6s ms to start, %6s ms to healthy\n' \
  "docker-compose up -d --force-recreate" \
  "$(cut -d' ' -f1 "$work/compose.txt" | median)" "$(cut -d' ' -f2 "$work/compose.txt" | median)"
echo "raw (start healthy) audsync: $(tr '\n' ';' <"$work/audsync.txt")  compose: $(tr '\n' ';' <"$work/compose.txt")"
