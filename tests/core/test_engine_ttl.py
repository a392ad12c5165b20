"""TTL as the kernel's IPVS treats it, checked against a recording of Debian's 6.1 kernel
(tests/fixtures/kernel/ttl.json, made by tests/fixtures/kernel/scripts/ttl.sh): DR, NAT and
TUN forward with the TTL one less (TUN's outer header copies the decremented TTL); a packet
that arrives with TTL 1 is not forwarded, its sender gets ICMP time exceeded (type 11 code 0,
TTL 64) quoting the packet as received, from the VIP (from the director towards a real
server, for a NAT reply), and the connection entry is made all the same."""
import json
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from tests.core import packets as P
from tests.core.helpers import S, checksums_ok, engine

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "ttl.json").read_text())
IN_CASES = [c for c in FIXTURE["cases"] if c["dir"] == "in"]
OUT_CASES = [c for c in FIXTURE["cases"] if c["dir"] == "out"]


def kernel_conn_listed(sport, vport):
    want = f"{FIXTURE['topology']['client']}:{sport} "
    return any(want in line and f":{vport} " in line for line in FIXTURE["ipvsadm_Lnc"])


@pytest.mark.parametrize("case", IN_CASES,
                         ids=lambda c: f"{c['mode']}-ttl{c['ttl_sent']}")
def test_client_to_real_server_as_the_kernel_does(case):
    rport = 8080 if case["mode"] == "nat" else P.VPORT
    e = engine(case["mode"], rport=rport)
    frame = P.tcp("S", sport=case["sport"], ttl=case["ttl_sent"])
    v, reason, ifindex, out = e.process_verdicts([frame], 1 * S)[0]
    assert v == "tx", reason
    pkt = Ether(out)
    assert checksums_ok(out)
    if case["at_rs"]:
        (rs,) = case["at_rs"]
        assert ifindex == 10 and not case["icmp_to_client"]
        if case["mode"] == "tun":
            assert pkt[IP].proto == 4 and pkt[IP].ttl == rs["ttl"]
            assert IP(bytes(pkt[IP].payload)).ttl == rs["inner"]["ttl"]
        else:
            assert pkt[IP].ttl == rs["ttl"] and pkt[TCP].sport == case["sport"]
        assert e.stats()["ttl_exceeded"] == 0
    else:
        (icmp,) = case["icmp_to_client"]
        assert ifindex == 0                       # back out of the interface it came in by
        assert pkt.dst == P.CLIENT_MAC and pkt.src == P.LOCAL_MAC
        assert pkt[IP].src == P.VIP and pkt[IP].dst == P.CLIENT      # the kernel: from the VIP
        assert pkt[IP].ttl == icmp["ttl"] and pkt[IP].proto == 1
        assert (pkt[ICMP].type, pkt[ICMP].code) == (icmp["icmp"]["type"], icmp["icmp"]["code"])
        quoted = bytes(pkt[ICMP].payload)
        assert len(quoted) == icmp["icmp"]["quoted"]["len"]
        assert quoted == bytes(Ether(frame)[IP])[:len(quoted)]     # as received, TTL 1
        assert e.stats()["ttl_exceeded"] == 1
    # the connection is made either way, as `ipvsadm -Lnc` showed it
    assert kernel_conn_listed(case["sport"], case["vport"])
    assert [(c["cport"], c["state"]) for c in e.conns()] == [(case["sport"], "SYN_RECV")]


@pytest.mark.parametrize("case", OUT_CASES, ids=lambda c: f"nat-reply-ttl{c['ttl_sent']}")
def test_nat_reply_as_the_kernel_does(case):
    e = engine("nat", rport=8080)
    e.set_neighbor(P.CLIENT, P.CLIENT_MAC, ifindex=3)
    e.process([P.tcp("S", sport=case["cport"])], 1 * S)
    reply = bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                  / IP(src=P.RS[0], dst=P.CLIENT, ttl=case["ttl_sent"])
                  / TCP(sport=8080, dport=case["cport"], flags="SA", seq=5000, ack=1001))
    v, reason, ifindex, out = e.process_verdicts([reply], 2 * S)[0]
    assert v == "tx", reason
    pkt = Ether(out)
    assert checksums_ok(out)
    if case["at_client"]:
        (got,) = case["at_client"]
        assert ifindex == 3 and pkt[IP].src == P.VIP and pkt[IP].ttl == got["ttl"]
        assert e.dest_stats(1)["outpkts"] == 1
    else:
        (icmp,) = case["icmp_to_rs"]
        assert ifindex == 0 and pkt.dst == P.RS_MAC[0]
        # from the director's own address, to the real server, quoting the untranslated reply
        assert pkt[IP].src == P.LOCAL_IP and pkt[IP].dst == P.RS[0]
        assert (pkt[ICMP].type, pkt[ICMP].code) == (icmp["icmp"]["type"], icmp["icmp"]["code"])
        quoted = bytes(pkt[ICMP].payload)
        assert len(quoted) == icmp["icmp"]["quoted"]["len"]
        assert quoted == bytes(IP(reply[14:]))[:len(quoted)]
        assert e.stats()["ttl_exceeded"] == 1
        assert e.dest_stats(1)["outpkts"] == 0       # dropped before IPVS saw it


def test_nat_reply_at_ttl_1_without_a_director_address_is_dropped_and_counted():
    """With no address of its own to answer from, the director drops the reply (counted
    once, as ttl_exceeded) rather than sending an ICMP error from 0.0.0.0."""
    e = engine("nat", rport=8080)
    e.set_local(local_ip="")
    e.process([P.tcp("S")], 1 * S)
    reply = bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC) / IP(src=P.RS[0], dst=P.CLIENT, ttl=1)
                  / TCP(sport=8080, dport=40000, flags="SA"))
    assert e.process_verdicts([reply], 2 * S)[0][:2] == ("drop", "ttl_exceeded")
    assert e.stats()["ttl_exceeded"] == 1


def test_ttl_decrement_keeps_the_header_checksum_valid_at_its_edges():
    """The incremental update (+0x0100 with the end-around carry, as ip_decrease_ttl)
    checked where it wraps: IP ids chosen so that the original checksum sits just below,
    at and just above the carry, plus a spread of others; every output re-parses valid."""
    def csum_for(ident):
        b = bytearray(bytes(Ether(P.tcp("S", id=ident))[IP])[:20])
        b[10:12] = b"\0\0"
        s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, 20, 2))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF
    base = csum_for(0)
    edges = []
    for want in (0xFEFE, 0xFEFF, 0xFF00, 0xFFFE, 0x0000, 0x0001, 0x00FF):
        # the checksum falls by one per id step (ones' complement), wrapping mod 0xFFFF
        edges.append((base - want) % 0xFFFF)
    ids = sorted(set(edges + list(range(0, 65536, 997))))
    e = engine("dr")
    frames = [P.tcp("S", sport=1024 + i, id=ident) for i, ident in enumerate(ids)]
    out = e.process(frames, 1 * S)
    assert len(out) == len(frames)
    for (_, _, fr), sent in zip(out, frames):
        assert checksums_ok(fr) and Ether(fr)[IP].ttl == Ether(sent)[IP].ttl - 1
