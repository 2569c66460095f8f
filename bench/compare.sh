#!/usr/bin/env bash
# Side by side in one run: nginx empty_gif (buffered access log), a bare
# monoio+httparse responder (the floor), the same on raw io_uring with
# multishot receive (the floor of a custom event loop), and trackplane with
# the realistic mix (audit, catalogs, records on disk). Each server is pinned to core 0,
# the load generator to core 1. For each fixed rate it prints requests/s,
# server CPU µs per request (from /proc/PID/task/*/schedstat, all threads),
# the server core's busy µs per request (see core_unbusy_ms in lib.sh)
# and latency percentiles from the intended send time, plus ratios to nginx.
#
#   bench/compare.sh [RATES] [SECONDS]        e.g. bench/compare.sh "20000 50000 100000" 10
#
# The fixed rates run under wrk2 when it is installed (`wrk2` on the PATH,
# or WRK2=/path/to/it), under loadtest otherwise; LOADGEN=loadtest or
# LOADGEN=wrk2 chooses. wrk2 gets the same mix as a Lua script (`loadtest
# wrk2-script`) and its report is read back by `loadtest wrk2-report`; its
# first 10 s and 5 ms a connection are its calibration, unmeasured, so each
# of its runs lasts that much longer than SECONDS. wrk (closed loop) runs
# the saturation row. Writes bench/results/compare-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATES=${1:-"20000 50000 100000"}
SECONDS_PER_RATE=${2:-10}
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
race_setup compare
loadgen_setup auto $CONNS
# trackplane's variants besides race_setup's two (as shipped, and with
# wake-ups unbatched): epoll; storing nothing (the cost of storage is the
# difference); every event type 'sync'.
cp "$W/mix/trackplane.toml" "$W/trackplane-epoll.toml"
{ cat "$W/mix/trackplane.toml"; printf '[storage]\ndiscard_for_benchmarks = true\n'; } > "$W/trackplane-nostore.toml"
{ cat "$W/mix/trackplane.toml"; for t in impression click page_view view_item add_to_cart purchase; do
    target/release/trackplane default-config | awk -v t="[event_types.$t]" '$0==t {p=1; print; next} /^\[/ {p=0} p'
    echo 'durability = "sync"'; done; } > "$W/trackplane-sync.toml"
target/release/trackplane check-config "$W/trackplane-sync.toml" >/dev/null

declare -A PIDS
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }

ROWS=()
run_rate() { # server port rate
  local before after out us steal0 kd0 mark core
  steal0=$(steal_ms); kd0=$(kdamond_ms); mark=$(core_mark $SERVER_CORE)
  before=$(cpu_ns ${PIDS[$1]})
  out=$(fixed_rate "$2" "$3" "$SECONDS_PER_RATE" $CONNS)
  after=$(cpu_ns ${PIDS[$1]})
  core=$(core_busy_ms $SERVER_CORE "$mark")
  local vm="$(( $(steal_ms) - steal0 ))|$(( $(kdamond_ms) - kd0 ))"
  local total; total=$(answers_in_run "$out")
  us=$(calc "($after - $before) / 1000 / $total")
  ROWS+=("$1|$3|$(json_field "$out" achieved_rate)|$us|$(calc "$core * 1000 / $total")|$(json_field "$out" p50_us)|$(json_field "$out" p99_us)|$(json_field "$out" p999_us)|$(json_field "$out" p9999_us)|$(json_field "$out" max_us)|$(json_field "$out" other_status)|$vm")
  echo "  $1 @ $3/s: cpu ${us} µs/req  $out" >&2
}

SAT=()
for s in nginx bare multishot trackplane trackplane-normal trackplane-unbatched trackplane-epoll trackplane-nostore trackplane-sync; do
  echo "== $s" >&2
  start_server $s
  if [ $s = trackplane-sync ]; then
    # Every call waits for its group commit: one rate shows the cost.
    run_rate $s $PORT "${RATES%% *}"
    curl -s 127.0.0.1:19180/metrics > "$W/metrics-sync.txt" || true
    stop_server $s
    continue
  fi
  for r in $RATES; do run_rate $s $PORT "$r"; done
  if command -v wrk >/dev/null; then
    target="/i?adv=adv-1&pid=sku-1-7&uid=u1"
    rps=$(taskset -c $LOAD_CORE wrk -t1 -c$CONNS -d"${SECONDS_PER_RATE}s" "http://127.0.0.1:$PORT$target" | awk '/Requests\/sec/ {print $2}')
    SAT+=("$s|$rps")
    echo "  $s saturation (wrk -t1 -c$CONNS): $rps req/s" >&2
  fi
  if [ $s = trackplane ]; then
    RSS=$(awk '/VmHWM/ {print $2}' /proc/"${PIDS[$s]}"/status)
    curl -s 127.0.0.1:19180/metrics > "$W/metrics.txt" || true
  fi
  stop_server $s
done

