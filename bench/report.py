#!/usr/bin/env python3
"""Print the median table of a bench/run output directory (results.tsv + meta.txt).

    python3 bench/report.py bench/out/<stamp>

results.tsv rows: round, path, workload, metric, value ("failed" for a failed sample).
Output is Markdown, ready to paste into bench/RESULTS.md.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

PATHS = ["direct", "fulcrum", "haproxy", "nginx"]
ROWS = [  # (workload, metric, label, unit, higher_is_better)
    ("http_keepalive", "rps", "HTTP keep-alive", "req/s", True),
    ("http_keepalive", "p50_ms", "HTTP keep-alive", "p50 ms", False),
    ("http_keepalive", "p99_ms", "HTTP keep-alive", "p99 ms", False),
    ("http_close", "rps", "HTTP conn-per-request", "req/s", True),
    ("tcp_bulk", "bytes_per_s", "TCP bulk 64 MiB", "MiB/s", True),
]
CPU_METRICS = ["client_cpu_pct", "proxy_cpu_pct", "backends_cpu_pct", "machine_cpu_pct"]


def fmt(metric, v):
    if v is None:
        return "failed"
    if metric == "rps":
        return f"{v:,.0f}"
    if metric.endswith("_ms"):
        return f"{v:.3f}"
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
    for line in (out / "results.tsv").read_text().splitlines():
        if not line.strip():
            continue
        _round, path, workload, metric, value = line.split("\t")
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
        "is better). CPU columns: % of one core during the run (client = wrk or curl; "
        "machine = all cores, max "
        f"{int(meta.get('nproc', '2')) * 100}%; other = machine minus the three before it: "
        "kernel work not charged to them such as loopback softirq, and anything else running). Machine busy before the "
        f"bench: {meta.get('background_cpu_pct', '?')}%. The load generator, the proxy and the three "
        "backends share the same cores."
    )
    print()
    print("| workload | metric | path | median | vs direct | vs haproxy | samples (min–max) | client CPU% | proxy CPU% | backends CPU% | machine CPU% | other CPU% |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    if meta.get("haproxy_splice") == "1":
        print("HAProxy's tcp front has `option splice-request` and `option splice-response`.")
        print()
    for workload, metric, label, unit, _hib in ROWS:
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
                v = med(path, workload, c) if metric in ("rps", "bytes_per_s") else None
                cpu.append("" if v is None else f"{v:.0f}")
            if metric in ("rps", "bytes_per_s") and cpu[3]:
                known = [med(path, workload, c) or 0.0 for c in CPU_METRICS[:3]]
                cpu.append(f"{med(path, workload, CPU_METRICS[3]) - sum(known):.0f}")
            else:
                cpu.append("")
            if path == "direct":
                cpu[1] = "—" if metric in ("rps", "bytes_per_s") else ""
            print(
                f"| {label} | {unit} | {path} | {fmt(metric, m)} | {ratio(m, direct)} | "
                f"{ratio(m, haproxy)} | {spread} | {' | '.join(cpu)} |"
            )


if __name__ == "__main__":
    main()
