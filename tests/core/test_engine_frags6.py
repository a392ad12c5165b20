"""IPv6 fragments to a virtual service: reassembled in the engine's bounded area, as the 6.1
kernel's nf_defrag_ipv6 does before IPVS, forwarded in DR, NAT66 and TUN, and sent on as the
kernel sends them (tests/fixtures/kernel/frags6.json, recorded by
tests/fixtures/kernel/scripts/frags6.py). Every output is re-parsed with scapy, its
fragments put back together and its checksums recomputed; both engines (the extension and
the reference) answer every case, and a differential run feeds them the same random and
damaged fragment streams."""
from __future__ import annotations

import ipaddress
import json
import pathlib
import random

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import fastlvs.engine._core as core
import fastlvs.engine._testing as testing
from fastlvs.engine import reference
from tests.core import packets as P
from tests.core.helpers import S
from tests.core.test_engine_ipv6 import checksums_ok6
from tests.core.test_reference_vs_core import Twin

ORACLE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                     / "frags6.json").read_text())
TOPO = ORACLE["topology"]
VIP, CLIENT, RIP, LOCAL6 = TOPO["vip"], TOPO["client"], TOPO["rip"], TOPO["director_rs_side"]
ENGINES = {"core": core.Engine, "reference": reference.Engine}
EXT = (0, 43, 44, 60, 51, 135)


# -- reading IPv6 packets and their fragments ---------------------------------------------------

def walk(b: bytes):
    """(next-header chain, fragment header dict or None, upper-layer offset) of IPv6 bytes."""
    nh, off, chain, frag = b[6], 40, [], None
    while nh in EXT and off + 8 <= len(b):
        chain.append(nh)
        if nh == 44:
            fo = int.from_bytes(b[off + 2:off + 4], "big")
            frag = {"nh": b[off], "offset": fo & ~7, "m": bool(fo & 1),
                    "id": int.from_bytes(b[off + 4:off + 8], "big"), "at": off}
            nh, off = b[off], off + 8
        else:
            nh, off = b[off], off + (b[off + 1] + 1) * 8
    chain.append(nh)
    return chain, frag, off


def l3(frame: bytes) -> bytes:
    b = frame[14:]
    assert b[0] >> 4 == 6
    return b[:40 + int.from_bytes(b[4:6], "big")]


def rebuild(frames):
    """{(src, dst, id or None): whole IPv6 packet bytes} from `frames`, fragments joined and
    checked on the way: no gap, no overlap, M set on all but the last, one identification."""
    groups, whole = {}, {}
    for fr in frames:
        b = l3(fr)
        assert len(fr) == 14 + len(b)
        chain, frag, _ = walk(b)
        ip = IPv6(b)
        if frag is None:
            whole[(ip.src, ip.dst, None, len(whole))] = b
            continue
        assert frag["at"] == 40                        # nothing before the Fragment header
        groups.setdefault((ip.src, ip.dst, frag["id"]), []).append((frag["offset"], frag, b))
    for key, ps in groups.items():
        ps.sort(key=lambda t: t[0])
        data = b""
        for k, (off, frag, b) in enumerate(ps):
            assert off == len(data), f"gap or overlap at {off}"
            assert frag["m"] == (k + 1 < len(ps))
            piece = b[48:]
            assert k + 1 == len(ps) or len(piece) % 8 == 0
            data += piece
        head = bytearray(ps[0][2][:40])
        head[6] = ps[0][1]["nh"]
        head[4:6] = len(data).to_bytes(2, "big")
        whole[key] = bytes(head) + data
    return whole


def l4_ok(b: bytes) -> bool:
    """The TCP/UDP checksum of a whole IPv6 packet (no extension headers), recomputed."""
    nh, body = b[6], b[40:]
    ps = b[8:40] + len(body).to_bytes(4, "big") + bytes([0, 0, 0, nh])
    data = ps + body + (b"\0" if len(body) & 1 else b"")
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def inner_of(whole: bytes) -> bytes:
    """The packet a TUN output carries (IPv6-in-IPv6), else the packet itself."""
    return whole[40:] if whole[6] == 41 else whole


