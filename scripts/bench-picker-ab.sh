#!/usr/bin/env bash
# Compares builds of the picker benchmark run alternately, pinned to one CPU: on this shared VM
# the same binary's figures move by 30-40% between processes, so only builds measured turn about
# in one command are compared. For each build: every run's criterion median, the median and the
# minimum over the runs (microseconds).
#
#   cargo bench -p infergate-gateway --bench picker --no-run   # prints the bench binary's path
#   cp target/release/deps/picker-<hash> /tmp/picker-base       # once per build to compare
#   scripts/bench-picker-ab.sh 8 'picker/(hash_16k_prompt_and_pool_pick_64_endpoints$|pure_pick)' \
#       /tmp/picker-base /tmp/picker-new
#
# Columns follow the benches' order in gateway/benches/picker.rs. CPU=N picks the CPU (1).
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
rounds=$1; filter=$2; shift 2
cpu=${CPU:-1}
declare -A vals
for _ in $(seq "$rounds"); do
  for b in "$@"; do
    v=$(taskset -c "$cpu" timeout 300 "$b" --bench --warm-up-time 0.5 --measurement-time 1 "$filter" 2>&1 |
      awk '/time:/ { v = $4; if ($5 == "ns") v = v / 1000; if ($5 == "ms") v = v * 1000; printf "%.3f ", v }')
    vals[$b]="${vals[$b]:-}$v;"
  done
done
for b in "$@"; do
  printf '%s\n' "${vals[$b]}" | python3 -c '
import statistics, sys
name = sys.argv[1]
rows = [list(map(float, r.split())) for r in sys.stdin.read().strip().split(";") if r.strip()]
cols = list(zip(*rows))
print(name, " | ".join("median %.2f min %.2f [%s]" % (statistics.median(c), min(c), " ".join("%.2f" % x for x in c)) for c in cols))
' "$b"
done
