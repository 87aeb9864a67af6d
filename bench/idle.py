#!/usr/bin/env python3
"""Helper of bench/idle (standard library only).

    idle.py measure --pid PID --port PORT --conns N [--per-source 5000] --out FILE.json
    idle.py report DIR

`measure` holds N idle client connections to 127.0.0.1:PORT and reads the memory of the
process PID (the one that holds the client connections: Fulcrum, HAProxy, the NGINX worker)
at four moments:

  before   the proxy is up and has answered a few requests; no client connection open
  fresh    N connections opened (each bound first to a source address 127.0.0.2, .3, ...,
           --per-source connections per address), no byte sent; read once the proxy's
           /proc/PID/fd count shows it holds them (bounded wait)
  request  each connection then sent one keep-alive `GET / HTTP/1.1` and read the whole
           response, one connection after the other, and stays open and idle
  closed   every connection closed; read once the fd count is back (bounded wait)

RSS is VmRSS from /proc/PID/status. The result (JSON) has the counts, the RSS and fd count of
each moment and the wall time of each phase. `report` prints the Markdown table of a bench/idle
output directory from its idle-*.json files.
"""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

# Linux: bind() picks no port; connect() picks one unique for the whole 4-tuple.
IP_BIND_ADDRESS_NO_PORT = 24
PROXIES = ["fulcrum", "haproxy", "nginx"]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def progress(msg):
    print(f"[idle.py {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_fds(pid, done, timeout):
    """Polls the fd count of pid until done(count) or timeout seconds; returns the last count."""
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while not done(n) and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fd_count(pid)
    return n


def read_response(s):
    """Reads one HTTP/1.1 response from s; returns its status (0 on a broken answer)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return 0
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while not body.endswith(b"0\r\n\r\n"):  # the answers here are tiny: enough for them
            chunk = s.recv(4096)
            if not chunk:
                return 0
            body += chunk
    else:
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(4096)
            if not chunk:
                return 0
            body += chunk
    return status


def settle(pid, limit=5.0):
    """Waits until the proxy's RSS stops changing (equal over two 100 ms steps), at most
    `limit` s: it is still setting up the last connections accepted, or freeing the closed
    ones. Returns whether it settled."""
    last, steady, deadline = rss_kib(pid), 0, time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = rss_kib(pid)
        steady = steady + 1 if now == last else 0
        if steady >= 2:
            return True
        last = now
    progress(f"pid {pid}: RSS still changing after {limit} s; read anyway")
    return False


def measure(args):
    pid = args.pid
    result = {"pid": pid, "port": args.port, "requested": args.conns, "per_source": args.per_source}
    result["settled_before"] = settle(pid)
    result["fds_before"] = fd0 = fd_count(pid)
    result["rss_before_kib"] = rss_kib(pid)
    progress(f"pid {pid}: before: RSS {result['rss_before_kib']} KiB, {fd0} fds")

    socks = []
    failures = 0
    t0 = time.monotonic()
    for i in range(args.conns):
        src = f"127.0.0.{2 + i // args.per_source}"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", args.port))
            socks.append(s)
        except OSError as e:
            s.close()
            failures += 1
            if failures == 1:
                progress(f"connection {i} from {src} failed: {e}")
            if failures >= 20:
                progress("20 connections failed: stopping at what is open")
                break
    result["opened"] = len(socks)
    result["open_failures"] = failures
    result["open_secs"] = round(time.monotonic() - t0, 3)
    fds = wait_fds(pid, lambda n: n >= fd0 + len(socks), args.wait)
    result["settled_fresh"] = settle(pid)
    result["fds_fresh"] = fds
    result["held_fresh"] = min(len(socks), fds - fd0)
    result["rss_fresh_kib"] = rss_kib(pid)
    progress(
        f"fresh: {len(socks)} open ({failures} failed) in {result['open_secs']} s; proxy holds "
        f"{result['held_fresh']}; RSS {result['rss_fresh_kib']} KiB"
    )

    t0 = time.monotonic()
    good = bad = 0
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for s in socks:
        try:
            s.sendall(request)
            status = read_response(s)
        except OSError:
            status = 0
        if 200 <= status < 300:
            good += 1
        else:
            bad += 1
    result["requests_ok"] = good
    result["requests_failed"] = bad
    result["request_secs"] = round(time.monotonic() - t0, 3)
    result["settled_request"] = settle(pid)
    result["fds_request"] = fd_count(pid)
    result["rss_request_kib"] = rss_kib(pid)
    progress(
        f"after one request each: {good} answered, {bad} failed in {result['request_secs']} s; "
        f"RSS {result['rss_request_kib']} KiB, {result['fds_request']} fds"
    )

    for s in socks:
        s.close()
    socks.clear()
    # The proxy keeps its pooled backend connections: allow for a few above the baseline.
    fds = wait_fds(pid, lambda n: n <= fd0 + 8, args.wait)
    result["settled_closed"] = settle(pid)
    result["fds_closed"] = fd_count(pid)
    result["rss_closed_kib"] = rss_kib(pid)
    progress(f"closed: RSS {result['rss_closed_kib']} KiB, {result['fds_closed']} fds")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def kib_per_conn(r, moment, held):
    if not held:
        return None
    return (r[f"rss_{moment}_kib"] - r["rss_before_kib"]) / held


def report(args):
    out = Path(args.dir)
    meta = {}
    if (out / "meta.txt").exists():
        for line in (out / "meta.txt").read_text().splitlines():
            k, _, v = line.partition("=")
            meta[k] = v
    print(
        f"Idle client connections held by one proxy process (`fulcrum run --workers 1`, HAProxy "
        f"`nbthread 1`, the NGINX worker of `worker_processes 1`); asked for "
        f"{meta.get('idle_conns', '?')} connections from 127.0.0.2.. ({meta.get('per_source', '?')} "
        f"per source address); fd limit {meta.get('fd_limit', '?')}. RSS = VmRSS of that process; "
        "KiB/conn = (RSS then − RSS before) / connections held."
    )
    print()
    print(
        "| proxy | conns held | RSS before MiB | fresh: RSS MiB | fresh: KiB/conn | after one request: "
        "RSS MiB | after one request: KiB/conn | closed again: RSS MiB | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for proxy in meta.get("proxies", " ".join(PROXIES)).split():
        f = out / f"idle-{proxy}.json"
        if not f.exists():
            print(f"| {proxy} | failed | | | | | | | see idle.log |")
            continue
        r = json.loads(f.read_text())
        held = r["held_fresh"]
        mib = lambda k: f"{r[k] / 1024:.1f}"  # noqa: E731
        fresh = kib_per_conn(r, "fresh", held)
        after = kib_per_conn(r, "request", r["requests_ok"])
        notes = []
        if r["requested"] != int(meta.get("idle_conns", r["requested"])):
            notes.append(f"asked for {r['requested']} (the most it can hold here)")
        if held < r["requested"]:
            notes.append(f"held {held} of {r['requested']}")
        if r["requests_failed"]:
            notes.append(f"{r['requests_failed']} requests failed")
        print(
            f"| {proxy} | {held:,} | {mib('rss_before_kib')} | {mib('rss_fresh_kib')} | "
            f"{'—' if fresh is None else f'{fresh:.2f}'} | {mib('rss_request_kib')} | "
            f"{'—' if after is None else f'{after:.2f}'} | {mib('rss_closed_kib')} | {'; '.join(notes)} |"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--pid", type=int, required=True)
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--conns", type=int, required=True)
    m.add_argument("--per-source", type=int, default=5000)
    m.add_argument("--wait", type=float, default=30.0, help="seconds to wait at most for the fd count")
    m.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("dir")
    args = ap.parse_args()
    if args.cmd == "measure":
        measure(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
