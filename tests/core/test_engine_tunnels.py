"""TUN's GUE and GRE forms in the engine, the extension and the pure-Python reference, checked
against a recording of Debian's 6.1 kernel (tests/fixtures/kernel/tunnels.json, made by
tests/fixtures/kernel/scripts/tunnels.sh): every probe the kernel forwarded is rebuilt from
the engine's output byte for byte (outer IP header, UDP+GUE or GRE header, inner packet),
the checksums recomputed; GUE's source port is a per-flow hash in the local port range (a v6
flow label stands for the ports); a packet over the tunnel's MTU is answered as the kernel
answered it (frag needed / packet too big with the MTU less the tunnel's headers, or cut
without DF). Then the two engines side by side, and set_dest's checks."""
from __future__ import annotations

import json
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from fastlvs.engine import contract, reference
from tests.core import packets as P
from tests.core.helpers import S

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "tunnels.json").read_text())
TOPO = FIXTURE["topology"]
MTU = TOPO["rs_link_mtu"]
ENGINES = {"core": core.Engine, "reference": reference.Engine}
ADDR = {4: (TOPO["client4"], TOPO["vip4"], TOPO["rip4"]),
        6: (TOPO["client6"], TOPO["vip6"], TOPO["rip6"])}
PROTO = {"tcp": 6, "udp": 17}


def _settings_from_save():
    """(family, port) -> (tun_type, tun_port, tun_flags) as the kernel's `ipvsadm -S` saved
    them (TCP and UDP services of a port were made alike)."""
    out = {}
    for line in FIXTURE["ipvsadm_S"]:
        w = line.split()
        if w[0] != "-a" or w[1] != "-t":
            continue
        fam = 6 if w[2].startswith("[") else 4
        port = int(w[2].rsplit(":", 1)[1])
        kind = w[w.index("--tun-type") + 1]
        tport = int(w[w.index("--tun-port") + 1]) if "--tun-port" in w else 0
        flags = [x[6:] for x in w if x in ("--tun-nocsum", "--tun-csum", "--tun-remcsum")]
        out[(fam, port)] = (kind, tport, flags[0] if flags else "nocsum")
    return out


SETTINGS = _settings_from_save()


def engine(kind):
    """The recording's director: one TUN service per (family, protocol, port), each with the
    one real server and that port's tunnel settings; the director's RS-side addresses."""
    e = ENGINES[kind](capacity=4096, local_ip=TOPO["director4"], local_mac=P.LOCAL_MAC,
                      mtu=MTU)
    e.set_local(local_ip6=TOPO["director6"])
    ids = {}
    for (fam, port), (t, tport, flags) in sorted(SETTINGS.items()):
        _, vip, rip = ADDR[fam]
        for name, num in PROTO.items():
            sid = len(ids) + 1
            ids[(fam, name, port)] = sid
            e.set_service(sid, num, vip, port)
            e.set_dest(sid, sid, rip, port, "tun", P.RS_MAC[0], ifindex=10, tun_type=t,
                       tun_port=tport, tun_flags=flags)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    return e


def probe_frame(pr) -> bytes:
    """The frame the recording's client sent for probe `pr` (tunnels_probe.py's send())."""
    client, vip, _ = ADDR[pr["family"]]
    if pr["family"] == 4:
        ip, hl = IP(src=client, dst=vip, ttl=64, tos=0x28,
                    flags="DF" if pr["df"] else 0, id=4242), 20
    else:
        ip, hl = IPv6(src=client, dst=vip, hlim=64, tc=0x28, fl=0x12345), 40
    if pr["l4"] == "tcp":
        pkt = ip / TCP(sport=pr["sport"], dport=pr["port"],
                       flags="A" if pr["name"] == "syn-again" else "S", seq=1000, window=8192)
    else:
        pkt = ip / UDP(sport=pr["sport"], dport=pr["port"]) / b"query"
    if pr["length"]:
        pkt = pkt / (b"x" * (pr["length"] - hl - 20))
    return bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / pkt)


