#!/usr/bin/env bash
# Two floors at the same time, both on core 0, loaded by one loadtest
# thread on core 1, as bench/together.sh races two trackplane builds: what
# a way of driving the kernel saves, with nothing of trackplane's around
# it. Each side is one of:
#   bare-coop   monoio, COOP_TASKRUN + SINGLE_ISSUER (bench/compare.sh's bare)
#   bare-defer  the same with DEFER_TASKRUN
#   bare-worker the same, with receives that arm poll first and answers
#               sent by send(2) first: trackplane's unbatched workers' I/O
#   bare-plain  monoio on a ring with no setup flags
#   multishot   raw io_uring: multishot receive, provided buffers, DEFER_TASKRUN
#   multishot-send    the same, answers sent by send(2) first
#   multishot-bufring the same, buffers given back through a buffer ring
#   multishot-fused   the same, answers sent through the ring and waited
#                     past in the same call (bare-multishot's `fused`)
#
#   bench/floors-together.sh A B [RATE] [WINDOWS] [SECONDS]
#   e.g. bench/floors-together.sh bare-coop multishot 20000 10 6
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
A=$1; B=$2; RATE=${3:-20000}; WINDOWS=${4:-10}; DUR=${5:-6}
cargo build --release --quiet -p trackplane-loadtest --bin loadtest --bin bare-responder --bin bare-multishot
LT=target/release/loadtest
declare -A PORT=([A]=18085 [B]=18086) PID=() OUT=()
W=$(mktemp -d /tmp/trackplane-floors.XXXXXX)
trap 'kill ${PID[A]:-} ${PID[B]:-} 2>/dev/null || true; rm -rf "$W"' EXIT
for k in A B; do
  kind=$A; [ $k = B ] && kind=$B
  case $kind in
    bare-coop) cmd="target/release/bare-responder 127.0.0.1:${PORT[$k]} uring-coop" ;;
    bare-defer) cmd="target/release/bare-responder 127.0.0.1:${PORT[$k]} uring-defer" ;;
    bare-worker) cmd="target/release/bare-responder 127.0.0.1:${PORT[$k]} uring-worker" ;;
    bare-plain) cmd="target/release/bare-responder 127.0.0.1:${PORT[$k]} uring" ;;
    multishot) cmd="target/release/bare-multishot 127.0.0.1:${PORT[$k]}" ;;
    multishot-send) cmd="target/release/bare-multishot 127.0.0.1:${PORT[$k]} send-now" ;;
    multishot-bufring) cmd="target/release/bare-multishot 127.0.0.1:${PORT[$k]} send-now,bufring" ;;
    multishot-fused) cmd="target/release/bare-multishot 127.0.0.1:${PORT[$k]} fused,bufring" ;;
    *) echo "unknown floor: $kind" >&2; exit 2 ;;
  esac
  taskset -c 0 $cmd 2>/dev/null &
  PID[$k]=$!
  wait_port ${PORT[$k]}
done
together_load 2 A B >/dev/null

echo "A: $A"
echo "B: $B"
echo "rate $RATE/s to each, $WINDOWS windows of ${DUR}s"
echo
echo "| window | first | A CPU µs/req | B CPU µs/req | B/A | A p99 µs | B p99 µs | steal ms |"
echo "|---|---|---|---|---|---|---|---|"
for i in $(seq "$WINDOWS"); do
  a0=$(cpu_ns ${PID[A]}); b0=$(cpu_ns ${PID[B]}); s0=$(steal_ms)
  together_window "$i"
  a1=$(cpu_ns ${PID[A]}); b1=$(cpu_ns ${PID[B]})
  awk -v i="$i" -v f="$FIRST" -v a=$((a1 - a0)) -v b=$((b1 - b0)) \
    -v na="$(json_field "${OUT[A]}" completed)" -v nb="$(json_field "${OUT[B]}" completed)" \
    -v pa="$(json_field "${OUT[A]}" p99_us)" -v pb="$(json_field "${OUT[B]}" p99_us)" -v st=$(( $(steal_ms) - s0 )) \
    'BEGIN { x = a / 1000 / na; y = b / 1000 / nb
             printf "| %d | %s | %.2f | %.2f | %.3f | %s | %s | %d |\n", i, f, x, y, y / x, pa, pb, st }'
done | tee "$W/rows"
echo
ratio_summary "$W/rows" 6 CPU
