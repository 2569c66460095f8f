#!/usr/bin/env bash
# Where each server's time on its core goes, kernel against user space:
# the servers SERVERS names (as in bench/tails.sh: nginx, trackplane,
# trackplane-unbatched, bare-worker, ...) take turns on core 0 under the
# same fixed-rate load (core 1), and `perf record -C 0` samples the core
# for SECONDS in the middle of each window. Prints, per server and thread,
# µs per request in the kernel and in user space, and the user-space and
# kernel symbols of the server's busiest thread that cost the most, in ns
# per request.
# A server whose kernel time matches its floor's (bare-worker for
# trackplane's unbatched workers) spends its extra in its own code, and
# the symbols say where.
#
# perf here samples with the software clock (`cpu-clock`: the VM has no
# PMU), which cannot sample where interrupts are off and so undercounts
# every server alike, by a third against schedstat on the AMD VM of
# 2026-12-02; the ratio is printed (schedstat µs over sampled µs) so that
# rows can be scaled. Samples of a thread that is switched out often land
# where interrupts come back on (`irqentry_exit_to_user_mode`,
# `finish_task_switch`): read background threads by bench/threads.sh.
# Run to run a server's kernel time moved by up to 2 µs per request on
# that VM, its user time far less: name each server twice or more
# (SERVERS="trackplane-unbatched bare-worker trackplane-unbatched
# bare-worker") before reading a difference in the kernel.
#
#   bench/profile.sh [RATE] [SECONDS]
#   e.g. SERVERS="nginx trackplane-unbatched bare-worker" MIX="--kinds impressions" bench/profile.sh 50000 6
#        THREAD=trackplane-stor SERVERS=trackplane-unbatched bench/profile.sh   # another thread's symbols
#        LOADGEN=wrk2 WRK2=/path/to/wrk2 SERVERS="nginx trackplane" bench/profile.sh 50000 6   # under wrk2's bursts
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v perf >/dev/null || { echo "profile: needs perf (apt-get install linux-perf)"; exit 1; }
RATE=${1:-50000}; SECS=${2:-6}
FREQ=4999
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
SERVERS=${SERVERS:-nginx trackplane-unbatched bare-worker}
race_setup profile
loadgen_setup loadtest $CONNS
declare -A PIDS

OUT="bench/results/profile-$(date -u +%Y%m%d-%H%M).md"
REPORT=$W/report.md
: > "$REPORT"
for s in $SERVERS; do
  start_server $s
  fixed_rate "$PORT" "$RATE" $((SECS + 3)) $CONNS > "$W/$s.json" &
  load=$!
  sleep 2
  before=$(cpu_ns ${PIDS[$s]})
  perf record -q -C $SERVER_CORE -F $FREQ -o "$W/$s.data" -- sleep "$SECS" 2>/dev/null
  after=$(cpu_ns ${PIDS[$s]})
  # The server's own threads, by name, while they run.
  comms=$(for p in ${PIDS[$s]}; do cat /proc/"$p"/task/*/comm 2>/dev/null || true; done | sort -u | tr '\n' ' ')
  wait $load
  stop_server $s
  perf script -i "$W/$s.data" -F comm,ip,sym,dso 2>/dev/null > "$W/$s.script"
  reqs=$((RATE * SECS))
  {
    echo "## $s"
    echo
    echo "Requests in the sampled window: $reqs (the rate times $SECS s; achieved over the whole load: $(json_field "$(cat "$W/$s.json")" achieved_rate)/s)."
    echo
    echo "| thread | kernel µs/req | user µs/req | all µs/req |"
    echo "|---|---|---|---|"
    awk -v f=$FREQ -v r=$reqs '
      { k = ($0 ~ /kernel\.kallsyms|\[unknown\] \(\[unknown\]\)$/) ? 1 : 0
        n[$1]++; if (k) kn[$1]++; else un[$1]++ }
      END { for (c in n) if (n[c] * 1e6 / f / r >= 0.01)
              printf "| %s | %.2f | %.2f | %.2f |\n", c, kn[c] * 1e6 / f / r, un[c] * 1e6 / f / r, n[c] * 1e6 / f / r }' \
      "$W/$s.script" | sort -t'|' -k5 -rn
    echo
    sampled=$(awk -v f=$FREQ -v cs="$comms" 'BEGIN { split(cs, a, " "); for (i in a) want[a[i]] = 1 }
      want[$1] { n++ } END { printf "%.0f", n * 1e9 / f }' "$W/$s.script")
    echo "The server's threads ($comms): sampled $(awk "BEGIN {printf \"%.2f\", $sampled / 1000 / $reqs}") µs/req, schedstat $(awk "BEGIN {printf \"%.2f\", ($after - $before) / 1000 / $reqs}") µs/req over the same window."
    echo
    # The symbol tables are the busiest thread's (trackplane's worker): the
    # others' samples gather where their switches land (see above). awk,
    # not head, cuts them: head's early exit fails the pipe under pipefail.
    # THREAD names another (as /proc's comm has it, e.g. trackplane-stor).
    busiest=${THREAD:-$(awk -v cs="$comms" 'BEGIN { split(cs, a, " "); for (i in a) want[a[i]] = 1 }
      want[$1] { n[$1]++ } END { for (c in n) if (n[c] > m) { m = n[c]; b = c }; print b }' "$W/$s.script")}
    echo "User-space symbols of $busiest, sampled ns per request:"
    echo
    echo "| ns/req | symbol |"
    echo "|---|---|"
    awk -v f=$FREQ -v r=$reqs -v b="$busiest" '
      $1 == b && $0 !~ /kernel\.kallsyms/ { $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ \([^)]*\)$/, ""); n[$0]++ }
      END { for (k in n) printf "%.1f|%s\n", n[k] * 1e9 / f / r, k }' "$W/$s.script" \
      | sort -t'|' -k1 -rn | awk 'NR <= 25' | awk -F'|' '{printf "| %s | `%s` |\n", $1, $2}'
    echo
    echo "Kernel symbols of $busiest, sampled ns per request:"
    echo
    echo "| ns/req | symbol |"
    echo "|---|---|"
    awk -v f=$FREQ -v r=$reqs -v b="$busiest" '
      $1 == b && $0 ~ /kernel\.kallsyms/ { $1 = ""; $2 = ""; sub(/^ +/, ""); sub(/ \([^)]*\)$/, ""); n[$0]++ }
      END { for (k in n) printf "%.1f|%s\n", n[k] * 1e9 / f / r, k }' "$W/$s.script" \
      | sort -t'|' -k1 -rn | awk 'NR <= 15' | awk -F'|' '{printf "| %s | `%s` |\n", $1, $2}'
    echo
  } >> "$REPORT"
  echo "  $s done" >&2
done

{
  echo "# Where the core's time goes, kernel and user, at $RATE/s — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${MIX:+MIX=\"$MIX\" }$(loadgen_env)SERVERS=\"$SERVERS\" bench/profile.sh $RATE $SECS\`"
  echo
  echo "Build: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src vendor Cargo.lock || echo ', with uncommitted changes to src/')"
  echo
  machine_line
  echo
  echo "Each server alone on core 0, load generator ($(loadgen_line $CONNS)) on core 1; \`perf record -C 0 -F $FREQ\` (cpu-clock) for $SECS s from 2 s into the load. µs per request = samples / $FREQ / requests."
  echo
  cat "$REPORT"
} > "$OUT"
cat "$OUT"
echo "wrote $OUT"
