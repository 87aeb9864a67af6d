#!/usr/bin/env python3
"""A third process on the cores: bench/bulk-ns's `shared` path. Needs Python >= 3.6.

    duty.py BUSY_MS IDLE_MS SECONDS

Spins for BUSY_MS, sleeps for IDLE_MS, and again, for at most SECONDS. Prints "running" once
it has started, so a caller can wait for that line instead of sleeping; prints its real share
of one core (CPU time over wall time) to stderr when it ends, on SIGTERM, SIGINT or SIGHUP too,
and exits 0 then.

A proxy is a third process on the cores beside the client and the backend. A direct download
made while this runs shows what this spinning load costs a transfer here. It is a rough
reference for a proxy, not a measure of a proxy's own cost: it spins in user space and does
nothing with the bytes, where a proxy's time goes to kernel TCP work on the transfer itself.
"""
import math
import signal
import sys
import time


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: duty.py BUSY_MS IDLE_MS SECONDS")
    try:
        busy, idle, seconds = (float(a) for a in sys.argv[1:])
    except ValueError as e:
        sys.exit(f"duty.py: BUSY_MS, IDLE_MS and SECONDS are numbers: {e}")
    if not all(math.isfinite(x) and x >= 0 for x in (busy, idle, seconds)):
        sys.exit("duty.py: BUSY_MS, IDLE_MS and SECONDS are finite and not negative")
    busy, idle = busy / 1000, idle / 1000
    start, cpu_start = time.monotonic(), time.process_time()
    end = start + seconds

    def report(*_):
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # one report, however many signals come
        wall = time.monotonic() - start
        share = (time.process_time() - cpu_start) / wall if wall > 0 else 0.0
        print(f"duty.py: busy {share:.0%} of one core over {wall:.2f} s", file=sys.stderr)
        sys.exit(0)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, report)
    print("running", flush=True)
    while time.monotonic() < end:
        spin_until = time.perf_counter() + busy
        while time.perf_counter() < spin_until:
            pass
        time.sleep(idle)
    report()


if __name__ == "__main__":
    main()
