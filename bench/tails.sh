#!/usr/bin/env bash
# How often each server keeps p99 under a bound at one fixed rate, over
# many short windows instead of one: on a VM whose tail varies 2-5x from
# one run to the next, a single p99 says little. nginx (empty_gif),
# trackplane as shipped and trackplane with `wake_batch = 0` take turns
# (or the servers SERVERS names: any of nginx, trackplane,
# trackplane-unbatched, trackplane-normal with `background_class = "normal"`,
# the floors bare and multishot of compare.sh, bare-worker, the bare
# responder driving the kernel as trackplane's unbatched workers do, and
# bare-batched, the same with the default config's batched wake-ups),
# ROUNDS times, each pinned and loaded as in compare.sh (server on core 0,
# loadtest on core 1, realistic mix); every window is a fresh start with 2 s
# of warm-up, with nothing the server before it left dirty still to be
# written back (stop_server syncs). Prints each window and, per server, how many met the bound.
# Then each server against the first one named, round by round (a ratio
# within a round leaves out the drift between rounds). Writes
# bench/results/tails-<date>.md.
#
#   bench/tails.sh [RATE] [ROUNDS] [SECONDS] [BOUND_US]
#   e.g. bench/tails.sh 50000 12 10 1000
#        SERVERS="nginx trackplane trackplane-normal" bench/tails.sh 20000 12 10 1000
#        VARIANT_b8='[server]\nwake_batch = 8\n' SERVERS="nginx trackplane trackplane-b8" bench/tails.sh
#        BINARY_old=/tmp/old/trackplane SERVERS="nginx trackplane trackplane-old" bench/tails.sh   # another build
#        MIX="--kinds impressions" bench/tails.sh 50000 3 10 1000   # pixels only
#        KDAMOND_SPLIT=1 bench/tails.sh 50000 8 8 1000   # also p99 and p99.9 outside kdamond's runs
#        STALL_SPLIT=1 bench/tails.sh 20000 8 8 1000    # also p99 and p99.9 outside the VM's stalls
#        LOADGEN=wrk2 WRK2=/path/to/wrk2 bench/tails.sh 20000 6 10 1000   # under wrk2 (loadgen_setup in lib.sh)
# With KDAMOND_SPLIT=1 each window also gives its p99 and p99.9 over the
# answers due outside this VM's kdamond runs and what they widen to
# (tails_outside_kdamond in bench/lib.sh): the part of the tail that is
# not this VM's memory monitor.
# With STALL_SPLIT=1 (not with KDAMOND_SPLIT) the same three columns come
# from loadtest's own split at the spans in which some answer waited at
# least STALL_US (500) µs (loadtest/src/stalls.rs): every stall of the
# VM, kdamond's or the host's, without perf. A server's own stalls would
# show as a larger share left out than its rivals'.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATE=${1:-50000}; ROUNDS=${2:-12}; SECONDS_PER_WINDOW=${3:-10}; BOUND=${4:-1000}
CONNS=64
SERVER_CORE=0
LOAD_CORE=1
SERVERS=${SERVERS:-nginx trackplane trackplane-unbatched}
[ -n "${KDAMOND_SPLIT:-}" ] && [ -n "${STALL_SPLIT:-}" ] && { echo "tails.sh: KDAMOND_SPLIT or STALL_SPLIT, not both"; exit 1; }
SPLIT=${KDAMOND_SPLIT:+kdamond}${STALL_SPLIT:+stalls}
race_setup tails
loadgen_setup loadtest $CONNS
[ "$LOADGEN" = wrk2 ] && [ -n "$SPLIT" ] && { echo "tails.sh: the splits need loadtest's trace, not wrk2"; exit 1; }
declare -A PIDS

