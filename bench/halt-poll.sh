#!/usr/bin/env bash
# Runs a command with a KVM guest's idle cores polling for up to NS
# nanoseconds before they halt (`guest_halt_poll_ns` of the cpuidle
# `haltpoll` driver), and puts the old value back however the command
# ends. A diagnostic, not a tuning: it asks how much of each server's CPU
# per request is the guest's halt, whose wake-up leaves the guest (at
# 20k/s a third of every server's, bench/results/halt-poll-*.md). The results files
# name the value in their Machine line (bench/lib.sh, machine_line).
# Not under bench/profile.sh: with `perf record` sampling the core every
# 200 µs the servers' CPU stayed at its level with halts (2026-12-02), so
# a profile does not show the polling state.
# Needs root and the haltpoll driver (a KVM guest booted with it).
#
#   bench/halt-poll.sh NS COMMAND...
#   e.g. SERVERS="nginx trackplane bare-worker" MIX="--kinds impressions" \
#          bench/halt-poll.sh 200000 bench/tails.sh 20000 3 10 1000
set -euo pipefail
P=/sys/module/haltpoll/parameters/guest_halt_poll_ns
[ $# -ge 2 ] || { echo "usage: bench/halt-poll.sh NS COMMAND..."; exit 2; }
[ "$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null)" = haltpoll ] && [ -w $P ] ||
  { echo "halt-poll: needs the cpuidle haltpoll driver and root ($P)"; exit 1; }
OLD=$(cat $P)
trap 'echo "$OLD" > $P' EXIT
echo "$1" > $P
shift
"$@"
