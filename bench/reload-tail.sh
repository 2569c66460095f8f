#!/usr/bin/env bash
# What replacing a big catalog costs the answers' tail: one trackplane
# worker pinned to core 0 under loadtest's impressions on core 1, while a
# catalog of N ids is renamed into place once a second (copies prepared
# before the load, so that writing them takes nothing from either core
# during it), against the same window with no catalog changing. Builds
# take turns, ROUNDS times. Prints p50, p99, p99.9 and max per window.
#
#   bench/reload-tail.sh [RATE] [ROUNDS] [IDS] BINARY...
#   e.g. bench/reload-tail.sh 20000 2 1000000 target/release/trackplane /tmp/old/trackplane
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-20000}; ROUNDS=${2:-2}; IDS=${3:-1000000}; shift $(( $# < 3 ? $# : 3 ))
[ $# -gt 0 ] || set -- target/release/trackplane
cargo build --release --quiet -p trackplane-loadtest --bin loadtest
cargo build --release --quiet -p trackplane --bin trackplane
LT=target/release/loadtest
. bench/lib.sh
W=$(mktemp -d /tmp/trackplane-reload-tail.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
$LT setup --dir "$W/mix" --advertisers 50 --products 200 --kinds impressions >/dev/null

window() { # BINARY RELOADS
  rm -rf "$W/data"; mkdir -p "$W/data"; cp -r "$W/mix/catalogs" "$W/data/"
  feed_copies "$W/data" "$IDS" "$2"
  RUST_LOG=warn taskset -c 0 "$1" serve --config "$W/mix/trackplane.toml" --listen 127.0.0.1:18090 \
    --admin-listen 127.0.0.1:19190 --data-dir "$W/data" --workers 1 --driver uring &
  local server=$!
  wait_port 18090
  sleep 1
  taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "$RATE" --connections 64 --duration 8 \
    --warmup 1 --json --kinds impressions --advertisers 50 --products 200 > "$W/lt.json" &
  local load=$!
  sleep 1.5
  feed_renames "$W/data" "$2"
  wait $load
  kill -TERM $server; wait $server || true
  local j; j=$(tail -1 "$W/lt.json")
  echo "| $(basename "$(dirname "$1")")/$(basename "$1") | $2 | $(json_field "$j" achieved_rate) | $(json_field "$j" p50_us) | $(json_field "$j" p99_us) | $(json_field "$j" p999_us) | $(json_field "$j" max_us) |"
}

echo "Command: \`bench/reload-tail.sh $RATE $ROUNDS $IDS $*\`"
machine_line
echo
echo "| binary | catalogs of $IDS ids renamed in (1/s) | achieved /s | p50 µs | p99 µs | p99.9 µs | max µs |"
echo "|---|---|---|---|---|---|---|"
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    window "$bin" 6
    window "$bin" 0
  done
done