def masked(frame: bytes) -> bytes:
    """A frame from its IPv6 header on, the fragment identification zeroed: what must be
    byte-equal to the kernel's (it draws identifications at random, as we do); and for an
    ICMPv6 error of its own the flow label, which the kernel hashes (auto_flowlabels) and
    we leave 0."""
    b = bytearray(l3(frame))
    chain, frag, _ = walk(bytes(b))
    if frag is not None:
        b[frag["at"] + 4:frag["at"] + 8] = bytes(4)
    if chain == [58]:
        b[1] &= 0xF0
        b[2:4] = bytes(2)
    return bytes(b)


def outputs(res):
    return [data for _i, _ifx, data in res]


# -- the recording's director ---------------------------------------------------------------------

def oracle_engine(kind, mtu=1500, frag_mem=None):
    """The recorded director: UDP VIP:5001 DR, :5002 NAT66, :5003 TUN; TCP :5004 DR, :5005
    NAT66; one real server; the director's v6 address on the real servers' side."""
    kw = {} if frag_mem is None else {"frag_mem": frag_mem}
    e = ENGINES[kind](capacity=4096, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=mtu, **kw)
    e.set_local(local_ip6=LOCAL6)
    svc = 0
    for proto, ports in ((17, TOPO["ports"]), (6, TOPO["tcp_ports"])):
        for mode, port in sorted(ports.items(), key=lambda kv: kv[1]):
            svc += 1
            e.set_service(svc, proto, VIP, port)
            e.set_dest(svc, svc, RIP, port, mode, P.RS_MAC[0], ifindex=10)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    return e


def service_line(stats: str, proto: str, port: int):
    for line in stats.splitlines():
        f = line.split()
        if f and f[0] == proto and f[1].endswith(f"]:{port}"):
            return [int(x) for x in f[2:7]]
    raise AssertionError((proto, port))


def sent_frames(case):
    return [bytes.fromhex(d["hex"]) for d in case["sent"]]


def case_port(case):
    ports = TOPO["tcp_ports"] if case["name"].startswith("tcp") else TOPO["ports"]
    return ports[case["mode"]], "TCP" if case["name"].startswith("tcp") else "UDP"


def sport_of(case):
    for d in case["sent"]:
        b = bytes.fromhex(d["hex"])[14:]
        chain, frag, off = walk(b)
        if frag is None or frag["offset"] == 0:
            return int.from_bytes(b[off:off + 2], "big")
    return None


def too_big(case):
    """The kernel's packet-too-big answers in this case (time exceeded and parameter problem
    come from its own stack: see test_what_the_kernel_stack_answers)."""
    return [bytes.fromhex(d["hex"]) for d in case["to_client"]
            if d.get("icmp", {}).get("type") == 2]


