"""ICMP errors about existing conns, both ways, as the kernel's IPVS handles them
(ip_vs_in_icmp, ip_vs_out_icmp), checked against a recording of Debian's 6.1 kernel
(tests/fixtures/kernel/icmp.json, made by tests/fixtures/kernel/scripts/icmp.sh): every
frame the kernel forwarded or sent is compared field by field with the engine's (parsed with
scapy, checksums recomputed), and so are the service and server counters. Then the same
behaviour on the test topology: what is dropped and counted, what is left to the host, and
that malformed errors never produce a frame."""
import json
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCP, TCPerror, UDP, UDPerror, fragment
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from tests.core import packets as P
from tests.core.helpers import S, checksums_ok, engine

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "icmp.json").read_text())
TOPO = FIXTURE["topology"]
DIRECTOR_MAC, CLIENT_MAC, RS_MAC = P.LOCAL_MAC, P.CLIENT_MAC, P.RS_MAC[0]
CLIENT_IF, RS_IF = 3, 10
CASES = {c["name"]: c for c in FIXTURE["cases"]}
# why the engine forwards nothing where the kernel forwarded nothing
NOT_FORWARDED = {
    "in_nat_param_problem": ("pass", "no_service"),     # not an error IPVS relates to a conn
    "in_nat_no_conn": ("pass", "icmp_no_conn"),
    "in_nat_quote_short": ("pass", "icmp_no_conn"),     # no ports quoted: no conn to name
    "in_nat_bad_csum": ("drop", "icmp_bad_checksum"),
    "in_dr_bad_csum": ("drop", "icmp_bad_checksum"),
    "in_nat_ttl1": ("drop", "ttl_exceeded"),            # and no ICMP about an ICMP error
    "out_nat_bad_csum": ("drop", "icmp_bad_checksum"),
    "out_nat_ttl1": ("drop", "ttl_exceeded"),
}
# what the kernel's routing (not IPVS) did with an error that names no conn: the engine
# leaves it to the host, which routes it alike
ROUTED_BY_THE_HOST = {"out_nat_no_conn"}


def fixture_engine():
    """The recording's services, server and conns: DR :80, NAT :81 -> 8081, TUN :82 and UDP
    NAT :53 -> 5353 on one real server, each with the client's conn open."""
    e = core.Engine(capacity=4096, local_ip=TOPO["director_rs_side"], local_mac=DIRECTOR_MAC,
                    mtu=1500)
    for sid, (name, c) in enumerate(FIXTURE["conns"].items(), start=1):
        e.set_service(sid, 6 if c["proto"] == "tcp" else 17, TOPO["vip"], c["vport"])
        e.set_dest(sid, sid, TOPO["rip"], c["rport"], name.split("_")[0], RS_MAC,
                   ifindex=RS_IF)
    e.set_neighbor(TOPO["client"], CLIENT_MAC, ifindex=CLIENT_IF)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    for c in FIXTURE["conns"].values():
        l4 = (TCP(sport=c["cport"], dport=c["vport"], flags="S", seq=1000)
              if c["proto"] == "tcp" else UDP(sport=c["cport"], dport=c["vport"]) / b"hello")
        frame = bytes(Ether(src=CLIENT_MAC, dst=DIRECTOR_MAC)
                      / IP(src=TOPO["client"], dst=TOPO["vip"]) / l4)
        assert len(e.process([frame], 1 * S)) == 1
    return e


def frames_of(case):
    """The case as the director received it: one frame, or the fragments the oracle sent."""
    src = CLIENT_MAC if case["side"] == "client" else RS_MAC
    ip = IP(bytes.fromhex(case["sent"]))
    pieces = fragment(ip, fragsize=304) if "fragmented" in case["name"] else [ip]
    return [bytes(Ether(src=src, dst=DIRECTOR_MAC) / p) for p in pieces]


def quoted_fields(b: bytes):
    """The fields of a quoted IP packet, as far as it is there."""
    if len(b) < 20:
        return {"raw": b.hex()}
    q = IPerror(b)
    out = {k: q.getfieldval(k) for k in ("version", "ihl", "tos", "len", "id", "flags",
                                          "frag", "ttl", "proto", "chksum", "src", "dst")}
    ihl = q.ihl * 4
    out["l4"] = b[ihl:].hex()          # ports, and what follows as far as it was quoted
    return out