def _sum(b: bytes, s: int = 0) -> int:
    b = b + b"\0" * (len(b) & 1)
    for i in range(0, len(b), 2):
        s += (b[i] << 8) | b[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def split(dgram: bytes):
    """(outer IP header, tunnel header, inner packet) of a whole tunnel datagram."""
    v6 = dgram[0] >> 4 == 6
    hl = 40 if v6 else (dgram[0] & 15) * 4
    proto = dgram[6] if v6 else dgram[9]
    if proto == 17:
        extra = 12
    elif proto == 47:
        extra = 8 if dgram[hl] & 0x80 else 4
    else:
        extra = 0
    return dgram[:hl], dgram[hl:hl + extra], dgram[hl + extra:]


def pseudo_sum(outer: bytes, length: int) -> int:
    v6 = outer[0] >> 4 == 6
    addrs = outer[8:40] if v6 else outer[12:20]
    return _sum(addrs + bytes((0, 17)) + length.to_bytes(2, "big"))


def l4_checksum_ok(outer: bytes, tun: bytes, inner: bytes) -> bool:
    """The outer UDP checksum (with its pseudo-header) or GRE checksum is complete."""
    if len(tun) == 12:
        return _sum(tun + inner, pseudo_sum(outer, len(tun) + len(inner))) == 0xFFFF
    return _sum(tun + inner) == 0xFFFF


def inner_sport(dgram: bytes):
    _, _, inner = split(dgram)
    off = 40 if inner[0] >> 4 == 6 else (inner[0] & 15) * 4
    proto = inner[6] if inner[0] >> 4 == 6 else inner[9]
    return int.from_bytes(inner[off:off + 2], "big"), inner[off + 13] if proto == 6 else 0


def kernel_at_rs(pr):
    """The recorded datagrams that carried probe `pr` to the real server (whole ones, or
    the fragments of one), matched on the inner source port and TCP flags."""
    fam = pr["family"]
    raws = [bytes.fromhex(h) for h in FIXTURE["at_rs"]]
    raws = [r for r in raws if r[0] >> 4 == fam                # tunnel packets only
            and (r[6] if fam == 6 else r[9]) in (4, 17, 41, 47)]
    want_flags = 0x10 if pr["name"] == "syn-again" else 0x02
    for i, r in enumerate(raws):
        if fam == 4 and int.from_bytes(r[6:8], "big") & 0x1FFF:
            continue                            # a later fragment: found with its first
        sport, flags = inner_sport(r)
        if sport != pr["sport"] or (pr["l4"] == "tcp" and flags != want_flags):
            continue
        if fam == 4 and r[6] & 0x20:            # MF: the next one is its tail
            return [r, raws[i + 1]]
        return [r]
    return []


def kernel_icmp(pr):
    """The recorded ICMP error the client got for probe `pr` (quoting its source port)."""
    for h in FIXTURE["at_client"]:
        r = bytes.fromhex(h)
        if r[0] >> 4 == 4 and r[9] == 1 and pr["family"] == 4:
            q = r[28:]
            if int.from_bytes(q[20:22], "big") == pr["sport"]:
                return r
        if r[0] >> 4 == 6 and r[6] == 58 and pr["family"] == 6:
            q = r[48:]
            if len(q) > 42 and int.from_bytes(q[40:42], "big") == pr["sport"]:
                return r
    return None


PROBES = FIXTURE["probes"]


def _pid(pr):
    return f"v{pr['family']}-{FIXTURE['forms'][str(pr['port'])]}-{pr['l4']}-{pr['name']}"


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("pr", PROBES, ids=_pid)
def test_tunnel_packet_as_the_kernel_sends_it(pr, kind):
    e = engine(kind)
    if pr["name"] == "syn-again":                   # the conn the SYN made carries it
        e.process([probe_frame(dict(pr, name="syn"))], 1 * S)
    v, reason, ifindex, out = e.process_verdicts([probe_frame(pr)], 2 * S)[0]
    assert v == "tx", reason
    kern = kernel_at_rs(pr)
    icmp = kernel_icmp(pr)
    if not kern:
        # too big with DF: the kernel answered; so do we, with the same bytes but for the
        # IP id and checksum (and nothing reached the real server)
        assert icmp is not None and ifindex == 0
        ours = bytes(Ether(out).payload)
        if pr["family"] == 4:
            assert ours[:4] == icmp[:4] and ours[8:10] == icmp[8:10]
            assert ours[12:] == icmp[12:]
            assert _sum(ours[:20]) == 0xFFFF
        else:
            # the flow label the kernel picked is its own hash (auto_flowlabels): not compared
            assert ours[0] == icmp[0] and ours[1] & 0xF0 == icmp[1] & 0xF0
            assert ours[4:] == icmp[4:]
        return
    assert icmp is None and ifindex == 10
    frames = out if isinstance(out, list) else [out]
    assert [len(f) - 14 for f in frames] == [len(k) for k in kern]
    for f in frames:
        eth = Ether(f)
        assert (eth.dst, eth.src) == (P.RS_MAC[0], P.LOCAL_MAC)
    ours_ip = [bytes(Ether(f).payload) for f in frames]
    if len(kern) == 2:
        # cut as ip_fragment cut it: same pieces but for the id (ours count elsewhere)
        for o, k in zip(ours_ip, kern):
            assert o[:4] == k[:4] and o[6:10] == k[6:10] and o[12:20] == k[12:20]
            assert _sum(o[:20]) == 0xFFFF
            assert o[4:6] == ours_ip[0][4:6]
        ours_whole = ours_ip[0] + ours_ip[1][20:]
        kern_whole = kern[0] + kern[1][20:]
    else:
        ours_whole, kern_whole = ours_ip[0], kern[0]
    o_out, o_tun, o_in = split(ours_whole)
    k_out, k_tun, k_in = split(kern_whole)
    assert o_in == k_in                              # the inner packet as the kernel sent it
    if pr["family"] == 4:
        # version, TOS, total length, flags, TTL, protocol, addresses
        assert o_out[:4] == k_out[:4] and o_out[6:10] == k_out[6:10]
        assert o_out[12:20] == k_out[12:20] and _sum(o_out) == 0xFFFF
        if k_out[6] & 0x40:
            assert o_out[4:6] == k_out[4:6] == b"\0\0"     # DF: id 0
    else:
        assert o_out == k_out
    assert len(o_tun) == len(k_tun)
    if len(k_tun) == 12:                              # UDP + GUE
        sport = int.from_bytes(o_tun[0:2], "big")
        assert contract.GUE_PORT_MIN <= sport < contract.GUE_PORT_MAX
        assert contract.GUE_PORT_MIN <= int.from_bytes(k_tun[0:2], "big") < \
            contract.GUE_PORT_MAX
        assert o_tun[2:6] == k_tun[2:6] and o_tun[8:] == k_tun[8:]
        if k_tun[6:8] == b"\0\0":
            assert o_tun[6:8] == b"\0\0"             # nocsum: no UDP checksum
        else:
            # csum/remcsum: ours complete. The kernel's is complete where it had to
            # compute it (a cut datagram); else the device was to finish it (veth did not):
            # the field holds the pseudo-header's sum, as CHECKSUM_PARTIAL leaves it
            assert l4_checksum_ok(o_out, o_tun, o_in)
            k_ck = int.from_bytes(k_tun[6:8], "big")
            assert (l4_checksum_ok(k_out, k_tun, k_in) if len(kern) == 2
                    else k_ck == pseudo_sum(k_out, len(k_tun) + len(k_in)))
    elif k_tun:                                       # GRE
        assert o_tun[:4] == k_tun[:4]
        if len(k_tun) == 8:
            assert o_tun[6:8] == k_tun[6:8] == b"\0\0"
            assert l4_checksum_ok(o_out, o_tun, o_in)
            assert (l4_checksum_ok(k_out, k_tun, k_in) if len(kern) == 2
                    else k_tun[4:6] == b"\0\0")


def _gue_sport(kind, pr) -> int:
    e = engine(kind)
    if pr["name"] == "syn-again":
        e.process([probe_frame(dict(pr, name="syn"))], 1 * S)
    out = e.process_verdicts([probe_frame(pr)], 2 * S)[0][3]
    _, tun, _ = split(bytes(Ether(out).payload))
    return int.from_bytes(tun[:2], "big")


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("fam", (4, 6))
def test_gue_source_port_follows_the_flow_as_the_kernel_chose_it(kind, fam):
    # The kernel's hash is seeded at boot, so not its values but its partition is compared:
    # which probes of a GUE service got the same source port
    for port in (90, 91):
        prs = [p for p in PROBES if p["family"] == fam and p["port"] == port
               and p["name"] in ("syn", "syn-again", "syn-other", "udp")]
        kern = [int.from_bytes(split(kernel_at_rs(p)[0])[1][:2], "big") for p in prs]
        ours = [_gue_sport(kind, p) for p in prs]
        same_k = [[a == b for b in kern] for a in kern]
        same_o = [[a == b for b in ours] for a in ours]
        assert same_o == same_k, [p["name"] for p in prs]


@pytest.mark.parametrize("pr", [p for p in PROBES if p["name"] != "syn-again"], ids=_pid)
def test_engines_agree(pr):
    outs = []
    for kind in ENGINES:
        e = engine(kind)
        outs.append(e.process_verdicts([probe_frame(pr)], 1 * S)[0])
        outs.append(e.stats())
    assert outs[0] == outs[2] and outs[1] == outs[3]


@pytest.mark.parametrize("kind", ENGINES)
def test_set_dest_refuses_what_the_kernel_would(kind):
    e = ENGINES[kind](capacity=64, local_ip=TOPO["director4"], local_mac=P.LOCAL_MAC)
    e.set_service(1, 6, TOPO["vip4"], 80)
    for bad in (dict(tun_type="vxlan"), dict(tun_type="gue"), dict(tun_type="gue",
                tun_port=70000), dict(tun_type="gre", tun_port=6080),
                dict(tun_type="gre", tun_flags="remcsum"), dict(tun_flags="csum"),
                dict(tun_type="gue", tun_port=6080, tun_flags=3)):
        with pytest.raises(ValueError):
            e.set_dest(1, 1, TOPO["rip4"], 80, "tun", P.RS_MAC[0], **bad)
    # a dest edited back to ipip sends plain IPIP again
    e.set_dest(1, 1, TOPO["rip4"], 80, "tun", P.RS_MAC[0], tun_type="gre")
    e.set_dest(1, 1, TOPO["rip4"], 80, "tun", P.RS_MAC[0])
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    out = e.process_verdicts([P.tcp(src=TOPO["client4"], dst=TOPO["vip4"])], 1 * S)[0][3]
    assert Ether(out)[IP].proto == 4


def icmp_quoting_tunnel(case) -> bytes:
    """The real server's ICMP error about the tunnel packet of the conn `case` names, as
    tunnels_probe.py's icmp_errors() sent it (to the director's address)."""
    port, sport = case["port"], case["sport"]
    inner = bytes(IP(src=TOPO["client4"], dst=TOPO["vip4"], ttl=63, flags="DF", id=4243)
                  / TCP(sport=sport, dport=port, flags="S", seq=1000))
    form = FIXTURE["forms"][str(port)]
    if form.startswith("gue"):
        enc = bytes(UDP(sport=40000, dport=6080 + port - 90, len=12 + len(inner),
                        chksum=0)) + bytes((0, 4, 0, 0))
        proto = 17
    elif form in ("gre", "gre-csum"):
        enc = bytes((0x80, 0, 8, 0, 0, 0, 0, 0)) if form == "gre-csum" else bytes((0, 0, 8, 0))
        proto = 47
    else:
        enc, proto = b"", 4
    q = bytes(IP(src=TOPO["director4"], dst=TOPO["rip4"], ttl=63, flags="DF", proto=proto)
              / (enc + inner))
    if case["quoted"]:
        q = q[:case["quoted"]]
    return bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                 / IP(src=TOPO["rip4"], dst=TOPO["director4"])
                 / ICMP(type=case["type"], code=case["code"], nexthopmtu=case["mtu"]) / q)


