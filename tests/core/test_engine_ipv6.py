"""IPv6 in the engine, both the extension and the pure-Python reference: DR, NAT66 and
IPv6-in-IPv6 TUN checked against a recording of Debian's 6.1 kernel
(tests/fixtures/kernel/ipv6.json, made by tests/fixtures/kernel/scripts/ipv6.sh): the hop
limit one less (TUN's outer header copies it, and the traffic class, with flow label 0), a
packet at hop limit 1 answered with ICMPv6 time exceeded from the VIP (from the director's
own address for a NAT66 reply), a TUN packet too big for the tunnel answered with packet too
big (the tunnel's MTU, 1232 bytes quoted), -M as a prefix length. Then the two engines
side by side on v6 connections, and what is refused or left to the host."""
from __future__ import annotations

import json
import pathlib

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NS,
                                IPv6, IPv6ExtHdrHopByHop, _ICMPv6)
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from fastlvs.engine import reference
from tests.core import packets as P
from tests.core.helpers import S
from tests.core.test_reference_vs_core import Twin

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "ipv6.json").read_text())
TOPO = FIXTURE["topology"]
VIP, CLIENT, RIP, LOCAL6 = TOPO["vip"], TOPO["client"], TOPO["rip"], TOPO["director_rs_side"]
MTU = TOPO["rs_link_mtu"]
PORTS = {"dr": (80, 80), "nat": (81, 8081), "tun": (82, 82)}
IN_CASES = [c for c in FIXTURE["cases"] if c["dir"] == "in" and c["mode"] in PORTS
            and "ext" not in c]
OUT_CASES = [c for c in FIXTURE["cases"] if c["dir"] == "out"]
ENGINES = {"core": core.Engine, "reference": reference.Engine}


def checksums_ok6(frame: bytes) -> bool:
    """Re-parse with scapy and recompute every v6 upper-layer checksum (TCP, UDP, ICMPv6),
    through an IPv6-in-IPv6 wrapper too; compare with what the frame carries."""
    pkt = Ether(frame)
    for layer in (TCP, UDP, _ICMPv6):
        i = 1
        while (lay := pkt.getlayer(layer, i)) is not None:
            under = lay.underlayer
            while not isinstance(under, IPv6):
                under = under.underlayer
            u = under.copy()
            u.remove_payload()
            field = "cksum" if layer is _ICMPv6 else "chksum"
            c = lay.copy()
            delattr(c, field)
            rebuilt = IPv6(bytes(u / c))
            if getattr(lay, field) != getattr(rebuilt.getlayer(layer), field):
                return False
            i += 1
    return True


def v6_engine(kind="core", mtu=MTU, persist=0, netmask=None):
    """The recording's director: TCP VIP:80 DR, :81 NAT to :8081, :82 TUN, UDP :53 DR
    persistent; the one real server; v6 local address on the real servers' side."""
    e = ENGINES[kind](capacity=4096, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=mtu)
    e.set_local(local_ip6=LOCAL6)
    for svc, (mode, (vport, rport)) in enumerate(PORTS.items(), start=1):
        e.set_service(svc, 6, VIP, vport, persist_timeout=persist, netmask=netmask)
        e.set_dest(svc, svc, RIP, rport, mode, P.RS_MAC[0], ifindex=10)
    e.set_service(4, 17, VIP, 53, persist_timeout=300, netmask=64)
    e.set_dest(4, 4, RIP, 53, "dr", P.RS_MAC[0], ifindex=10)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    return e


def syn(sport, dport, hlim=64, tc=0, fl=0, size=60, src=CLIENT, flags="S"):
    pad = size - 60
    return bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                 / IPv6(src=src, dst=VIP, hlim=hlim, tc=tc, fl=fl)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / (b"x" * pad))


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", IN_CASES,
                         ids=lambda c: f"{c['mode']}-hlim{c['hlim_sent']}-{c.get('ip_len', 60)}")