def fields(ip_bytes: bytes, outer_id=True):
    """Every field of a forwarded or generated packet, down through IPIP and the packet an
    ICMP error quotes."""
    ip = IP(ip_bytes)
    out = {k: ip.getfieldval(k) for k in ("version", "ihl", "tos", "len", "flags", "frag",
                                          "ttl", "proto", "src", "dst")}
    if outer_id:
        out["id"] = ip.id
    body = ip_bytes[ip.ihl * 4:ip.len]
    if ip.proto == 4:
        out["inner"] = fields(body)
    elif ip.proto == 1:
        ic = ICMP(body)
        out["icmp"] = {"type": ic.type, "code": ic.code, "word": body[4:8].hex(),
                       "quoted": quoted_fields(body[8:])}
    return out


def csum16(b: bytes) -> int:
    """The ones' complement sum of b, complemented: 0 over data that carries its checksum."""
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_csum_ok(hdr: bytes) -> bool:
    return csum16(hdr[:(hdr[0] & 15) * 4]) == 0


def csums_ok(ip_bytes: bytes) -> bool:
    """Every checksum a forwarded error must carry right, recomputed: the outer IP header
    (and IPIP's inner one), the ICMP message, the quoted IP header. The quoted TCP/UDP
    checksum is not among them: the kernel leaves it as it was."""
    ip = IP(ip_bytes)
    if ip.proto == 4:
        return checksums_ok(bytes(Ether() / ip)) and csums_ok(ip_bytes[ip.ihl * 4:])
    if not checksums_ok(bytes(Ether() / ip)):
        return False
    q = ip_bytes[ip.ihl * 4 + 8:ip.len]
    if len(q) >= 20 and len(q) >= (q[0] & 15) * 4:
        return ip_csum_ok(q)
    return True


@pytest.mark.parametrize("name", list(CASES))
def test_as_the_kernel_did(name):
    case = CASES[name]
    e = fixture_engine()
    res = e.process_verdicts(frames_of(case), 2 * S)
    got = [r for r in res if r[0] == "tx"]
    kernel_rs = [Ether(bytes.fromhex(h)) for h in case["at_rs"]]
    kernel_client = [Ether(bytes.fromhex(h)) for h in case["at_client"]]
    if name in ROUTED_BY_THE_HOST:
        assert res[-1][:2] == ("pass", "icmp_no_conn")
        assert len(kernel_client) == 1 and kernel_client[0][IP].src == TOPO["rip"]
        return
    if name in NOT_FORWARDED:
        assert not kernel_rs and not kernel_client
        assert res[-1][:2] == NOT_FORWARDED[name] and not got
        return
    want, ifindex = (kernel_rs, RS_IF) if kernel_rs else (kernel_client, CLIENT_IF)
    assert not (kernel_rs and kernel_client)
    (verdict, reason, out_if, data), = [r for r in res if r[0] != "drop" or r[1] != "frag_held"]
    assert verdict == "tx", reason
    outs = data if isinstance(data, list) else [data]
    assert out_if == ifindex and len(outs) == len(want)
    if len(outs) > 1:
        # a reassembled error is cut again as the kernel cut it: compare the datagram
        a = b"".join(bytes(Ether(o)[IP].payload) for o in outs)
        k = b"".join(bytes(w[IP].payload) for w in want)
        assert a == k
        for o, w in zip(outs, want):
            ip = Ether(o)[IP]
            assert fields(bytes(ip)[:20] + b"\0" * 8)["len"] == w[IP].len
            assert (ip.frag, ip.flags, ip.ttl, ip.src, ip.dst) == \
                (w[IP].frag, w[IP].flags, w[IP].ttl, w[IP].src, w[IP].dst)
            assert ip_csum_ok(bytes(ip)[:20])
        # the datagram the fragments make: its ICMP checksum holds
        assert csum16(a) == 0
        return
    (out,), (w,) = outs, want
    ours = Ether(out)
    assert ours.dst == (RS_MAC if ifindex == RS_IF else CLIENT_MAC)
    assert ours.src == DIRECTOR_MAC
    # the kernel numbers the IP ids of packets it makes (TUN's outer header, an error it
    # sends) from its own counter; everything else is compared
    made = ours[IP].proto == 4 or name == "out_tun_frag_needed"
    assert fields(bytes(ours[IP]), outer_id=not made) == fields(bytes(w[IP]), outer_id=not made)
    assert csums_ok(bytes(ours[IP]))
    if not made:
        assert bytes(ours[IP]) == bytes(w[IP])


