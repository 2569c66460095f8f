#!/usr/bin/env python3
"""How long after its answer an event shows in the live view, on a quiet
worker: starts BINARY (the embedded config, one worker, ports 18181 and
19191), sends N pixels for the configured advertiser `demo` one at a time
(0.2 s apart), and after each polls the view's audit JSON every
millisecond until its count moves. Prints the least, median and most
milliseconds. A worker folds its records once 8 KiB have gathered or the
first has waited 50 ms (view::fold), so a quiet one shows an event about
50 ms after its answer, up to its next 20 ms heartbeat later.

    bench/view-lag.py [BINARY] [N]     e.g. bench/view-lag.py target/release/trackplane 30
"""
import json, subprocess, sys, tempfile, time, urllib.request

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/trackplane"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 30
data = tempfile.mkdtemp(prefix="trackplane-view-lag.")
server = subprocess.Popen(
    [binary, "serve", "--data-dir", data, "--listen", "127.0.0.1:18181",
     "--admin-listen", "127.0.0.1:19191", "--workers", "1"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def count():
    url = "http://127.0.0.1:19191/api/advertisers/demo/audit"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return sum(json.load(r)["last_hour"]["events_by_type"].values())
    except Exception:
        return 0


lags = []
try:
    time.sleep(1.0)
    for i in range(n):
        before = count()
        urllib.request.urlopen(
            f"http://127.0.0.1:18181/i?adv=demo&ev=impression&uid=u{i}", timeout=2).read()
        answered = time.monotonic()
        # Bounded: 2 s a pixel at most.
        while count() == before and time.monotonic() - answered < 2:
            time.sleep(0.001)
        lags.append((time.monotonic() - answered) * 1000)
        time.sleep(0.2)
finally:
    server.terminate()
    server.wait()
    subprocess.run(["rm", "-rf", data])
lags.sort()
print(f"{binary}: {len(lags)} events; ms from answer to the view's count: "
      f"least {lags[0]:.1f}, median {lags[len(lags) // 2]:.1f}, most {lags[-1]:.1f}")
