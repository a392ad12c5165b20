"""Partial checksums: a sender with checksum offload (a veth peer, a container, a VM) leaves
only the pseudo-header sum in the TCP/UDP checksum field. The engine completes it before
any frame leaves, in every forwarding method and for NAT replies; frames with complete
checksums are left as they are."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.core import packets as P
from tests.core.helpers import S, checksums_ok, engine


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def partial(frame: bytes, l2=14) -> bytes:
    """The frame as an offloading sender hands it over: L4 checksum = pseudo-header sum."""
    b = bytearray(frame)
    ip = b[l2:]
    ihl = (ip[0] & 0xF) * 4
    proto = ip[9]
    l4len = int.from_bytes(ip[2:4], "big") - ihl
    ps = sum(int.from_bytes(ip[i:i + 2], "big") for i in range(12, 20, 2)) + proto + l4len
    off = l2 + ihl + (16 if proto == 6 else 6)
    b[off:off + 2] = fold(ps).to_bytes(2, "big")
    assert not checksums_ok(bytes(b))
    return bytes(b)


REQUESTS = {
    "tcp": lambda: P.tcp("S", payload=b"GET / HTTP/1.0\r\n\r\n" * 7),
    "tcp_odd": lambda: P.tcp("S", payload=b"x" * 1001),
    "udp": lambda: P.udp(dport=80, payload=b"q" * 333),
    "tcp_vlan": lambda: P.tcp("S", payload=b"v" * 64, vlan=12),
}


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_partial_checksums_leave_complete(fwd, kind):
    proto = 17 if kind == "udp" else 6
    e = engine(fwd, proto=proto, vport=80, rport=8080 if fwd == "nat" else None)
    frame = REQUESTS[kind]()
    (_, _, out), = e.process([partial(frame, 18 if "vlan" in kind else 14)], 1 * S)
    assert checksums_ok(out)
    assert e.stats()["csum_completed"] == 1
    pkt = Ether(out)
    inner = IP(bytes(pkt[IP].payload)) if fwd == "tun" else pkt[IP]
    l4 = inner[TCP] if proto == 6 else inner[UDP]
    assert bytes(l4.payload) == bytes(Ether(frame)[IP].payload.payload)


@pytest.mark.parametrize("proto", [6, 17])
def test_partial_checksum_of_a_nat_reply_is_completed(proto):
    e = engine("nat", proto=proto, vport=80, rport=8080)
    req = P.tcp("S") if proto == 6 else P.udp(dport=80)
    e.process([req], 1 * S)
    rep = P.reply_tcp(rport=8080, payload=b"r" * 99) if proto == 6 else \
        P.reply_udp(rport=8080, payload=b"r" * 99)
    (_, _, out), = e.process([partial(rep)], 2 * S)
    assert checksums_ok(out) and Ether(out)[IP].src == P.VIP


def test_complete_checksums_are_left_alone():
    e = engine("nat", rport=8080)
    frames = [P.tcp("S", sport=40000 + i, payload=bytes([i]) * (50 + i)) for i in range(40)]
    out = e.process(frames, 1 * S)
    assert len(out) == 40 and all(checksums_ok(f) for _, _, f in out)
    assert e.stats()["csum_completed"] == 0


def test_udp_without_checksum_stays_without():
    e = engine("nat", proto=17, vport=53, rport=5353)
    (_, _, out), = e.process([P.udp(zero_csum=True)], 1 * S)
    assert Ether(out)[UDP].chksum == 0 and e.stats()["csum_completed"] == 0
