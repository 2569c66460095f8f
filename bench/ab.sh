#!/usr/bin/env bash
# Two trackplane binaries, interleaved, at one fixed rate: the way to see a
# change of a few percent on a VM whose hours differ by more than that.
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
W=$(mktemp -d /tmp/trackplane-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cargo build --release --quiet -p trackplane-loadtest
LT=target/release/loadtest
$LT setup --dir "$W/mix" >/dev/null
for k in A B; do cp "$W/mix/trackplane.toml" "$W/$k.toml"; done
printf "${A_TOML:-}" >> "$W/A.toml"
printf "${B_TOML:-}" >> "$W/B.toml"
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
    local s0 out n threads
    cpu_of $pid > "$W/before"; s0=$(steal_ms)
    out=$(taskset -c 1 $LT run --addr 127.0.0.1:$PORT --rate "$RATE" --connections 64 --duration "$DUR" --warmup 0 --json)
    cpu_of $pid > "$W/after"
    n=$(json_field "$out" completed)
    threads=$(join "$W/before" "$W/after" | awk -v n="$n" '{d=($3-$2)/1000/n; t+=d; if (d>=0.05) s=s sprintf(" %s %.2f", $1, d)} END {printf "%.2f |%s", t, s}')
    echo "| $1 | $(json_field "$out" achieved_rate) | ${threads%%|*}| ${threads#*|} | $(json_field "$out" p50_us) | $(json_field "$out" p99_us) | $(json_field "$out" p999_us) | $(( $(steal_ms) - s0 )) |"
  done
  kill -TERM $pid; wait $pid 2>/dev/null || true
}

echo "A: $A"
echo "B: $B"
[ -n "${A_TOML:-}" ] && echo "A_TOML: $A_TOML"
[ -n "${B_TOML:-}" ] && echo "B_TOML: $B_TOML"
echo "rate $RATE/s, $PAIRS pairs of $ROUNDS x ${DUR}s windows"
echo
echo "| binary | achieved/s | CPU µs/req | by thread (µs/req) | p50 µs | p99 µs | p99.9 µs | steal ms |"
echo "|---|---|---|---|---|---|---|---|"
for _ in $(seq "$PAIRS"); do one A "$A"; one B "$B"; done | tee "$W/rows"
echo
for k in A B; do
  awk -F'|' -v k=" $k " '$2 == k {print $4 + 0}' "$W/rows" | sort -n |
    awk -v k="$k" '{a[NR] = $1} END {m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "median CPU µs/req, %s: %.2f over %d windows\n", k, m, NR}'
done
