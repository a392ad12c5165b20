"""What one /metrics scrape costs the daemon's loop, against `ipvsadm -Ln --stats` of the same
table (the control socket's listing, answered in one loop turn; measured in the same run,
same engine build).

    .venv/bin/python -m benchmarks.metrics_scrape [SERVICES] [DESTS]     (repository root)

A Director over the extension with SERVICES services of DESTS real servers each. A scrape
costs the loop its snapshot (Metrics.snapshot(): the director's numbers copied); the text is
made from it by the server's worker thread (Metrics.render(snap)), which costs CPU time but
holds no loop turn. CPU times (process_time), medians of ROUNDS, and the exposition's size.
"""
from __future__ import annotations

import statistics
import sys
import time

from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.metrics import director_metrics
from fastlvs.engine._core import Engine

ROUNDS = 21


def build(services: int, dests: int) -> Director:
    d = Director(Engine(capacity=1 << 16, batch=64, local_ip="192.0.2.1",
                        local_mac="02:00:00:00:00:01"),
                 lambda ip: (b"\x02\0\0\0\0\x01", 1))
    for s in range(services):
        vip = f"203.0.{113 + s // 250}.{1 + s % 250}:80"
        d.execute(parse_command(["-A", "-t", vip, "-s", "wlc"]))
        for r in range(dests):
            d.execute(parse_command(["-a", "-t", vip, "-r", f"10.{r // 250}.{r % 250}.1:80",
                                     "-g", "-w", str(1 + r % 5)]))
    return d


def timed(fn, rounds=ROUNDS) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    services = int(argv[0]) if argv else 100
    dests = int(argv[1]) if len(argv) > 1 else 10
    d = build(services, dests)
    m = director_metrics(d)
    snap = m.snapshot()
    size = len(m.render(snap))
    loop = timed(m.snapshot)
    worker = timed(lambda: m.render(snap))
    listing = timed(lambda: d.list(stats=True, numeric=True, exact=True))
    med_s, med_w, med_l = (statistics.median(x) for x in (loop, worker, listing))
    n = services * dests
    print(f"{services} services x {dests} real servers ({n} backends), {ROUNDS} rounds, "
          f"CPU time medians")
    print(f"  loop's part (snapshot):   {med_s * 1e3:7.2f} ms  ({med_s / n * 1e6:.1f} us a backend)")
    print(f"  worker's part (text):     {med_w * 1e3:7.2f} ms  ({size / 1024:.0f} KiB)")
    print(f"  -Ln --stats (one turn):   {med_l * 1e3:7.2f} ms")
    print(f"  loop's part / listing:    {med_s / med_l:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
