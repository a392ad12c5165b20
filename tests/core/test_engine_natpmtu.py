"""The sysctls nat_icmp_send and pmtu_disc, checked against a recording of Debian's 6.1
kernel (tests/fixtures/kernel/natpmtu.json, made by tests/fixtures/kernel/scripts/natpmtu.sh).
The engine gets the recording's services and addresses and each case's packets as the
director received them; what it sends to the real server and to the client is compared with
what the kernel's real server and client captured, field by field (IP ids, which the kernel
draws at random, only where they are fixed: 0 with DF, shared by the pieces of one packet),
checksums recomputed. A packet the engine leaves to the host is one the kernel's IPVS left
alone: the kernel forwarded it as a router, unchanged but for its TTL."""
import json
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from tests.core.helpers import S, checksums_ok

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "natpmtu.json").read_text())
TOPO = FIXTURE["topology"]
LOCAL_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
RS_MAC = "02:00:00:00:01:11"
RS_IF, CLIENT_IF = 10, 3


def director(sysctl):
    """The recording's director: DR :80, NAT :81 -> 8081, TUN :82, NAT udp :53 -> 5353, with
    the 1400-byte MTU towards the real server."""
    e = core.Engine(capacity=4096, local_ip=TOPO["director_rs_side"], local_mac=LOCAL_MAC,
                    mtu=TOPO["mtu_rs_side"])
    for sid, (proto, vport, rport, fwd) in enumerate(
            [(6, 80, 80, "dr"), (6, 81, 8081, "nat"), (6, 82, 82, "tun"),
             (17, 53, 5353, "nat")], start=1):
        e.set_service(sid, proto, TOPO["vip"], vport)
        e.set_dest(sid, sid, TOPO["rip"], rport, fwd, RS_MAC, ifindex=RS_IF)
    e.set_neighbor(TOPO["client"], CLIENT_MAC, ifindex=CLIENT_IF)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    for name, value in sysctl.items():
        e.set_sysctl(name, value)
    return e


def frame(ip_hex, side):
    src = CLIENT_MAC if side == "client" else RS_MAC
    return bytes(Ether(src=src, dst=LOCAL_MAC) / IP(bytes.fromhex(ip_hex)))


def ips(frames):
    return [bytes(Ether(bytes.fromhex(h) if isinstance(h, str) else h)[IP]) for h in frames]


def same_ip(mine: bytes, kernels: bytes, what):
    """Every field but the IP id and checksum alike, then the payload byte for byte (an
    ICMP error's quote, a tunnel packet's inner header with its id, all of it)."""
    assert mine[:4] == kernels[:4], what                      # version, ihl, tos, length
    assert mine[6:10] == kernels[6:10], what                  # flags, offset, ttl, proto
    assert mine[12:20] == kernels[12:20], what                # addresses
    assert mine[20:] == kernels[20:], what
    if kernels[6] & 0x40:
        assert mine[4:6] == kernels[4:6] == b"\0\0", what     # DF: id 0 (ip_select_ident)


CASES = FIXTURE["cases"]


def header_ok(ip: bytes) -> bool:
    h = IP(ip[:20])
    got = h.chksum
    del h.chksum
    return IP(bytes(h)).chksum == got


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['group']}-{c['name']}")
def test_as_the_kernel_does(case):
    e = director(case["sysctl"])
    if case["opener"]:
        v = e.process_verdicts([frame(case["opener"], "client")], 1 * S)[0]
        assert v[0] == "tx"
    v, reason, ifindex, out = e.process_verdicts([frame(case["sent"], case["side"])], 2 * S)[0]
    kernel_rs, kernel_client = ips(case["at_rs"]), ips(case["at_client"])
    if v == "pass":
        # left to the host, as the kernel's IPVS left it: to the director itself (nothing
        # forwarded), at TTL 1 (ip_forward answers time exceeded before IPVS sees it), or
        # routed on, TTL one less
        assert reason == "no_service"
        sent = bytes.fromhex(case["sent"])
        if IP(sent).dst == TOPO["director_rs_side"]:
            assert not kernel_rs and not kernel_client
        elif sent[8] <= 1:
            (k,) = kernel_rs if case["side"] == "rs" else kernel_client
            assert (IP(k)[ICMP].type, IP(k)[ICMP].code) == (11, 0)
        else:
            ((k,),) = [x for x in (kernel_rs, kernel_client) if x]
            assert k[:8] + k[9:10] + k[12:] == sent[:8] + sent[9:10] + sent[12:]
            assert k[8] == sent[8] - 1
        return
    assert v == "tx", (reason, case)
    pieces = out if isinstance(out, list) else [out]
    mine = ips(pieces)
    back = ifindex == 0                          # out of the interface it came in by
    to_rs = (case["side"] == "rs") == back
    assert ifindex in ((0,) if back else (RS_IF, CLIENT_IF))
    kernels = kernel_rs if to_rs else kernel_client
    assert not (kernel_client if to_rs else kernel_rs)
    assert len(mine) == len(kernels)
    for i, (m, k) in enumerate(zip(mine, kernels)):
        same_ip(m, k, (case["name"], i))
    if len(mine) > 1:
        assert len({m[4:6] for m in mine}) == 1      # the pieces of one packet share an id
    if len(mine) == 1:
        assert checksums_ok(pieces[0])
    else:
        # every piece's header checksum, then the packet put back together checked whole
        assert all(header_ok(m) for m in mine)
        body = b"".join(m[20:] for m in sorted(mine, key=lambda m: m[7] | (m[6] & 0x1F) << 8))
        whole = IP(mine[0][:20])
        whole.flags, whole.len = 0, 20 + len(body)
        del whole.chksum
        assert checksums_ok(bytes(Ether() / IP(bytes(whole)[:20] + body)))
    if back:
        pkt = Ether(pieces[0])
        assert pkt.dst == (RS_MAC if case["side"] == "rs" else CLIENT_MAC)
        assert pkt.src == LOCAL_MAC


def test_the_recording_covers_both_values_of_both():
    """The cases that tell the values apart are there: nat_icmp_send 1 answers what 0 lets
    through, pmtu_disc 0 fragments what 1 refuses."""
    by = {(c["group"], c["name"]): c for c in CASES}
    ack1, ack0 = by[("nat1", "rs_ack_no_conn")], by[("nat0", "rs_ack_no_conn")]
    (icmp,) = ips(ack1["at_rs"])
    assert (IP(icmp)[ICMP].type, IP(icmp)[ICMP].code) == (3, 3) and not ack1["at_client"]
    assert ack0["at_client"] and not ack0["at_rs"]
    big1, big0 = by[("pmtu1", "tun_big_df")], by[("pmtu0", "tun_big_df")]
    assert not big1["at_rs"] and len(big0["at_rs"]) == 2
    assert FIXTURE["defaults"][-2:] == ["0", "1"]          # nat_icmp_send, pmtu_disc