CLIENT_CASES = [c for c in ORACLE["cases"] if not c["from_rs"]]
REPLY_CASES = [c for c in ORACLE["cases"] if c["from_rs"]]


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", CLIENT_CASES, ids=lambda c: f"{c['mode']}-{c['name']}")
def test_as_the_kernel(case, kind):
    """Each recorded case replayed, one fragment per batch: the same frames leave (byte for
    byte from the IPv6 header on, but for the identification the kernel draws at random),
    one identification per datagram, the datagram whole with a good checksum, the same
    service counters and conns."""
    e = oracle_engine(kind, case["mtu_to_rs"])
    res = []
    for k, fr in enumerate(sent_frames(case)):
        res += e.process([fr], (1 + k) * S)
    ours = outputs(res)
    theirs = [bytes.fromhex(d["hex"]) for d in case["to_rs"]] + too_big(case)
    assert [masked(o) for o in ours] == [masked(t) for t in theirs]
    ids = {walk(l3(o))[1]["id"] for o in ours if walk(l3(o))[1] is not None}
    assert len(ids) <= 1
    for o in ours:
        if walk(l3(o))[1] is None:          # whole packets here; fragments once rebuilt
            assert checksums_ok6(o)
    for dg in case["to_rs_datagrams"]:
        if not dg.get("complete") or ("payload_hex" not in dg and "inner" not in dg):
            continue
        got = [inner_of(w) for w in rebuild(ours).values()]
        assert all(l4_ok(w) for w in got)
        want = dg["inner"] if "inner" in dg else dg
        assert any(w[40 + (8 if w[6] == 17 else 20):].hex() == want["payload_hex"]
                   for w in got)
    port, proto = case_port(case)
    conns, inpkts, _op, inbytes, _ob = service_line(case["stats"], proto, port)
    sid = 1 + sorted(TOPO["ports"].values()).index(port) if proto == "UDP" \
        else 4 + sorted(TOPO["tcp_ports"].values()).index(port)
    st = e.service_stats(sid)
    assert (st["conns"], st["inpkts"], st["inbytes"]) == (conns, inpkts, inbytes)
    sport = sport_of(case)
    want_conns = len([l for l in case["conns"] if f"]:{sport} " in l])
    assert len(e.conns()) == want_conns


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", REPLY_CASES, ids=lambda c: c["name"])
def test_nat66_reply_as_the_kernel(case, kind):
    """A NAT66 real server's fragmented reply: reassembled, rewritten (VIP:vport as its
    source, the UDP checksum of the whole datagram) and sent on to the client in the
    pieces it came in, as recorded."""
    opener = next(c for c in CLIENT_CASES if c["mode"] == "nat" and c["name"] == "two")
    e = oracle_engine(kind)
    e.process(sent_frames(opener), 1 * S)
    e.set_neighbor(CLIENT, P.CLIENT_MAC, ifindex=2)
    ours = outputs(e.process(sent_frames(case), 2 * S))
    theirs = [bytes.fromhex(d["hex"]) for d in case["to_client"] if "icmp" not in d]
    assert theirs and [masked(o) for o in ours] == [masked(t) for t in theirs]
    whole = list(rebuild(ours).values())
    assert len(whole) == 1 and l4_ok(whole[0])
    assert whole[0][40 + 8:].hex() == case["to_client_datagrams"][0]["payload_hex"]
    conns, _i, outpkts, _ib, outbytes = service_line(case["stats"], "UDP", TOPO["ports"]["nat"])
    st = e.service_stats(2)
    assert (st["outpkts"], st["outbytes"]) == (outpkts, outbytes) == (1, 40 + 2008)


def test_what_the_kernel_stack_answers():
    """Where the recording shows the kernel's own IPv6 stack answering (the VIP is one of the
    director's addresses there), the engine drops and counts instead: a fragment with M set
    whose length is not whole 8-byte units got parameter problem (type 4, pointing at the
    payload length) and took the datagram with it; a lone first fragment got time exceeded
    (type 3 code 1) once its queue expired."""
    odd = next(c for c in CLIENT_CASES if c["name"] == "odd_middle" and c["mode"] == "dr")
    icmp = [d["icmp"] for d in odd["to_client"] if "icmp" in d]
    assert [(i["type"], i["code"], i["info"]) for i in icmp] == [(4, 0, 4)]
    for kind in ENGINES:
        e = oracle_engine(kind)
        got = [v[:2] for v in e.process_verdicts(sent_frames(odd), 1 * S)]
        assert got == [("drop", "frag_held"), ("drop", "frag_bad"), ("drop", "frag_held")]
        assert e.frag_stats()["queues"] == 1        # the last piece alone, a queue of its own
    expired = [d["icmp"] for c in ORACLE["cases"] for d in c["to_client"]
               if d.get("icmp", {}).get("type") == 3]
    assert expired and all(i["code"] == 1 and i["quoted"]["frag"]["offset"] == 0
                           for i in expired)


