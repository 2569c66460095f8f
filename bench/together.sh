#!/usr/bin/env bash
# Two trackplane binaries at the same time, both on core 0, loaded by one
# loadtest thread on core 1 (each server at RATE over 64 connections of its
# own, the two schedules interleaved): both meet the same VM in the same
# window, so B's CPU over A's drops the hour's drift that bench/ab.sh's
# turns only average out. On the reference VM a binary raced against itself
# came out at 0.984-1.018 over twelve windows while its CPU per request ran
# from 14.9 to 20.2 µs (bench/results/together-20261130-0625.md), and the
# median of ten windows told apart a change of about 1%; ab.sh's pairs
# there could not separate 5%. Run to run, though, a median of ten moved by
# up to 2 points for one change (0.978 and 0.995,
# bench/results/together-defer-20261130-1005.md): repeat a run before
# trusting a difference under 2%.
#
# What it does not measure: what each costs alone on a core. Each server's
# wake-ups may find the core busy with the other, which a server alone
# would find idle, and their latencies include waiting for each other. So a
# change found here is confirmed by bench/tails.sh against nginx, and this
# script's p99 is for a gross regression only.
#
# Each window also gives the worker thread's CPU and the other threads'
# (store, syncer, view, admin, catalogs: the process less its worker). A
# change to those threads is a few percent of the process, under a noisy
# VM's spread (17-25 µs per request from window to window on the AMD VM of
# bench/results/together-20261130-1246.md), but stands clear in their own
# column: there, two changes to them came out at 0.89-0.92 and 0.90-0.95
# in 10 of 10 windows, one that left them alone at 0.952-1.024 (median
# 1.000) over 8.
#
# The servers swap places in loadtest's order every window (which of them
# is sent to first), so neither has the head of the schedule for good.
# Being first is worth 1-5% of the CPU per request on the AMD VM, so each
# summary also gives pairs of windows (one with each side first), which
# cancel it: their spread was a third to a half of the windows'
# (bench/results/together-pairs-20261130-1805.md). Run an even number of
# windows. At the end it prints how well each side's records compressed.
# A_TOML and B_TOML, when set, are appended (printf-style) to that side's
# config, so one binary can race two settings. MIX, when set, is passed to
# loadtest's setup and run (e.g. MIX="--products 200000": 10 million
# products in the catalogs).
#
#   bench/together.sh A_BIN B_BIN [RATE] [WINDOWS] [SECONDS]
#   e.g. A_TOML='[server]\nwake_batch = 0\n' B_TOML='[server]\nwake_batch = 0\n' \
#        bench/together.sh /tmp/old/target/release/trackplane target/release/trackplane 20000 12 6
#        DRIVER=epoll bench/together.sh OLD NEW 20000 12 6   # both on the epoll driver
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
A=$(realpath "$1"); B=$(realpath "$2")
RATE=${3:-20000}; WINDOWS=${4:-12}; DUR=${5:-6}
ab_setup together
declare -A PORT=([A]=18095 [B]=18096) ADMIN=([A]=19195 [B]=19196) PID=() OUT=()

for k in A B; do
  mkdir -p "$W/data-$k"; cp -r "$W/mix/catalogs" "$W/data-$k/"
  bin=$A; [ $k = B ] && bin=$B
  RUST_LOG=warn taskset -c 0 "$bin" serve --config "$W/$k.toml" --listen 127.0.0.1:${PORT[$k]} \
    --admin-listen 127.0.0.1:${ADMIN[$k]} --data-dir "$W/data-$k" --workers 1 --driver "${DRIVER:-uring}" &
  PID[$k]=$!
  wait_port ${PORT[$k]}
done
# The worker thread's CPU so far, in ns (cpu_ns gives the whole process's).
worker_ns() { cut -d' ' -f1 "$(grep -l '^trackplane-w0$' /proc/"$1"/task/*/comm | sed 's/comm$/schedstat/')"; }
together_load 2 A B >/dev/null

ab_describe
echo "rate $RATE/s to each, $WINDOWS windows of ${DUR}s${MIX:+, mix options: $MIX}, driver ${DRIVER:-uring}"
echo
echo "| window | first | A CPU µs/req | B CPU µs/req | B/A | A worker | B worker | B/A worker | A other | B other | B/A other | A p99 µs | B p99 µs | steal ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for i in $(seq "$WINDOWS"); do
  a0=$(cpu_ns ${PID[A]}); b0=$(cpu_ns ${PID[B]}); wa0=$(worker_ns ${PID[A]}); wb0=$(worker_ns ${PID[B]}); s0=$(steal_ms)
  together_window "$i"
  a1=$(cpu_ns ${PID[A]}); b1=$(cpu_ns ${PID[B]}); wa1=$(worker_ns ${PID[A]}); wb1=$(worker_ns ${PID[B]})
  na=$(json_field "${OUT[A]}" completed); nb=$(json_field "${OUT[B]}" completed)
  awk -v i="$i" -v f="$FIRST" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v wa=$((wa1 - wa0)) -v wb=$((wb1 - wb0)) \
    -v na="$na" -v nb="$nb" -v pa="$(json_field "${OUT[A]}" p99_us)" -v pb="$(json_field "${OUT[B]}" p99_us)" -v st=$(( $(steal_ms) - s0 )) \
    'BEGIN { x = a / 1000 / na; y = b / 1000 / nb; u = wa / 1000 / na; v = wb / 1000 / nb
             printf "| %d | %s | %.2f | %.2f | %.3f | %.2f | %.2f | %.3f | %.2f | %.2f | %.3f | %s | %s | %d |\n", i, f, x, y, y / x, u, v, v / u, x - u, y - v, (y - v) / (x - u), pa, pb, st }'
done | tee "$W/rows"
# What each side's blocks came to on disk (a change to the store trades
# CPU against this).
echo
for k in A B; do
  ratio=$(admin_metric ${ADMIN[$k]} trackplane_store_compression_ratio)
  raw=$(admin_metric ${ADMIN[$k]} trackplane_store_raw_bytes_total)
  out=$(admin_metric ${ADMIN[$k]} trackplane_store_written_bytes_total)
  awk -v k=$k -v x="$ratio" -v r="$raw" -v o="$out" 'BEGIN { if (o > 0) printf "%s: records compressed %.2f:1 (%d MB into %d MB)\n", k, x, r / 1e6, o / 1e6 }'
done
kill -TERM ${PID[A]} ${PID[B]}; wait ${PID[A]} ${PID[B]} 2>/dev/null || true
echo
ratio_summary "$W/rows" 6 "process CPU"
ratio_summary "$W/rows" 9 "worker CPU"
ratio_summary "$W/rows" 12 "other threads' CPU"
