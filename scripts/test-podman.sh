#!/usr/bin/env bash
# Run the engine tests that must pass on Podman against Podman's Docker-compatible socket
# (docs/podman.md). Installs Debian's podman when it is missing, starts
# `podman system service` on $PODMAN_SOCKET unless something already answers there, loads the
# test image into Podman's store, and runs the listed tests with DOCKER_HOST pointing at it (the
# tests' `docker` CLI calls and audsync both follow DOCKER_HOST). Fails, never skips, when
# Podman cannot be started. CI runs it after scripts/test.sh (.ci/run).
# Where Podman's netavark is older than 1.9 (Debian 12 ships 1.4, whose bridges change MAC address
# as containers come and go, cutting every container off DNS for a while), it builds newer network
# helpers from crates.io once into $PODMAN_HELPERS_ROOT and points Podman at them (docs/podman.md).
# Usage: scripts/test-podman.sh [-E EXPR] [extra nextest args]   (-E narrows the Podman set)
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
  # From /: the service (and every conmon it starts) keeps its working directory, which must
  # outlive this checkout.
  (cd / && exec nohup podman system service --time=0 "unix://$SOCKET") >>"$LOG" 2>&1 &
  SERVICE_PID=$!
  for _ in $(seq 50); do podman_api && return 0; sleep 0.2; done
  die "podman system service did not answer on $SOCKET (log: $LOG)"
}

# Without systemd (CI, containers), Podman needs cgroupfs and a file events log; and where the
# machine's hard limits are below Podman's default ulimits (1048576) runc refuses to start any
# container: give containers the limits the service itself has. An existing
# containers.conf is the administrator's and is left alone.
CONF=/etc/containers/containers.conf
OURS="# Written by audsync's scripts/test-podman.sh for a machine without systemd."
ours() { [ ! -e "$CONF" ] || [ "$(head -n 1 "$CONF")" = "$OURS" ]; }

# Podman's network helpers. netavark before 1.9 lets the kernel give a network's bridge the lowest
# MAC address of its ports, so the bridge's MAC changes whenever a container joins or leaves
# with a lower one; every other container keeps the old MAC for the gateway in its ARP cache and
# reaches nothing there -- aardvark-dns's network names and aliases included -- for ~40 s
# (containers/netavark PR #833, in 1.9). A rollout's client would lose the alias for that long.
# Where Podman's netavark is older, build a newer pair from crates.io once into $HELPERS_ROOT
# (netavark 1.x: 2.x needs Podman 6; aardvark-dns is released beside it) and name that directory
# first in Podman's helper_binaries_dir. docs/podman.md, "Network aliases and the bridge's MAC".
NETAVARK_MIN=1.9
NETAVARK_VERSION=${NETAVARK_VERSION:-1.17.2}
AARDVARK_VERSION=${AARDVARK_VERSION:-2.1.0}
HELPERS_ROOT=${PODMAN_HELPERS_ROOT:-/var/cache/audsync-ci/podman-helpers}
PACKAGED_DIRS=(/usr/local/libexec/podman /usr/local/lib/podman /usr/libexec/podman /usr/lib/podman)
HELPER_DIRS='"/usr/local/libexec/podman", "/usr/local/lib/podman", "/usr/libexec/podman", "/usr/lib/podman"'
version_of() { "$1" --version 2>/dev/null | awk '{print $2}'; }
older() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" != "$2" ]; }  # $1 < $2
packaged() {
  for d in "${PACKAGED_DIRS[@]}"; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done
  die "Podman's $1 is missing (apt-get install $1)"
}
netavark=$(packaged netavark)
HELPERS_DIR=
if older "$(version_of "$netavark")" "$NETAVARK_MIN"; then
  HELPERS_DIR=$HELPERS_ROOT/bin
  for pair in "netavark $NETAVARK_VERSION" "aardvark-dns $AARDVARK_VERSION"; do
    read -r name version <<<"$pair"
    if [ "$(version_of "$HELPERS_DIR/$name")" != "$version" ]; then
      echo "$netavark is $(version_of "$netavark"), older than $NETAVARK_MIN: building $name $version into $HELPERS_ROOT" >&2
      if [ "$name" = netavark ] && ! command -v protoc >/dev/null; then
        apt-get install -y protobuf-compiler >/dev/null || die "netavark's build needs protoc (protobuf-compiler)"
      fi
      cargo install --locked --quiet "$name" --version "$version" --root "$HELPERS_ROOT" || die "cannot build $name $version"
    fi
  done
  echo "podman network helpers: $HELPERS_DIR: netavark $(version_of "$HELPERS_DIR/netavark"), aardvark-dns $(version_of "$HELPERS_DIR/aardvark-dns") (packaged: netavark $(version_of "$netavark"))"
