#!/usr/bin/env bash
# Where trackplane's CPU goes, by thread: runs trackplane alone (one worker,
# every thread on core 0, as bench/compare.sh does) with the loadtest mix
# at one fixed rate (load on core 1), and prints each thread's CPU µs and
# context switches per request, from /proc/PID/task/*/schedstat and
# /proc/PID/task/*/status over the measured window, and how long each
# thread was runnable but waiting for the core (schedstat's run-queue
# time): for the worker, the scheduling delay its requests saw.
#
#   bench/threads.sh [RATE] [SECONDS] [EXTRA_TOML]
#   e.g. bench/threads.sh 50000 8 '[storage]\nzstd_level = 3\n'
#   TRACKPLANE=/path/to/other/trackplane bench/threads.sh 50000 8
#
# BG_CORE=1 moves the store's and the syncer's threads to core 1
# (the load's) once the server is up: not a fair race against anything,
# but it shows what sharing the worker's core costs each side.
#   BG_CORE=1 bench/threads.sh 50000 8
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATE=${1:-50000}; DUR=${2:-8}; EXTRA=${3:-}
W=$(mktemp -d /tmp/trackplane-threads.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cargo build --release --quiet -p trackplane -p trackplane-loadtest --bin trackplane --bin loadtest --bin bare-responder --bin bare-multishot
LT=target/release/loadtest
$LT setup --dir "$W/mix" >/dev/null
mkdir -p "$W/data"; cp -r "$W/mix/catalogs" "$W/data/"
cp "$W/mix/trackplane.toml" "$W/tp.toml"
[ -n "$EXTRA" ] && printf "$EXTRA" >> "$W/tp.toml"
RUST_LOG=warn taskset -c 0 "${TRACKPLANE:-target/release/trackplane}" serve --config "$W/tp.toml" \
  --listen 127.0.0.1:18090 --admin-listen 127.0.0.1:19190 --data-dir "$W/data" --workers 1 --driver uring &
PID=$!
wait_port 18090
if [ -n "${BG_CORE:-}" ]; then
  for t in /proc/$PID/task/*; do
    case $(cat "$t/comm") in
      trackplane-stor|trackplane-sync) taskset -p -c "$BG_CORE" "${t##*/}" >/dev/null ;;
    esac
  done
fi
# Warm up, then measure.
taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "$RATE" --connections 64 --duration 2 --warmup 0 --json >/dev/null
snap() { for t in /proc/$PID/task/*; do echo "$(cat "$t/comm") $(cut -d' ' -f1,2 "$t/schedstat") $(awk '/ctxt_switches/ {s+=$2} END {print s}' "$t/status")"; done | sort; }
snap > "$W/before"
out=$(taskset -c 1 $LT run --addr 127.0.0.1:18090 --rate "$RATE" --connections 64 --duration "$DUR" --warmup 0 --json)
snap > "$W/after"
echo "$out"
n=$(json_field "$out" completed)
join "$W/before" "$W/after" | awk -v n="$n" -v secs="$DUR" '{d=$5-$2; w=$6-$3; c=$7-$4; t+=d; s+=c; printf "%-22s %7.3f µs/req %6.3f switches/req %7.2f ms/s waiting for the core\n", $1, d/1000/n, c/n, w/1e6/secs}
  END {printf "%-22s %7.3f µs/req %6.3f switches/req\n", "all threads", t/1000/n, s/n}'
kill -TERM $PID; wait $PID 2>/dev/null || true
