"""What one /metrics scrape costs the daemon's loop, against `ipvsadm -Ln --stats` of the same
table (the control socket's listing, answered in one loop turn; measured in the same run,
same engine build).

    .venv/bin/python -m benchmarks.metrics_scrape [SERVICES] [DESTS]     (repository root)

A Director over the extension with SERVICES services of DESTS real servers each. A scrape
costs the loop its snapshot (Metrics.snapshot(): the director's numbers copied); the text is
made from it by the server's worker thread (Metrics.render(snap)), which costs CPU time but
holds no loop turn. CPU times (process_time), medians of ROUNDS, and the exposition's size.
Then what the worker costs the loop: a stand-in for the loop (1 ms without the interpreter
lock, as the ring poll waits in C, then a little Python) runs for as long as one render,
with and without the render beside it; its turns' overshoot past 1 ms is reported.
"""
from __future__ import annotations

import statistics
import sys
import threading
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


def loop_turns(seconds: float) -> list[float]:
    """Overshoots past 1 ms of a stand-in loop's turns for `seconds`."""
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        time.sleep(0.001)                # the GIL is released, as in the ring poll
        sum(range(50))                   # the turn's Python part needs it back
        out.append(time.perf_counter() - t0 - 0.001)
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


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
    wall = time.perf_counter()
    m.render(snap)
    wall = time.perf_counter() - wall
    alone = loop_turns(wall)
    worker = threading.Thread(target=m.render, args=(snap,))
    worker.start()
    beside = loop_turns(wall)
    worker.join()
    for name, xs in (("alone", alone), ("beside a render", beside)):
        print(f"  loop turn overshoot, {name:<16} p50 {pct(xs, .5) * 1e3:.2f} ms, "
              f"p99 {pct(xs, .99) * 1e3:.2f} ms, max {max(xs) * 1e3:.2f} ms ({len(xs)} turns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
