#!/usr/bin/env bash
# Whether storage keeps up when the core is saturated: trackplane as
# shipped (`background_class = "idle"`: the store's passes SCHED_IDLE
# while calm) and trackplane-normal (always the normal
# scheduling class) take turns, ROUNDS times, at a rate above
# what one core answers, pinned and loaded as in compare.sh. Per window:
# the rate achieved, p99, the server's CPU µs per answered request, events
# answered but refused by a full ring (must stay 0), the store's lifts
# back to the normal class, and view copies lost to a full view ring
# (lossy by design: a saturated worker folds only a ring past a quarter). Writes bench/results/saturate-<date>.md.
#
#   bench/saturate.sh [RATE] [ROUNDS] [SECONDS]
#   e.g. bench/saturate.sh 160000 3 10
# SERVERS="trackplane trackplane-epoll" races others (bench/lib.sh names
# them; BINARY_old=/path adds trackplane-old, another build).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATE=${1:-160000}; ROUNDS=${2:-3}; SECONDS_PER_WINDOW=${3:-10}
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
GIVEN=${SERVERS:+SERVERS=\"$SERVERS\" }
SERVERS=${SERVERS:-"trackplane trackplane-normal"}
race_setup saturate
declare -A PIDS

metric() { admin_metric 19180 "$1"; } # NAME, from the running trackplane

OUT="bench/results/saturate-$(date -u +%Y%m%d-%H%M).md"
ROWS=()
for round in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    start_server $s
    before=$(cpu_ns ${PIDS[$s]})
    out=$(taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:"$PORT" --rate "$RATE" --connections $CONNS \
      --duration "$SECONDS_PER_WINDOW" --warmup 0 --json)
    after=$(cpu_ns ${PIDS[$s]})
    refused=$(metric trackplane_events_refused_total)
    lifts=$(metric 'trackplane_background_lifts_total{thread="store"}')
    lost=$(metric 'trackplane_view_dropped_total{where="ring"}')
    stop_server $s
    done_=$(json_field "$out" completed)
    us=$(awk "BEGIN {printf \"%.2f\", ($after - $before) / 1000 / $done_}")
    row="$round|$s|$(json_field "$out" achieved_rate)|$(json_field "$out" p99_us)|$us|$refused|$lifts|$lost"
    ROWS+=("$row")
    echo "  $row" >&2
  done
done

{
  echo "# Saturated at $RATE/s offered, $ROUNDS rounds of $SECONDS_PER_WINDOW s — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${GIVEN}bench/saturate.sh $RATE $ROUNDS $SECONDS_PER_WINDOW\`"
  machine_line
  echo "Every thread of the server on core 0, loadtest (open loop, 64 connections) on core 1; realistic mix, records on disk."
  case " $SERVERS " in
    *" trackplane-normal "*) echo "trackplane: background_class = \"idle\" (the default); -normal: \"normal\". Run as root, so the way back from SCHED_IDLE is allowed." ;;
    *) echo "trackplane: background_class = \"idle\" (the default). Run as root, so the way back from SCHED_IDLE is allowed." ;;
  esac
  echo
  echo "| round | server | achieved req/s | p99 µs | CPU µs/req | events refused | store lifts | view copies lost |"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${ROWS[@]}"; do echo "|$r|"; done
} > "$OUT"
cat "$OUT"
echo "wrote $OUT"
