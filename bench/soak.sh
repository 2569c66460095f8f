#!/usr/bin/env bash
# A long run of one server, read for what a short race cannot show: growth.
# trackplane takes the realistic mix at RATE for MINUTES one-minute
# windows, with what a node meets in the field running beside the load: a
# viewer on one advertiser's live event stream, that advertiser's audit
# polled every second, a catalog replaced every 10 s, segments sealed at
# 16 MiB and the disk budget (256 MiB, drop_oldest) deleting the oldest.
# After each window it reads what a leak would raise: the process's
# anonymous and resident memory, open files, threads, segment files and
# bytes, the server's CPU per request, and the window's latency.
#
#   bench/soak.sh [RATE] [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATE=${1:-50000}; MINUTES=${2:-20}
SERVER_CORE=0
LOAD_CORE=1
W=$(mktemp -d /tmp/trackplane-soak.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cargo build --release --quiet -p trackplane -p trackplane-loadtest --bin trackplane --bin loadtest
LT=target/release/loadtest
$LT setup --dir "$W/mix" ${MIX:-} >/dev/null
mkdir -p "$W/data"
cp -r "$W/mix/catalogs" "$W/data/"
{ cat "$W/mix/trackplane.toml"
  printf '[storage]\nsegment_max_bytes = 16777216\ndisk_budget_bytes = 268435456\nfull_policy = "drop_oldest"\n'
} > "$W/trackplane.toml"
ADMIN=19181
ADV=adv-0

RUST_LOG=warn taskset -c $SERVER_CORE target/release/trackplane serve --config "$W/trackplane.toml" \
  --listen 127.0.0.1:18086 --admin-listen 127.0.0.1:$ADMIN --data-dir "$W/data" --workers 1 \
  2> "$W/server.log" &
SERVER=$!
wait_port 18086

# The field beside the load, each bounded by the run's length. They run
# on the load's core, so that the server's core holds only the server.
SIDE_S=$((MINUTES * 62 + 10))
taskset -c $LOAD_CORE timeout "$SIDE_S" curl -sN "127.0.0.1:$ADMIN/api/advertisers/$ADV/events" > "$W/stream" &
( taskset -cp $LOAD_CORE $BASHPID >/dev/null
  for _ in $(seq "$SIDE_S"); do
    curl -s -o /dev/null "127.0.0.1:$ADMIN/api/advertisers/$ADV/audit"; sleep 1
  done ) &
( taskset -cp $LOAD_CORE $BASHPID >/dev/null
  for _ in $(seq $((SIDE_S / 10))); do
    cp "$W/data/catalogs/adv-1.txt" "$W/data/catalogs/.adv-1.txt.tmp"
    mv "$W/data/catalogs/.adv-1.txt.tmp" "$W/data/catalogs/adv-1.txt"; sleep 10
  done ) &

status_kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/$SERVER/status; }
OUT="bench/results/soak-$(date -u +%Y%m%d-%H%M).md"
ROWS=()
for m in $(seq "$MINUTES"); do
  before=$(cpu_ns $SERVER)
  out=$(taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:18086 --rate "$RATE" --connections 64 \
    --duration 58 --warmup 2 --json ${MIX:-})
  after=$(cpu_ns $SERVER)
  calls=$(awk "BEGIN {print $(json_field "$out" completed) + $(json_field "$out" achieved_rate) * 2}")
  us=$(awk "BEGIN {printf \"%.2f\", ($after - $before) / 1000 / $calls}")
  segs=$(find "$W/data/segments" -type f | wc -l)
  seg_mb=$(du -sm "$W/data/segments" | cut -f1)
  row="$m|$(json_field "$out" achieved_rate)|$us|$(json_field "$out" p50_us)|$(json_field "$out" p99_us)|$(json_field "$out" p999_us)|$(json_field "$out" max_us)"
  row="$row|$(( $(status_kb RssAnon) / 1024 ))|$(( $(status_kb VmRSS) / 1024 ))|$(ls /proc/$SERVER/fd | wc -l)|$(status_kb Threads)|$segs|$seg_mb"
  ROWS+=("$row")
  echo "  $row" >&2
done
metric() { admin_metric $ADMIN "$1"; }
audited=$(metric trackplane_events_audited_total)
stored=$(metric trackplane_store_records_total)
refused=$(metric trackplane_events_refused_total)
dropped=$(metric trackplane_store_segments_dropped_total)
errors=$(metric trackplane_store_errors_total)
view_dropped=$(metric trackplane_view_dropped_total)
streamed=$(grep -c '^data:' "$W/stream" || true)
kill -TERM $SERVER; wait $SERVER || true

{
  echo "# trackplane at $RATE/s for $MINUTES minutes — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${MIX:+MIX=\"$MIX\" }bench/soak.sh $RATE $MINUTES\`"
  echo
  machine_line
  echo
  echo "One worker pinned to core 0, loadtest (open loop, 64 connections, the realistic mix: 50 advertisers, 10% broken tags${MIX:+; loadtest $MIX}) and the side load on core 1: a viewer on $ADV's event stream, its audit polled every second, adv-1's catalog replaced every 10 s. Storage: segments sealed at 16 MiB, disk budget 256 MiB with drop_oldest."
  echo
  echo "| minute | achieved /s | CPU µs/req | p50 µs | p99 µs | p99.9 µs | max µs | anon MiB | resident MiB | open files | threads | segment files | segments MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for r in "${ROWS[@]}"; do echo "|$r|"; done
  echo
  echo "At the end: events audited ${audited:-?}, records stored ${stored:-?}, refused ${refused:-?}; segments deleted by the budget ${dropped:-?}; store errors ${errors:-?}; copies the live view dropped ${view_dropped:-?}; events the viewer received $streamed."
  echo
  echo "CPU: the server's threads (schedstat), over each window's warm-up and minute; anon: RssAnon (heap and stacks), resident: VmRSS (also the binary and mapped files)."
} > "$OUT"
echo "$OUT"
