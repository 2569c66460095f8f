#!/usr/bin/env bash
# User-space instructions per request, by server and thread: each server
# SERVERS names (as in bench/tails.sh: nginx, trackplane,
# trackplane-unbatched, bare-worker, BINARY_<name> builds...) runs under
# valgrind's callgrind, takes the impressions-only mix at a low fixed rate
# for SECONDS, and is counted over that window only. Prints each thread's
# instructions per request and, for each of its busy threads, the
# functions of its own code (and monoio's, httparse's, zstd's) that cost
# the most, inclusive, per request.
#
# Why: every timed race on these shared VMs moves by several percent from
# window to window (docs/performance-log.md), while an instruction count
# of the same binary and input moves little from run to run: under 0.1%
# for a worker, under 1% for the store and the view, whose
# passes fall differently in each run.
# It counts work, not time: cache misses, system calls and the kernel's
# part are not in it (bench/profile.sh and bench/tails.sh measure those),
# so a cut it shows is a cut in work that a race must still confirm.
# Under valgrind a server runs some 50 times slower, one thread at a time,
# so the rate is low (1000/s) and the waits between requests differ from a
# real run's: per-wake-up costs weigh more here than at 50k/s.
#
#   bench/instructions.sh [RATE] [SECONDS]
#   e.g. SERVERS="trackplane-unbatched bare-worker" bench/instructions.sh 1000 10
#        BINARY_old=/tmp/old/trackplane SERVERS="trackplane-old trackplane" bench/instructions.sh
#        KEEP=/tmp/cg bench/instructions.sh   # keeps callgrind's files for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v valgrind >/dev/null || { echo "instructions: needs valgrind (apt-get install valgrind)"; exit 1; }
RATE=${1:-1000}; SECS=${2:-10}
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
SERVERS=${SERVERS:-nginx trackplane trackplane-unbatched bare-worker}
MIX=${MIX:---kinds impressions}
PORT_WAIT_S=60
# Threads doing at least TABLE_MIN instructions per request get a table of
# their TOP costliest functions.
TABLE_MIN=${TABLE_MIN:-1000}
TOP=${TOP:-20}
race_setup instructions
# nginx as one process (the master does the worker's work), so that
# callgrind counts it without following a fork.
sed -i '1i master_process off;' "$W/nginx.conf"
declare -A PIDS

OUT="bench/results/instructions-$(date -u +%Y%m%d-%H%M).md"
REPORT=$W/report.md
: > "$REPORT"
for s in $SERVERS; do
  mkdir -p "$W/cg-$s"
  WRAP="valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=$W/cg-$s/out.%p"
  start_server "$s" 2>/dev/null
  # valgrind execs the server (taskset execs valgrind), and nginx runs as
  # one process: the pids start_server found are the ones counted.
  pids=${PIDS[$s]}
  taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:"$PORT" --rate "$RATE" --connections $CONNS \
    --duration 2 --warmup 0 --json $MIX > /dev/null
  # Thread names, in creation order (callgrind numbers threads the same
  # way), read once the warm-up has made every thread start.
  for p in $pids; do
    for t in $(ls /proc/"$p"/task | sort -n); do cat /proc/"$p"/task/"$t"/comm; done > "$W/cg-$s/names.$p"
  done
  for p in $pids; do callgrind_control -z "$p" > /dev/null 2>&1; done
  out=$(taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:"$PORT" --rate "$RATE" --connections $CONNS \
    --duration "$SECS" --warmup 0 --json $MIX)
  for p in $pids; do callgrind_control -d "$p" > /dev/null 2>&1; done
  n=$(json_field "$out" completed)
  # The counts are dumped; the server has nothing left to write that this
  # script reads. Killed, not stopped: a process under valgrind may not act
  # on SIGTERM while it waits in io_uring_enter (bare-responder did not).
  kill -KILL $pids 2>/dev/null || true
  for p in $pids; do
    wait "$p" 2>/dev/null || true
    while kill -0 "$p" 2>/dev/null; do sleep 0.2; done
  done
  {
    echo "## $s"
    echo
    echo "$n requests. Instructions per request, by thread:"
    echo
    big=()
    for p in $pids; do
      for f in "$W/cg-$s"/out."$p".1-*; do
        [ -e "$f" ] || continue
        i=$(sed -nE 's/^summary: ([0-9]+)/\1/p' "$f")
        tid=${f##*-}; tid=$((10#$tid))
        name=$(sed -n "${tid}p" "$W/cg-$s/names.$p")
        [ "$tid" = 1 ] && name=main
        [ "$i" -gt 0 ] && printf '    %-18s %8.0f\n' "$name" "$((i / n))"
        [ "$((i / n))" -ge "$TABLE_MIN" ] && big+=("$name=$f")
      done
    done
    for t in "${big[@]}"; do
      echo
      echo "Thread ${t%%=*}, its costliest functions, inclusive, per request:"
      echo
      # callgrind_annotate lists a function more than once: under its whole
      # path with its whole inclusive cost, under its object file with its
      # own source file's part, and under each inlined callee's source file
      # with that part. The largest of them is the whole.
      callgrind_annotate --inclusive=yes --threshold=100 "${t#*=}" 2>/dev/null \
        | awk -v n="$n" 'match($0, /^ *[0-9,]+ \( *[0-9.]+%\)  +/) {
            c=$1; gsub(",", "", c); c+=0; f=substr($0, RLENGTH + 1)
            sub(/^[^:]*:/, "", f); sub(/ \[[^]]*\]$/, "", f); sub(/ \([0-9,]+x\)$/, "", f)
            if (f ~ /(trackplane|monoio|httparse|ngx_|bare_responder|ZSTD_|^mem|^__mem)/ && c > most[f]) most[f]=c }
          END { for (f in most) printf "%10.0f  %s\n", most[f]/n, f }' \
        | sort -rn | sed -n "1,${TOP}s/^/    /p"
    done
    echo
  } >> "$REPORT"
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp -r "$W/cg-$s" "$KEEP/"
done

{
  echo "# User-space instructions per request — $(date -u +'%Y-%m-%d %H:%M') UTC"
  echo
  machine_line
  echo "Build: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' with uncommitted changes'); valgrind $(valgrind --version)"
  echo
  echo "Command: SERVERS=\"$SERVERS\" MIX=\"$MIX\" bench/instructions.sh $RATE $SECS"
  echo
  echo "Each server under callgrind, $CONNS connections at ${RATE}/s for ${SECS} s after 2 s of"
  echo "warm-up, counted over that window only."
  echo
  cat "$REPORT"
} | tee "$OUT"
echo "written: $OUT"