def parse_stats(lines):
    """ipvsadm -Ln --stats: {(proto, vport): (conns, inpkts, outpkts, inbytes, outbytes)}
    of the services (the server lines below them say the same, one server each)."""
    out = {}
    for line in lines:
        f = line.split()
        if f and f[0] in ("TCP", "UDP"):
            out[(f[0], int(f[1].rsplit(":", 1)[1]))] = tuple(int(x) for x in f[2:7])
    return out


def test_counters_as_the_kernel_counted():
    """All the recording's errors through one engine, in the order sent: what each service
    and server counted is what `ipvsadm -Ln --stats` showed (errors count as packets of the
    conn, in or out; a bad checksum not at all; TTL 1 inbound counts, outbound does not; the
    error TUN answers counts twice out, as the kernel's output hook sees it again)."""
    e = fixture_engine()
    for i, case in enumerate(FIXTURE["cases"]):
        e.process(frames_of(case), (2 + i) * S)
    want = parse_stats(FIXTURE["stats_after"])
    for sid, c in enumerate(FIXTURE["conns"].values(), start=1):
        st = e.service_stats(sid)
        key = (c["proto"].upper(), c["vport"])
        assert (st["conns"], st["inpkts"], st["outpkts"], st["inbytes"], st["outbytes"]) \
            == want[key], key
        ds = e.dest_stats(sid)
        assert (ds["inpkts"], ds["outpkts"], ds["inbytes"], ds["outbytes"]) == want[key][1:]
    # the errors changed no conn: states as before, as -Lnc showed
    assert sorted((c["cport"], c["state"]) for c in e.conns()) == sorted(
        (int(line.split()[3].rsplit(":", 1)[1]), line.split()[2])
        for line in FIXTURE["ipvsadm_Lnc_after"][2:])


# -- the same on the test topology ---------------------------------------------------------------

def opened(fwd, proto=6, rport=None, **kw):
    e = engine(fwd, proto=proto, vport=P.VPORT if proto == 6 else 53,
               rport=rport if rport is not None else (8080 if fwd == "nat" else None), **kw)
    e.set_neighbor(P.CLIENT, P.CLIENT_MAC, ifindex=3)
    opener = P.tcp("S") if proto == 6 else P.udp()
    assert len(e.process([opener], 1 * S)) == 1
    return e


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_client_side_error_goes_to_the_conns_server(fwd):
    e = opened(fwd)
    frame = P.icmp_about_reply(3, 4, 1400, quote=48)
    before = e.conns(2 * S)
    (v, reason, ifindex, out), = e.process_verdicts([frame], 2 * S)
    assert (v, ifindex) == ("tx", 10)
    pkt = Ether(out)
    assert pkt.dst == P.RS_MAC[0] and csums_ok(bytes(pkt[IP]))
    if fwd == "tun":
        assert (pkt[IP].src, pkt[IP].dst, pkt[IP].proto) == (P.LOCAL_IP, P.RS[0], 4)
        # the error itself goes inside, unchanged but for its TTL
        inner = bytes(pkt[IP].payload)
        sent = bytes(Ether(frame)[IP])
        assert inner[:8] + inner[9:10] + inner[12:] == sent[:8] + sent[9:10] + sent[12:]
        assert inner[8] == 63 and IP(inner)[ICMP].nexthopmtu == 1400
    else:
        err = pkt[IP]
        assert err.ttl == 63 and err[ICMP].type == 3 and err[ICMP].nexthopmtu == 1400
        q = err[IPerror]
        if fwd == "dr":
            assert bytes(err) == bytes(Ether(frame)[IP])[:8] + bytes([63]) + bytes(err)[9:]
            assert (err.dst, q.src, q[TCPerror].sport) == (P.VIP, P.VIP, P.VPORT)
        else:
            # ip_vs_nat_icmp: outer destination, quoted source and port become the server's
            assert (err.dst, q.src, q[TCPerror].sport) == (P.RS[0], P.RS[0], 8080)
            assert (q.dst, q[TCPerror].dport) == (P.CLIENT, 40000)
            # the quoted TCP checksum is left as it was, as the kernel leaves it
            assert q[TCPerror].chksum == Ether(frame)[TCPerror].chksum
    assert e.stats()["icmp_related"] == 1
    assert e.dest_stats(1)["inpkts"] == 2 and e.dest_stats(1)["outpkts"] == 0
    assert e.conns(2 * S) == before             # state and timer untouched


