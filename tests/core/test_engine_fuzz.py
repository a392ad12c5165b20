"""A small sample of tests/fuzz/fuzz_engine.py (the full run takes >= 1,000,000 frames), and
property tests: NAT forward then reverse rewrite restores the addresses with valid
checksums, and random bytes never produce output."""
from hypothesis import given, settings, strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.core import packets as P
from tests.core.helpers import S, checksums_ok, engine
from tests.fuzz import fuzz_engine


def test_fuzz_sample():
    res = fuzz_engine.run(4000, seed=7, quiet=True)
    assert res["sent"] > 0


ports = st.integers(1, 65535)
octets = st.integers(1, 254)


@settings(max_examples=60, deadline=None)
@given(proto=st.sampled_from([6, 17]), cport=ports, vport=ports, rport=ports,
       c=st.tuples(octets, octets, octets, octets), payload=st.binary(max_size=200),
       flags=st.sampled_from(["S", "SA", "A", "PA"]), vlan=st.one_of(st.none(), st.integers(1, 4094)),
       zero=st.booleans())
def test_nat_roundtrip_restores_addresses(proto, cport, vport, rport, c, payload, flags, vlan,
                                          zero):
    client = ".".join(map(str, c))
    e = engine("nat", proto=proto, vport=vport, rport=rport)
    if proto == 6:
        req = P.tcp("S", sport=cport, dport=vport, src=client, payload=payload, vlan=vlan)
    else:
        req = P.udp(sport=cport, dport=vport, src=client, payload=payload, vlan=vlan,
                    zero_csum=zero)
    out = e.process([req], S)
    assert len(out) == 1
    fwd = Ether(out[0][2])
    assert checksums_ok(out[0][2])
    assert fwd[IP].dst == P.RS[0] and fwd[IP].src == client
    # the RS answers with exactly the forwarded packet's addresses swapped
    l4 = fwd[TCP] if proto == 6 else fwd[UDP]
    assert l4.dport == rport
    if proto == 6:
        rep = P.reply_tcp(flags, rport=rport, client=client, cport=cport, payload=payload)
    else:
        rep = P.reply_udp(rport=rport, client=client, cport=cport, payload=payload)
    back = e.process([rep], 2 * S)
    assert len(back) == 1
    b = Ether(back[0][2])
    assert checksums_ok(back[0][2])
    assert b[IP].src == P.VIP and b[IP].dst == client
    bl4 = b[TCP] if proto == 6 else b[UDP]
    assert bl4.sport == vport and bl4.dport == cport
    assert bytes(bl4.payload) == payload


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_forwarded(data):
    e = engine("nat", rport=8080)
    assert e.process([data], S) == []
