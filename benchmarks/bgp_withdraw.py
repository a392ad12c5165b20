"""Scale-out behind BGP/ECMP, measured in namespaces (root; lab/cluster.py): how long the
router keeps sending to a director after it stops serving (fastlvs SIGKILLed, drained,
SIGTERMed; the whole director gone with and without BFD), broken long-lived connections per
director lost, drained or added for several schedulers, and CPU per packet of each
director's fastlvs with three directors against one. Writes benchmarks/results/bgp.json.

    .venv/bin/python benchmarks/bgp_withdraw.py [--conns 1000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time

from fastlvs.lab.cluster import Cluster

HERE = os.path.dirname(os.path.abspath(__file__))


def _withdraw(cl: Cluster, how: str) -> float:
    """Seconds from the event to the router's kernel route losing director 0 (admin
    --drain: the admin command's own start-up included)."""
    t0 = time.monotonic()
    if how == "fastlvs SIGKILL":
        cl.stop_director(0, signal.SIGKILL)
    elif how == "admin --drain":
        cl.fastlvs[0].admin("--drain")
    elif how == "SIGTERM":
        cl.fastlvs[0].send(signal.SIGTERM)
    elif how.startswith("director dead"):
        cl.cut_link(0)                  # silent: no withdrawal, no TCP reset reaches the router
    want = len(cl.directors) - 1
    while len(cl.nexthops()) != want:
        if time.monotonic() - t0 > 30:
            raise TimeoutError(how)
        time.sleep(0.002)
    return time.monotonic() - t0


def withdraw_times(repeat: int) -> dict:
    out = {}
    for bfd, hows in ((True, ["fastlvs SIGKILL", "admin --drain", "SIGTERM",
                              "director dead (BFD 3 x 100 ms)"]),
                      (False, ["director dead (hold time 3 s, no BFD)"])):
        for how in hows:
            samples = []
            for _ in range(repeat if "dead" not in how else max(2, repeat // 2)):
                with Cluster(n_directors=2, n_rs=1, clients=4, bfd=bfd, prefix="bw") as cl:
                    cl.start_director(0)
                    cl.start_director(1)
                    cl.wait_nexthops(2)
                    samples.append(_withdraw(cl, how))
                    if 0 in cl.fastlvs and how == "SIGTERM":
                        cl.fastlvs.pop(0).wait(60)
            out[how] = {"median_ms": round(statistics.median(samples) * 1000, 1),
                        "max_ms": round(max(samples) * 1000, 1), "runs": len(samples)}
            print(f"withdraw, {how}: median {out[how]['median_ms']} ms, max "
                  f"{out[how]['max_ms']} ms over {len(samples)} runs", flush=True)
    return out


def broken(sched: str, flags: str, conns: int, sync: bool = False) -> dict:
    """Broken long-lived connections after: one director SIGKILLed, added back, drained
    (SIGTERM), added back. `sync`: full-mesh connection sync between the directors."""
    with Cluster(sched=sched, flags=flags, sync=sync, prefix="bb") as cl:
        for i in range(3):
            cl.start_director(i)
        cl.wait_nexthops(3)
        ll = cl.long_lived(conns)
        if sync:
            ll.probe()
            time.sleep(1.5)
        out, before = {}, 0
        for step, act in (("lost (SIGKILL)", lambda: cl.stop_director(1, signal.SIGKILL)),
                          ("added back", lambda: cl.start_director(1)),
                          ("drained (SIGTERM)", lambda: cl.stop_director(2, signal.SIGTERM)),
                          ("added back again", lambda: cl.start_director(2))):
            act()
            cl.wait_nexthops(len(cl.fastlvs))
            now = ll.probe()
            out[step] = now - before
            before = now
        ll.close()
    name = sched + (f" ({flags})" if flags else "") + (" + sync" if sync else "")
    print(f"broken of {conns}, {name}: {out}", flush=True)
    return out


def cpu_per_packet(n_directors: int, conns: int, rounds: int) -> dict:
    """CPU microseconds per forwarded packet of each director's fastlvs, the idle loop's
    own CPU (measured over the same time before the load) taken off."""
    with Cluster(n_directors=n_directors, prefix="bc") as cl:
        for i in range(n_directors):
            cl.start_director(i)
        cl.wait_nexthops(n_directors)
        ll = cl.long_lived(conns)
        c0, t0 = cl.cpu_seconds(), time.monotonic()
        time.sleep(3)
        idle = {i: (c - c0[i]) / (time.monotonic() - t0) for i, c in cl.cpu_seconds().items()}
        p0, c0, t0 = cl.inpkts(), cl.cpu_seconds(), time.monotonic()
        for _ in range(rounds):
            ll.probe()
        c1, p1, dt = cl.cpu_seconds(), cl.inpkts(), time.monotonic() - t0
        assert not ll.broken
        ll.close()
        out = {}
        for i in range(n_directors):
            pk = p1[i] - p0[i]
            busy = max(0.0, (c1[i] - c0[i]) - idle[i] * dt)
            out[cl.directors[i][-2:]] = {"packets": pk, "cpu_s": round(c1[i] - c0[i], 3),
                                         "idle_cpu_s": round(idle[i] * dt, 3),
                                         "us_per_packet": round(busy / pk * 1e6, 2) if pk
                                         else None}
    print(f"cpu per packet, {n_directors} director(s): {out}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sched", default=None, help="broken: only this one (e.g. wlc+sync)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "bgp.json"))
    ap.add_argument("--parts", default="withdraw,broken,cpu",
                    help="what to measure (the others are kept from --out): withdraw,broken,cpu")
    a = ap.parse_args(argv)
    a.parts = set(a.parts.split(","))
    if os.geteuid() != 0:
        print("bgp_withdraw: needs root (namespaces)", file=sys.stderr)
        return 2
    result: dict = {}
    if os.path.exists(a.out):
        with open(a.out) as f:
            result = json.load(f)
    if "withdraw" in a.parts:
        result["withdraw"] = withdraw_times(a.repeat)
    if "broken" in a.parts:
        result.setdefault("broken", {})
        for sched, flags, sync in (("mh", "", False), ("sh", "sh-port", False),
                                   ("wlc", "", False), ("rr", "", False), ("wlc", "", True)):
            name = sched + (f"+{flags}" if flags else "") + ("+sync" if sync else "")
            if a.sched in (None, name):
                result["broken"][name] = broken(sched, flags, a.conns, sync)
    if "cpu" in a.parts:
        result["cpu"] = {f"{n} director(s)": cpu_per_packet(n, a.conns, a.rounds)
                         for n in (1, 3)}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
