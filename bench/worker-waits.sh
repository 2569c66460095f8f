#!/usr/bin/env bash
# Who holds the server's core while its worker waits: one trackplane
# worker pinned to core 0 under loadtest's impressions on core 1, perf
# recording 6 s of scheduler switches and the worker's wake-ups, and for
# each thread that held the core when the worker got it, how long the
# worker had waited since its wake-up (bench/worker_waits.py). A
# background thread that runs on without yielding shows here as long
# waits behind it.
#
#   bench/worker-waits.sh [BINARY] [ADVERTISERS] [RATE]
#   e.g. bench/worker-waits.sh target/release/trackplane 2000 20000
#
# ADVERTISERS (default 50) catalogs of PRODUCTS (env, default 200) ids
# each. RELOAD=N (env) also replaces a catalog of N ids once a second
# while perf records, so that the reloader reads and builds it: what a
# node pays when a big feed changes. Needs perf (linux-perf) and root.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/trackplane}; ADV=${2:-50}; RATE=${3:-20000}
cargo build --release --quiet -p trackplane-loadtest --bin loadtest
[ "$BIN" = target/release/trackplane ] && cargo build --release --quiet -p trackplane --bin trackplane
LT=target/release/loadtest
W=$(mktemp -d /tmp/trackplane-waits.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
$LT setup --dir "$W/mix" --advertisers "$ADV" --products "${PRODUCTS:-200}" --kinds impressions >/dev/null
mkdir -p "$W/data"; cp -r "$W/mix/catalogs" "$W/data/"
. bench/lib.sh
[ "${RELOAD:-0}" -gt 0 ] && feed_copies "$W/data" "$RELOAD" 5
RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$W/mix/trackplane.toml" --listen 127.0.0.1:18090 \
  --admin-listen 127.0.0.1:19190 --data-dir "$W/data" --workers 1 --driver uring &
SERVER=$!
wait_port 18090
sleep 1
taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "$RATE" --connections 64 --duration 8 --warmup 2 \
  --json --kinds impressions --advertisers "$ADV" --products "${PRODUCTS:-200}" --stall-us 500 > "$W/lt.json" &
LOAD=$!
sleep 2.5
[ "${RELOAD:-0}" -gt 0 ] && feed_renames "$W/data" 5 &
taskset -c 1 perf record -q -a -e sched:sched_switch -e sched:sched_wakeup \
  --filter 'comm == "trackplane-w0"' -o "$W/perf.data" -- sleep 6 >/dev/null 2>&1
wait $LOAD
kill -TERM $SERVER; wait $SERVER || true
echo "Command: \`${RELOAD:+RELOAD=$RELOAD }bench/worker-waits.sh $BIN $ADV $RATE\`"
machine_line
echo "loadtest: $(grep -o '"p99_us":[0-9.]*\|"p999_us":[0-9.]*' "$W/lt.json" | tr '\n' ' ')(perf's own cost included)"
perf script -i "$W/perf.data" -F cpu,time,event,trace --ns 2>/dev/null > "$W/script"
python3 bench/worker_waits.py "$W/script" trackplane-w0 0