def test_client_to_real_server_as_the_kernel_does(case, kind):
    e = v6_engine(kind)
    sent = [r for r in FIXTURE["cases"] if r is case][0]
    hlim = sent["hlim_sent"]
    size = case.get("ip_len", 60)
    tc, fl = (0x28, 0x12345) if size == 60 else (0, 0)
    frame = syn(case["sport"], case["vport"], hlim, tc, fl, size)
    v, reason, ifindex, out = e.process_verdicts([frame], 1 * S)[0]
    assert v == "tx", reason
    pkt = Ether(out)
    assert checksums_ok6(out)
    if case["at_rs"]:
        (rs,) = case["at_rs"]
        assert ifindex == 10 and not case["icmp_to_client"]
        assert pkt.dst == P.RS_MAC[0] and pkt.src == P.LOCAL_MAC
        ip = pkt[IPv6]
        assert (ip.src, ip.dst, ip.nh, ip.hlim, ip.tc, ip.fl, ip.plen) == (
            rs["src"], rs["dst"], rs["nh"], rs["hlim"], rs["tc"], rs["fl"], rs["plen"])
        if case["mode"] == "tun":
            inner = IPv6(bytes(ip.payload))
            assert (inner.src, inner.dst, inner.hlim, inner[TCP].dport) == (
                rs["inner"]["src"], rs["inner"]["dst"], rs["inner"]["hlim"],
                rs["inner"]["dport"])
        else:
            assert (pkt[TCP].sport, pkt[TCP].dport) == (rs["sport"], rs["dport"])
    else:
        (icmp,) = case["icmp_to_client"]
        assert ifindex == 0 and pkt.dst == P.CLIENT_MAC and pkt.src == P.LOCAL_MAC
        ip = pkt[IPv6]
        assert (ip.src, ip.dst, ip.nh, ip.hlim, ip.plen) == (
            icmp["src"], icmp["dst"], 58, icmp["hlim"], icmp["plen"])
        body = bytes(ip.payload)
        assert (body[0], body[1], int.from_bytes(body[4:8], "big")) == (
            icmp["icmp"]["type"], icmp["icmp"]["code"], icmp["icmp"]["info"])
        quoted = body[8:]
        q = icmp["icmp"]["quoted"]
        assert len(quoted) == q["len"] and quoted[7] == q["hlim"]
        # as received, but for the hop limit the kernel had already taken one from
        want = bytearray(bytes(Ether(frame)[IPv6]))
        want[7] = q["hlim"]
        assert quoted == bytes(want[:len(quoted)])
    # the connection is made either way, as `ipvsadm -Lnc` showed it
    listed = [ln for ln in FIXTURE["ipvsadm_Lnc"] if f"]:{case['sport']} " in ln]
    assert len(listed) == 1 and "SYN_RECV" in listed[0]
    assert [(c["caddr"], c["cport"], c["vaddr"], c["raddr"], c["state"])
            for c in e.conns()] == [(CLIENT, case["sport"], VIP, RIP, "SYN_RECV")]


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", OUT_CASES, ids=lambda c: f"nat-reply-hlim{c['hlim_sent']}")
def test_nat66_reply_as_the_kernel_does(case, kind):
    e = v6_engine(kind)
    e.set_neighbor(CLIENT, P.CLIENT_MAC, ifindex=3)
    e.process([syn(case["cport"], 81)], 1 * S)
    reply = bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                  / IPv6(src=RIP, dst=CLIENT, hlim=case["hlim_sent"])
                  / TCP(sport=8081, dport=case["cport"], flags="SA", seq=5000, ack=1001))
    v, reason, ifindex, out = e.process_verdicts([reply], 2 * S)[0]
    assert v == "tx", reason
    pkt = Ether(out)
    assert checksums_ok6(out)
    if case["at_client"]:
        (got,) = case["at_client"]
        assert ifindex == 3 and pkt.dst == P.CLIENT_MAC
        assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (got["src"], got["dst"],
                                                                  got["hlim"])
        assert (pkt[TCP].sport, pkt[TCP].dport) == (got["sport"], got["dport"])
        assert e.dest_stats(2)["outpkts"] == 1
    else:
        (icmp,) = case["icmp_to_rs"]
        assert ifindex == 0 and pkt.dst == P.RS_MAC[0]
        assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (icmp["src"], icmp["dst"],
                                                                  icmp["hlim"])
        body = bytes(pkt[IPv6].payload)
        assert (body[0], body[1]) == (icmp["icmp"]["type"], icmp["icmp"]["code"])
        assert len(body) - 8 == icmp["icmp"]["quoted"]["len"]
        assert e.dest_stats(2)["outpkts"] == 0      # dropped before IPVS saw it


