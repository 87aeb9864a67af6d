#!/usr/bin/env python3
"""A third party on the cores: bench/bulk-ns's `shared` path. Needs Python >= 3.3.

    duty.py BUSY_MS IDLE_MS SECONDS

Spins for BUSY_MS, sleeps for IDLE_MS, and again, for at most SECONDS. Prints "running" once
it has started, so a caller can wait for that line instead of sleeping; prints its real share
of one core (CPU time over wall time) to stderr when it ends (on SIGTERM too).

A proxy is a third process on the cores beside the client and the backend. A direct download
made while this runs shows what any third party costs a transfer on this machine, whatever it
does with its time: beside it, a proxy's figure tells its own cost from the sharing.
"""
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
    if min(busy, idle, seconds) < 0:
        sys.exit("duty.py: BUSY_MS, IDLE_MS and SECONDS cannot be negative")
    busy, idle = busy / 1000, idle / 1000
    start, cpu_start = time.monotonic(), time.process_time()
    end = start + seconds

    def report(*_):
        wall = time.monotonic() - start
        share = (time.process_time() - cpu_start) / wall if wall > 0 else 0.0
        print(f"duty.py: busy {share:.0%} of one core over {wall:.2f} s", file=sys.stderr)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    print("running", flush=True)
    while time.monotonic() < end:
        spin_until = time.perf_counter() + busy
        while time.perf_counter() < spin_until:
            pass
        time.sleep(idle)
    report()


if __name__ == "__main__":
    main()
