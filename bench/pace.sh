#!/usr/bin/env bash
# Whether the worker batches its wake-ups at each rate, and how often it
# switched (server.wake_batch_busy_percent, src/server/pace.rs): runs
# trackplane alone (one worker, every thread on core 0, as bench/compare.sh
# does) with the loadtest mix at each rate (load on core 1), a fresh server
# per rate, and prints the two metrics after 2 s of warm-up and SECONDS of
# load, with the rate achieved and p50/p99.
#
#   bench/pace.sh [SECONDS] [RATE...]
#   e.g. bench/pace.sh 10 20000 30000 40000 50000
#        bench/pace.sh 10 30000 '[server]\nwake_batch_busy_percent = 40\n'   # a TOML argument applies to the rates after it
#        MIX="--kinds impressions" bench/pace.sh 10 50000   # pixels only (loadtest's setup and run options)
#        WARM_RATE=100000 bench/pace.sh 10 50000   # after a burst: the 2 s warm-up at another rate
# "worker %" is the worker thread's share of its core over the run, the
# measure the bar is compared with (every 500 ms in the server).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DUR=${1:-10}; shift || true
[ $# -gt 0 ] || set -- 20000 25000 30000 35000 40000 50000
W=$(mktemp -d /tmp/trackplane-pace.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cargo build --release --quiet -p trackplane -p trackplane-loadtest --bin trackplane --bin loadtest
LT=target/release/loadtest
$LT setup --dir "$W/mix" ${MIX:-} >/dev/null
EXTRA=
echo "| rate | achieved | p50 µs | p99 µs | worker % | batching at the end | changes |"
echo "|---|---|---|---|---|---|---|"
for RATE in "$@"; do
  case $RATE in *'['*) EXTRA=$RATE; continue ;; esac
  rm -rf "$W/data"; mkdir -p "$W/data"; cp -r "$W/mix/catalogs" "$W/data/"
  cp "$W/mix/trackplane.toml" "$W/tp.toml"
  [ -n "$EXTRA" ] && printf "$EXTRA" >> "$W/tp.toml"
  RUST_LOG=warn taskset -c 0 target/release/trackplane serve --config "$W/tp.toml" \
    --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:19190 --data-dir "$W/data" --workers 1 --driver uring &
  PID=$!
  wait_port 18090
  taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "${WARM_RATE:-$RATE}" --connections 64 --duration 2 --warmup 0 --json ${MIX:-} >/dev/null
  w0=$(grep -lx trackplane-w0 /proc/$PID/task/*/comm | head -1); w0=${w0%/comm}
  before=$(awk '{print $1}' "$w0/schedstat"); t0=$(date +%s%N)
  out=$(taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "$RATE" --connections 64 --duration "$DUR" --warmup 0 --json ${MIX:-})
  share=$(awk -v a="$before" -v t0="$t0" -v t1="$(date +%s%N)" '{printf "%.0f", ($1 - a) * 100 / (t1 - t0)}' "$w0/schedstat")
  page=$(curl -s 127.0.0.1:19190/metrics)
  m() { echo "$page" | awk -v n="$1" '$1 == n {print $2}'; }
  echo "| $RATE | $(json_field "$out" achieved_rate) | $(json_field "$out" p50_us) | $(json_field "$out" p99_us) | $share | $(m trackplane_workers_batching_wakeups) | $(m trackplane_wake_batch_changes_total) |"
  kill -TERM $PID; wait $PID 2>/dev/null || true
done
