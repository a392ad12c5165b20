"""Two RX queues against one, with the XDP offload (root).

The peers' topology (benchmarks/peers.py) with the director's ingress veth made with 1 or 2
queues, and one generator per CPU (a veth hands an XDP frame to the RX queue numbered after
the CPU that sent it, so one generator can only ever fill one queue). Queue i's NAPI thread is
pinned to CPU i; with one queue its only thread is on CPU1, as in peers.py. Cases:
  xdp_dr               the stateless XDP DR forwarder;
  fastlvs_dr_offload   fastlvs DR with the offload (established flows forwarded in each
                       queue's NAPI, the one map shared; new flows reach the engine through
                       that queue's AF_XDP socket, all sockets polled by the daemon's loop).
Reports delivered pps and both CPUs' busy time per delivered packet, 1 queue and 2, runs
alternating. On a 2-CPU machine the generators take the same CPUs as the director, so this
shows whether every queue is served, not how forwarding scales with cores.

    sudo .venv/bin/python -m benchmarks.queues [--reps 3] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import peers as P

CPUS = (0, 1)


def pin_ingress_napi(t: P.Topo) -> list[str]:
    """d0's NAPI threads (queue order = NAPI id order) on CPU i for queue i, the others' on
    CPU1, all at nice 0."""
    from fastlvs.system.napi import napi_threads
    ingress = sorted(napi_threads(t.d0).items(), key=lambda kv: int(kv[1].rsplit("-", 1)[1]))
    done = []
    for i, (pid, comm) in enumerate(ingress):
        P.run("taskset", "-p", "-c", str(CPUS[i % len(CPUS)]), str(pid), check=False)
        done.append(f"{comm} cpu{CPUS[i % len(CPUS)]}")
    for dev in t.dn:
        for pid, comm in napi_threads(dev).items():
            P.run("taskset", "-p", "-c", "1", str(pid), check=False)
    for pid in list(napi_threads(t.d0)) + [p for d in t.dn for p in napi_threads(d)]:
        P.run("chrt", "-o", "-p", "0", str(pid), check=False)
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 0)
        except OSError:
            pass
    return done


def queue_redirects(t: P.Topo) -> list[int]:
    """Frames each RX queue of the ingress veth sent on by XDP_REDIRECT (ethtool -S)."""
    out = t.nsx(t.dir, "ethtool", "-S", t.d0).stdout
    got = {}
    for line in out.splitlines():
        k, _, v = line.strip().partition(": ")
        if k.startswith("rx_queue_") and k.endswith("_xdp_redirect"):
            got[int(k.split("_")[2])] = int(v)
    return [got[q] for q in sorted(got)]


def measure(ctx, warmup: float, seconds: float) -> dict:
    t = ctx.topo
    total = warmup + seconds + 0.3
    gens = [ctx.procs.start(["ip", "netns", "exec", t.gen, ctx.bins["xdptool"], "gen", t.g0,
                             ctx.bins["gen"], P.gen_cfg(t, 0.0), f"{total:.2f}"],
                            cpu=cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for cpu in CPUS]
    try:
        time.sleep(warmup)
        c0, b0, w0, q0 = (sum(s.count() for s in ctx.sinks),
                          sum(P.cpu_times(c)[0] for c in CPUS), time.monotonic(), queue_redirects(t))
        time.sleep(seconds)
        c1, b1, w1, q1 = (sum(s.count() for s in ctx.sinks),
                          sum(P.cpu_times(c)[0] for c in CPUS), time.monotonic(), queue_redirects(t))
        sent = 0.0
        for g in gens:
            out, _ = g.communicate(timeout=total + 10)
            try:
                sent += json.loads(out.strip().splitlines()[-1])["sent"]
            except (ValueError, IndexError, KeyError):
                pass
    finally:
        for g in gens:
            ctx.procs.stop(g)
    pkts = c1 - c0
    return {"pps": pkts / (w1 - w0), "offered_pps": sent / total,
            "redirected_per_queue": [b - a for a, b in zip(q0, q1)],
            "cpu_us_per_packet": (b1 - b0) / pkts * 1e6 if pkts else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per case and queue count")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before")
    ap.add_argument("--out", default=os.path.join(P.HERE, "results", "queues.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        P.log("needs root (namespaces, XDP)")
        return 2
    cases = {c.name: c for c in P.CASES}
    names = ["xdp_dr", "fastlvs_dr_offload"]
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "kernel": os.uname().release,
           "seconds": args.seconds, "reps": args.reps, "generators": len(CPUS), "runs": []}
    tmp = tempfile.mkdtemp(prefix="fastlvs-queues-")
    procs = P.Procs()
    try:
        bins = P.build(tmp)
        for rep in range(args.reps):
            for nq in ((1, 2) if rep % 2 == 0 else (2, 1)):
                topo = P.Topo()
                topo.queues = nq
                try:
                    topo.build()
                    ctx = P.Ctx(topo, procs, bins, tmp)
                    ctx.sinks = [P.Sink(procs, topo.rs[i], topo.rn[i], bins) for i in range(2)]
                    for name in names:
                        P.reset_dir(topo)
                        started = []
                        try:
                            started = cases[name].setup(ctx)
                            time.sleep(0.3)
                            napi = pin_ingress_napi(topo)
                            r = measure(ctx, args.warmup, args.seconds)
                        finally:
                            for p in started:
                                procs.stop(p)
                            P.reset_dir(topo)
                        r.update(case=name, queues=nq, rep=rep, napi=napi)
                        res["runs"].append(r)
                        P.log(f"{name}, {nq} queue(s) #{rep + 1}: {r['pps'] / 1e6:.3f} Mpps of "
                              f"{r['offered_pps'] / 1e6:.2f} offered, "
                              f"{r['cpu_us_per_packet'] or 0:.2f} µs CPU/packet, redirected "
                              f"per queue {r['redirected_per_queue']}")
                finally:
                    procs.stop_all()
                    topo.destroy()
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", tmp], check=False)
    summary = {}
    for name in names:
        for nq in (1, 2):
            rs = [r for r in res["runs"] if r["case"] == name and r["queues"] == nq]
            summary[f"{name} {nq}q"] = {
                "median_pps": statistics.median(r["pps"] for r in rs),
                "median_cpu_us_per_packet": statistics.median(
                    r["cpu_us_per_packet"] for r in rs if r["cpu_us_per_packet"])}
        one, two = summary[f"{name} 1q"], summary[f"{name} 2q"]
        summary[f"{name} 2q/1q"] = two["median_pps"] / one["median_pps"]
    res["summary"] = summary
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
