"""Failover of a fastlvs director pair, measured (root; keepalived installed): connections lost
per failover and the new-connection outage, for DR and NAT, a crashed master (SIGKILL to its
fastlvs and keepalived) and a master whose LAN link goes down; several runs, median and worst.

    .venv/bin/python -m benchmarks.failover [--runs 3] [--modes dr,nat]
        [--events sigkill,linkdown,fastlvs] [--long 200] [--interval 0.05] [--rate 100]
        [--out benchmarks/results/failover.json]

Each run builds a fresh pair (fastlvs.lab.pair: two directors running keepalived --vrrp under
fastlvs, lvs_sync_daemon in their keepalived.conf, advert_int 1, priorities 150/100), opens
--long long-lived connections that exchange a message every --interval plus --rate new
connections per second (fastlvs.lab.load, attempt timeout 1 s), lets them run 2 s, fails the
master, and keeps the load 5 s after the backup holds the VIP. Per run it records:
  lost            long-lived connections lost (reset, or no echo within 15 s)
  new_failed      new connections that failed (refused, reset, no answer within 1 s)
  outage_ms       first to last failed new connection (by start time)
  gap_ms          the longest time between two successful new connections
  takeover_ms     from the failure to the backup holding the VIP (polled every 50 ms)
The VRRP figure beside them is keepalived's own: a backup declares the master dead after
Master_Down_Interval = 3 * advert_int + (256 - priority) / 256 * advert_int (RFC 3768), the
same with the kernel's IPVS behind keepalived; the sync daemon does not change it.
Event `fastlvs` kills fastlvs alone (its keepalived must follow it: SIGTERM by parent-death
signal, so it gives the VIP up at once).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from fastlvs.lab.pair import Pair

EVENTS = ("sigkill", "linkdown", "fastlvs")
BEFORE = 2.0
AFTER = 5.0
TAKEOVER = 30.0


def master_down_interval(advert_int: float, priority: int) -> float:
    """RFC 3768's Master_Down_Interval of a backup with `priority`, in seconds."""
    return 3 * advert_int + (256 - priority) / 256 * advert_int


def one_run(mode: str, event: str, n_long: int, interval: float, rate: float) -> dict:
    pair = Pair(mode).build()
    try:
        pair.start()
        lr = pair.load(long=n_long, interval=interval, rate=rate, duration=120,
                       echo_timeout=15.0, attempt_timeout=1.0)
        lr.start()
        try:
            time.sleep(BEFORE)
            t0 = time.monotonic()
            if event == "sigkill":
                pair.kill_director(0)
            elif event == "linkdown":
                pair.link(0, False)
            else:
                pair.kill_fastlvs(0)
            pair.wait_holder(1, TAKEOVER)
            takeover = time.monotonic() - t0
            time.sleep(AFTER)
            s = lr.stop()
        finally:
            lr.kill()
    finally:
        pair.destroy()
    return {"mode": mode, "event": event, "opened": s["long"]["opened"],
            "lost": s["long"]["lost"], "lost_by_reason": s["long"]["lost_by_reason"],
            "new_attempts": s["new"]["attempts"], "new_failed": s["new"]["failed"],
            "outage_ms": s["outage"]["window_ms"], "gap_ms": s["outage"]["longest_gap_ms"],
            "takeover_ms": round(takeover * 1000, 1), "max_stall_ms": s["long"]["max_stall_ms"]}


def aggregate(runs: list[dict]) -> dict:
    """Median and worst of each figure over the runs of one (mode, event)."""
    out = {}
    for key in ("lost", "new_failed", "outage_ms", "gap_ms", "takeover_ms"):
        vals = [r[key] for r in runs if r[key] is not None]
        out[key] = {"median": statistics.median(vals) if vals else None,
                    "worst": max(vals) if vals else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="dr,nat")
    ap.add_argument("--events", default="sigkill,linkdown")
    ap.add_argument("--long", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "failover.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("failover: needs root (namespaces)", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    events = args.events.split(",")
    bad = [e for e in events if e not in EVENTS] + [m for m in modes if m not in ("dr", "nat")]
    if bad:
        print(f"failover: unknown mode or event: {', '.join(bad)}", file=sys.stderr)
        return 2
    results = {"runs": [], "summary": {},
               "vrrp_master_down_s": master_down_interval(1.0, 100)}
    for _ in range(args.runs):                   # round-robin: a slow spell hits every case
        for mode in modes:
            for event in events:
                r = one_run(mode, event, args.long, args.interval, args.rate)
                print(json.dumps(r), flush=True)
                results["runs"].append(r)
    print(f"\n{'case':<18}{'lost':>12}{'new failed':>14}{'outage ms':>16}{'gap ms':>16}"
          f"{'takeover ms':>16}   (median / worst of {args.runs})")
    for mode in modes:
        for event in events:
            agg = aggregate([r for r in results["runs"]
                             if r["mode"] == mode and r["event"] == event])
            results["summary"][f"{mode}/{event}"] = agg
            cells = "".join(f"{_fmt(agg[k]):>{w}}" for k, w in
                            (("lost", 12), ("new_failed", 14), ("outage_ms", 16),
                             ("gap_ms", 16), ("takeover_ms", 16)))
            print(f"{mode + '/' + event:<18}{cells}")
    print(f"VRRP Master_Down_Interval (advert_int 1, backup priority 100): "
          f"{results['vrrp_master_down_s'] * 1000:.0f} ms")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


def _fmt(a: dict) -> str:
    if a["median"] is None:
        return "-"
    return f"{a['median']:g} / {a['worst']:g}"


if __name__ == "__main__":
    sys.exit(main())