metric() { awk -v m="$2" '$1==m {print $2}' "$1"; }
STATS=$(target/release/trackplane tail "$W/tp-data" --stats)
RECORDS=$(sed -nE 's/^  "records": ([0-9]+).*/\1/p' <<<"$STATS")
INVALID=$(sed -nE 's/^  "invalid": ([0-9]+).*/\1/p' <<<"$STATS")
RATIO=$(metric "$W/metrics.txt" trackplane_store_compression_ratio)
RAW=$(metric "$W/metrics.txt" trackplane_store_raw_bytes_total)
SYNC_COUNT=$(metric "$W/metrics-sync.txt" trackplane_store_fsync_seconds_count)
SYNC_SUM=$(metric "$W/metrics-sync.txt" trackplane_store_fsync_seconds_sum)
SYNC_RECORDS=$(metric "$W/metrics-sync.txt" trackplane_store_fsync_records_total)

out="bench/results/compare-$(date -u +%Y%m%d-%H%M).md"
{
  echo "# trackplane vs nginx vs bare responder — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${MIX:+MIX=\"$MIX\" }$(loadgen_env)bench/compare.sh \"$RATES\" $SECONDS_PER_RATE\`"
  machine_line
  echo "Servers pinned to core $SERVER_CORE, load generator ($(loadgen_line $CONNS)) to core $LOAD_CORE."
  echo "steal ms: the host's steal time during the row (both cores); kdamond ms: CPU of the VM's kdamond (DAMON memory monitor, not preemptible for ms at a time) during the row. Either shows up in that row's tail."
  echo "bare: monoio io_uring (COOP_TASKRUN) + httparse, answers the GIF and nothing else; multishot: the same on raw io_uring (multishot accept and receive, provided buffers, DEFER_TASKRUN), the floor of a custom event loop. trackplane: io_uring, as shipped (wake-ups batched only while the worker uses over 90% of its core: wake_batch 32, wake_linger_us 200; store idle-class while calm, view folded by the workers while idle, 8 KiB or 50 ms at a time); trackplane-normal: background_class = \"normal\"; trackplane-unbatched: wake_batch = 0; trackplane-epoll: --driver epoll; trackplane-nostore: records dropped after the ring; trackplane-sync: every event answered after its fdatasync."
  echo "trackplane: 1 worker, realistic mix (50 advertisers x 20k-product catalogs, 10% broken tags), records on disk."
  echo
  echo "CPU µs/req: the server's threads (schedstat). core µs/req: the time core $SERVER_CORE was busy (wall time less its /proc/stat idle and iowait). The kernel charges interrupt and softirq work (such as the IPI that wakes a sleeping server) to whichever thread is on the core, and to no process when it is idle, so a server idle between requests is not charged for work that one whose threads fill those gaps is; the core's busy time counts both alike."
  echo
  echo "| server | target/s | achieved/s | CPU µs/req | core µs/req | p50 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | non-2xx/3xx | steal ms | kdamond ms |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for row in "${ROWS[@]}"; do echo "|${row}|"; done
  echo
  echo "Ratios to nginx at the same rate (CPU per request; core per request; p99; p99.9):"
  echo
  for r in $RATES; do
    n=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v r="$r" '$1=="nginx" && $2==r')
    for s in bare multishot trackplane trackplane-normal trackplane-unbatched trackplane-epoll trackplane-nostore trackplane-sync; do
      x=$(printf '%s\n' "${ROWS[@]}" | awk -F'|' -v r="$r" -v s=$s '$1==s && $2==r')
      [ -n "$x" ] && [ -n "$n" ] || continue
      echo "- $s @ $r/s: CPU $(calc "$(cut -d'|' -f4 <<<"$x") / $(cut -d'|' -f4 <<<"$n")")x, core $(calc "$(cut -d'|' -f5 <<<"$x") / $(cut -d'|' -f5 <<<"$n")")x, p99 $(calc "$(cut -d'|' -f7 <<<"$x") / $(cut -d'|' -f7 <<<"$n")")x, p99.9 $(calc "$(cut -d'|' -f8 <<<"$x") / $(cut -d'|' -f8 <<<"$n")")x"
    done
  done
  if [ ${#SAT[@]} -gt 0 ]; then
    echo
    echo "Saturation, closed loop (\`wrk -t1 -c$CONNS -d${SECONDS_PER_RATE}s\`, one URL):"
    echo
    for row in "${SAT[@]}"; do echo "- ${row%%|*}: ${row##*|} req/s"; done
  fi
  echo
  echo "trackplane (io_uring run) wrote $RAW bytes of records at a compression ratio of $RATIO (zstd level $(target/release/trackplane default-config | sed -n "s/^zstd_level = //p"), 256 KiB blocks); peak RSS ${RSS:-?} KiB."
  echo "All runs stored $RECORDS records, $INVALID of them invalid (the mix breaks 10% of tags)."
  echo "trackplane-nostore is the same server with storage.discard_for_benchmarks: storage costs the difference to it."
  echo "trackplane-sync (every event type durability = \"sync\"): $SYNC_COUNT fdatasyncs, mean $(calc "$SYNC_SUM / ($SYNC_COUNT + 0.000001) * 1000") ms each, $(calc "$SYNC_RECORDS / ($SYNC_COUNT + 0.000001)") records per group commit."
} > "$out"
cat "$out"
echo "wrote $out" >&2
