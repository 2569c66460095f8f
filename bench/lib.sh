# What the bench scripts share; each sources this file.

# Waits until something listens on 127.0.0.1:PORT ($PORT_WAIT_S seconds,
# 10 unless set), or fails.
wait_port() { for _ in $(seq $((${PORT_WAIT_S:-10} * 10))); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; exit 1; }

# The number under KEY in loadtest's one-line JSON report OUT.
json_field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }

# The host's steal time so far, in ms, both cores.
steal_ms() { awk '/^cpu / {print $9 * 10}' /proc/stat; }

# The machine, as every results file names it: cores, memory, CPU model,
# kernel, and its cpuidle driver; with the `haltpoll` driver (a KVM guest)
# also how long an idle core polls before it halts, since a halted core's
# wake-up leaves the guest and costs every server per request.
machine_line() {
  local idle poll
  idle=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
  poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
  if [ "$idle" = haltpoll ] && [ -r $poll ]; then idle="haltpoll, guest_halt_poll_ns=$(cat $poll)"; fi
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(lscpu | sed -nE 's/^Model name: +//p' | head -1), kernel $(uname -r), cpuidle $idle"
}

# What compare.sh and tails.sh share: the servers they race, each pinned to
# $SERVER_CORE, with their files under $W; the caller declares the
# associative array PIDS. start_server sets PORT. $WRAP, if set, is a
# command each server runs under (bench/instructions.sh's valgrind).

# Everything before the first server starts: the work dir $W (removed on
# exit, with any server still running), the release binaries ($LT is
# loadtest), the realistic mix (50 advertisers x 20k products, 10% broken
# tags) with trackplane's data dir $W/tp-data holding its catalogs, the
# configs trackplane.toml (as shipped), trackplane-unbatched.toml
# (wake_batch = 0) and trackplane-normal.toml (background_class =
# "normal"), and nginx's.
race_setup() { # NAME, for the work dir and messages
  command -v nginx >/dev/null || { echo "$1: needs nginx (apt-get install nginx-light)"; exit 1; }
  W=$(mktemp -d "/tmp/trackplane-$1.XXXXXX")
  trap 'kill $(jobs -p) 2>/dev/null || true; pkill -f "nginx -p $W" 2>/dev/null || true; rm -rf "$W"' EXIT
  cargo build --release --quiet -p trackplane -p trackplane-loadtest --bin trackplane --bin loadtest --bin bare-responder --bin bare-multishot
  LT=target/release/loadtest
  $LT setup --dir "$W/mix" ${MIX:-} >/dev/null
  mkdir -p "$W/tp-data"
  cp -r "$W/mix/catalogs" "$W/tp-data/"
  cp "$W/mix/trackplane.toml" "$W/trackplane.toml"
  { cat "$W/mix/trackplane.toml"; printf '[server]\nwake_batch = 0\n'; } > "$W/trackplane-unbatched.toml"
  { cat "$W/mix/trackplane.toml"; printf '[server]\nbackground_class = "normal"\n'; } > "$W/trackplane-normal.toml"
  # More variants from the environment: VARIANT_b8='[server]\nwake_batch = 8\n'
  # makes a server named trackplane-b8.
  local v
  for v in $(compgen -e | grep '^VARIANT_' || true); do
    { cat "$W/mix/trackplane.toml"; printf '%b' "${!v}"; } > "$W/trackplane-${v#VARIANT_}.toml"
  done
  # Or another build: BINARY_old=/tmp/old/trackplane makes a server named
  # trackplane-old that runs it, with VARIANT_old's config if that is set
  # and the shipped one otherwise.
  for v in $(compgen -e | grep '^BINARY_' || true); do
    [ -e "$W/trackplane-${v#BINARY_}.toml" ] || cp "$W/trackplane.toml" "$W/trackplane-${v#BINARY_}.toml"
  done
  write_nginx_conf
}