@pytest.mark.parametrize("kind", ENGINES)
def test_persistence_prefix_length_as_the_kernel_lists_it(kind):
    """-M 64: both datagrams from the client's /64 follow one template, listed as the
    kernel lists it ([2001:db8:1::]:0)."""
    e = v6_engine(kind)
    frames = [bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
                    / UDP(sport=sp, dport=53) / b"q") for sp in (5301, 5302)]
    assert [v[0] for v in e.process_verdicts(frames, 1 * S)] == ["tx", "tx"]
    tmpl = [c for c in e.conns() if c["template"]]
    kernel = [ln.split() for ln in FIXTURE["ipvsadm_Lnc"] if " NONE " in ln]
    assert len(tmpl) == 1 and len(kernel) == 1
    assert f"[{tmpl[0]['caddr']}]:{tmpl[0]['cport']}" == kernel[0][3]
    # another /64 of the same client net's /48 has its own template
    other = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                  / IPv6(src="2001:db8:1:1::2", dst=VIP) / UDP(sport=5303, dport=53) / b"q")
    e.process([other], 1 * S)
    assert sorted(c["caddr"] for c in e.conns() if c["template"]) == [
        "2001:db8:1:1::", "2001:db8:1::"]


@pytest.mark.parametrize("kind", ENGINES)
def test_extension_headers_to_a_vip_are_dropped_and_counted(kind):
    """6.1 walks a hop-by-hop header and forwards (the recording); the engine does not walk
    extension headers: such a packet to a VIP is dropped and counted, one to another
    address is the host's."""
    (case,) = [c for c in FIXTURE["cases"] if c.get("ext") == "hop-by-hop"]
    assert case["at_rs"]                             # what the kernel does
    e = v6_engine(kind)
    frame = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
                  / IPv6ExtHdrHopByHop() / TCP(sport=case["sport"], dport=80, flags="S"))
    elsewhere = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                      / IPv6(src=CLIENT, dst="2001:db8:1::1") / IPv6ExtHdrHopByHop()
                      / TCP(sport=1, dport=80, flags="S"))
    got = e.process_verdicts([frame, elsewhere], 1 * S)
    assert [(v[0], v[1]) for v in got] == [("drop", "v6_exthdr"), ("pass", "no_service")]
    assert e.stats()["v6_exthdr"] == 1 and e.conns() == []


@pytest.mark.parametrize("kind", ENGINES)
def test_host_traffic_and_malformed_v6(kind):
    e = v6_engine(kind)
    eth = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
    ns = bytes(eth / IPv6(src=CLIENT, dst="ff02::1:ff00:100") / ICMPv6ND_NS(tgt=VIP))
    ping = bytes(eth / IPv6(src=CLIENT, dst=VIP) / ICMPv6EchoRequest())
    good = syn(40000, 80)
    short = good[:14 + 39]
    long_plen = bytearray(good)
    long_plen[14 + 4:14 + 6] = (200).to_bytes(2, "big")
    bad_doff = bytearray(good)
    bad_doff[14 + 40 + 12] = 0x40
    not6 = bytearray(good)
    not6[14] = 0x45
    got = e.process_verdicts([ns, ping, short, bytes(long_plen), bytes(bad_doff),
                              bytes(not6)], 1 * S)
    assert [(v[0], v[1]) for v in got] == [("pass", "no_service")] * 2 + [
        ("drop", "malformed")] * 4
    assert e.conns() == []


