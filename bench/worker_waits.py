#!/usr/bin/env python3
"""How long a worker waited for the server's core after each wake-up, by
the thread that held the core until it got it. Reads `perf script -F
cpu,time,event,trace --ns` of sched_switch (every thread) and
sched_wakeup (the worker's only), recorded on every core: a wake-up is
stamped on the core of the thread that woke it.

usage: worker_waits.py PERF_SCRIPT_OUTPUT WORKER_COMM CORE
"""
import collections
import sys


def main():
    path, worker, core = sys.argv[1], sys.argv[2], int(sys.argv[3])
    woke = None
    waits = collections.defaultdict(list)
    for line in open(path):
        cpu, rest = line.split("]", 1)
        cpu = int(cpu.strip().lstrip("["))
        t = float(rest.split(":", 1)[0])
        if "sched_wakeup" in rest:
            if f"comm={worker} " in rest:
                woke = t
        elif "sched_switch" in rest and cpu == core:
            nxt = rest.split("next_comm=")[1].split(" next_pid=")[0]
            prev = rest.split("prev_comm=")[1].split(" prev_pid=")[0]
            if nxt == worker and woke is not None:
                waits[prev].append((t - woke) * 1e6)
                woke = None
    for prev, w in sorted(waits.items(), key=lambda x: -len(x[1])):
        w.sort()
        n = len(w)
        print(f"  behind {prev:18} {n:7} waits, median {w[n // 2]:6.1f} us, "
              f"p99 {w[min(n - 1, int(n * .99))]:7.1f}, max {w[-1]:7.1f}, "
              f"over 100 us {sum(x > 100 for x in w)}")


if __name__ == "__main__":
    main()
