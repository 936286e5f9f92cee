#!/usr/bin/env bash
# Validate the packaging files in scripts/ (run by the `watch::packaging_files_validate` test):
#   systemd units  systemd-analyze verify (ExecStart pointed at the built binary, man pages from
#                  `audsync man --out-dir` so Documentation= resolves); a structural check where
#                  systemd-analyze is missing
#   compose        docker-compose config
#   Dockerfiles    final stage FROM scratch, same build flags as scripts/ci-image.sh
#   cron, hook     cron syntax; bash -n (+ shellcheck when installed)
# and every audsync command line found in them must parse (the flags exist, the values are valid).
# Usage: scripts/check-packaging.sh   (AUDSYNC_BIN=path/to/audsync, default target/debug/audsync)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${AUDSYNC_BIN:-$PWD/target/debug/audsync}
[ -x "$BIN" ] || { cargo build -q; BIN=$PWD/target/debug/audsync; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "check-packaging: FAIL: $*" >&2; exit 1; }
ok() { echo "check-packaging: ok: $*"; }

# An audsync command line (words after the program name) must parse: clap stops at --help only
# after every earlier flag and value was accepted.
check_args() {
  local where=$1; shift
  "$BIN" "$@" --help >/dev/null 2>"$tmp/args.err" || fail "$where: audsync $* does not parse: $(cat "$tmp/args.err")"
}

# --- systemd
units=(scripts/systemd/audsync.service scripts/systemd/audsync.timer scripts/systemd/audsync-watch.service)
mkdir -p "$tmp/units" "$tmp/project"
for u in "${units[@]}"; do
  [ -f "$u" ] || fail "$u is missing"
  sed "s|/usr/local/bin/audsync|$BIN|g; s|/srv/lambda|$tmp/project|g" "$u" >"$tmp/units/$(basename "$u")"
  while read -r line; do
    # shellcheck disable=SC2086
    set -- ${line#ExecStart=}
    shift
    check_args "$u" "$@"
  done < <(grep '^ExecStart=' "$u")
done
if command -v systemd-analyze >/dev/null && systemd-analyze --version >/dev/null 2>&1; then
  "$BIN" man --out-dir "$tmp/man/man1"
  out=$(cd "$tmp/units" && MANPATH="$tmp/man" systemd-analyze verify ./*.service ./*.timer 2>&1) \
    || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  ok "systemd units (systemd-analyze verify)"
else
  for u in "${units[@]}"; do
    grep -q '^\[Unit\]' "$u" && grep -q '^Description=' "$u" || fail "$u: no [Unit] Description="
  done
  grep -q '^\[Service\]' scripts/systemd/audsync.service && grep -q '^Type=oneshot' scripts/systemd/audsync.service || fail "audsync.service is not a oneshot service"
  grep -q '^\[Timer\]' scripts/systemd/audsync.timer && grep -q '^Unit=audsync.service' scripts/systemd/audsync.timer || fail "audsync.timer does not start audsync.service"
  grep -q '^ExecReload=.*-HUP' scripts/systemd/audsync-watch.service || fail "audsync-watch.service cannot reload"
  ok "systemd units (structural check: systemd-analyze is not available here)"
fi

# --- compose
compose=scripts/compose.watch.yml
command -v docker-compose >/dev/null || fail "docker-compose is not installed"
docker-compose -f "$compose" config >"$tmp/compose.out" 2>"$tmp/compose.err" || fail "docker-compose config: $(cat "$tmp/compose.err")"
# docker-compose is Python with PyYAML: read the resolved service back.
python3 - "$tmp/compose.out" >"$tmp/compose.cmd" <<'PY' || fail "$compose: $(cat "$tmp/compose.cmd")"
import sys, yaml
svc = yaml.safe_load(open(sys.argv[1]))["services"]["audsync"]
vols = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in svc.get("volumes", [])]
if not any(v.startswith("/var/run/docker.sock:/var/run/docker.sock") and not v.endswith(":ro") for v in vols):
    sys.exit("the Docker socket is not mounted read-write")
cmd = svc["command"]
if cmd[0] != "watch":
    sys.exit("the service does not run `audsync watch`")
env_file = cmd[cmd.index("--env-file") + 1]
if not any(env_file.startswith(v.split(":")[1].rstrip("/") + "/") for v in vols):
    sys.exit(f"the directory of {env_file} is not mounted")
print("\n".join(cmd))
PY
mapfile -t cmd <"$tmp/compose.cmd"
check_args "$compose" "${cmd[@]}"
ok "compose snippet (docker-compose config)"

# --- Dockerfiles
df=scripts/Dockerfile
last_from=$(grep -E '^FROM ' "$df" | tail -n1)
[ "$last_from" = "FROM scratch" ] || fail "$df: the final stage is '$last_from', expected FROM scratch"
grep -q "target-feature=+crt-static" "$df" && grep -q -- "--target x86_64-unknown-linux-gnu" "$df" \
  || fail "$df does not build the static binary the way scripts/ci-image.sh proves"
grep -q 'ca-certificates.crt' "$df" || fail "$df: no TLS roots in the final stage"
# The CI stand-in must match the Dockerfile's final stage.
for key in ENTRYPOINT CMD EXPOSE; do
  [ "$(grep "^$key " "$df")" = "$(grep "^$key " scripts/Dockerfile.scratch)" ] || fail "$key differs between $df and scripts/Dockerfile.scratch"
done
mapfile -t cmd < <(python3 -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1])]' "$(sed -n 's/^CMD //p' "$df")")
check_args "$df" "${cmd[@]}"
ok "Dockerfile (structure; the image itself is proven by scripts/ci-image.sh)"

# --- cron line and deploy hook (written by the lead; checked when present)
if [ -f scripts/cron.example ]; then
  n=0
  while read -r m h dom mon dow rest; do
    for f in "$m" "$h" "$dom" "$mon" "$dow"; do
      [[ $f =~ ^[0-9*/,-]+$ ]] || fail "scripts/cron.example: '$f' is not a cron time field"
    done
    args=$(sed -E 's/.*audsync (.*)/\1/; s/ *(>>|>|2>|\|).*//' <<<"$rest")
    # shellcheck disable=SC2086
    check_args scripts/cron.example $args
    n=$((n + 1))
  done < <(grep -vE '^\s*(#|$)' scripts/cron.example)
  [ "$n" -gt 0 ] || fail "scripts/cron.example has no cron line"
  ok "cron line"
else
  echo "check-packaging: skipped: scripts/cron.example (absent on this branch)"
fi
if [ -f scripts/post-deploy-hook.sh ]; then
  bash -n scripts/post-deploy-hook.sh || fail "scripts/post-deploy-hook.sh does not parse"
  if command -v shellcheck >/dev/null; then shellcheck scripts/post-deploy-hook.sh || fail "shellcheck"; fi
  ok "post-deploy hook"
else
  echo "check-packaging: skipped: scripts/post-deploy-hook.sh (absent on this branch)"
fi
for s in scripts/ci-image.sh scripts/bench-watch.sh scripts/check-packaging.sh; do
  [ -f "$s" ] && { bash -n "$s" || fail "$s does not parse"; }
done
ok "all packaging files"