# The fixed-rate generator, after race_setup: loadtest, or wrk2 (`wrk2` on
# the PATH, or WRK2=/path/to/it; Debian's wrk is wrk 4, which has no rate,
# and wrk2 installed as `wrk` says --rate in its usage). LOADGEN=loadtest
# or LOADGEN=wrk2 chooses; unset, DEFAULT does ("auto": wrk2 where it is
# installed). wrk2 gets the mix as a Lua script and its report is read by
# `loadtest wrk2-report`; its first 10 s and 5 ms a connection are its
# calibration, unmeasured, which fixed_rate adds to its runs.
loadgen_setup() { # DEFAULT CONNS
  if [ -z "${WRK2:-}" ]; then
    WRK2=$(command -v wrk2 || true)
    if [ -z "$WRK2" ] && command -v wrk >/dev/null && wrk --help 2>&1 | grep -q -- '--rate'; then WRK2=$(command -v wrk); fi
  fi
  if [ "$1" = auto ]; then LOADGEN=${LOADGEN:-$([ -n "$WRK2" ] && echo wrk2 || echo loadtest)}; else LOADGEN=${LOADGEN:-$1}; fi
  case "$LOADGEN" in
    loadtest) ;;
    wrk2) [ -n "$WRK2" ] && [ -x "$WRK2" ] || { echo "LOADGEN=wrk2 but no wrk2 found (set WRK2=/path/to/wrk2)"; exit 1; }
          $LT wrk2-script --out "$W/mix.lua" ${MIX:-}
          WRK2_CALIBRATION_S=$(( 10 + ($2 * 5 + 999) / 1000 )) ;;
    *) echo "LOADGEN is loadtest or wrk2, not $LOADGEN"; exit 1 ;;
  esac
}

# Seconds loadtest loads a server before it measures (fixed_rate).
WARMUP_S=2

# One fixed-rate run from core $LOAD_CORE: its JSON report, in loadtest's
# keys whichever generator ran. Loadtest warms up for $WARMUP_S s first and
# takes any further arguments.
fixed_rate() { # PORT RATE SECONDS CONNS [loadtest args]
  local port=$1 rate=$2 secs=$3 conns=$4
  shift 4
  if [ "$LOADGEN" = wrk2 ]; then
    taskset -c $LOAD_CORE "$WRK2" -t1 -c"$conns" -d$((secs + WRK2_CALIBRATION_S))s -R"$rate" -L \
      -s "$W/mix.lua" "http://127.0.0.1:$port/" | $LT wrk2-report --rate "$rate" --connections "$conns"
  else
    taskset -c $LOAD_CORE $LT run --addr 127.0.0.1:"$port" --rate "$rate" --connections "$conns" \
      --duration "$secs" --warmup $WARMUP_S --json ${MIX:-} "$@"
  fi
}

# The answers a server gave over a fixed_rate run, warm-up or calibration
# included, from its report: what its CPU over the run is divided by.
answers_in_run() { # JSON
  if [ "$LOADGEN" = wrk2 ]; then json_field "$1" completed
  else awk "BEGIN {print $(json_field "$1" completed) + $(json_field "$1" achieved_rate) * $WARMUP_S}"; fi
}

# The generator as a results file's command line names it: nothing for
# loadtest, the settings that chose wrk2 otherwise.
loadgen_env() {
  if [ "$LOADGEN" = wrk2 ]; then echo "LOADGEN=wrk2 WRK2=$WRK2 "; fi
}

# The generator, as a results file names it.
loadgen_line() { # CONNS
  if [ "$LOADGEN" = wrk2 ]; then
    echo "$WRK2 -t1 -c$1 -R RATE -L, the mix as a Lua script; its first ${WRK2_CALIBRATION_S} s are its calibration and not measured, and it sends on a millisecond timer"
  else
    echo "loadtest, open loop, wrk2 semantics, $1 connections"
  fi
}

# A big catalog replaced while a server runs (bench/worker-waits.sh
# RELOAD, bench/reload-tail.sh): COUNT copies of a catalog of IDS ids
# written into DATA/catalogs under hidden names before the load (writing
# them during it would take from loadtest's core, and their writeback
# from either), then renamed over DATA/catalogs/feed.txt one a second.
feed_copies() { # DATA IDS COUNT
  [ "$3" -gt 0 ] || return 0
  seq -f 'feed-%.0f' 1 "$2" > "$1/feed.txt"
  local i; for i in $(seq "$3"); do cp "$1/feed.txt" "$1/catalogs/.feed$i.txt.tmp"; done
  sync
}
feed_renames() { # DATA COUNT
  local i; for i in $(seq "$2"); do mv "$1/catalogs/.feed$i.txt.tmp" "$1/catalogs/feed.txt"; sleep 1; done
}

