# Shared by the engine benchmarks (bench-recreate.sh, bench-downtime.sh, bench-compose-pass.sh);
# sourced, from the repository root, after `work` (a temporary directory) is set.

# aud N: the 64-hex AUD made of byte N repeated.
aud() { printf '%02x' "$1" | awk '{ s = ""; for (i = 0; i < 32; i++) s = s $0; print s }'; }

# median: of the integers on stdin, one per line.
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }

# start_fake: the fake application (scripts/bench/fake_app.py) answering with $work/aud (AUD 1
# to begin with); sets `port` and `fake_pid` (kill it in the caller's cleanup).
start_fake() {
  aud 1 >"$work/aud"
  # exec: the coprocess IS python, so killing $FAKE_PID stops the server (and frees our stdout).
  coproc FAKE { exec python3 scripts/bench/fake_app.py "$work/aud"; }
  fake_pid=$FAKE_PID
  read -r port <&"${FAKE[0]}"
}