OUT="bench/results/tails-$(date -u +%Y%m%d-%H%M).md"
ROWS=()
for round in $(seq "$ROUNDS"); do
  for s in $SERVERS; do
    start_server $s
    steal0=$(steal_ms); kd0=$(kdamond_ms); mark=$(core_mark $SERVER_CORE)
    [ -n "${KDAMOND_SPLIT:-}" ] && kdamond_runs_start "$W/kdamond.data"
    before=$(cpu_ns ${PIDS[$s]})
    out=$(fixed_rate "$PORT" "$RATE" "$SECONDS_PER_WINDOW" $CONNS \
      ${KDAMOND_SPLIT:+--trace "$W/trace"} ${STALL_SPLIT:+--stall-us "${STALL_US:-500}"})
    after=$(cpu_ns ${PIDS[$s]})
    core=$(core_busy_ms $SERVER_CORE "$mark")
    steal=$(( $(steal_ms) - steal0 )); kd=$(( $(kdamond_ms) - kd0 ))
    stop_server $s
    split=
    if [ -n "${KDAMOND_SPLIT:-}" ]; then
      kdamond_runs_stop
      split="|$(tails_outside_kdamond "$W/trace" "$W/kdamond.data" | tr ' ' '|')"
      rm -f "$W/trace" "$W/kdamond.data"
    elif [ -n "${STALL_SPLIT:-}" ]; then
      split="|$(json_field "$out" p99_outside_stalls_us)|$(json_field "$out" p999_outside_stalls_us)|$(json_field "$out" stalled_pct)"
    fi
    # CPU covers warm-up and window; so do the calls it is divided by.
    calls=$(answers_in_run "$out")
    us=$(awk "BEGIN {printf \"%.2f\", ($after - $before) / 1000 / $calls}")
    core_us=$(awk "BEGIN {printf \"%.2f\", $core * 1000 / $calls}")
    row="$round|$s|$us|$core_us|$(json_field "$out" p50_us)|$(json_field "$out" p99_us)|$(json_field "$out" p999_us)|$steal|$kd$split"
    ROWS+=("$row")
    echo "  $row" >&2
  done
done

