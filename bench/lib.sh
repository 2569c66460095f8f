# What the bench scripts share; each sources this file.

# Waits until something listens on 127.0.0.1:PORT (10 s), or fails.
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; exit 1; }

# The number under KEY in loadtest's one-line JSON report OUT.
json_field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }

# The host's steal time so far, in ms, both cores.
steal_ms() { awk '/^cpu / {print $9 * 10}' /proc/stat; }