@pytest.mark.parametrize("proto", [6, 17])
def test_server_side_error_is_translated_back_to_the_client(proto):
    e = opened("nat", proto=proto, rport=8080 if proto == 6 else 5353)
    frame = P.icmp_about_request(3, 4, 1300, quote=28, proto=proto,
                                 rport=8080 if proto == 6 else 5353, src="192.0.2.99")
    (v, reason, ifindex, out), = e.process_verdicts([frame], 2 * S)
    assert (v, ifindex) == ("tx", 3)
    err = Ether(out)
    assert err.dst == P.CLIENT_MAC and csums_ok(bytes(err[IP]))
    # from the VIP (whoever sent it), about a packet to VIP:vport: what the client sent
    assert (err[IP].src, err[IP].dst, err[IP].ttl) == (P.VIP, P.CLIENT, 63)
    q = err[IPerror]
    l4 = q[TCPerror] if proto == 6 else q[UDPerror]
    assert (q.src, q.dst, l4.sport, l4.dport) == (P.CLIENT, P.VIP, 40000,
                                                  P.VPORT if proto == 6 else 53)
    assert err[ICMP].nexthopmtu == 1300
    assert e.dest_stats(1)["outpkts"] == 1 and e.stats()["icmp_related"] == 1


def test_tun_error_about_our_ipip_packet_answers_the_client():
    e = opened("tun", mtu=1400)
    (v, reason, ifindex, out), = e.process_verdicts([P.icmp_about_ipip()], 2 * S)
    assert (v, ifindex) == ("tx", 3)
    err = Ether(out)
    assert checksums_ok(out)
    assert (err[IP].src, err[IP].dst, err[IP].ttl, err[IP].tos) == (P.VIP, P.CLIENT, 64, 0xC0)
    # the MTU towards the server less IPIP's 20 bytes, as the kernel says it
    assert (err[ICMP].type, err[ICMP].code, err[ICMP].nexthopmtu) == (3, 4, 1380)
    assert (err[IPerror].src, err[IPerror].dst, err[TCPerror].sport) == (P.CLIENT, P.VIP, 40000)
    # without DF the client does no PMTU discovery: nothing to tell it
    v, reason, _, _ = e.process_verdicts([P.icmp_about_ipip(df=False)], 3 * S)[0]
    assert (v, reason) == ("drop", "icmp_related")
    # another error type is passed on as it came
    (v, _, _, out), = e.process_verdicts([P.icmp_about_ipip(3, 1, 0)], 4 * S)
    assert v == "tx" and (Ether(out)[ICMP].type, Ether(out)[ICMP].code) == (3, 1)
    # an IPIP packet to another server is not ours
    v, reason, _, _ = e.process_verdicts([P.icmp_about_ipip(rs=P.RS[1])], 5 * S)[0]
    assert (v, reason) == ("pass", "icmp_no_conn")


def test_tun_forwards_an_oversize_error_without_answering_it():
    """ensure_mtu_is_adequate never sends frag-needed about an ICMP error."""
    e = opened("tun", mtu=300)
    frame = P.icmp_about_reply(3, 4, 1400, quote=548, payload=b"x" * 600)
    (v, reason, ifindex, out), = e.process_verdicts([frame], 2 * S)
    # too big for the tunnel: the tunnel packet goes in fragments, none with DF (kernel
    # recording: natpmtu.json, tun_icmp_big_df)
    assert (v, ifindex) == ("tx", 10) and all(Ether(x)[IP].proto == 4 for x in out)
    assert sum(len(x) - 14 - 20 for x in out) == 20 + 8 + 548
    assert all(not Ether(x)[IP].flags.DF for x in out)
    assert e.stats()["frag_needed_sent"] == 0 and e.stats()["oversize"] == 1


def test_vlan_and_ip_options():
    e = opened("nat")
    frame = P.icmp_about_reply(3, 3, 0, quote=28, vlan=7)
    (v, _, _, out), = e.process_verdicts([frame], 2 * S)
    assert v == "tx" and Ether(out).vlan == 7 and csums_ok(bytes(Ether(out)[IP]))
    # a quoted header with options: the ports are found after them
    q = bytes(IP(src=P.VIP, dst=P.CLIENT, options=[b"\x01\x01\x01\x00"])
              / TCP(sport=P.VPORT, dport=40000))[:32]
    frame = bytes(P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP(type=3, code=3) / q)
    (v, _, _, out), = e.process_verdicts([frame], 3 * S)
    assert v == "tx" and Ether(out)[IPerror][TCPerror].sport == 8080
    assert csums_ok(bytes(Ether(out)[IP]))