@pytest.mark.parametrize("kind", ENGINES)
def test_v6_configuration_refusals(kind):
    e = ENGINES[kind](capacity=64)
    with pytest.raises(ValueError, match="::/96"):
        e.set_service(1, 6, "::10.0.0.1", 80)
    with pytest.raises(ValueError, match="prefix length"):
        e.set_service(1, 6, VIP, 80, persist_timeout=60, netmask=129)
    with pytest.raises(ValueError, match="prefix length"):
        e.set_service(1, 6, VIP, 80, persist_timeout=60, netmask="255.255.255.0")
    with pytest.raises(ValueError, match="IPv6"):
        e.set_local(local_ip6="192.0.2.1")


@pytest.mark.parametrize("kind", ENGINES)
def test_nat66_reply_without_neighbour_goes_to_the_v6_router_or_is_dropped(kind):
    e = v6_engine(kind)
    e.process([syn(40001, 81)], 1 * S)
    reply = bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC) / IPv6(src=RIP, dst=CLIENT)
                  / TCP(sport=8081, dport=40001, flags="SA"))
    assert e.process_verdicts([reply], 2 * S)[0][:2] == ("drop", "no_route")
    e.set_gateway6_mac(P.GW_MAC, ifindex=2)
    v, _, ifindex, out = e.process_verdicts([reply], 2 * S)[0]
    assert (v, ifindex, Ether(out).dst) == ("tx", 2, P.GW_MAC)
    assert checksums_ok6(out)


# -- the two engines side by side --------------------------------------------------------------
V6_RS = ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"]


def twin6(fwd, persist=0, netmask=None):
    t = Twin(capacity=4096, batch=64, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=1500)
    t.ref.neigh6.key = t.ref.neigh.key
    t.set_local(local_ip6=LOCAL6)
    t.set_service(1, 6, VIP, 80, persist_timeout=persist, netmask=netmask)
    t.set_service(2, 17, VIP, 53, persist_timeout=persist, netmask=netmask)
    # a v4 service beside them: the families must not meet
    t.set_service(3, 6, P.VIP, 80)
    rport = (8080, 5353) if fwd == "nat" else (80, 53)
    for i in range(3):
        t.set_dest(1 + i, 1, V6_RS[i], rport[0], fwd, P.RS_MAC[i], ifindex=10 + i)
        t.set_dest(11 + i, 2, V6_RS[i], rport[1], fwd, P.RS_MAC[i], ifindex=10 + i)
    t.set_dest(21, 3, P.RS[0], rport[0], fwd, P.RS_MAC[0], ifindex=10)
    t.set_gateway6_mac(P.GW_MAC, 2)
    t.set_gateway_mac(P.GW_MAC, 2)
    t.set_learn_ifindex(3)

    def make():
        n = [0]

        def cb(svcs, flows):
            out = []
            for s, fl in zip(svcs, flows):
                n[0] += 1
                assert fl[0] == (4 if s == 3 else 6)
                out.append(21 if s == 3 else (1 if s == 1 else 11) + n[0] % 3)
            return out
        return cb
    t.set_callback(make)
    return t