cpu_ns() { # total on-CPU ns of every thread of the given pids
  local total=0 pid t
  for pid in "$@"; do
    for t in /proc/"$pid"/task/*/schedstat; do
      total=$((total + $(cut -d' ' -f1 "$t" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

# nginx serving empty_gif on 127.0.0.1:18081 with a buffered access log,
# configured under $W.
write_nginx_conf() {
cat > "$W/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log $W/access.log combined buffer=64k flush=1s;
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:18081; location / { empty_gif; } }
}
NGINX
mkdir -p "$W/tmp"
}

start_server() {
  case "$1" in
    nginx) taskset -c $SERVER_CORE ${WRAP:-} nginx -p "$W" -c "$W/nginx.conf" 2>/dev/null & PORT=18081 ;;
    bare) taskset -c $SERVER_CORE ${WRAP:-} target/release/bare-responder 127.0.0.1:18082 uring-coop & PORT=18082 ;;
    bare-worker) taskset -c $SERVER_CORE ${WRAP:-} target/release/bare-responder 127.0.0.1:18084 uring-worker & PORT=18084 ;;
    bare-batched) taskset -c $SERVER_CORE ${WRAP:-} target/release/bare-responder 127.0.0.1:18085 uring-batched & PORT=18085 ;;
    multishot) taskset -c $SERVER_CORE ${WRAP:-} target/release/bare-multishot 127.0.0.1:18083 & PORT=18083 ;;
    trackplane*) local bin=target/release/trackplane b="BINARY_${1#trackplane-}"
      [ "$1" != trackplane ] && [ -n "${!b:-}" ] && bin=${!b}
      RUST_LOG=warn taskset -c $SERVER_CORE ${WRAP:-} "$bin" serve --config "$W/$1.toml" \
        --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19180 --data-dir "$W/tp-data" --workers 1 \
        --driver "$(case "$1" in trackplane-epoll*) echo epoll ;; *) echo uring ;; esac)" & PORT=18080 ;;
  esac
  wait_port $PORT
  sleep 0.3
  if [ "$1" = nginx ]; then PIDS[$1]="$(cat "$W/nginx.pid") $(pgrep -P "$(cat "$W/nginx.pid")" || true)"; else PIDS[$1]=$!; fi
}

stop_server() {
  case "$1" in
    nginx) kill -QUIT "$(cat "$W/nginx.pid")"; sleep 0.5 ;;
    *) kill -TERM ${PIDS[$1]}; wait ${PIDS[$1]} 2>/dev/null || true ;;
  esac
  # Write back what the server left dirty (nginx's access log, trackplane's
  # segments) before the next one starts. Left to the kernel, it goes out
  # about 30 s later (vm.dirty_expire_centisecs), inside the window of
  # whichever server then runs: in bench/tails.sh that was the third of each
  # round, whose p99 came out 2-3x the others' whichever server it was
  # (bench/results/tails-20261130-2343.md, -2350.md).
  sync
}

# What the VM did meanwhile, to read a row's tail by: the host's steal time
# (ms, both cores) and the CPU of kdamond, this VM's kernel memory monitor,
# which runs unpreemptibly for up to several ms at a time on either core.
kdamond_ms() { local k; k=$(pgrep -x kdamond.0 | head -1 || true)
  if [ -n "$k" ]; then echo $(( $(cut -d' ' -f1 /proc/"$k"/schedstat) / 1000000 )); else echo 0; fi; }

# kdamond's runs through a window, to read the window's p99 without them.
# Each run of 1-5 ms stops whatever shares its core, and at 50k/s, at
# about 70% of a core, the backlog takes about twice as long again to
# drain. kdamond_runs_start FILE records them (perf, kdamond's own
# sched_stat_runtime events, stamped on CLOCK_MONOTONIC as loadtest
# --trace is); kdamond_runs_stop ends it.
kdamond_runs_start() {
  local k; k=$(pgrep -x kdamond.0 | head -1 || true); KD_PERF=
  [ -n "$k" ] || return 0
  perf record -q -k CLOCK_MONOTONIC -e sched:sched_stat_runtime -t "$k" -o "$1" >/dev/null 2>&1 &
  KD_PERF=$!; sleep 0.2
}
kdamond_runs_stop() { if [ -n "${KD_PERF:-}" ]; then kill -INT "$KD_PERF"; wait "$KD_PERF" 2>/dev/null || true; fi; }

# "P99 P99.9 SHARE": p99 and p99.9 in µs of the answers in loadtest's
# TRACE (server 0) that were due outside kdamond's runs in PERFDATA, each
# widened by
# KD_BEFORE_MS before (what was in flight when it began; default 1) and
# KD_AFTER_MS after (the backlog's drain; default 20), and the percentage
# of answers so left out. No PERFDATA (no kdamond): every answer counts.
tails_outside_kdamond() { # TRACE PERFDATA
  local all
  all=$(awk '$1 == 0' "$1" | wc -l)
  { [ -s "$2" ] && perf script -i "$2" -F time,trace --ns 2>/dev/null || true; } |
    awk -v b="${KD_BEFORE_MS:-1}" -v a="${KD_AFTER_MS:-20}" '{
        t = $1; sub(":", "", t); end = t * 1e9
        for (i = 2; i <= NF; i++) if ($i ~ /^runtime=/) run = substr($i, 9)
        printf "R %.0f %.0f\n", end - run - b * 1e6, end + a * 1e6 }' |
    cat - "$1" | awk '
      # The runs come first; an answer is kept if no run covers it.
      $1 == "R" { n++; lo[n] = $2; hi[n] = $3; next }
      $1 == 0 { for (i = 1; i <= n; i++) if (lo[i] <= $2 && $2 <= hi[i]) next; print $3 }' |
    sort -n | awk -v all="$all" '
      function at(q,  i) { i = int(NR * q); if (i < NR * q) i++; if (i < 1) i = 1; return NR ? v[i] / 1000 : 0 }
      { v[NR] = $1 } END { printf "%.1f %.1f %.1f\n", at(0.99), at(0.999), (all ? 100 * (all - NR) / all : 0) }'
}

# What core $1 has not been busy with so far, in ms, from /proc/stat:
# idle and iowait. The kernel charges interrupt and softirq work
# to whichever thread is on the core when it comes (this kernel has no
# IRQ_TIME_ACCOUNTING), and to no process when the core is idle; so a
# server whose own threads fill the gaps between requests is charged work
# that a server idle in those gaps is not. A window's wall time less this
# counts both alike. (Not /proc/stat's user and system: they are sampled
# by the tick, which stops while the core idles, and a core idling every
# few µs is undercounted.) Steal is not taken off: a halted core woken by
# an interrupt often waits for the host with the guest still idle, so
# steal is largely idle time already (taking it off too gave cores less
# busy than the server's own threads in windows with seconds of steal);
# what steal lands on busy time counts as busy. Windows with much steal
# (the races print it) are not worth reading either way.
core_unbusy_ms() { awk -v c="cpu$1" '$1 == c {print ($5 + $6) * 10}' /proc/stat; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# A window of core $1's busy time: core_mark before it, core_busy_ms
# CORE MARK after it (ms).
core_mark() { echo "$(core_unbusy_ms "$1") $(now_ms)"; }
core_busy_ms() { local u t; read -r u t <<<"$2"; echo $(( $(now_ms) - t - ($(core_unbusy_ms "$1") - u) )); }

# What ab.sh and together.sh share: the work dir $W (removed on exit, with
# any server still running), loadtest ($LT), the realistic mix, and the two
# sides' configs $W/A.toml and $W/B.toml: the mix's, plus A_TOML and B_TOML
# from the environment (printf-style), so one binary can race two settings.
ab_setup() { # NAME, for the work dir
  W=$(mktemp -d "/tmp/trackplane-$1.XXXXXX")
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
  cargo build --release --quiet -p trackplane-loadtest
  LT=target/release/loadtest
  $LT setup --dir "$W/mix" ${MIX:-} >/dev/null
  for k in A B; do cp "$W/mix/trackplane.toml" "$W/$k.toml"; done
  printf "${A_TOML:-}" >> "$W/A.toml"
  printf "${B_TOML:-}" >> "$W/B.toml"
}

# The two sides, as the results file should name them ($A and $B are the
# binaries).
ab_describe() {
  echo "A: $A"
  echo "B: $B"
  if [ -n "${A_TOML:-}" ]; then echo "A_TOML: $A_TOML"; fi
  if [ -n "${B_TOML:-}" ]; then echo "B_TOML: $B_TOML"; fi
}

# An awk function for the two-sided sign test: the chance that two sides
# that do not differ split at least as lopsidedly as k of n. Prepend it to
# an awk program: awk "$SIGN_AWK"'...'.
SIGN_AWK='
  function sign(k, n,   t, c, j, x) {
    x = (k > n - k) ? k : n - k; c = 1; t = 0
    for (j = 0; j <= n; j++) { if (j >= x) t += c; c = c * (n - j) / (j + 1) }
    t = 2 * t / 2 ^ n; return (t > 1) ? 1 : t }
'
# An awk function for the median of a[1..n], which it sorts in place.
# Prepend it like SIGN_AWK.
MEDIAN_AWK='
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
'

# The value of NAME on the /metrics page of the admin port PORT: one
# series named with its labels, or a bare name's series summed over their
# labels. Nothing when the page has none.
admin_metric() { # PORT NAME
  curl -s 127.0.0.1:"$1"/metrics | awk -v n="$2" '
    { name = $1; sub(/\{.*/, "", name) }
    $1 == n || name == n { s += $2; found = 1 }
    END { if (found) print s }'
}

