"""Where the XDP offload's time goes, against the stateless XDP DR forwarder (root).

The peers' topology (benchmarks/peers.py: generator on CPU0, the director and its NAPI on
CPU1, 60-byte UDP), flooded with N distinct flows for each N given. For each case the kernel's
own accounting of the XDP program on the director's ingress veth (kernel.bpf_stats_enabled:
run_time_ns / run_cnt, read from the loading process's /proc/PID/fdinfo), and CPU1's busy time
per delivered packet:
  xdp_dr                   the stateless XDP DR forwarder of the peers set;
  fastlvs_dr_offload       fastlvs DR, established flows forwarded by its XDP program;
  fastlvs_dr_offload_one   the same program built so that every frame looks up one flow's
                           slot (a measurement aid, never installed): the difference from
                           fastlvs_dr_offload is what the per-flow table look-up costs once
                           the flows no longer fit in the caches.

    sudo .venv/bin/python -m benchmarks.offload_cost [--flows 1000,70000] [--reps 3]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import peers as P

STEER_SRC = os.path.join(P.ROOT, "src", "fastlvs", "engine", "bpf", "steer.bpf.c")
LOOKUP = "slot = off_find(saddr, "
# flow 0 of the generator (peers.CLIENT_NET, source port 1024): its slot answers every frame
ONE_FLOW = "saddr = bpf_htonl(0x0ac90100); sport = bpf_htons(1024); " + LOOKUP


def build_one_flow(tmp: str) -> str:
    """steer.bpf.c with the offload look-up keyed on flow 0 whatever the frame."""
    src = open(STEER_SRC).read()
    if src.count(LOOKUP) != 1:
        raise RuntimeError(f"{STEER_SRC}: the offload look-up line changed; update {__file__}")
    path = os.path.join(tmp, "steer_one_flow.bpf.c")
    with open(path, "w") as f:
        f.write(src.replace(LOOKUP, ONE_FLOW))
    obj = path[:-2] + ".o"
    arch_inc = "/usr/include/" + P.run("gcc", "-dumpmachine").stdout.strip()
    P.run("clang", "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc,
          "-I", os.path.dirname(STEER_SRC), "-c", path, "-o", obj, timeout=120)
    return obj


def prog_stats(pids) -> dict[str, tuple[int, int]]:
    """prog id -> (run_time_ns, run_cnt) of every BPF program these processes hold."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with contextlib.suppress(OSError):
                    s = open(f"/proc/{pid}/fdinfo/{fd}").read()
                    m = re.search(r"prog_id:\s*(\d+)", s)
                    if m and "run_time_ns" in s:
                        out[m.group(1)] = (int(re.search(r"run_time_ns:\s*(\d+)", s).group(1)),
                                           int(re.search(r"run_cnt:\s*(\d+)", s).group(1)))
    return out


