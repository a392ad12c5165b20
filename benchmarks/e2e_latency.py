"""Client-observed figures of the live director (root; network namespaces of fastlvs.lab.testbed):
HTTP requests, each over its own new TCP connection (connect, GET, answer, close), from the
client namespace to the VIP through `fastlvs` in DR and NAT mode over AF_XDP and AF_PACKET,
next to the same client talking to that one real server directly (the DR topology, same
bridge, no director); the VIP has that one server only, so the server side is identical.
Latency: one client in a loop (p50/p99/mean of the whole exchange); requests/s: that loop,
and `--threads` client threads at once for `--seconds`. The cases run interleaved for
`--rounds` rounds and each figure is the median over the rounds. Bounded (~1 min); prints
JSON (also to --json FILE) and a markdown table.

    sudo .venv/bin/python benchmarks/e2e_latency.py [--requests 1000] [--threads 4] \
        [--seconds 2] [--rounds 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time

from fastlvs.lab.testbed import Testbed

WARMUP = 30


def measure_serial(tb: Testbed, ip: str, n: int) -> dict:
    for _ in range(WARMUP):          # neighbours learned, servers' threads warm
        tb.http_get(ip)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        tb.http_get(ip)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": n, "rps": n / wall, "p50_ms": 1e3 * lat[len(lat) // 2],
            "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "mean_ms": 1e3 * statistics.fmean(lat), "max_ms": 1e3 * lat[-1]}


def measure_parallel(tb: Testbed, ip: str, threads: int, seconds: float) -> dict:
    done = [0] * threads
    errors = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(i):
        while time.perf_counter() < stop:
            try:
                tb.http_get(ip, timeout=2.0)
                done[i] += 1
            except (OSError, RuntimeError):
                errors[i] += 1

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 10)
    wall = time.perf_counter() - t0
    return {"threads": threads, "rps": sum(done) / wall, "errors": sum(errors)}


CASES = [("dr", None), ("dr", "xdp"), ("dr", "packet"), ("nat", "xdp"), ("nat", "packet")]


def case_name(mode, backend):
    return "direct to one RS" if backend is None else f"fastlvs {mode.upper()} {backend}"


def run_once(tb: Testbed, backend: str | None, args) -> dict:
    """One measurement on a built cluster; backend None: the client asks rs1 directly."""
    d = None
    if backend is None:
        ip = tb.rips[0]
    else:
        # one real server behind the VIP: the same server process as the direct case, so
        # the difference is the director alone
        d = tb.start_daemon("--rules", tb.write_rules(tb.rules({"rs1": 1}, sched="rr",
                                                               udp=False)), backend=backend)
        ip = tb.vip
    try:
        return {"serial": measure_serial(tb, ip, args.requests),
                "parallel": measure_parallel(tb, ip, args.threads, args.seconds)}
    finally:
        if d is not None:
            d.stop()


def median_of(runs: list[dict]) -> dict:
    """Field by field median over the rounds (the machine is shared: one slow round must not
    decide a figure); errors are summed."""
    out = {}
    for part in ("serial", "parallel"):
        out[part] = {}
        for k in runs[0][part]:
            vals = [r[part][k] for r in runs]
            out[part][k] = sum(vals) if k == "errors" else statistics.median(vals)
    return out


def run_all(args) -> list[dict]:
    beds = {}
    try:
        for mode in ("dr", "nat"):
            beds[mode] = Testbed(mode, n_rs=3, prefix="flbench").build()
        rounds = {c: [] for c in CASES}
        for _ in range(args.rounds):          # interleaved: load bursts hit every case alike
            for mode, backend in CASES:
                rounds[(mode, backend)].append(run_once(beds[mode], backend, args))
    finally:
        for tb in beds.values():
            tb.destroy()
    return [{"case": case_name(m, b), "mode": m if b else "direct", "backend": b,
             **median_of(rounds[(m, b)]), "rounds": rounds[(m, b)]} for m, b in CASES]


def table(results: list[dict], args) -> str:
    rows = ["| path | req/s (1 client) | p50 ms | p99 ms | req/s "
            f"({args.threads} clients) | errors |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        s, p = r["serial"], r["parallel"]
        rows.append(f"| {r['case']} | {s['rps']:.0f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} "
                    f"| {p['rps']:.0f} | {p['errors']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000, help="serial requests per case and round")
    ap.add_argument("--threads", type=int, default=4, help="parallel clients")
    ap.add_argument("--seconds", type=float, default=2.0, help="parallel run length")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians kept")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e_latency: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results = run_all(args)
    out = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                       "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
           "method": "HTTP/1.0 GET, new TCP connection per request, Python client in the "
                     "client netns; veths on a Linux bridge", "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print()
    print(table(results, args))
    print(f"\n(load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f}; "
          f"{os.cpu_count()} CPUs shared by client, director and servers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
