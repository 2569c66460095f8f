#!/usr/bin/env bash
# Two trackplane binaries, interleaved, at one fixed rate: interleaving
# takes out the drift of the VM's hours, not the spread between windows,
# so read the last lines (B minus A pair by pair, and how lopsided the
# split is); to see the spread, race a binary against itself.
# Each pair starts A, measures ROUNDS windows of SECONDS, stops it, then the
# same for B; everything on core 0 (as bench/compare.sh pins it), loadtest
# on core 1, realistic mix. Per window: CPU µs per request of the whole
# process and of each busy thread (from /proc/PID/task/*/schedstat), the
# latency percentiles, and the host's steal time meanwhile. A_TOML and
# B_TOML, when set, are appended (printf-style) to that side's config, so
# one binary can race two settings.
#
#   bench/ab.sh A_BIN B_BIN [RATE] [PAIRS] [ROUNDS] [SECONDS]
#   e.g. A_TOML='[server]\nwake_batch = 0\n' bench/ab.sh target/release/trackplane target/release/trackplane
#   e.g. git worktree add /tmp/old HEAD~3 && (cd /tmp/old && cargo build --release)
#        bench/ab.sh /tmp/old/target/release/trackplane target/release/trackplane 50000 6 2 8
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
A=$(realpath "$1"); B=$(realpath "$2")
RATE=${3:-50000}; PAIRS=${4:-4}; ROUNDS=${5:-2}; DUR=${6:-8}
ab_setup ab
PORT=18095

cpu_of() { for t in /proc/"$1"/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1 "$t/schedstat")"; done | sort; }

one() { # label binary
  rm -rf "$W/data"; mkdir -p "$W/data"; cp -r "$W/mix/catalogs" "$W/data/"
  RUST_LOG=warn taskset -c 0 "$2" serve --config "$W/$1.toml" --listen 127.0.0.1:$PORT \
    --admin-listen 127.0.0.1:19195 --data-dir "$W/data" --workers 1 --driver uring &
  local pid=$!
  wait_port $PORT
  taskset -c 1 $LT run --addr 127.0.0.1:$PORT --rate "$RATE" --connections 64 --duration 2 --warmup 0 --json >/dev/null
  for _ in $(seq "$ROUNDS"); do
    local s0 out n threads mark core
    cpu_of $pid > "$W/before"; s0=$(steal_ms); mark=$(core_mark 0)
    out=$(taskset -c 1 $LT run --addr 127.0.0.1:$PORT --rate "$RATE" --connections 64 --duration "$DUR" --warmup 0 --json)
    core=$(core_busy_ms 0 "$mark")
    cpu_of $pid > "$W/after"
    n=$(json_field "$out" completed)
    threads=$(join "$W/before" "$W/after" | awk -v n="$n" '{d=($3-$2)/1000/n; t+=d; if (d>=0.05) s=s sprintf(" %s %.2f", $1, d)} END {printf "%.2f |%s", t, s}')
    echo "| $1 | $(json_field "$out" achieved_rate) | ${threads%%|*}| $(awk -v c="$core" -v n="$n" 'BEGIN {printf "%.2f", c * 1000 / n}') | ${threads#*|} | $(json_field "$out" p50_us) | $(json_field "$out" p99_us) | $(json_field "$out" p999_us) | $(( $(steal_ms) - s0 )) |"
  done
  kill -TERM $pid; wait $pid 2>/dev/null || true
  sync # no write-back of this turn's segments in the next turn (see stop_server)
}

ab_describe
echo "rate $RATE/s, $PAIRS pairs of $ROUNDS x ${DUR}s windows"
echo
echo "CPU: the process's threads; core: the time core 0 was busy, which also counts interrupt work that lands while it would otherwise idle (see core_unbusy_ms in bench/lib.sh)."
echo
echo "| binary | achieved/s | CPU µs/req | core µs/req | by thread (µs/req) | p50 µs | p99 µs | p99.9 µs | steal ms |"
echo "|---|---|---|---|---|---|---|---|---|"
for _ in $(seq "$PAIRS"); do one A "$A"; one B "$B"; done | tee "$W/rows"
echo
for k in A B; do
  awk -F'|' -v k=" $k " '$2 == k {print $4 + 0}' "$W/rows" | sort -n |
    awk -v k="$k" '{a[NR] = $1} END {m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "median CPU µs/req, %s: %.2f over %d windows\n", k, m, NR}'
done
# Pair by pair (each side's windows averaged), and how often B came out
# lower: on the reference VM, two sides running one binary differed by
# 11% in their medians over three pairs (`bench/results/ab-timerslack-
# 20261129-2146.md`), so a difference counts only if it holds pair after
# pair. The sign test's p is the chance of a split at least this lopsided
# between two sides that do not differ.
awk -F'|' -v r="$ROUNDS" "$SIGN_AWK"'
  { i = int((NR - 1) / r); side = (i % 2) ? "B" : "A"; p = int(i / 2)
    cpu[side, p] += $4 / r; core[side, p] += $5 / r; p99[side, p] += $8 / r; n = p + 1 }
  END {
    d = ""; e = ""; q = ""; lc = 0; le = 0; lp = 0
    for (p = 0; p < n; p++) {
      d = d sprintf(" %+.2f", cpu["B", p] - cpu["A", p]); lc += cpu["B", p] < cpu["A", p]
      e = e sprintf(" %+.2f", core["B", p] - core["A", p]); le += core["B", p] < core["A", p]
      q = q sprintf(" %+.0f", p99["B", p] - p99["A", p]); lp += p99["B", p] < p99["A", p]
    }
    printf "B minus A by pair, CPU µs/req:%s (B lower in %d of %d, sign test p %.2f)\n", d, lc, n, sign(lc, n)
    printf "B minus A by pair, core µs/req:%s (B lower in %d of %d, sign test p %.2f)\n", e, le, n, sign(le, n)
    printf "B minus A by pair, p99 µs:%s (B lower in %d of %d, sign test p %.2f)\n", q, lp, n, sign(lp, n)
  }' "$W/rows"