# What together.sh and floors-together.sh share. Both servers, listening
# on ${PORT[A]} and ${PORT[B]}, are loaded at once by one loadtest thread
# on core 1, each at $RATE over 64 connections of its own.
together_load() { # SECONDS FIRST SECOND: the JSON lines, the first server's first
  taskset -c 1 $LT run --addr 127.0.0.1:${PORT[$2]} --addr 127.0.0.1:${PORT[$3]} --rate "$RATE" \
    --connections 64 --duration "$1" --warmup 0 --json ${MIX:-}
}
# Window I of $DUR s. Which server is sent to first swaps every window, so
# neither has the head of the schedule for good. Sets FIRST, and OUT[A]
# and OUT[B] (declare -A OUT first) to each server's JSON line.
together_window() { # I
  FIRST=A; local second=B out
  if [ $(($1 % 2)) = 0 ]; then FIRST=B; second=A; fi
  out=$(together_load "$DUR" $FIRST $second)
  OUT=([$FIRST]=$(sed -n 1p <<<"$out") [$second]=$(sed -n 2p <<<"$out"))
}
# The median of B/A in column COL (awk -F'|') of a table's rows, how often
# B came out lower, and the sign test's p: the chance of a split at least
# this lopsided between two sides that do not differ.
#
# Then the same over pairs of windows, one with each server sent to first
# (windows 1 and 2, 3 and 4, ...; a pair's B/A is the geometric mean of
# its two): the server sent to first comes out cheaper, by 1-5% on the AMD
# VM (bench/results/together-pairs-20261130-1805.md), which the swap keeps
# from favouring either side but leaves in every window's ratio. A pair
# cancels it, so its spread is the VM's alone. "first" is how much cheaper
# the first server came out: the median over pairs of
# sqrt(B/A with A first / B/A with B first).
ratio_summary() { # ROWS_FILE COL WHAT
  awk -F'|' -v c="$2" '{print $c + 0}' "$1" | sort -n | awk -v name="$3" "$SIGN_AWK"'
    { r[NR] = $1; lo += $1 < 1 }
    END {
      n = NR; m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
      printf "B/A, %s per request: median %.3f (%.3f-%.3f), B lower in %d of %d, sign test p %.2f\n", name, m, r[1], r[n], lo, n, sign(lo, n)
    }'
  awk -F'|' -v c="$2" '{ r = $c + 0; if (NR % 2) a = r; else printf "%.6f %.6f\n", sqrt(a * r), sqrt(a / r) }' "$1" |
    sort -n | awk -v name="$3" "$SIGN_AWK$MEDIAN_AWK"'
    { p[NR] = $1; f[NR] = $2; lo += $1 < 1 }
    END {
      n = NR; if (n == 0) exit
      printf "  over %d pairs of windows: median %.3f (%.3f-%.3f), B lower in %d of %d, sign test p %.2f; first %.3f\n", n, median(p, n), p[1], p[n], lo, n, sign(lo, n), median(f, n)
    }'
}
