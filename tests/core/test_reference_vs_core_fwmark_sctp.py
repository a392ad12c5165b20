"""Differential tests of SCTP and firewall-mark services: the extension and the reference engine
(Twin of test_reference_vs_core) get the same random sequences (SCTP chunks of both sides of
several associations over NAT, DR and TUN, with bad CRCs, truncated chunks and bundled
ABORTs; frames to addresses and ports in and out of mark rules, with a port service under the
mark, persistence by the mark, and the mark's service or rules changing midway) and must
answer every frame and every listing alike."""
from __future__ import annotations

import random

import pytest
from scapy.layers import sctp as SC
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.core import packets as P
from tests.core.helpers import S
from tests.core.test_reference_vs_core import Twin

CHUNKS = [
    lambda: SC.SCTPChunkInit(init_tag=7, a_rwnd=1500, n_out_streams=1, n_in_streams=1),
    lambda: SC.SCTPChunkInitAck(init_tag=8, a_rwnd=1500, n_out_streams=1, n_in_streams=1),
    lambda: SC.SCTPChunkCookieEcho(cookie=b"k" * 8),
    lambda: SC.SCTPChunkCookieAck(),
    lambda: SC.SCTPChunkData(data=b"d" * 10),
    lambda: SC.SCTPChunkSACK(),
    lambda: SC.SCTPChunkHeartbeatReq(),
    lambda: SC.SCTPChunkShutdown(),
    lambda: SC.SCTPChunkShutdownAck(),
    lambda: SC.SCTPChunkShutdownComplete(),
    lambda: SC.SCTPChunkAbort(),
    lambda: SC.SCTPChunkError(),
    lambda: SC.SCTPChunkCookieEcho(cookie=b"k" * 5) / SC.SCTPChunkAbort(),
]


def sctp_frame(rng, side, cport, rs=0, rport=7001):
    if side == "c":
        base = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IP(src=P.CLIENT, dst=P.VIP) / \
            SC.SCTP(sport=cport, dport=7000, tag=3)
    else:
        base = Ether(src=P.RS_MAC[rs], dst=P.LOCAL_MAC) / IP(src=P.RS[rs], dst=P.CLIENT) / \
            SC.SCTP(sport=rport, dport=cport, tag=3)
    # a client opens often (an INIT a quarter of the time), so that associations live
    chunk = CHUNKS[0]() if side == "c" and rng.random() < 0.25 else rng.choice(CHUNKS)()
    b = bytearray(bytes(base / chunk))
    r = rng.random()
    if r < 0.05:
        b[14 + 20 + 9] ^= 0x40                          # a bad CRC
    elif r < 0.1:
        b = b[:14 + 20 + 12 + rng.randrange(4)]         # the first chunk cut short
        b[16:18] = (len(b) - 14).to_bytes(2, "big")
        b[24:26] = b"\0\0"                             # with a right IP checksum
        total = sum(int.from_bytes(b[i:i + 2], "big") for i in range(14, 34, 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        b[24:26] = (~total & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("fwd", ["nat", "dr", "tun"])
@pytest.mark.parametrize("seed", range(4))
def test_random_sctp_sequences(fwd, seed):
    rng = random.Random(seed)
    t = Twin(capacity=256, batch=8, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    t.set_service(1, "sctp", P.VIP, 7000)
    for i in range(2):
        t.set_dest(1 + i, 1, P.RS[i], 7001 if fwd == "nat" else 7000, fwd, P.RS_MAC[i],
                   ifindex=10 + i)
    t.set_gateway_mac(P.GW_MAC, 2)

    def make():
        n = [0]

        def cb(svcs, flows):
            n[0] += len(flows)
            return [1 + (n[0] + k) % 2 for k in range(len(flows))]
        return cb
    t.set_callback(make)
    now = S
    for _ in range(40):
        frames = [sctp_frame(rng, rng.choice("ccs"), 40000 + rng.randrange(4),
                             rs=rng.randrange(2), rport=7001 if fwd == "nat" else 7000)
                  for _ in range(rng.randrange(1, 6))]
        now += rng.choice([S // 10, S // 10, S, 5 * S, 70 * S])
        t.run(frames, now)
    st = t.core.stats()
    assert st["conns_created"] >= 5 and st["tx"] >= 20 and st["malformed"] >= 1
    t.run_timers(now + 1000 * S)
    t.check(now + 1000 * S)


MARKS = [(1, "tcp", "10.9.0.0/30", 8000, 8003), (2, None, "10.9.0.4/32", 0, 65535),
         (3, "udp", "10.9.0.0/29", 53, 53)]


def mark_frame(rng):
    dst = f"10.9.0.{rng.randrange(9)}"
    proto = rng.choice(["tcp", "udp", "sctp"])
    dport = rng.choice([53, 80, 8000, 8002, 8003, 8004])
    sport = 1000 + rng.randrange(5)
    ip = IP(src=P.CLIENT, dst=dst)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=rng.choice(["S", "A", "SA", "R", "F"]))
    elif proto == "udp":
        l4 = UDP(sport=sport, dport=dport) / b"q"
    else:
        l4 = SC.SCTP(sport=sport, dport=dport) / rng.choice(CHUNKS[:3])()
    return bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / ip / l4)


@pytest.mark.parametrize("seed", range(6))
def test_random_mark_traffic_and_changes(seed):
    rng = random.Random(seed)
    t = Twin(capacity=512, batch=8, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    t.set_marks(MARKS)
    t.set_fwm_service(1, 1)
    t.set_fwm_service(2, 2, persist_timeout=30)
    t.set_service(3, "tcp", "10.9.0.1", 8002)                 # under mark 1's range
    t.set_service(4, "udp", "10.9.0.6", 0, persist_timeout=60)  # port 0, under mark 3's
    for sid in (1, 2, 3, 4):
        for i in range(2):
            t.set_dest(sid * 10 + i, sid, P.RS[i], rng.choice([0, 9000]) if sid != 3 else 9,
                       rng.choice(["nat", "dr"]), P.RS_MAC[i], ifindex=10 + i)
    t.set_gateway_mac(P.GW_MAC, 2)

    def make():
        n = [0]

        def cb(svcs, flows):
            out = []
            for s in svcs:
                n[0] += 1
                out.append(s * 10 + n[0] % 2)
            return out
        return cb
    t.set_callback(make)
    now = S
    for step in range(60):
        if step == 20:
            t.set_fwm_service(5, 3, persist_timeout=10)       # mark 3 gets a service
            t.set_dest(50, 5, P.RS[2], 0, "nat", P.RS_MAC[2], ifindex=12)
        if step == 35:
            t.del_service(1)                                  # its conns live on
        if step == 45:
            t.set_marks(MARKS[1:])
        frames = [mark_frame(rng) for _ in range(rng.randrange(1, 6))]
        now += rng.choice([S // 10, S, 20 * S])
        t.run(frames, now)
    assert t.core.marks() == t.ref.marks()
    assert t.core.stats()["conns_created"] >= 10
    t.run_timers(now + 1000 * S)
    t.check(now + 1000 * S)
