"""Forwarding by the engine, frame by frame: DR, NAT both directions, TUN and its ICMP
frag-needed answer, VLAN tags, IP options, padding; outputs re-parsed with scapy and every
checksum recomputed."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.l2 import Dot1Q, Ether

from tests.core import packets as P
from tests.core.helpers import S, checksums_ok, engine


def one(e, frame, ts=1 * S):
    out = e.process([frame], ts)
    assert len(out) == 1, e.stats()
    return out[0]


@pytest.mark.parametrize("case", P.GOOD, ids=lambda c: c.name)
def test_dr_rewrites_only_macs_and_ttl(case):
    proto = 17 if case.name.startswith("udp") else 6
    e = engine("dr", proto=proto, vport=53 if proto == 17 else 80)
    frame = case.frame
    if case.name == "tcp_ack_payload":
        e.process([P.tcp("S")], 1 * S)
    idx, ifindex, out = one(e, frame)
    assert ifindex == 10
    assert out[:6] == bytes.fromhex(P.RS_MAC[0].replace(":", ""))
    assert out[6:12] == bytes.fromhex(P.LOCAL_MAC.replace(":", ""))
    l2 = 18 if case.name == "tcp_vlan" else 14
    ip_len = int.from_bytes(frame[l2 + 2:l2 + 4], "big")
    # past the MACs only the TTL (one less, as IPVS forwards) and the IP checksum change
    assert out[l2 + 8] == frame[l2 + 8] - 1
    assert out[12:l2 + 8] + out[l2 + 12:] == frame[12:l2 + 8] + frame[l2 + 12:l2 + ip_len]
    assert checksums_ok(out)
    if case.name == "tcp_vlan":
        assert Ether(out)[Dot1Q].vlan == 42


@pytest.mark.parametrize("proto", [6, 17])
def test_nat_both_directions(proto):
    e = engine("nat", proto=proto, vport=80, rport=8080)
    e.set_neighbor(P.CLIENT, P.CLIENT_MAC, ifindex=3)
    req = P.tcp("S", payload=b"hello") if proto == 6 else P.udp(dport=80)
    _, ifi, out = one(e, req)
    pkt = Ether(out)
    assert ifi == 10
    assert pkt[IP].dst == P.RS[0] and pkt[IP].src == P.CLIENT
    l4 = pkt[TCP] if proto == 6 else pkt[UDP]
    assert l4.dport == 8080 and l4.sport == 40000
    assert checksums_ok(out)
    rep = P.reply_tcp("SA", rport=8080) if proto == 6 else P.reply_udp(rport=8080)
    _, ifi, back = one(e, rep, 2 * S)
    pkt = Ether(back)
    assert ifi == 3
    assert pkt.dst == P.CLIENT_MAC
    assert pkt[IP].src == P.VIP and pkt[IP].dst == P.CLIENT
    l4 = pkt[TCP] if proto == 6 else pkt[UDP]
    assert l4.sport == 80 and l4.dport == 40000
    assert checksums_ok(back)
    ds = e.dest_stats(1)
    assert ds["inpkts"] == 1 and ds["outpkts"] == 1
    assert ds["inbytes"] == Ether(req)[IP].len and ds["outbytes"] == Ether(rep)[IP].len
    ss = e.service_stats(1)
    assert ss["conns"] == 1 and ss["inpkts"] == 1 and ss["outpkts"] == 1


def test_nat_reply_without_neighbor_uses_gateway():
    e = engine("nat", rport=8080)
    one(e, P.tcp("S"))
    _, ifi, back = one(e, P.reply_tcp(rport=8080))
    assert ifi == 2 and Ether(back).dst == P.GW_MAC


def test_nat_udp_zero_checksum_stays_zero():
    e = engine("nat", proto=17, vport=53, rport=5353)
    _, _, out = one(e, P.udp(zero_csum=True))
    assert Ether(out)[UDP].chksum == 0
    assert Ether(out)[UDP].dport == 5353


def test_nat_with_ip_options_and_vlan():
    e = engine("nat", rport=8080)
    _, _, out = one(e, P.tcp("S", vlan=7, ip_opts=[b"\x01\x01\x01\x00"]))
    pkt = Ether(out)
    assert pkt[Dot1Q].vlan == 7 and pkt[IP].ihl == 6 and pkt[TCP].dport == 8080
    assert checksums_ok(out)


def test_tun_prepends_outer_header():
    e = engine("tun")
    frame = P.tcp("S", vlan=5, payload=b"y" * 40, ttl=33, tos=0x10)
    _, ifi, out = one(e, frame)
    pkt = Ether(out)
    assert pkt[Dot1Q].vlan == 5
    outer = pkt[IP]
    assert outer.proto == 4 and outer.src == P.LOCAL_IP and outer.dst == P.RS[0]
    # the inner TTL is decremented and the outer one copies it (kernel recording: ttl.json)
    assert outer.ttl == 32 and outer.tos == 0x10 and outer.flags == "DF" and outer.id == 0
    assert outer.len == Ether(frame)[IP].len + 20
    inner = IP(bytes(outer.payload))
    sent = Ether(frame)[IP]
    assert inner.ttl == 32
    assert bytes(inner)[:8] + bytes(inner)[9:10] + bytes(inner)[12:] == \
        bytes(sent)[:8] + bytes(sent)[9:10] + bytes(sent)[12:]
    assert checksums_ok(out)
    assert pkt.dst == P.RS_MAC[0]


def test_tun_too_big_with_df_answers_frag_needed():
    e = engine("tun", mtu=1500)
    frame = P.tcp("S", payload=b"z" * 1460, vlan=9)       # IP length 1500
    _, ifi, out = one(e, frame)
    pkt = Ether(out)
    assert pkt.dst == P.CLIENT_MAC and pkt.src == P.LOCAL_MAC and pkt[Dot1Q].vlan == 9
    assert pkt[IP].src == P.VIP and pkt[IP].dst == P.CLIENT and pkt[IP].proto == 1
    assert pkt[ICMP].type == 3 and pkt[ICMP].code == 4 and pkt[ICMP].nexthopmtu == 1480
    quoted = bytes(pkt[IP])[28:]
    orig = bytes(Ether(frame)[IP])
    # the kernel decrements the TTL before it checks the MTU: the quote shows TTL 63, and
    # icmp_send quotes what fits in 576 bytes (kernel recording: natpmtu.json)
    assert len(quoted) == 576 - 28 and quoted[8] == orig[8] - 1
    assert quoted[:8] + quoted[9:10] + quoted[12:] == orig[:8] + orig[9:10] + orig[12:548]
    assert checksums_ok(out)
    assert e.stats()["frag_needed_sent"] == 1
    # without DF the tunnel packet goes in two fragments, cut to the MTU (oversize counted)
    (v, _, _, pieces), = e.process_verdicts(
        [P.tcp("S", sport=40001, payload=b"z" * 1460, df=False)], 2 * S)
    assert v == "tx" and [len(x) - 14 for x in pieces] == [1500, 40]
    first, last = Ether(pieces[0])[IP], Ether(pieces[1])[IP]
    assert (first.proto, first.flags, first.frag) == (4, "MF", 0)
    assert (last.proto, last.flags, last.frag, last.id) == (4, 0, 1480 // 8, first.id)
    assert e.stats()["oversize"] == 1 and e.stats()["frag_out"] == 2


@pytest.mark.parametrize("case", P.BAD, ids=lambda c: c.name)
def test_malformed_not_forwarded(case):
    e = engine("dr")
    v = e.process_verdicts([case.frame], 1 * S)[0]
    assert v[0] in ("drop", "pass"), v
    # fragments to the VIP are held for reassembly (tests/core/test_engine_frags.py), but
    # one with MF must carry a multiple of 8 bytes, and fragment_mf carries 20
    expect = {"not_ip": "not_ip", "bad_ip_csum": "bad_checksum", "fragment_mf": "frag_bad",
              "fragment_offset": "frag_held", "icmp": "no_service"}.get(case.name, "malformed")
    assert v[1] == expect


def test_truncated_at_every_length_never_forwarded():
    e = engine("nat", rport=8080)
    for frame in (P.tcp("S", payload=b"abc", vlan=3), P.udp(), P.tcp("S")):
        ip_len_end = len(frame)
        outs = e.process([frame[:n] for n in range(ip_len_end)], 1 * S)
        assert outs == []
    assert e.conn_count() == 0


def test_non_vip_and_unknown_reply_pass():
    e = engine("dr")
    v = e.process_verdicts([P.tcp("S", dst="203.0.113.99"), P.tcp("A")], 1 * S)
    assert v[0][:2] == ("pass", "no_service")
    assert v[1][:2] == ("pass", "tcp_not_syn")
