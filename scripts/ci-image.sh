#!/usr/bin/env bash
# CI proof that the container image works. No registry is reachable, so the image cannot be
# built from scripts/Dockerfile (its build stage pulls rust:…); instead this builds the same
# statically linked release binary on the host, wraps it in a FROM scratch image
# (scripts/Dockerfile.scratch, the Dockerfile's final stage) on the local engine, and runs it:
# --version, no shell inside, a bad configuration exits 2, and `watch` as PID 1 stops cleanly
# on `docker stop` (SIGTERM). The image and container are removed afterwards.
# Takes one release build (lto, codegen-units=1) for the gnu target with crt-static.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
TAG="audsync-ci/scratch:$$-${RANDOM}"
NAME="audsync-ci-$$-${RANDOM}"
ctx=$(mktemp -d)
cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  docker rmi -f "$TAG" >/dev/null 2>&1 || true
  rm -rf "$ctx"
}
trap cleanup EXIT
fail() { echo "ci-image: FAIL: $*" >&2; exit 1; }

docker version >/dev/null 2>&1 || fail "the Docker engine is unreachable"
start=$(date +%s)
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked --target "$TARGET" -q
echo "ci-image: static release build took $(( $(date +%s) - start ))s"
bin="target/$TARGET/release/audsync"
if readelf -l "$bin" 2>/dev/null | grep -q 'INTERP'; then
  fail "$bin is dynamically linked (it asks for a program interpreter)"
fi

cp "$bin" "$ctx/audsync"
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || fail "$certs is missing (apt-get install ca-certificates)"
cp "$certs" "$ctx/ca-certificates.crt"
docker build -q -t "$TAG" -f scripts/Dockerfile.scratch "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "ci-image: image $TAG is $((size / 1024 / 1024)) MiB"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
out=$(docker run --rm "$TAG" --version)
[ "$out" = "audsync $version" ] || fail "--version printed '$out', expected 'audsync $version'"
echo "ci-image: $out"

if docker run --rm --entrypoint /bin/sh "$TAG" -c true >/dev/null 2>&1; then
  fail "the image has a shell"
fi

set +e
docker run --rm "$TAG" watch --domain api.example.com --interval 0s >/dev/null 2>"$ctx/err"
code=$?
set -e
[ "$code" -eq 2 ] || fail "a bad --interval exited $code, expected 2: $(cat "$ctx/err")"
grep -q -- '--interval' "$ctx/err" || fail "the error does not name --interval: $(cat "$ctx/err")"

# The agent as PID 1: Cloudflare is unreachable (every pass fails and backs off), and
# `docker stop` must still end it cleanly through its own SIGTERM handler.
docker run -d --name "$NAME" \
  -e CLOUDFLARE_API_TOKEN=ci-not-a-token -e CLOUDFLARE_ACCOUNT_ID=0123456789abcdef0123456789abcdef \
  -e CLOUDFLARE_API_URL=http://127.0.0.1:9 \
  "$TAG" watch --env-file /.env --domain api.example.com --restart none \
  --interval 1s --listen 127.0.0.1:9464 --timeout 1s >/dev/null
# Wait for the first failed pass (not a fixed time: a loaded machine starts it late), then stop.
for _ in $(seq 120); do
  docker logs "$NAME" 2>&1 | grep -q 'pass failed' && break
  sleep 0.25
done
[ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || fail "watch died: $(docker logs "$NAME" 2>&1 | tail -5)"
docker stop -t 20 "$NAME" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" -eq 0 ] || fail "watch exited $code on docker stop: $(docker logs "$NAME" 2>&1 | tail -5)"
docker logs "$NAME" 2>&1 | grep -q 'pass failed' || fail "no failed pass was logged: $(docker logs "$NAME" 2>&1 | tail -5)"
if docker logs "$NAME" 2>&1 | grep -q 'ci-not-a-token'; then fail "the token was logged"; fi
echo "ci-image: OK (FROM scratch image runs --version, rejects bad config with 2, stops cleanly on SIGTERM)"
