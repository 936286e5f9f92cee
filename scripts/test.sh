#!/usr/bin/env bash
# The project's test command (the README's, and what CI runs): builds the local Docker test
# image, then runs every test, the ones against the real Docker engine included. Those are
# #[ignore = "needs the Docker engine: run scripts/test.sh"] (a plain `cargo nextest run` or
# `cargo test` reports them skipped); here `--run-ignored all` runs them, and a test ignored for
# any other reason is refused by scripts/check-docker-tests.py first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-docker-tests.py
if ! docker version >/dev/null 2>&1; then
  echo "error: the Docker engine is unreachable (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}); the tests need it" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing; installing it (cargo install --locked cargo-nextest)" >&2
  cargo install --locked cargo-nextest
fi
export AUDSYNC_TEST_IMAGE=${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}
bash scripts/test-image.sh "$AUDSYNC_TEST_IMAGE"
# Podman-only tests (tests/podman.rs `podman_only_*`) run in scripts/test-podman.sh.
# Extra arguments narrow the run: `-E EXPR` is combined with that exclusion (nextest would take
# two -E as their union).
filter="not test(/podman_only_/) and not test(/measure_/)"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -E) filter="($filter) and ($2)"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored all -E "$filter" "${args[@]}"