@pytest.mark.parametrize("kind", ENGINES)
def test_lone_first_fragment_expires_after_ip6frag_time(kind):
    """Nothing leaves for a datagram that never completes; its queue goes 60 s after its
    first fragment (ip6frag_time), while a v4 datagram's goes after 30 s."""
    lone = next(c for c in CLIENT_CASES if c["name"] == "lone_first" and c["mode"] == "dr")
    assert lone["to_rs"] == []
    e = oracle_engine(kind)
    e.set_service(9, 17, P.VIP, 53)
    e.set_dest(9, 9, P.RS[0], 53, "dr", P.RS_MAC[0], ifindex=10)
    v4 = P.udp(dport=53, payload=b"x" * 2000)
    v4_first = bytearray(v4[:14 + 20 + 1480])
    v4_first[14 + 2:14 + 4] = (20 + 1480).to_bytes(2, "big")
    v4_first[14 + 6:14 + 8] = (0x2000).to_bytes(2, "big")
    v4_first[14 + 10:14 + 12] = b"\0\0"
    s = sum(int.from_bytes(v4_first[14 + i:16 + i], "big") for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    v4_first[14 + 10:14 + 12] = (~s & 0xFFFF).to_bytes(2, "big")
    assert e.process(sent_frames(lone) + [bytes(v4_first)], 1 * S) == []
    assert e.frag_stats()["queues"] == 2
    e.run_timers(now_ns=31 * S + 1)
    assert e.frag_stats()["queues"] == 1 and e.stats()["frag_timeout"] == 1
    e.run_timers(now_ns=60 * S)
    assert e.frag_stats()["queues"] == 1
    e.run_timers(now_ns=61 * S + 1)
    st = e.frag_stats()
    assert st["queues"] == 0 and st["blocks"] == 0 and e.stats()["frag_timeout"] == 2
    assert st["timeout6"] == 60


# -- our own cases ---------------------------------------------------------------------------------

def datagram(size=2000, sport=40000, dport=5001, src=CLIENT, dst=VIP, hlim=64, tcp=False,
             tag=3):
    body = bytes((i * 13 + tag) & 0xFF for i in range(size))
    l4 = TCP(sport=sport, dport=dport, flags="S", seq=1) if tcp else UDP(sport=sport,
                                                                         dport=dport)
    return bytes(IPv6(src=src, dst=dst, hlim=hlim) / l4 / Raw(body))


def cut(pkt: bytes, ranges, ident=0x4242, nh=None, src_mac=P.CLIENT_MAC, m=None):
    """Frames with pkt's fragmentable part (all after the fixed header) at [start, end)
    byte ranges; M set unless a range ends it (or as `m` says)."""
    body, out = pkt[40:], []
    for start, end in ranges:
        more = (end < len(body)) if m is None else m
        fh = IPv6ExtHdrFragment(nh=pkt[6] if nh is None else nh, offset=start // 8,
                                m=int(more), id=ident)
        h = IPv6(pkt[:40])
        h.remove_payload()
        h.plen = None
        h.nh = 44
        out.append(bytes(Ether(src=src_mac, dst=P.LOCAL_MAC) / IPv6(bytes(h / fh
                                                                          / Raw(body[start:end])))))
    return out


def even(pkt: bytes, size: int):
    n = len(pkt) - 40
    return [(o, min(o + size, n)) for o in range(0, n, size)]


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("mode,port", [("dr", 5001), ("nat", 5002), ("tun", 5003)])
@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled", "one_batch"])
def test_datagram_arrives_whole(kind, mode, port, order):
    """Any arrival order, any batching: one datagram out, in the pieces it came in (TUN's
    first grown by the inner header), its bytes those sent, its checksum right."""
    e = oracle_engine(kind)
    pkt = datagram(5000, sport=41000, dport=port)
    frames = cut(pkt, [(0, 504), (504, 1504), (1504, 2904), (2904, 4304), (4304, 5008)])
    if order == "reversed":
        frames.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(frames)
    if order == "one_batch":
        res = e.process(frames, 1 * S)
    else:
        res = []
        for k, fr in enumerate(frames):
            res += e.process([fr], (1 + k) * S)
    ours = outputs(res)
    sizes = [len(l3(o)) - 48 for o in ours]
    grow = 40 if mode == "tun" else 0
    assert sizes == [504 + grow, 1000, 1400, 1400, 704]
    (whole,) = rebuild(ours).values()
    inner = inner_of(whole)
    assert l4_ok(inner) and inner[48:] == pkt[48:]
    assert IPv6(inner).hlim == 63
    dst = RIP if mode == "nat" else VIP
    assert IPv6(inner).dst == dst
    st = e.stats()
    assert (st["frag_held"], st["frag_reasm"], st["frag_out"]) == (4, 1, 5)


@pytest.mark.parametrize("kind", ENGINES)
def test_tun_slow_path_cuts_to_the_largest_fragment(kind):
    """TUN's first piece grown by the inner header no longer fits the largest fragment: the
    kernel then cuts the tunnel packet in pieces of max(largest, 1280) (as recorded in
    big_first_fits), every piece but the last whole 8-byte units."""
    e = oracle_engine(kind)
    pkt = datagram(2000, sport=41001, dport=5003)
    ours = outputs(e.process(cut(pkt, [(0, 1400), (1400, 2008)]), 1 * S))
    assert [len(l3(o)) for o in ours] == [1448, 40 + 8 + 40 + 2008 - 1400]
    (whole,) = rebuild(ours).values()
    assert inner_of(whole)[48:] == pkt[48:] and l4_ok(inner_of(whole))


@pytest.mark.parametrize("kind", ENGINES)
def test_fits_whole_leaves_without_a_fragment_header(kind):
    """An atomic fragment (offset 0, M clear) is a whole datagram: forwarded without its
    Fragment header, as recorded; in TUN the tunnel packet outgrows the fragment and leaves
    as one piece with a Fragment header (recorded too)."""
    e = oracle_engine(kind)
    for port, chain in ((5001, [17]), (5002, [17]), (5003, [44, 41])):
        pkt = datagram(100, sport=41002, dport=port)
        (out,) = outputs(e.process(cut(pkt, [(0, 108)]), 1 * S))
        got = walk(l3(out))
        assert got[0] == chain
        if port == 5003:
            assert not got[1]["m"] and got[1]["offset"] == 0


@pytest.mark.parametrize("kind", ENGINES)
def test_packet_too_big_when_the_largest_fragment_exceeds_the_mtu(kind):
    """The largest fragment, not the datagram, must fit: 1456-byte pieces over a 1280 MTU
    get packet too big with 1280 from the VIP quoting the reassembled datagram (hop limit
    already taken off); 1000-byte pieces of the same datagram go through."""
    e = oracle_engine(kind, mtu=1280)
    pkt = datagram(3000, sport=41003, dport=5001)
    (ptb,) = outputs(e.process(cut(pkt, even(pkt, 1448)), 1 * S))
    ip = IPv6(l3(ptb))
    assert (ip.src, ip.dst, ip.hlim, ip.nh) == (VIP, CLIENT, 64, 58)
    ic = bytes(ip.payload)
    assert (ic[0], ic[1], int.from_bytes(ic[4:8], "big")) == (2, 0, 1280)
    assert IPv6(ic[8:]).hlim == 63 and IPv6(ic[8:]).plen == 3008
    assert checksums_ok6(ptb) and len(l3(ptb)) == 1280
    assert e.stats()["frag_needed_sent"] == 1 and e.conns()      # the conn stands
    pkt = datagram(3000, sport=41004, dport=5001)
    ours = outputs(e.process(cut(pkt, even(pkt, 1000)), 2 * S))
    assert [len(l3(o)) for o in ours] == [1048, 1048, 1048, 56]


@pytest.mark.parametrize("kind", ENGINES)
def test_malformed_fragment_streams_are_dropped_and_counted(kind):
    """Damaged streams never give output: an empty fragment, one past 64 KiB, a first TCP
    fragment without its whole header, M set on a length not whole 8-byte units (the
    datagram goes), a last fragment that disagrees with the one before, a fragment of a
    protocol the engine does not forward to a VIP (v6_exthdr), a Fragment header cut short;
    fragments of other addresses are the host's."""
    e = oracle_engine(kind)
    pkt = datagram(2000, sport=42000)
    verdicts = lambda frames, t: [v[:2] for v in e.process_verdicts(frames, t * S)]  # noqa: E731
    assert verdicts(cut(pkt, [(0, 0)]), 1) == [("drop", "frag_bad")]
    far = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
                / IPv6ExtHdrFragment(nh=17, offset=65528 // 8, m=0, id=5) / Raw(b"x" * 16))
    assert verdicts([far], 2) == [("drop", "frag_bad")]
    tcp = datagram(200, sport=42001, dport=5004, tcp=True)
    assert verdicts(cut(tcp, [(0, 16)]), 3) == [("drop", "frag_bad")]
    assert verdicts(cut(pkt, [(0, 504), (504, 1003)]), 4) == \
        [("drop", "frag_held"), ("drop", "frag_bad")]
    assert e.frag_stats()["queues"] == 0                 # the datagram went with it
    assert verdicts(cut(pkt, [(1000, 2008), (1600, 1800)], m=False, ident=7), 5) == \
        [("drop", "frag_held"), ("drop", "frag_bad")]
    assert verdicts(cut(pkt, [(0, 504)], nh=60), 6) == [("drop", "v6_exthdr")]
    short = bytearray(cut(pkt, [(0, 504)])[0][:14 + 44])
    short[14 + 4:14 + 6] = (4).to_bytes(2, "big")
    assert verdicts([bytes(short)], 7) == [("drop", "malformed")]
    other = datagram(2000, sport=42002, dst="2001:db8:1::77")
    assert verdicts(cut(other, [(0, 504)]), 8) == [("pass", "fragment")]
    hbh = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IPv6(src=CLIENT, dst=VIP)
                / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(nh=17, m=1) / Raw(b"x" * 64))
    assert verdicts([hbh], 9) == [("drop", "v6_exthdr")]
    assert e.conns() == [] and e.stats()["tx"] == 0


def flood_src(i):
    return f"2001:db8:1::{i + 0x1000:x}"


def src_bucket(seed, addr):
    """The share a v6 source counts against: its /64, folded and hashed under the key."""
    a = int(ipaddress.ip_address(addr))
    fold = ((a >> 96) ^ (a >> 64)) & 0xFFFFFFFF
    return (((fold ^ (seed >> 17)) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) >> 58


@pytest.mark.parametrize("kind", ENGINES)
def test_one_source_cannot_fill_the_area(kind):
    """First fragments of new datagrams from one /64 (any interface bits) take at most its
    share of the queues; another client still gets its datagram through."""
    e = oracle_engine(kind, frag_mem=64 << 10)
    share = e.frag_stats()["src_queue_limit"]
    flood = []
    for i in range(share + 5):
        src = flood_src(i)
        flood += cut(datagram(600, sport=43000 + i, src=src), [(0, 304)], ident=i)
    got = [v[1] for v in e.process_verdicts(flood, 1 * S)]
    assert got.count("frag_held") == share and got.count("frag_no_room") == 5
    # another /64 with a share of its own (shares are drawn by keyed hash)
    seed = testing.engine_seed(e) if kind == "core" else e.seed
    mine = src_bucket(seed, flood_src(0))
    other = next(a for a in (f"2001:db8:{k:x}::2" for k in range(9, 200))
                 if src_bucket(seed, a) != mine)
    pkt = datagram(600, sport=43999, src=other)
    ours = outputs(e.process(cut(pkt, [(0, 304), (304, 608)]), 2 * S))
    assert len(ours) == 2


def v6_twin(**kw):
    t = Twin(capacity=4096, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, **kw)
    t.set_local(local_ip6=LOCAL6)
    svc = 0
    for proto, ports in ((17, TOPO["ports"]), (6, TOPO["tcp_ports"])):
        for mode, port in sorted(ports.items(), key=lambda kv: kv[1]):
            svc += 1
            t.set_service(svc, proto, VIP, port)
            t.set_dest(svc, svc, RIP, port, mode, P.RS_MAC[0], ifindex=10)
    t.set_neighbor(CLIENT, P.CLIENT_MAC, ifindex=2)
    t.set_callback(lambda: (lambda svcs, flows: list(svcs)))
    return t


@pytest.mark.parametrize("seed", range(4))
def test_differential_random_fragment_streams(seed):
    """The extension and the reference given the same random fragment streams (random
    cuts, orders, duplicates, overlaps, flipped header bits, frames cut short, NAT66
    replies, a small area, time passing): the same verdicts, the same bytes out
    (identifications included: the reference has the extension's key), the same counters;
    whatever leaves re-assembles without gap or overlap, and every undamaged datagram that
    leaves is the one sent, its checksum right."""
    rng = random.Random(seed)
    t = v6_twin(frag_mem=64 << 10)
    sent = {}
    ts = S
    checked = 0
    for round_ in range(40):
        frames = []
        for _ in range(rng.randint(1, 4)):
            port = rng.choice([5001, 5002, 5003, 5004, 5005])
            sport = 20000 + len(sent)                  # one datagram per (source, port)
            size = rng.choice([100, 700, 1500, 3000, 9000])
            src = rng.choice([CLIENT, "2001:db8:1::3", "2001:db8:7::9"])
            pkt = datagram(size, sport=sport, dport=port, src=src, tcp=port > 5003,
                           tag=rng.randrange(256))
            sent[(src, sport)] = pkt
            n = len(pkt) - 40
            cuts, o = [], 0
            while o < n:
                step = rng.choice([8, 256, 504, 1000, 1448, 4000])
                cuts.append((o, min(n, o + step)))
                o += step
            fr = cut(pkt, cuts, ident=rng.getrandbits(32))
            if rng.random() < 0.2:
                fr.append(rng.choice(fr))                            # a duplicate
            if rng.random() < 0.1 and len(cuts) > 1:
                a, b = cuts[0]
                fr += cut(pkt, [(a + 8, b + 8)], ident=walk(l3(fr[0]))[1]["id"])  # overlap
            if rng.random() < 0.1:
                k = rng.randrange(len(fr))
                b = bytearray(fr[k])
                if rng.random() < 0.7:
                    b[rng.randrange(14, 14 + 48)] ^= 1 << rng.randrange(8)   # a header bit
                else:
                    b = b[:rng.randrange(14, len(b))]                       # cut short
                fr[k] = bytes(b)
                sent[(src, sport)] = None       # whatever comes of it is not checked
            rng.shuffle(fr)
            frames += fr
        if rng.random() < 0.3 and sent:
            (src, sport), _p = rng.choice(list(sent.items()))
            reply = datagram(2500, sport=5002, dport=sport, src=RIP, dst=src, tag=9)
            frames += cut(reply, even(reply, 1000), src_mac=P.RS_MAC[0], ident=round_)
        ts += rng.choice([0, S, 20 * S, 70 * S])
        out = t.run(frames, ts)
        tx = [v[3] for v in out if v[0] == "tx"]
        for v in tx:
            pieces = v if isinstance(v, list) else [v]
            for w in rebuild(pieces).values():
                inner = inner_of(w)
                key = (IPv6(inner).src, int.from_bytes(inner[40:42], "big"))
                if (inner[6] in (6, 17) and IPv6(inner).dst in (VIP, RIP)
                        and sent.get(key) is not None):
                    assert l4_ok(inner)
                    hl = 8 if inner[6] == 17 else 20       # NAT66 rewrites the header
                    assert inner[40 + hl:] == sent[key][40 + hl:]
                    checked += 1
    t.run_timers(ts + 120 * S)
    assert t.core.frag_stats()["queues"] == 0
    assert checked > 10


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_fragments_never_give_malformed_output(seed):
    """Fragment frames with random bytes anywhere, cut short or grown, in random batches and
    times: the engine never crashes, and whatever it sends is a well-formed IPv6 frame (its
    payload length that of the frame) whose fragments, when it sends fragments, join
    without gap or overlap under one identification."""
    rng = random.Random(100 + seed)
    e = oracle_engine("core", frag_mem=64 << 10)
    e.set_neighbor(CLIENT, P.CLIENT_MAC, ifindex=2)
    pool = []
    for k in range(30):
        port = rng.choice([5001, 5002, 5003, 5004, 5005])
        pkt = datagram(rng.choice([50, 600, 3000, 9000]), sport=30000 + k, dport=port,
                       tcp=port > 5003)
        pool += cut(pkt, even(pkt, rng.choice([8, 504, 1448])), ident=k)
    reply = datagram(3000, sport=5002, dport=30001, src=RIP, dst=CLIENT)
    pool += cut(reply, even(reply, 1000), src_mac=P.RS_MAC[0], ident=99)
    ts = S
    for _ in range(40):
        frames = []
        for _ in range(rng.randint(1, 64)):
            b = bytearray(rng.choice(pool))
            r = rng.random()
            if r < 0.3:
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
            elif r < 0.4:
                b = b[:rng.randrange(len(b))]
            elif r < 0.45:
                b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
            frames.append(bytes(b))
        ts += rng.choice([0, S, 30 * S, 90 * S])
        for v in e.process_verdicts(frames, ts):
            if v[0] != "tx":
                continue
            pieces = v[3] if isinstance(v[3], list) else [v[3]]
            for fr in pieces:
                assert fr[12:14] == b"\x86\xdd" and len(fr) == 14 + 40 + int.from_bytes(
                    fr[18:20], "big")
            rebuild(pieces)
    assert e.stats()["rx"] > 0
