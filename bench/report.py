#!/usr/bin/env python3
"""Print the median table of a bench/run output directory (results.tsv + meta.txt).

    python3 bench/report.py bench/out/<stamp>

results.tsv rows: round, path, workload, metric, value ("failed" for a failed sample). Rows whose
path is `_latency` carry the per-round 100% rate of the open-loop latency workload.
Output is Markdown, ready to paste into bench/RESULTS.md.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

PATHS = ["direct", "fulcrum", "haproxy", "nginx", "fulcrum2", "haproxy2"]
# The 2-worker paths and the 1-worker path each is compared with.
TWO_WORKERS = {"fulcrum2": "fulcrum", "haproxy2": "haproxy"}
TWO_WORKERS_LABEL = {"fulcrum2": "2 workers", "haproxy2": "nbthread 2"}
CPU_METRICS = ["client_cpu_pct", "proxy_cpu_pct", "backends_cpu_pct", "machine_cpu_pct"]
# Metrics that get CPU columns: the throughput of a run.
THROUGHPUT = ("rps", "bytes_per_s")
# Metrics whose ratio to direct / haproxy says nothing.
NO_RATIO = ("backend_conns", "backend_reuse_pct")


def rows(meta):
    """(workload, metric, label, unit) in print order."""
    out = [
        ("http_keepalive", "rps", "HTTP keep-alive", "req/s"),
        ("http_keepalive", "p50_ms", "HTTP keep-alive", "p50 ms"),
        ("http_keepalive", "p99_ms", "HTTP keep-alive", "p99 ms"),
        ("http_keepalive", "backend_conns", "HTTP keep-alive", "new backend conns"),
        ("http_keepalive", "backend_reuse_pct", "HTTP keep-alive", "backend reuse %"),
    ]
    for load in meta.get("latency_loads", "50 90").split():
        label = f"HTTP latency @{load}%"
        wl = f"http_latency_{load}"
        out += [
            (wl, "rps", label, "achieved req/s"),
            (wl, "p50_ms", label, "p50 ms"),
            (wl, "p99_ms", label, "p99 ms"),
            (wl, "p999_ms", label, "p99.9 ms"),
        ]
    out += [
        ("http_close", "rps", "HTTP conn-per-request", "req/s"),
        ("http_close", "backend_reuse_pct", "HTTP conn-per-request", "backend reuse %"),
        ("tcp_bulk", "bytes_per_s", "TCP bulk 64 MiB", "MiB/s"),
    ]
    return out


def fmt(metric, v):
    if v is None:
        return "failed"
    if metric in ("rps", "offered_rps", "backend_conns", "backend_reqs"):
        return f"{v:,.0f}"
    if metric.endswith("_ms"):
        return f"{v:.3f}"
    if metric == "backend_reuse_pct":
        return f"{v:.2f}"
    if metric == "bytes_per_s":
        return f"{v / 1048576:,.0f}"
    return f"{v:.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    meta = {}
    if (out / "meta.txt").exists():
        for line in (out / "meta.txt").read_text().splitlines():
            k, _, v = line.partition("=")
            meta[k] = v
    samples = defaultdict(list)  # (path, workload, metric) -> [float | None]
    latency_max = []  # the 100% rate of the latency workload, one per round
    latency_src = []  # where each came from: oha-closed-loop-on-PATH or LATENCY_MAX (haproxy in older runs)
    for line in (out / "results.tsv").read_text().splitlines():
        if not line.strip():
            continue
        _round, path, workload, metric, value = line.split("\t")
        if path == "_latency":
            if metric == "max_rps":
                latency_max.append(float(value))
            elif metric == "max_source":
                latency_src.append(value)
            continue
        samples[(path, workload, metric)].append(None if value == "failed" else float(value))

    paths = [p for p in meta.get("paths", " ".join(PATHS)).split() if p in PATHS]

    def med(path, workload, metric):
        ok = [v for v in samples.get((path, workload, metric), []) if v is not None]
        return statistics.median(ok) if ok else None

    print(
        f"Medians over {meta.get('rounds', '?')} round(s); wrk -t1 -c{meta.get('conns', '?')} "
        f"-d{meta.get('duration', '?')}s; bulk = {meta.get('bulk_reps', '?')} x "
        f"{int(meta.get('bulk_bytes', '0')) // 1048576} MiB downloads per path per round; "
        f"backends: `{meta.get('backend', '?')} backend` x3; pinning: "
        f"{'proxy on CPU0, client on CPU1' if meta.get('pin') == '1' else 'none'}."
    )
    print()
    print(
        "Ratios are path / reference (for req/s and MiB/s higher is better, for latency lower "
        "is better). CPU columns: % of one core during the run (client = wrk, oha or curl; "
        "machine = all cores, max "
        f"{int(meta.get('nproc', '2')) * 100}%; other = machine minus the three before it: "
        "kernel work not charged to them such as loopback softirq, and anything else running). Machine busy before the "
        f"bench: {meta.get('background_cpu_pct', '?')}%. The load generator, the proxy and the three "
        "backends share the same cores."
    )
    print()
    if latency_max:
        loads = ", ".join(
            f"{load}% = {statistics.median(latency_max) * int(load) / 100:,.0f} req/s"
            for load in meta.get("latency_loads", "50 90").split()
        )
        sources = sorted(set(latency_src) - {"haproxy", "oha-closed-loop-on-haproxy"})
        # Runs before the oha calibration took HAProxy's wrk maximum (source "haproxy").
        client = "wrk, in its `http_keepalive` run" if "haproxy" in latency_src else "oha (closed loop, -c" + meta.get("conns", "?") + ")"
        print(
            f"HTTP latency: open loop, `oha -c{meta.get('conns', '?')} -q RATE --latency-correction "
            f"-z{meta.get('duration', '?')}s` (oha {meta.get('oha') or '?'}); RATE is a share of HAProxy's "
            f"keep-alive maximum under {client} in the same round (median 100% = {statistics.median(latency_max):,.0f} "
            f"req/s: {loads})"
            + (
                "; **fixed by LATENCY_MAX**"
                if sources == ["LATENCY_MAX"]
                else f"; **not HAProxy's in every round**: {', '.join(sources)} (see bench.log)"
                if sources
                else ""
            )
            + ". Latency counts from when each request was due, so a proxy that falls behind shows it "
            "in the tail."
        )
        print()
    if any(samples.get((p, "http_keepalive", "backend_reuse_pct")) for p in paths):
        print(
            "Backend reuse = 100 × (1 − new backend connections / requests), counted by the three "
            "backends themselves (`GET /_counters`) over each run; for direct it is wrk's own reuse."
        )
        print()
    if meta.get("haproxy_splice") == "1":
        print("HAProxy's tcp front has `option splice-request` and `option splice-response`.")
        print()
    print("| workload | metric | path | median | vs direct | vs haproxy | samples (min–max) | client CPU% | proxy CPU% | backends CPU% | machine CPU% | other CPU% |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for workload, metric, label, unit in rows(meta):
        direct = med("direct", workload, metric)
        haproxy = med("haproxy", workload, metric)
        for path in paths:
            vals = samples.get((path, workload, metric), [])
            if not vals:
                continue
            m = med(path, workload, metric)
            ok = [v for v in vals if v is not None]
            nfail = len(vals) - len(ok)
            spread = f"{len(ok)}"
            if ok:
                spread += f" ({fmt(metric, min(ok))}–{fmt(metric, max(ok))})"
            if nfail:
                spread += f", {nfail} failed"
            cpu = []
            for c in CPU_METRICS:
                v = med(path, workload, c) if metric in THROUGHPUT else None
                cpu.append("" if v is None else f"{v:.0f}")
            if metric in THROUGHPUT and cpu[3]:
                known = [med(path, workload, c) or 0.0 for c in CPU_METRICS[:3]]
                cpu.append(f"{med(path, workload, CPU_METRICS[3]) - sum(known):.0f}")
            else:
                cpu.append("")
            if path == "direct":
                cpu[1] = "—" if metric in THROUGHPUT else ""
            shown = f"{label} ({TWO_WORKERS_LABEL[path]})" if path in TWO_WORKERS_LABEL else label
            if metric in NO_RATIO:
                vs = "— | —"
            else:
                vs = f"{ratio(m, direct)} | {ratio(m, haproxy)}"
            print(f"| {shown} | {unit} | {path} | {fmt(metric, m)} | {vs} | {spread} | {' | '.join(cpu)} |")

    scaling = [(p2, p1) for p2, p1 in TWO_WORKERS.items() if p2 in paths]
    for workload, what in (("http_keepalive", "Keep-alive"), ("http_close", "Connection per request")):
        pairs = [(p2, p1) for p2, p1 in scaling if med(p2, workload, "rps") is not None]
        if not pairs:
            continue
        print()
        print(f"{what} scaling, 1 → 2 worker threads (wrk -t1 on the same 2 cores; read the CPU columns above):")
        print()
        print("| proxy | 1 worker req/s | 2 workers req/s | 2 / 1 | vs haproxy2 |")
        print("|---|---:|---:|---:|---:|")
        h2 = med("haproxy2", workload, "rps")
        for p2, p1 in pairs:
            one = med(p1, workload, "rps")
            two = med(p2, workload, "rps")
            print(f"| {p1} | {fmt('rps', one)} | {fmt('rps', two)} | {ratio(two, one)} | {ratio(two, h2)} |")


if __name__ == "__main__":
    main()