fi

# The containers.conf this script writes (never an administrator's).
our_conf() {
  echo "$OURS"
  cat <<CONF
[containers]
default_ulimits = ["nofile=$1:$1", "nproc=$2:$2"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  [ -z "$HELPERS_DIR" ] || echo "helper_binaries_dir = [\"$HELPERS_DIR\", $HELPER_DIRS]"
}

if ! podman_api; then
  if ours && [ ! -d /run/systemd/system ]; then
    rm -f "$CONF"
    start_service
    limit() { awk -v k="$1" '$0 ~ k {print $(NF-1)}' "/proc/$SERVICE_PID/limits"; }
    nofile=$(limit "Max open files"); nproc=$(limit "Max processes")
    kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    our_conf "$nofile" "$nproc" >"$CONF"
  fi
  start_service
  echo "podman system service started on $SOCKET (pid $SERVICE_PID, log $LOG)"
fi
# Podman reads containers.conf when it starts: a service already running must have been started
# with the helpers named there, and an administrator's file is left as it is.
if [ -n "$HELPERS_DIR" ] && ! grep -qF "\"$HELPERS_DIR\"" "$CONF" 2>/dev/null; then
  if [ -e "$CONF" ] && ours; then
    die "$CONF does not name $HELPERS_DIR: stop the podman service on $SOCKET and run this again"
  fi
  die "Podman's netavark is older than $NETAVARK_MIN and $CONF (not written by this script) does
not name newer helpers: add
  helper_binaries_dir = [\"$HELPERS_DIR\", $HELPER_DIRS]
under [engine] there and restart the podman service (docs/podman.md)"
fi
export DOCKER_HOST="unix://$SOCKET"
docker version >/dev/null 2>&1 || die "the docker CLI cannot reach Podman at $DOCKER_HOST"

# The test image: built for Docker by scripts/test-image.sh, copied into Podman's store.
if ! podman image exists "$IMAGE"; then
  DOCKER_HOST= bash scripts/test-image.sh "$IMAGE"
  DOCKER_HOST= docker save "$IMAGE" | podman load >/dev/null || die "cannot load $IMAGE into podman"
fi
podman run --rm "$IMAGE" true || die "podman cannot run a container (see $LOG)"
# Through the socket too: a service that answers /_ping can still be unable to start anything
# (e.g. one whose working directory was deleted: conmon "Failed to get working directory").
docker run --rm "$IMAGE" true >/dev/null ||
  die "Podman's service on $SOCKET answers but cannot run a container: stop it (it is restarted here) and see $LOG"

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
# The Podman set: the engine tests that must pass on Podman. Every other engine test says why not
# in its first line, `require_docker!(not_podman: "REASON")`; scripts/check-docker-tests.py reads
# this list and fails when a test is in neither group (docs/podman.md).
FILTER='
  test(=docker_restart::a_changed_value_restarts_the_container)
| test(=docker_recreate::recreate_preserves_everything_but_the_key)
| test(=docker_recreate::a_new_container_that_exits_is_rolled_back)
| test(=docker_recreate::a_new_container_that_turns_unhealthy_is_rolled_back)
| test(=docker_recreate::the_health_wait_is_bounded_by_health_timeout)
| test(=docker_recreate::a_stopped_container_is_recreated_and_left_stopped)
| test(=docker_rollout::a_rollout_whose_new_container_is_unhealthy_never_stops_the_old_one)
| test(=docker_rollout::rollout_drops_no_request_of_a_client_that_uses_the_network_alias)
| test(/^podman::/)
| test(/^docker_recover::docker_recreate_killed/)
| test(=faults::a_paused_container_is_left_paused_not_recreated_running)
| test(=faults::a_container_given_by_id_prefix_is_found_by_name_after_a_recreate)
| test(=faults::an_old_container_removed_by_someone_else_during_a_recreate_is_reported_as_removed_not_rolled_back)
'
# `-E EXPR` narrows the set (nextest would take two -E as their union).
filter="$FILTER"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -E) filter="($FILTER) and ($2)"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored only -E "$filter" "${args[@]}"