def measure(ctx, pids, warmup: float, seconds: float) -> dict:
    """Flood for warmup + seconds; the busiest program's ns per run over the window, and
    delivered pps and CPU1 µs per delivered packet as peers.one_run counts them."""
    t = ctx.topo
    total = warmup + seconds + 0.3
    g = ctx.procs.start(["ip", "netns", "exec", t.gen, ctx.bins["xdptool"], "gen", t.g0,
                         ctx.bins["gen"], P.gen_cfg(t, 0.0), f"{total:.2f}"],
                        cpu=P.GEN_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(warmup)
        p0, c0, (b0, _), w0 = (prog_stats(pids), sum(s.count() for s in ctx.sinks),
                               P.cpu_times(P.DIR_CPU), time.monotonic())
        time.sleep(seconds)
        p1, c1, (b1, _), w1 = (prog_stats(pids), sum(s.count() for s in ctx.sinks),
                               P.cpu_times(P.DIR_CPU), time.monotonic())
        g.communicate(timeout=total + 10)
    finally:
        ctx.procs.stop(g)
    runs = {k: (p1[k][0] - p0[k][0], p1[k][1] - p0[k][1]) for k in p1 if k in p0}
    ns, cnt = max(runs.values(), key=lambda r: r[1], default=(0, 0))
    pkts = c1 - c0
    return {"prog_ns": ns / cnt if cnt else None, "prog_runs": cnt, "pps": pkts / (w1 - w0),
            "cpu_us_per_packet": (b1 - b0) / pkts * 1e6 if pkts else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", default="1000,70000", help="comma-separated flow counts")
    ap.add_argument("--reps", type=int, default=3, help="runs per case and flow count")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of traffic before")
    ap.add_argument("--out", default=os.path.join(P.HERE, "results", "offload_cost.json"))
    args = ap.parse_args(argv)
    try:
        flows = [int(x) for x in args.flows.split(",")]
    except ValueError:
        ap.error(f"--flows: not a comma-separated list of integers: {args.flows!r}")
    if os.geteuid() != 0:
        P.log("needs root (namespaces, XDP, kernel.bpf_stats_enabled)")
        return 2
    cases = {c.name: c for c in P.CASES}
    names = ["xdp_dr", "fastlvs_dr_offload", "fastlvs_dr_offload_one"]
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    stats_was = open(stats_path).read().strip()
    topo, procs = P.Topo(), P.Procs()
    tmp = tempfile.mkdtemp(prefix="fastlvs-offload-cost-")
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "kernel": os.uname().release,
           "seconds": args.seconds, "reps": args.reps, "runs": []}
    try:
        with open(stats_path, "w") as f:
            f.write("1")
        bins = P.build(tmp)
        one_flow = build_one_flow(tmp)
        topo.build()
        ctx = P.Ctx(topo, procs, bins, tmp)
        ctx.sinks = [P.Sink(procs, topo.rs[i], topo.rn[i], bins) for i in range(2)]
        for n in flows:
            P.FLOWS = n                  # gen_cfg reads it: flow i = CLIENT_NET + i // 1024
            for rep in range(args.reps):
                for name in names[rep % 3:] + names[:rep % 3]:
                    case = cases[name.replace("_one", "")]
                    P.reset_dir(topo)
                    started = []
                    env_was = os.environ.pop("FASTLVS_STEER_OBJ", None)
                    try:
                        if name.endswith("_one"):
                            os.environ["FASTLVS_STEER_OBJ"] = one_flow
                        started = case.setup(ctx)
                        time.sleep(0.3)
                        topo.pin_napi(0)
                        r = measure(ctx, [p.pid for p in started], args.warmup, args.seconds)
                    finally:
                        os.environ.pop("FASTLVS_STEER_OBJ", None)
                        if env_was is not None:
                            os.environ["FASTLVS_STEER_OBJ"] = env_was
                        for p in started:
                            procs.stop(p)
                        P.reset_dir(topo)
                    r.update(case=name, flows=n, rep=rep)
                    res["runs"].append(r)
                    P.log(f"{name} {n} flows #{rep + 1}: program {r['prog_ns'] or 0:.0f} ns/run, "
                          f"{r['pps'] / 1e6:.3f} Mpps, CPU1 {r['cpu_us_per_packet'] or 0:.2f} µs/packet")
    finally:
        with open(stats_path, "w") as f:
            f.write(stats_was)
        procs.stop_all()
        topo.destroy()
        subprocess.run(["rm", "-rf", tmp], check=False)
    summary = {}
    for n in flows:
        for name in names:
            rs = [r for r in res["runs"] if r["case"] == name and r["flows"] == n]
            ns = [r["prog_ns"] for r in rs if r["prog_ns"]]
            us = [r["cpu_us_per_packet"] for r in rs if r["cpu_us_per_packet"]]
            summary[f"{name} {n}"] = {"prog_ns": statistics.median(ns) if ns else None,
                                      "cpu_us_per_packet": statistics.median(us) if us else None}
    res["summary"] = summary
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{'case':28s} {'flows':>6s} {'program ns/run':>15s} {'CPU1 µs/packet':>15s}")
    for key, s in summary.items():
        name, n = key.rsplit(" ", 1)
        print(f"{name:28s} {n:>6s} {s['prog_ns'] or 0:15.0f} {s['cpu_us_per_packet'] or 0:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
