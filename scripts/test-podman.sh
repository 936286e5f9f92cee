#!/usr/bin/env bash
# Run the engine tests that must pass on Podman against Podman's Docker-compatible socket
# (docs/podman.md). Installs Debian's podman when it is missing, starts
# `podman system service` on $PODMAN_SOCKET unless something already answers there, loads the
# test image into Podman's store, and runs the listed tests with DOCKER_HOST pointing at it (the
# tests' `docker` CLI calls and audsync both follow DOCKER_HOST). Fails, never skips, when
# Podman cannot be started. CI runs it after scripts/test.sh (.ci/run).
# Usage: scripts/test-podman.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."
SOCKET=${PODMAN_SOCKET:-/run/podman/podman.sock}
IMAGE=${AUDSYNC_TEST_IMAGE:-audsync-test/busybox:1}
LOG=${PODMAN_SERVICE_LOG:-/tmp/audsync-podman-service.log}
podman_api() { curl -fsS --max-time 5 --unix-socket "$SOCKET" http://podman/_ping >/dev/null 2>&1; }
die() { echo "error: $*" >&2; exit 1; }

python3 scripts/check-docker-tests.py

if ! command -v podman >/dev/null; then
  echo "installing podman (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y podman >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y podman >/dev/null; } ||
    die "cannot install podman"
fi

start_service() {
  mkdir -p "$(dirname "$SOCKET")"
  nohup podman system service --time=0 "unix://$SOCKET" >>"$LOG" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 50); do podman_api && return 0; sleep 0.2; done
  die "podman system service did not answer on $SOCKET (log: $LOG)"
}

# Without systemd (CI, containers), Podman needs cgroupfs and a file events log; and where the
# machine's hard limits are below Podman's default ulimits (1048576) runc refuses to start any
# container: give containers the limits the service itself has. An existing
# containers.conf is the administrator's and is left alone.
CONF=/etc/containers/containers.conf
if ! podman_api; then
  if [ ! -e "$CONF" ] && [ ! -d /run/systemd/system ]; then
    start_service
    limit() { awk -v k="$1" '$0 ~ k {print $(NF-1)}' "/proc/$SERVICE_PID/limits"; }
    nofile=$(limit "Max open files"); nproc=$(limit "Max processes")
    kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    cat >"$CONF" <<CONF
# Written by audsync's scripts/test-podman.sh for a machine without systemd.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  fi
  start_service
  echo "podman system service started on $SOCKET (pid $SERVICE_PID, log $LOG)"
fi
export DOCKER_HOST="unix://$SOCKET"
docker version >/dev/null 2>&1 || die "the docker CLI cannot reach Podman at $DOCKER_HOST"

# The test image: built for Docker by scripts/test-image.sh, copied into Podman's store.
if ! podman image exists "$IMAGE"; then
  DOCKER_HOST= bash scripts/test-image.sh "$IMAGE"
  DOCKER_HOST= docker save "$IMAGE" | podman load >/dev/null || die "cannot load $IMAGE into podman"
fi
podman run --rm "$IMAGE" true || die "podman cannot run a container (see $LOG)"

# Podman asks systemd to run its healthchecks; without systemd nothing probes them.
if [ ! -d /run/systemd/system ]; then
  python3 scripts/podman-health-ticker.py &
  TICKER=$!
  trap 'kill $TICKER 2>/dev/null || true' EXIT
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
export AUDSYNC_TEST_IMAGE="$IMAGE" AUDSYNC_TEST_ENGINE=podman
# The engine tests that must pass on Podman (docs/podman.md lists why the others do not apply).
FILTER='
  test(=docker_restart::a_changed_value_restarts_the_container)
| test(=docker_recreate::recreate_preserves_everything_but_the_key)
| test(=docker_recreate::a_new_container_that_exits_is_rolled_back)
| test(=docker_recreate::a_new_container_that_turns_unhealthy_is_rolled_back)
| test(=docker_recreate::the_health_wait_is_bounded_by_health_timeout)
| test(=docker_recreate::a_stopped_container_is_recreated_and_left_stopped)
| test(=docker_rollout::a_rollout_whose_new_container_is_unhealthy_never_stops_the_old_one)
| test(/^podman::/)
| test(/^docker_recover::docker_recreate_killed/)
| test(=faults::a_paused_container_is_left_paused_not_recreated_running)
| test(=faults::a_container_given_by_id_prefix_is_found_by_name_after_a_recreate)
| test(=faults::an_old_container_removed_by_someone_else_during_a_recreate_is_reported_as_removed_not_rolled_back)
'
cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored only -E "$FILTER" "$@"