def c6(i):
    return f"2001:db8:1:{i % 7}::{i + 2:x}"


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_v6_connections_alike(fwd):
    t = twin6(fwd)
    eth = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
    frames = []
    for i in range(40):
        frames.append(bytes(eth / IPv6(src=c6(i), dst=VIP, hlim=64 - i % 3)
                            / TCP(sport=30000 + i, dport=80, flags="S")))
        frames.append(bytes(eth / IPv6(src=c6(i), dst=VIP, hlim=1 + i % 2)
                            / UDP(sport=30000 + i, dport=53) / (b"d" * i)))
    frames.append(P.tcp("S", sport=555))            # v4, same port
    out = t.run(frames, 1 * S)
    for v in out:
        if v[0] == "tx":
            assert checksums_ok6(v[3]) if v[3][12:14] == b"\x86\xdd" else True
    # the rest of each TCP conn, and NAT replies with both port rewrites
    more = []
    for i in range(40):
        more.append(bytes(eth / IPv6(src=c6(i), dst=VIP) / TCP(sport=30000 + i, dport=80,
                                                                flags="A", seq=1, ack=1)))
        if fwd == "nat":
            rs = V6_RS[(i + 1) % 3]
            more.append(bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                              / IPv6(src=rs, dst=c6(i))
                              / TCP(sport=8080, dport=30000 + i, flags="SA")))
            more.append(bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                              / IPv6(src=rs, dst=c6(i)) / UDP(sport=5353, dport=30000 + i)
                              / b"r"))
        more.append(bytes(eth / IPv6(src=c6(i), dst=VIP) / TCP(sport=30000 + i, dport=80,
                                                                flags="FA", seq=1, ack=1)))
    out = t.run(more, 2 * S)
    assert t.sent > 80
    for v in out:
        if v[0] == "tx":
            assert checksums_ok6(v[3])
    t.check(now=200 * S)
    t.run_timers(400 * S)
    t.check(now=400 * S)


@pytest.mark.parametrize("plen", [48, 64, 128])
def test_v6_persistence_alike(plen):
    t = twin6("dr", persist=60, netmask=plen)
    eth = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
    frames = [bytes(eth / IPv6(src=c6(i), dst=VIP) / TCP(sport=31000 + i, dport=80,
                                                          flags="S")) for i in range(30)]
    t.run(frames, 1 * S)
    t.run(frames[:10], 70 * S)


@pytest.mark.parametrize("kind", ["sh", "dh", "mh"])
def test_v6_hash_schedulers_alike(kind):
    t = twin6("dr")
    t.set_hash_table(1, [1, 2, 3, 0, 2, 1], kind, 1)
    eth = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
    frames = [bytes(eth / IPv6(src=c6(i), dst=VIP) / TCP(sport=32000 + i, dport=80,
                                                          flags="S")) for i in range(50)]
    t.run(frames, 1 * S)


def test_v6_partial_checksums_alike():
    """A sender with checksum offload leaves the v6 pseudo-header sum: completed."""
    t = twin6("nat")
    pkt = (Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
           / TCP(sport=33000, dport=80, flags="S") / b"payload")
    raw = bytearray(bytes(pkt))
    full = IPv6(bytes(raw[14:]))
    # the pseudo-header sum, folded and not complemented, in the checksum field
    s = sum(int.from_bytes(bytes(raw[14 + 8 + i:14 + 10 + i]), "big") for i in range(0, 32, 2))
    s += 6 + len(full[TCP])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    raw[14 + 40 + 16:14 + 40 + 18] = s.to_bytes(2, "big")
    (v,) = t.run([bytes(raw)], 1 * S)
    assert v[0] == "tx" and checksums_ok6(v[3])
    assert t.core.stats()["csum_completed"] == 1


