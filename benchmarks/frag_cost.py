"""What fragments cost, and what they do not: established DR/NAT frames per second (the fast
path, which a fragment test must not slow) against the baseline loop of the same run, and
fragmented UDP datagrams per second through reassembly and the cut (2 and 6 fragments),
IPv4 and IPv6 (frag6_*: the same datagrams with a Fragment header; v6_to_v4 = time per
datagram against the IPv4 one of the same run).
Run one build:  .venv/bin/python -m benchmarks.frag_cost
Compare two builds in one run by alternating them (PYTHONPATH=OTHER/src for the other).
"""
from __future__ import annotations

import json
import sys
import time

from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import fastlvs.engine._core as core
from fastlvs.engine._testing import Loaded
from benchmarks.bench_engine_common import S, engine, establish, established_frames
from tests.core import packets as P

FRAMES = 65536


def best(fn, rounds=7):
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def established(fwd):
    e = engine(fwd, 1 << 12)
    establish(e, 1000)
    loaded = Loaded(e, established_frames(1000, FRAMES))
    base = best(loaded.baseline)
    run = best(lambda: loaded.process(2 * S))
    return {"ns_per_frame": run / FRAMES * 1e9, "baseline_ns": base / FRAMES * 1e9,
            "ratio_to_baseline": run / base}


def fragmented(size, fragsize):
    if not hasattr(core.Engine, "frag_stats"):
        return None
    e = core.Engine(capacity=1 << 16, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    e.set_service(1, 17, P.VIP, 53)
    e.set_dest(1, 1, P.RS[0], 53, "dr", P.RS_MAC[0], ifindex=10)
    e.set_hash_table(1, [1] * 16, "sh")
    frames = []
    n = 512
    for k in range(n):
        ip = IP(src=P.CLIENT, dst=P.VIP, id=k) / UDP(sport=1024 + k, dport=53) / Raw(b"x" * size)
        frames += [bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / f)
                   for f in fragment(IP(bytes(ip)), fragsize=fragsize)]
    loaded = Loaded(e, frames)
    run = best(lambda: loaded.process(2 * S), rounds=5)
    return {"fragments_per_datagram": len(frames) // n, "datagrams_per_s": n / run,
            "ns_per_fragment": run / len(frames) * 1e9}


VIP6, CLIENT6, RIP6 = "2001:db8:1::100", "2001:db8:1::2", "2001:db8:2::2"


def fragmented6(size, fragsize):
    """As fragmented(), IPv6: pieces of `fragsize` bytes after the fixed header."""
    if not hasattr(core.Engine, "frag_stats") or "timeout6" not in core.Engine(
            capacity=16).frag_stats():
        return None
    e = core.Engine(capacity=1 << 16, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    e.set_service(1, 17, VIP6, 53)
    e.set_dest(1, 1, RIP6, 53, "dr", P.RS_MAC[0], ifindex=10)
    e.set_hash_table(1, [1] * 16, "sh")
    frames = []
    n = 512
    for k in range(n):
        body = bytes(IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=1024 + k, dport=53)
                     / Raw(b"x" * size))[40:]
        for o in range(0, len(body), fragsize):
            fh = IPv6ExtHdrFragment(nh=17, offset=o // 8, m=int(o + fragsize < len(body)),
                                    id=k)
            frames.append(bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                                / IPv6(src=CLIENT6, dst=VIP6) / fh
                                / Raw(body[o:o + fragsize])))
    loaded = Loaded(e, frames)
    run = best(lambda: loaded.process(2 * S), rounds=5)
    return {"fragments_per_datagram": len(frames) // n, "datagrams_per_s": n / run,
            "ns_per_fragment": run / len(frames) * 1e9}


def main():
    out = {"build": core.__file__, "dr": established("dr"), "nat": established("nat"),
           "frag_2": fragmented(2500, 1480), "frag_6": fragmented(8000, 1480),
           "frag6_2": fragmented6(2500, 1448), "frag6_6": fragmented6(8000, 1448)}
    for n in ("2", "6"):
        if out[f"frag6_{n}"] and out[f"frag_{n}"]:
            out[f"frag6_{n}"]["v6_to_v4"] = (out[f"frag_{n}"]["datagrams_per_s"]
                                            / out[f"frag6_{n}"]["datagrams_per_s"])
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
