"""Frame and engine builders for the engine benchmarks (the packet shapes come from
tests/core/packets.py, as the tests use them)."""
from __future__ import annotations

import random

import fastlvs.engine._core as core
from fastlvs.engine._testing import Loaded
from tests.core import packets as P

S = 1_000_000_000
FIRST_SRC = 0x0B000002          # the first source Loaded.process(new_flows=True) writes


def ip_csum(b: bytearray, l2: int = 14) -> None:
    b[l2 + 10:l2 + 12] = b"\0\0"
    s = 0
    for i in range(0, 20, 2):
        s += (b[l2 + i] << 8) | b[l2 + i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[l2 + 10:l2 + 12] = (~s & 0xFFFF).to_bytes(2, "big")


def with_src(template: bytes, src: int) -> bytes:
    b = bytearray(template)
    b[26:30] = src.to_bytes(4, "big")
    ip_csum(b)
    return bytes(b)


def engine(fwd: str, capacity: int, ndest: int = 8, batch: int = 64) -> core.Engine:
    e = core.Engine(capacity=capacity, batch=batch, local_ip=P.LOCAL_IP,
                    local_mac=P.LOCAL_MAC, mtu=9000)
    e.set_service(1, 6, P.VIP, 80)
    for i in range(ndest):
        e.set_dest(i + 1, 1, f"192.0.2.{11 + i}", 8080 if fwd == "nat" else 80, fwd,
                   P.RS_MAC[0], ifindex=10 + i)
    e.set_gateway_mac(P.GW_MAC, 2)
    return e


def establish(e: core.Engine, nconns: int, ndest: int = 8) -> None:
    """Open nconns conns (sources FIRST_SRC.., sport 40000) through an sh table in C."""
    e.set_hash_table(1, [1 + (i % ndest) for i in range(256)], "sh", 0)
    syn = P.tcp("S", payload=b"")
    chunk = min(nconns, 4096)
    loaded = Loaded(e, [syn] * chunk)
    made = 0
    while made < nconns:
        if nconns - made < chunk:
            loaded.load([syn] * (nconns - made))
        made += loaded.process(1 * S, new_flows=True)
    e.set_hash_table(1, None, 0)


def established_frames(nconns: int, count: int, payload: int = 0, seed: int = 1) -> list[bytes]:
    """`count` ACK frames of random conns among the first `nconns` opened by establish()."""
    rng = random.Random(seed)
    tmpl = P.tcp("A", payload=b"d" * payload)
    return [with_src(tmpl, FIRST_SRC + rng.randrange(nconns)) for _ in range(count)]


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def with_l4_csum(frame: bytes, partial: bool, l2: int = 14) -> bytes:
    """The TCP/UDP checksum made complete, or partial as a sender with checksum offload
    leaves it (the folded pseudo-header sum, for the NIC to finish)."""
    b = bytearray(frame)
    ihl = (b[l2] & 0xF) * 4
    proto = b[l2 + 9]
    l4 = l2 + ihl
    l4len = int.from_bytes(b[l2 + 2:l2 + 4], "big") - ihl
    ck = l4 + (16 if proto == 6 else 6)
    ps = sum(int.from_bytes(b[l2 + i:l2 + i + 2], "big") for i in range(12, 20, 2))
    ps = _fold(ps + proto + l4len)
    b[ck:ck + 2] = b"\0\0"
    if partial:
        b[ck:ck + 2] = ps.to_bytes(2, "big")
    else:
        data = bytes(b[l4:l4 + l4len]) + b"\0" * (l4len & 1)
        s = ps + sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
        b[ck:ck + 2] = (~_fold(s) & 0xFFFF).to_bytes(2, "big")
    return bytes(b)
