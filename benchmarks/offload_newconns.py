"""New connections per second with the XDP offload on and off (root: the offload map is a
real BPF map). Distinct TCP flows to one DR service through the engine (Engine.process, in
memory, no rings): "SYN only" opens each connection (nothing to install: it is not yet
established), "SYN+ACK" opens and establishes it (with the offload, the ACK installs it in the
flow table: a slot written through mmap, no syscall but the dest's first). Runs of both settings alternate; prints one JSON
object with the medians and the on/off ratios measured in this run.

    sudo .venv/bin/python -m benchmarks.offload_newconns [--conns 20000] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from fastlvs.engine import _core as core
from tests.core.packets import LOCAL_IP, LOCAL_MAC, RS, RS_MAC, VIP, tcp


def frames(n: int, ack: bool) -> list[bytes]:
    syn = tcp("S")
    a = tcp("A")
    out = []
    for i in range(n):
        src = bytes([10, 100 + (i >> 16), (i >> 8) & 0xFF, i & 0xFF])
        for f in ((syn, a) if ack else (syn,)):
            b = bytearray(f)
            b[26:30] = src
            # the IP checksum after the source changed: recomputed, as a sender would
            b[24:26] = b"\0\0"
            s = sum(int.from_bytes(b[14 + k:16 + k], "big") for k in range(0, 20, 2))
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            b[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
            # TCP checksum: the pseudo-header moved by the same words (RFC 1624)
            old = int.from_bytes(f[26:30], "big")
            new = int.from_bytes(src, "big")
            c = ~int.from_bytes(b[50:52], "big") & 0xFFFF
            c += (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            b[50:52] = (~c & 0xFFFF).to_bytes(2, "big")
            out.append(bytes(b))
    return out


def one(n: int, ack: bool, offload: bool, fr: list[bytes]) -> float:
    e = core.Engine(capacity=2 * n, local_ip=LOCAL_IP, local_mac=LOCAL_MAC)
    e.set_service(1, 6, VIP, 80, sched="sh")
    e.set_dest(1, 1, RS[0], 80, "dr", RS_MAC[0], ifindex=10)
    e.set_hash_table(1, [1] * 256, "sh")             # new flows scheduled in C: no callback
    if offload:
        e.offload_enable()
    t0 = time.perf_counter()
    out = e.process(fr, time.monotonic_ns())
    dt = time.perf_counter() - t0
    assert len(out) == len(fr), (len(out), len(fr))
    assert e.stats()["conns_created"] == n
    if offload:
        assert e.offload_stats()["installed"] == (n if ack else 0)
        e.offload_disable()
    return n / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (a BPF map)", file=sys.stderr)
        return 2
    res = {}
    for ack in (False, True):
        fr = frames(args.conns, ack)
        runs = {True: [], False: []}
        for _ in range(args.reps):
            for off in (False, True):
                runs[off].append(one(args.conns, ack, off, fr))
        kind = "syn_ack" if ack else "syn_only"
        res[kind] = {"off_conns_per_s": statistics.median(runs[False]),
                     "on_conns_per_s": statistics.median(runs[True]),
                     "paired_on_over_off": statistics.median(
                         a / b for a, b in zip(runs[True], runs[False]))}
    res["conns"] = args.conns
    res["reps"] = args.reps
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
