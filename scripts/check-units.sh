#!/usr/bin/env bash
# CI: the shipped systemd units (scripts/systemd/) load, and confine the agent.
#   systemd-analyze verify            every unit parses, ExecStart= is an executable
#   systemd-analyze security --offline=yes   exposure of each service <= its limit
# The units name /usr/local/bin/audsync; the check runs on copies that point at a temporary copy
# of the built binary (AUDSYNC_BIN, default target/debug/audsync), so `verify` finds it.
# PID 1 need not be systemd (--offline=yes reads the unit files alone). That the capability set
# is enough to recreate a container is tests/units.rs (an engine test).
set -euo pipefail
cd "$(dirname "$0")/.."
ANALYZE=${SYSTEMD_ANALYZE:-systemd-analyze}
if ! command -v "$ANALYZE" >/dev/null; then
  echo "error: systemd-analyze is missing (apt-get install systemd)" >&2
  exit 1
fi
# service -> the highest exposure allowed (the watch unit is the issue's: 4.0).
declare -A LIMIT=([audsync-watch.service]=4.0 [audsync.service]=4.0)

bin=${AUDSYNC_BIN:-target/debug/audsync}
[[ -x $bin ]] || cargo build --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
install -m 0755 "$bin" "$work/audsync"
for u in scripts/systemd/*.service scripts/systemd/*.timer; do
  sed "s#/usr/local/bin/audsync#$work/audsync#g" "$u" > "$work/$(basename "$u")"
done
(cd "$work" && "$ANALYZE" verify --man=no ./*.service ./*.timer)
echo "check-units: systemd-analyze verify: ok"

fail=0
for unit in "${!LIMIT[@]}"; do
  out=$(cd "$work" && "$ANALYZE" security --offline=yes --no-pager "./$unit" 2>&1) || true
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
  if [[ -z $level ]]; then
    echo "error: no exposure level for $unit:" >&2
    echo "$out" >&2
    fail=1
  elif awk -v l="$level" -v m="${LIMIT[$unit]}" 'BEGIN { exit !(l > m) }'; then
    echo "error: $unit: exposure $level is above ${LIMIT[$unit]}:" >&2
    grep '^✗' <<<"$out" >&2 || true
    fail=1
  else
    echo "check-units: $unit: exposure $level (limit ${LIMIT[$unit]})"
  fi
done
# Every capability the bounding set keeps is named in docs/security.md with its reason.
for unit in scripts/systemd/*.service; do
  caps=$(sed -n 's/^CapabilityBoundingSet=\(.\+\)$/\1/p' "$unit" | head -1)
  if [[ -z $caps ]]; then
    echo "error: $unit has no CapabilityBoundingSet=" >&2
    fail=1
  fi
  for c in $caps; do
    grep -q "$c" docs/security.md || { echo "error: $c ($unit) is not explained in docs/security.md" >&2; fail=1; }
  done
done
exit $fail