def kernel_icmp_to_client(case):
    for h in FIXTURE["at_client"]:
        r = bytes.fromhex(h)
        if r[0] >> 4 == 4 and r[9] == 1 and len(r) >= 50 \
                and int.from_bytes(r[48:50], "big") == case["sport"]:
            return r
    return None


ICMP_CASES = FIXTURE.get("icmp_cases", [])


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("case", ICMP_CASES, ids=lambda c: (
    f"{FIXTURE['forms'][str(c['port'])]}-{c['type']}.{c['code']}-q{c['quoted']}"))
def test_icmp_error_about_a_tunnel_packet_as_the_kernel_answers(case, kind):
    e = engine(kind)
    e.set_neighbor(TOPO["client4"], P.CLIENT_MAC, ifindex=3)
    syn = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                / IP(src=TOPO["client4"], dst=TOPO["vip4"], ttl=64, flags="DF", id=4243)
                / TCP(sport=case["sport"], dport=case["port"], flags="S", seq=1000))
    assert e.process_verdicts([syn], 1 * S)[0][0] == "tx"
    v, reason, ifindex, out = e.process_verdicts([icmp_quoting_tunnel(case)], 2 * S)[0]
    kern = kernel_icmp_to_client(case)
    if kern is None:
        assert v != "tx" or ifindex != 3, "the kernel sent the client nothing"
        return
    assert (v, ifindex) == ("tx", 3), reason
    ours = bytes(Ether(out).payload)
    # the same error but for the IP id (and so the header checksum)
    assert ours[:4] == kern[:4] and ours[6:10] == kern[6:10] and ours[12:] == kern[12:]
    assert _sum(ours[:20]) == 0xFFFF