MALFORMED = [
    ("icmp header cut", lambda: bytes(P.eth() / IP(src=P.CLIENT, dst=P.VIP, proto=1)
                                      / b"\x03\x04\x00"), ("drop", "malformed")),
    ("echo request", lambda: bytes(P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP()),
     ("pass", "no_service")),
    ("nothing quoted", lambda: P.icmp_about_reply(quote=0), ("pass", "icmp_no_conn")),
    ("header cut", lambda: P.icmp_about_reply(quote=19), ("pass", "icmp_no_conn")),
    ("ports cut", lambda: P.icmp_about_reply(quote=23), ("pass", "icmp_no_conn")),
    ("quoted later fragment", lambda: bytes(
        P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP(type=3, code=3)
        / bytes(IP(src=P.VIP, dst=P.CLIENT, frag=8, proto=6) / (b"\0" * 8))),
     ("pass", "icmp_no_conn")),
    ("quoted IHL 4", lambda: bytes(
        P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP(type=3, code=3)
        / (b"\x44" + bytes(IP(src=P.VIP, dst=P.CLIENT) / TCP(sport=80, dport=40000))[1:28])),
     ("pass", "icmp_no_conn")),
    ("quoted IPv6 version", lambda: bytes(
        P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP(type=3, code=3)
        / (b"\x65" + bytes(IP(src=P.VIP, dst=P.CLIENT) / TCP(sport=80, dport=40000))[1:28])),
     ("pass", "icmp_no_conn")),
    ("quoted ICMP", lambda: bytes(
        P.eth() / IP(src=P.CLIENT, dst=P.VIP) / ICMP(type=3, code=3)
        / bytes(IP(src=P.VIP, dst=P.CLIENT) / ICMP())), ("pass", "icmp_no_conn")),
    ("bad checksum", lambda: P.icmp_about_reply(bad_csum=True), ("drop", "icmp_bad_checksum")),
    ("no conn", lambda: P.icmp_about_reply(cport=40001), ("pass", "icmp_no_conn")),
    ("other vport", lambda: P.icmp_about_reply(vport=81), ("pass", "icmp_no_conn")),
    ("ttl 1", lambda: P.icmp_about_reply(ttl=1), ("drop", "ttl_exceeded")),
]


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
@pytest.mark.parametrize("desc,make,want", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_errors_not_forwarded(fwd, desc, make, want):
    e = opened(fwd)
    before = e.stats()
    (v, reason, _, out), = e.process_verdicts([make()], 2 * S)
    assert (v, reason) == want and out is None
    after = e.stats()
    assert after[reason] == before[reason] + 1 and after["icmp_related"] == 0
    assert e.dest_stats(1)["inpkts"] == (2 if reason in ("ttl_exceeded",) else 1)


def test_nat_out_error_without_route_and_with_ttl1():
    e = engine("nat", rport=8080)
    e.process([P.tcp("S")], 1 * S)
    # the client's MAC was learned from its SYN only with a learning interface; a gateway
    # is set by engine(): without a neighbour the error goes through it
    (v, _, ifindex, out), = e.process_verdicts([P.icmp_about_request()], 2 * S)
    assert v == "tx" and ifindex == 2 and Ether(out).dst == P.GW_MAC
    v, reason, _, _ = e.process_verdicts([P.icmp_about_request(ttl=1)], 3 * S)[0]
    assert (v, reason) == ("drop", "ttl_exceeded")
    assert e.dest_stats(1)["outpkts"] == 1
    e2 = core.Engine(capacity=64, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    e2.set_service(1, 6, P.VIP, P.VPORT)
    e2.set_dest(1, 1, P.RS[0], 8080, "nat", P.RS_MAC[0], ifindex=10)
    e2.set_scheduler_callback(lambda s, f: [1] * len(f))
    e2.process([P.tcp("S")], 1 * S)
    v, reason, _, _ = e2.process_verdicts([P.icmp_about_request()], 2 * S)[0]
    assert (v, reason) == ("drop", "no_route")


def test_an_error_in_the_batch_that_opens_its_conn():
    """Frames are handled in order: an error behind the packet that made its conn finds it
    (a hash-scheduled service decides in the batch itself)."""
    e = engine("nat", rport=8080)
    e.set_hash_table(1, [1] * 256, "sh")
    res = e.process_verdicts([P.tcp("S"), P.icmp_about_reply(3, 3, 0)], 1 * S)
    assert [r[0] for r in res] == ["tx", "tx"]
    assert Ether(res[1][3])[IP].dst == P.RS[0]
