#!/usr/bin/env bash
# What each server asks of the kernel on its core, counted per request:
# system calls, context switches, wake-ups, interrupts, kernel timers
# started (and for whom: `hrtimer_start` by the timer's function) and
# writes to the timer's MSR (on a VM each one leaves the guest). A count
# is exact where a sampled profile (bench/profile.sh) is not, and says
# what a server does that its floor or nginx does not.
# The servers SERVERS names (as in bench/tails.sh) take turns on core 0
# under the same fixed-rate load (core 1); `perf stat` and `perf record`
# of tracepoints on core 0 for SECONDS each, from 2 s into the load. The
# swapper's rows are the idle loop's: the tick stopped and started again
# around each sleep.
#
#   bench/kernel-events.sh [RATE] [SECONDS]
#   e.g. SERVERS="nginx trackplane-unbatched bare-worker" MIX="--kinds impressions" bench/kernel-events.sh 20000 5
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v perf >/dev/null || { echo "kernel-events: needs perf (apt-get install linux-perf)"; exit 1; }
RATE=${1:-20000}; SECS=${2:-5}
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
SERVERS=${SERVERS:-nginx trackplane-unbatched bare-worker}
race_setup kernel-events
declare -A PIDS
COUNTED=raw_syscalls:sys_enter,context-switches,sched:sched_wakeup,power:cpu_idle,irq_vectors:call_function_single_entry,irq_vectors:reschedule_entry,irq_vectors:local_timer_entry,irq:softirq_entry,io_uring:io_uring_cqring_wait,io_uring:io_uring_local_work_run,timer:hrtimer_start,msr:write_msr,page-faults

OUT="bench/results/kernel-events-$(date -u +%Y%m%d-%H%M).md"
REPORT=$W/report.md
: > "$REPORT"
for s in $SERVERS; do
  start_server $s
  taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:"$PORT" --rate "$RATE" --connections $CONNS \
    --duration $((2 * SECS + 3)) --warmup 1 --json ${MIX:-} > "$W/$s.json" &
  load=$!
  sleep 2
  before=$(cpu_ns ${PIDS[$s]})
  taskset -c $LOAD_CORE perf stat -x, -C $SERVER_CORE -e $COUNTED -- sleep "$SECS" 2> "$W/$s.stat"
  after=$(cpu_ns ${PIDS[$s]})
  taskset -c $LOAD_CORE perf record -q -C $SERVER_CORE -e timer:hrtimer_start -e msr:write_msr \
    -o "$W/$s.data" -- sleep "$SECS" 2>/dev/null
  wait $load
  stop_server $s
  reqs=$((RATE * SECS))
  {
    echo "## $s"
    echo
    echo "CPU of the server's threads (schedstat): $(awk -v a="$before" -v b="$after" -v r=$reqs 'BEGIN {printf "%.2f", (b - a) / 1000 / r}') µs/req; achieved rate $(json_field "$(cat "$W/$s.json")" achieved_rate)/s."
    echo
    echo "| event on core 0 | per request |"
    echo "|---|---|"
    awk -F, -v r=$reqs '$1 ~ /^[0-9]/ {printf "| `%s` | %.3f |\n", $3, $1 / r}' "$W/$s.stat"
    echo
    echo "Timers started and timer MSR writes, by thread (the timer's function; the MSR's number), per request, those over 0.001:"
    echo
    echo "| per request | thread | what |"
    echo "|---|---|---|"
    perf script -i "$W/$s.data" -F comm,event,trace 2>/dev/null \
      | sed -E 's/^ *//; s/ +/ /g; s/hrtimer=[0-9a-fx]+ //; s/ (expires|softexpires|now)=[0-9]+//g; s/ mode=.*//; s/, value [0-9a-fx]+//' \
      | sort | uniq -c \
      | awk -v r=$reqs '$1 / r >= 0.001 { c = $1; t = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "%.3f|%s|%s\n", c / r, t, $0 }' \
      | sort -t'|' -k1 -rn | awk -F'|' '{printf "| %s | %s | `%s` |\n", $1, $2, $3}'
    echo
  } >> "$REPORT"
  echo "  $s done" >&2
done

{
  echo "# Kernel events per request on the server's core at $RATE/s — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${MIX:+MIX=\"$MIX\" }SERVERS=\"$SERVERS\" bench/kernel-events.sh $RATE $SECS\`"
  echo
  echo "Build: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src vendor Cargo.lock || echo ', with uncommitted changes to src/ or vendor/')"
  echo
  machine_line
  echo
  echo "Each server alone on core 0, loadtest (open loop, $CONNS connections) on core 1. \`perf stat -C 0\` for $SECS s from 2 s into the load, then \`perf record -C 0\` of \`timer:hrtimer_start\` and \`msr:write_msr\` for $SECS s more; per request = count / ($RATE x $SECS). Counts are of the whole core: the idle loop (swapper) and anything else that ran there too."
  echo
  cat "$REPORT"
} > "$OUT"
cat "$OUT"
echo "wrote $OUT"