@pytest.mark.parametrize("kind", ENGINES)
@pytest.mark.parametrize("form", ["gre", "gre-csum", "gue"])
def test_icmp_error_about_a_port0_dests_tunnel_packet_is_answered_as_ipip_s(kind, form):
    # A port-0 service's dests have port 0, the one place 6.1's GRE look-up finds (see the
    # GRE cases above); the answer is then IPIP's, which the kernel recording fixes
    settings = {"gre": dict(tun_type="gre"), "gre-csum": dict(tun_type="gre", tun_flags="csum"),
                "gue": dict(tun_type="gue", tun_port=6080)}
    answers = []
    for tun in ({}, settings[form]):
        e = ENGINES[kind](capacity=64, local_ip=TOPO["director4"], local_mac=P.LOCAL_MAC,
                          mtu=MTU)
        e.set_service(1, 6, TOPO["vip4"], 0, persist_timeout=300)
        e.set_dest(1, 1, TOPO["rip4"], 0, "tun", P.RS_MAC[0], ifindex=10, **tun)
        e.set_scheduler_callback(lambda svcs, flows: list(svcs))
        e.set_neighbor(TOPO["client4"], P.CLIENT_MAC, ifindex=3)
        case = {"port": 90, "sport": 30900, "type": 3, "code": 4, "mtu": 1300, "quoted": 0}
        syn = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                    / IP(src=TOPO["client4"], dst=TOPO["vip4"], ttl=64, flags="DF", id=4243)
                    / TCP(sport=30900, dport=90, flags="S", seq=1000))
        v, _, _, tunnelled = e.process_verdicts([syn], 1 * S)[0]
        assert v == "tx"
        # the error quotes the very packet the engine sent the server
        err = bytes(Ether(src=P.RS_MAC[0], dst=P.LOCAL_MAC)
                    / IP(src=TOPO["rip4"], dst=TOPO["director4"])
                    / ICMP(type=3, code=4, nexthopmtu=case["mtu"])
                    / bytes(Ether(tunnelled).payload))
        v, reason, ifindex, out = e.process_verdicts([err], 2 * S)[0]
        assert (v, ifindex) == ("tx", 3), reason
        answers.append(bytes(Ether(out).payload))
    ipip, other = answers
    assert other[:4] == ipip[:4] and other[6:10] == ipip[6:10] and other[12:] == ipip[12:]
    assert int.from_bytes(other[24:28], "big") == MTU - 20     # as 6.1: less 20 whatever the form