# -- ICMPv6 errors about conns ------------------------------------------------------------------
def _ptb(src, dst, quoted, mtu=1280, hlim=64):
    from scapy.layers.inet6 import ICMPv6PacketTooBig
    return bytes(Ether(src=P.GW_MAC, dst=P.LOCAL_MAC) / IPv6(src=src, dst=dst, hlim=hlim)
                 / ICMPv6PacketTooBig(mtu=mtu) / quoted)


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_icmpv6_errors_about_conns_alike(fwd):
    """Packet too big from a router on the client's side, quoting what the service sent the
    client, reaches the conn's real server (NAT66: rewritten for it); one from the server's
    side quoting the request it got (NAT66) reaches the client from the VIP. Both engines
    answer alike; the output is re-parsed and its checksums recomputed."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig
    t = twin6(fwd)
    t.set_neighbor(CLIENT, P.CLIENT_MAC, 3)
    eth = Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
    (v,) = t.run([bytes(eth / IPv6(src=CLIENT, dst=VIP) / TCP(sport=34000, dport=80,
                                                            flags="S"))], 1 * S)
    rip = IPv6(bytes(Ether(v[3])[IPv6].payload)).dst if fwd == "tun" else None
    d = [c for c in t.core.conns() if c["cport"] == 34000][0]
    rport = 8080 if fwd == "nat" else 80
    # what the service sent the client: VIP:80 -> client:34000 (the reply of a DR/TUN server)
    reply = IPv6(src=VIP, dst=CLIENT, hlim=60) / TCP(sport=80, dport=34000, flags="SA") / (
        b"r" * 1300)
    err = _ptb("2001:db8:1::fe", VIP, bytes(reply)[:1232])
    (v,) = t.run([err], 2 * S)
    assert v[0] == "tx", v
    out = Ether(v[3])
    assert checksums_ok6(v[3])
    if fwd == "tun":
        assert out[IPv6].nh == 41 and out[IPv6].dst == d["raddr"]
        inner = IPv6(bytes(out[IPv6].payload))
        assert inner.hlim == 63 and ICMPv6PacketTooBig in inner
    else:
        ip = out[IPv6]
        assert ip.hlim == 63 and ip.src == "2001:db8:1::fe"
        quoted = IPv6(bytes(ip[ICMPv6PacketTooBig].payload))
        if fwd == "nat":
            assert ip.dst == d["raddr"]
            assert (quoted.src, quoted[TCP].sport) == (d["raddr"], rport)
        else:
            assert ip.dst == VIP and out.dst in [m.lower() for m in P.RS_MAC]
            assert (quoted.src, quoted[TCP].sport) == (VIP, 80)
    assert t.core.stats()["icmp_related"] == 1
    if fwd == "nat":
        # the server's side: a router there quotes the request the server got
        req = IPv6(src=CLIENT, dst=d["raddr"], hlim=63) / TCP(sport=34000, dport=rport,
                                                              flags="A") / (b"q" * 1300)
        err = _ptb("2001:db8:2::fe", CLIENT, bytes(req)[:1232])
        (v,) = t.run([err], 3 * S)
        assert v[0] == "tx" and v[2] == 3 and checksums_ok6(v[3])
        ip = Ether(v[3])[IPv6]
        quoted = IPv6(bytes(ip[ICMPv6PacketTooBig].payload))
        assert (ip.src, ip.dst, ip.hlim) == (VIP, CLIENT, 63)
        assert (quoted.dst, quoted[TCP].dport) == (VIP, 80)
        assert t.core.stats()["icmp_related"] == 2
    # a bad checksum is dropped and counted; an error about no conn and an echo are the host's
    bad = bytearray(_ptb("2001:db8:1::fe", VIP, bytes(reply)[:200]))
    bad[14 + 42] ^= 0xFF
    stray = _ptb("2001:db8:1::fe", VIP, bytes(IPv6(src=VIP, dst=CLIENT) / TCP(
        sport=80, dport=1)))
    ping = bytes(eth / IPv6(src=CLIENT, dst=VIP) / ICMPv6EchoRequest())
    got = t.run([bytes(bad), stray, ping], 4 * S)
    assert [(g[0], g[1]) for g in got] == [("drop", "icmp_bad_checksum"),
                                          ("pass", "icmp_no_conn"), ("pass", "no_service")]


ICMP6 = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                    / "icmp6.json").read_text())


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", [c for c in ICMP6["cases"] if c["dir"] == "in"],
                         ids=lambda c: c["mode"])
def test_icmpv6_error_to_the_real_server_as_the_kernel_does(case, kind):
    """tests/fixtures/kernel/icmp6.json: the client's packet too big about what the service
    sent it reaches the real server with the hop limit one less; NAT66 rewrites the outer
    destination and the quoted source address and port; TUN wraps it."""
    from scapy.layers.inet6 import ICMPv6PacketTooBig
    e = v6_engine(kind, mtu=1500)
    e.process([syn(case["cport"], case["vport"])], 1 * S)
    sent = IPv6(src=VIP, dst=CLIENT, hlim=63) / TCP(
        sport=case["vport"], dport=case["cport"], flags="SA", seq=5000, ack=1001) / (
        b"r" * 1300)
    err = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
                / ICMPv6PacketTooBig(mtu=1280) / bytes(sent)[:1232])
    v, reason, ifindex, out = e.process_verdicts([err], 2 * S)[0]
    assert (v, ifindex) == ("tx", 10), reason
    assert checksums_ok6(out)
    (want,) = [r for r in case["at_rs"] if r["src"] != RIP]      # not the RS's own
    ip = Ether(out)[IPv6]
    assert (ip.src, ip.dst, ip.nh, ip.hlim, ip.plen) == (
        want["src"], want["dst"], want["nh"], want["hlim"], want["plen"])
    body = IPv6(bytes(ip.payload)) if ip.nh == 41 else ip
    if ip.nh == 41:
        assert (body.src, body.dst, body.hlim) == (want["inner"]["src"], want["inner"]["dst"],
                                                   want["inner"]["hlim"])
    ic = bytes(body.payload)
    q = want["icmp"]["quoted"]
    quoted = IPv6(ic[8:])
    assert (ic[0], ic[1], int.from_bytes(ic[4:8], "big"), len(ic)) == (
        want["icmp"]["type"], want["icmp"]["code"], want["icmp"]["info"], want["icmp"]["len"])
    assert (quoted.src, quoted.dst, quoted.hlim, int.from_bytes(ic[48:50], "big"),
            int.from_bytes(ic[50:52], "big")) == (q["src"], q["dst"], q["hlim"], q["sport"],
                                                  q["dport"])
    assert e.stats()["icmp_related"] == 1


def test_the_recording_of_a_nat66_servers_error_is_our_difference():
    """6.1 delivered nothing to the client for the NAT66 server's packet too big in the
    recording (its stats count no packet out); fastlvs translates it as it does for IPv4
    (test_icmpv6_errors_about_conns_alike), so that path-MTU discovery works through NAT66."""
    (out,) = [c for c in ICMP6["cases"] if c["dir"] == "out"]
    assert out["at_client"] == []
    assert "TCP  [2001:db8:1::100]:81                1        2        0" in "\n".join(
        ICMP6["ipvsadm_Ln_stats"])


@pytest.mark.parametrize("kind", ENGINES)
def test_a_sync_master_sends_ipv6_conns_as_ipv6_entries(kind):
    """A v6 conn is sent as the v1 format's IPv6 entry (72 bytes, its addresses whole),
    a v4 conn beside it as an IPv4 one (tests/sync/test_sync_v6.py holds them to 6.1)."""
    e = v6_engine(kind)
    e.set_service(9, 6, P.VIP, 80)
    e.set_dest(9, 9, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    e.sync_start_master(1, 1500)
    # three packets each: the default sync_threshold sends a conn at its third
    frames = [syn(45000, 80), syn(45000, 80, flags="A"), syn(45000, 80, flags="A"),
              P.tcp("S", sport=45001), P.tcp("A", sport=45001), P.tcp("A", sport=45001)]
    got = e.process_verdicts(frames, 1 * S)
    assert [g[0] for g in got] == ["tx"] * 6
    msgs = e.sync_take(10 * S)
    conns = [c for d in msgs for c in e.sync_decode(d)[0]]
    assert [(c["caddr"], c["cport"], c["vaddr"]) for c in conns] == [
        (CLIENT, 45000, VIP), (P.CLIENT, 45001, P.VIP)]
    assert sum(map(len, msgs)) == 8 + 72 + 36
