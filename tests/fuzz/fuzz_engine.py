"""Fuzz the engine with random and mutated frames: it must never crash, and every frame it
transmits must re-parse with a valid IPv4 header checksum (and a valid TCP/UDP/ICMP checksum
whenever the input's was valid).

    .venv/bin/python -m tests.fuzz.fuzz_engine 1000000 [--seed N]     (from the repository root)
"""
from __future__ import annotations

import argparse
import random
import struct
import sys
import time

import fastlvs.engine._core as core
from tests.core import packets as P

S = 1_000_000_000


def _sum16(b: bytes) -> int:
    if len(b) & 1:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_ok(ip: bytes) -> bool:
    ihl = (ip[0] & 0xF) * 4
    return _sum16(ip[:ihl]) == 0xFFFF


def l4_ok(ip: bytes) -> bool:
    """True when the TCP/UDP/ICMP checksum of this IPv4 packet verifies (UDP 0 = none)."""
    ihl = (ip[0] & 0xF) * 4
    tot = int.from_bytes(ip[2:4], "big")
    proto = ip[9]
    seg = ip[ihl:tot]
    if proto == 1:
        return _sum16(seg) == 0xFFFF
    if proto not in (6, 17):
        return True
    if proto == 17 and len(seg) >= 8 and seg[6:8] == b"\0\0":
        return True
    pseudo = ip[12:20] + bytes([0, proto]) + len(seg).to_bytes(2, "big")
    return _sum16(pseudo + seg) == 0xFFFF


def l3(frame: bytes) -> bytes | None:
    if len(frame) < 14:
        return None
    l2 = 18 if frame[12:14] == b"\x81\x00" else 14
    if frame[l2 - 2:l2] != b"\x08\x00" or len(frame) < l2 + 20:
        return None
    return frame[l2:]


def make_engine(capacity=1 << 16, engine_cls=None) -> core.Engine:
    """The fuzzer's services and dests on a new engine (the extension's, or `engine_cls`)."""
    e = (engine_cls or core.Engine)(capacity=capacity, local_ip=P.LOCAL_IP,
                                    local_mac=P.LOCAL_MAC, mtu=1400)
    e.set_service(1, 6, P.VIP, 80)
    e.set_service(2, 17, P.VIP, 53)
    e.set_service(3, 6, P.VIP, 443, persist_timeout=60, netmask=24)
    e.set_service(4, 6, P.VIP, 8443)
    for i, fwd in enumerate(("dr", "nat", "tun")):
        e.set_dest(1 + i, 1, P.RS[i], 8080, fwd, P.RS_MAC[i], ifindex=10 + i)
        e.set_dest(4 + i, 2, P.RS[i], 5353, fwd, P.RS_MAC[i], ifindex=10 + i)
        e.set_dest(7 + i, 3, P.RS[i], 443, fwd, P.RS_MAC[i], ifindex=10 + i)
        e.set_dest(10 + i, 4, P.RS[i], 8443, fwd, P.RS_MAC[i], ifindex=10 + i)
    e.set_hash_table(4, [10, 11, 12] * 1364 + [10], "mh", 1)
    e.set_gateway_mac(P.GW_MAC, 2)
    rr = [0]

    def cb(svcs, flows):
        out = []
        for s in svcs:
            rr[0] += 1
            out.append({1: 1, 2: 4, 3: 7}[s] + rr[0] % 3)
        return out

    e.set_scheduler_callback(cb)
    return e


def seeds(rng: random.Random) -> list[bytes]:
    base = [c.frame for c in P.CASES]
    for dport in (80, 53, 443, 8443):
        for fl in ("S", "A", "FA", "R", "SA", "PA"):
            base.append(P.tcp(fl, dport=dport, sport=rng.randint(1, 65535),
                              payload=b"p" * rng.randint(0, 1500), vlan=rng.choice([None, 3]),
                              df=rng.random() < 0.5))
        base.append(P.udp(dport=dport, sport=rng.randint(1, 65535),
                          payload=b"u" * rng.randint(0, 1500), zero_csum=rng.random() < 0.3))
    for rport, mk in ((8080, P.reply_tcp), (5353, P.reply_udp)):
        for i in range(3):
            base.append(mk(rs=P.RS[i], rport=rport))
    # ICMP errors about the conns of client port 40000 (both ways, and TUN's IPIP), whole
    # or cut anywhere in what they quote
    base += [P.tcp("S", sport=40000), P.udp(sport=40000, dport=53)]
    for q in (20, 24, 28, 48, 300):
        base.append(P.icmp_about_reply(rng.choice((3, 4, 11, 12)), rng.randint(0, 5),
                                       quote=q, payload=b"e" * 300))
        base.append(P.icmp_about_reply(3, 3, quote=q, proto=17, vport=53))
        for i in range(3):
            base.append(P.icmp_about_request(3, 4, quote=q, rs=P.RS[i],
                                             proto=rng.choice((6, 17)),
                                             rport=rng.choice((8080, 5353))))
            base.append(P.icmp_about_ipip(quote=q + 20, rs=P.RS[i]))
    return base


def mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    k = rng.random()
    if k < 0.25 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif k < 0.4:
        b = b[:rng.randint(0, len(b))]
    elif k < 0.5:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    elif k < 0.6:
        b = bytearray(rng.getrandbits(8) for _ in range(rng.randint(0, 120)))
    elif k < 0.8 and len(b) > 40:
        # new client address/port, header checksum fixed: exercises new flows
        l2 = 18 if b[12:14] == b"\x81\x00" else 14
        b[l2 + 12:l2 + 16] = rng.getrandbits(32).to_bytes(4, "big")
        b[l2 + 10:l2 + 12] = b"\0\0"
        ihl = (b[l2] & 0xF) * 4
        if len(b) >= l2 + ihl:
            b[l2 + 10:l2 + 12] = (~_sum16(bytes(b[l2:l2 + ihl])) & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


def run(count: int, seed: int, batch: int = 64, quiet: bool = False) -> dict:
    rng = random.Random(seed)
    e = make_engine()
    pool = seeds(rng)
    done = sent = 0
    ts = S
    t0 = time.perf_counter()
    while done < count:
        n = min(batch, count - done)
        frames = [mutate(rng, rng.choice(pool)) if rng.random() < 0.8 else rng.choice(pool)
                  for _ in range(n)]
        ts += rng.randint(0, 30 * S)
        outs = e.process(frames, ts)
        for idx, _, out in outs:
            ip = l3(out)
            assert ip is not None, out.hex()
            assert ip_ok(ip), ("bad IP checksum", frames[idx].hex(), out.hex())
            inner_in = l3(frames[idx])
            if inner_in is not None and ip_ok(inner_in) and l4_ok(inner_in):
                if ip[9] == 4:
                    assert ip_ok(ip[20:]) and l4_ok(ip[20:]), (frames[idx].hex(), out.hex())
                else:
                    assert l4_ok(ip), ("bad L4 checksum", frames[idx].hex(), out.hex())
        sent += len(outs)
        done += n
        if not quiet and done % 100_000 < batch:
            print(f"{done} frames, {sent} sent, {time.perf_counter() - t0:.1f}s", flush=True)
    st = e.stats()
    assert st["rx"] == count
    return {"frames": count, "sent": sent, "stats": st}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    res = run(a.count, a.seed)
    print(f"ok: {res['frames']} frames, {res['sent']} transmitted")
    print({k: v for k, v in res["stats"].items() if v})
    return 0


if __name__ == "__main__":
    sys.exit(main())