{
  echo "# p99 at $RATE/s in $ROUNDS windows of $SECONDS_PER_WINDOW s — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Command: \`${KDAMOND_SPLIT:+KDAMOND_SPLIT=1 }${STALL_SPLIT:+STALL_SPLIT=1 }${STALL_US:+STALL_US=$STALL_US }${MIX:+MIX=\"$MIX\" }$(loadgen_env)SERVERS=\"$SERVERS\" bench/tails.sh $RATE $ROUNDS $SECONDS_PER_WINDOW $BOUND\`"
  machine_line
  echo "Server pinned to core 0, load generator ($(loadgen_line $CONNS)) to core 1; servers take turns, each window a fresh start."
  for v in $(compgen -e | grep '^VARIANT_' || true); do echo "trackplane-${v#VARIANT_}: adds \`$(printf '%b' "${!v}" | tr '\n' ' ')\`"; done
  for v in $(compgen -e | grep '^BINARY_' || true); do echo "trackplane-${v#BINARY_}: runs \`${!v}\` (\`$v\`)"; done
  echo "nginx: empty_gif, buffered access log. trackplane: realistic mix (50 advertisers, 10% broken tags${MIX:+; loadtest $MIX}), records on disk; -unbatched: wake_batch = 0; -normal: background_class = \"normal\"."
  case " $SERVERS " in *" bare "*|*" multishot "*|*" bare-worker "*|*" bare-batched "*)
    echo "bare: monoio io_uring (COOP_TASKRUN) + httparse, answers the GIF and nothing else; multishot: the same on raw io_uring (multishot receive, provided buffers, DEFER_TASKRUN). The floors of compare.sh. bare-worker: bare on a deferred ring, receives that arm poll first, answers by send(2) first (trackplane's unbatched workers' I/O); bare-batched: bare-worker with wake_batch 32 and a 200 µs linger (the default config's waits)." ;; esac
  echo
  if [ -n "$SPLIT" ]; then
    echo "| round | server | CPU µs/req | core µs/req | p50 µs | p99 µs | p99.9 µs | steal ms | kdamond ms | p99 outside $SPLIT µs | p99.9 outside $SPLIT µs | left out % |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
  else
    echo "| round | server | CPU µs/req | core µs/req | p50 µs | p99 µs | p99.9 µs | steal ms | kdamond ms |"
    echo "|---|---|---|---|---|---|---|---|---|"
  fi
  for r in "${ROWS[@]}"; do echo "|$r|"; done
  echo
  [ -n "${KDAMOND_SPLIT:-}" ] && echo "p99 and p99.9 outside kdamond: over the answers due outside kdamond's runs, each widened by ${KD_BEFORE_MS:-1} ms before and ${KD_AFTER_MS:-20} ms after (tails_outside_kdamond in bench/lib.sh); left out: the share of answers due inside them." && echo
  [ -n "${STALL_SPLIT:-}" ] && echo "p99 and p99.9 outside stalls: over the answers due outside the spans in which some answer waited at least ${STALL_US:-500} µs (loadtest --stall-us, loadtest/src/stalls.rs); left out: the share of answers due inside them." && echo
  echo "CPU: the server's threads (schedstat). Core: the time its core was busy (wall time less /proc/stat idle and iowait), which also counts interrupt and softirq work that lands while the core would otherwise be idle (see core_unbusy_ms in bench/lib.sh)."
  echo
  echo "Per server: windows with p99 <= $BOUND µs; median CPU µs/req, core µs/req, p99 and p99.9 over the windows."
  echo
  for s in $SERVERS; do
    printf '%s\n' "${ROWS[@]}" | awk -F'|' -v s="$s" -v b="$BOUND" -v sp="$SPLIT" "$MEDIAN_AWK"'
      $2==s { n++; met += ($6 <= b); cpu[n]=$3; core[n]=$4; p99[n]=$6; p999[n]=$7; po[n]=$10; qo[n]=$11; lo[n]=$12 }
      END { printf "- %s: %d of %d; CPU %.2f, core %.2f, p99 %.0f µs, p99.9 %.0f µs", s, met, n, median(cpu, n), median(core, n), median(p99, n), median(p999, n)
            if (po[1] != "") printf "; p99 outside %s %.0f µs, p99.9 %.0f µs (%.2f%% left out)", sp, median(po, n), median(qo, n), median(lo, n); print "" }'
  done
  # Each round's servers ran minutes apart, rounds up to an hour apart: a
  # ratio within a round leaves out most of the hour's drift that the
  # medians above carry.
  base=${SERVERS%% *}
  others=${SERVERS#"$base"}
  [ -n "${others// /}" ] && echo && echo "Against $base, round by round (medians of each round's ratio; how many rounds came out lower):" && echo
  for s in $others; do
    printf '%s\n' "${ROWS[@]}" | awk -F'|' -v s="$s" -v b="$base" -v sp="$SPLIT" "$MEDIAN_AWK"'
      $2==b { bc[$1]=$3; bk[$1]=$4; bp[$1]=$6; bq[$1]=$7; bo[$1]=$10; bqo[$1]=$11 }
      $2==s { n++; c[n]=$3/bc[$1]; k[n]=$4/bk[$1]; p[n]=$6/bp[$1]; q[n]=$7/bq[$1]
              lc+=c[n]<1; lk+=k[n]<1; lp+=p[n]<1; lq+=q[n]<1
              if ($10 != "" && bo[$1] > 0) { o[n]=$10/bo[$1]; lo+=o[n]<1; oq[n]=$11/bqo[$1]; loq+=oq[n]<1 } }
      END { if (n) printf "- %s: CPU %.3fx (lower in %d of %d), core %.3fx (%d of %d), p99 %.2fx (%d of %d), p99.9 %.2fx (%d of %d)", s, median(c, n), lc, n, median(k, n), lk, n, median(p, n), lp, n, median(q, n), lq, n
            if (n && o[1] != "") printf ", outside %s p99 %.2fx (%d of %d) and p99.9 %.2fx (%d of %d)", sp, median(o, n), lo, n, median(oq, n), loq, n; if (n) print "" }'
  done
} > "$OUT"
cat "$OUT"
echo "wrote $OUT"
