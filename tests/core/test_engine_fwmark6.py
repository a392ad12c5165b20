"""IPv6 firewall-mark services in the engine against Linux 6.1's IPVS
(tests/fixtures/kernel/fwmark6.json: nft marked tcp [2001:db8:1::100]:8000-8010 with 1, udp
2001:db8:1:f::/126 port 53 with 2 and tcp [2001:db8:1::101]:9000 with 3 in front of the
kernel's IPVS, and tcp 10.0.1.100:8000-8010 with 1 as well). The engine gets the same marks
as its own match rules and the same services; the recorded frames are replayed on both
engines and each must leave as the kernel's did, byte for byte from the IP header on (DR,
NAT66 both ways, IPv6-in-IPv6 TUN), with the same entries: a v6 frame with mark 1 goes to
`FWM 1 IPv6`, a v4 frame with mark 1 to `FWM 1`, a v6 mark's persistence template is keyed
by [mark::]. Then the two engines side by side on random v4 and v6 frames under v4 and v6
rules of the same marks."""
from __future__ import annotations

import json
import pathlib
import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
import fastlvs.engine.reference as reference
from tests.core import packets as P
from tests.core.helpers import S
from tests.core.test_engine_ipv6 import checksums_ok6
from tests.core.test_reference_vs_core import Twin

ENGINES = {"core": core.Engine, "reference": reference.Engine}
KERNEL = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                     / "fwmark6.json").read_text())
RS_MAC = "02:00:00:00:02:02"
D_RS = "02:00:00:00:02:01"
CL_MAC = "02:00:00:00:01:02"
MARKS = [(1, "tcp", "2001:db8:1::100/128", 8000, 8010), (2, "udp", "2001:db8:1:f::/126", 53, 53),
         (3, "tcp", "2001:db8:1::101/128", 9000, 9000), (1, "tcp", "10.0.1.100/32", 8000, 8010)]


def rr(order):
    """The kernel's rr over each service's list (head = the last dest added)."""
    pos = {svc: 0 for svc in order}

    def cb(svcs, flows):
        out = []
        for svc in svcs:
            out.append(order[svc][pos[svc] % len(order[svc])])
            pos[svc] += 1
        return out
    return cb


def fwmark6_engine(kind):
    """fwmark6.sh's director: FWM 1 IPv6 (DR [2001:db8:2::2]:0, NAT [2001:db8:2::3]:8080),
    FWM 1 (DR 10.0.2.2), TCP [2001:db8:1::100]:8005 (NAT :9999), FWM 2 IPv6 -p 120 (DR
    ::2, ::3), FWM 3 IPv6 (TUN ::2, weight 2)."""
    e = ENGINES[kind](capacity=4096, local_ip="10.0.2.1", local_mac=D_RS)
    e.set_local(local_ip6="2001:db8:2::1")
    e.set_marks(MARKS)
    e.set_fwm_service(1, 1, af=6)
    e.set_dest(1, 1, "2001:db8:2::2", 0, "dr", RS_MAC, ifindex=11)
    e.set_dest(2, 1, "2001:db8:2::3", 8080, "nat", RS_MAC, ifindex=11)
    e.set_fwm_service(2, 1)
    e.set_dest(3, 2, "10.0.2.2", 0, "dr", RS_MAC, ifindex=11)
    e.set_service(3, "tcp", "2001:db8:1::100", 8005)
    e.set_dest(4, 3, "2001:db8:2::3", 9999, "nat", RS_MAC, ifindex=11)
    e.set_fwm_service(4, 2, persist_timeout=120, af=6)
    e.set_dest(5, 4, "2001:db8:2::2", 0, "dr", RS_MAC, ifindex=11)
    e.set_dest(6, 4, "2001:db8:2::3", 0, "dr", RS_MAC, ifindex=11)
    e.set_fwm_service(5, 3, af=6)
    e.set_dest(7, 5, "2001:db8:2::2", 0, "tun", RS_MAC, ifindex=11, weight=2)
    # NAT66 replies go back to the client through this next hop
    e.set_gateway_mac(CL_MAC, ifindex=10)
    e.set_gateway6_mac(CL_MAC, ifindex=10)
    e.set_scheduler_callback(rr({1: [2, 1], 2: [3], 3: [4], 4: [6, 5], 5: [7]}))
    return e


def entry_text(c):
    def ap(a, p):
        return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"
    return (c["proto"], ap(c["caddr"], c["cport"]), ap(c["vaddr"], c["vport"]),
            ap(c["raddr"], c["rport"]))


def kernel_entries(lines):
    out = set()
    for ln in lines:
        f = ln.split()
        if f and f[0] in ("TCP", "UDP", "IP"):
            out.add((f[0], f[3], f[4], f[5]))
    return out


@pytest.mark.parametrize("kind", ENGINES)
def test_marked_v6_frames_go_where_the_kernel_sent_them(kind):
    e = fwmark6_engine(kind)
    now = 10 * S
    forwarded = 0
    for st in KERNEL["steps"]:
        side = st["step"][0]
        now += S // 2
        v = e.process_verdicts([bytes.fromhex(st["sent"])], now)[0]
        kernel_out = st["at_rs"] if side == "c" else [
            # a NAT66 reply the kernel rewrote (from the VIP), not the host's own answers
            f for f in st["at_client"] if IPv6(bytes.fromhex(f)[14:]).src == "2001:db8:1::100"]
        if kernel_out:
            assert v[0] == "tx", (st["step"], v)
            want = bytes.fromhex(kernel_out[0])
            assert v[3][14:] == want[14:], st["step"]
            assert v[3][:6] == want[:6], st["step"]         # to the RS's (client's) MAC
            if ":" in st["step"][2]:
                assert checksums_ok6(v[3])
            forwarded += 1
        else:
            # unmarked and unserved (port 8011, udp 54): the host's
            assert v[0] == "pass", (st["step"], v)
        mine = {entry_text(c) for c in e.conns(now) if c["proto"] in ("TCP", "UDP", "IP")}
        assert mine == kernel_entries(st["conns"]), st["step"]
    assert forwarded == 12
    assert mine == kernel_entries(KERNEL["ipvsadm_Lnc_after"].splitlines())


@pytest.mark.parametrize("kind", ENGINES)
def test_a_v6_frame_with_a_mark_that_has_only_a_v4_service_is_the_host_s(kind):
    e = ENGINES[kind](capacity=64, local_ip="10.0.2.1", local_mac=D_RS)
    e.set_marks([(1, "tcp", "2001:db8:1::100/128", 80, 80), (1, "tcp", "10.0.1.100/32", 80, 80)])
    e.set_fwm_service(1, 1)
    e.set_dest(1, 1, "10.0.2.2", 0, "dr", RS_MAC, ifindex=11)
    e.set_scheduler_callback(lambda svcs, flows: [1] * len(flows))
    v6 = bytes(Ether(src=CL_MAC, dst=D_RS) / IPv6(src="2001:db8:1::2", dst="2001:db8:1::100")
               / TCP(sport=1000, dport=80, flags="S"))
    v4 = bytes(Ether(src=CL_MAC, dst=D_RS) / IP(src="10.0.1.2", dst="10.0.1.100")
               / TCP(sport=1000, dport=80, flags="S"))
    assert e.process_verdicts([v6], S)[0][:2] == ("pass", "no_service")
    assert e.process_verdicts([v4], S)[0][0] == "tx"
    # the v4 rule never marks a v6 frame whose last 32 bits are the v4 address
    e.set_marks([(1, "tcp", "10.0.1.100/32", 80, 80)])
    e.set_fwm_service(2, 1, af=6)
    e.set_dest(2, 2, "2001:db8:2::2", 0, "dr", RS_MAC, ifindex=11)
    alias = bytes(Ether(src=CL_MAC, dst=D_RS) / IPv6(src="2001:db8:1::2", dst="2001:db8::a00:164")
                  / TCP(sport=1001, dport=80, flags="S"))
    assert e.process_verdicts([alias], 2 * S)[0][:2] == ("pass", "no_service")


@pytest.mark.parametrize("kind", ENGINES)
def test_v6_marks_round_trip_and_bad_ones_are_refused(kind):
    e = ENGINES[kind](capacity=64)
    e.set_marks(MARKS)
    assert e.marks() == [(1, 6, "2001:db8:1::100/128", 8000, 8010),
                         (2, 17, "2001:db8:1:f::/126", 53, 53),
                         (3, 6, "2001:db8:1::101/128", 9000, 9000),
                         (1, 6, "10.0.1.100/32", 8000, 8010)]
    for bad in [(1, "tcp", "2001:db8::/129", 0, 1), (1, "tcp", "2001:db8::zz", 0, 1)]:
        with pytest.raises(ValueError):
            e.set_marks([bad])
    for bad in [dict(af=5), dict(af=6, netmask=0), dict(af=6, netmask=129),
                dict(af=6, netmask="255.255.255.0")]:
        with pytest.raises(ValueError):
            e.set_fwm_service(1, 1, **bad)
    e.set_fwm_service(1, 7, af=6)
    e.set_fwm_service(2, 7)                     # the v4 and the v6 service of one mark
    with pytest.raises(ValueError):
        e.set_fwm_service(3, 7, af=6)           # ... but one of each


V6_MARKS = [(1, "tcp", "2001:db8:9::/126", 8000, 8003), (2, None, "2001:db8:9::4/128", 0, 65535),
            (1, "udp", "10.9.0.0/30", 53, 53), (3, "udp", "2001:db8:9::/125", 53, 53)]


def mark6_frame(rng):
    v6 = rng.random() < 0.7
    dst = f"2001:db8:9::{rng.randrange(9)}" if v6 else f"10.9.0.{rng.randrange(5)}"
    src = rng.choice(["2001:db8:1::2", "2001:db8:1::3"]) if v6 else P.CLIENT
    proto = rng.choice(["tcp", "udp"])
    dport = rng.choice([53, 80, 8000, 8002, 8003, 8004])
    sport = 1000 + rng.randrange(5)
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    if proto == "tcp":
        l4 = TCP(sport=sport, dport=dport, flags=rng.choice(["S", "A", "SA", "R", "F"]))
    else:
        l4 = UDP(sport=sport, dport=dport) / b"q"
    return bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / ip / l4)


@pytest.mark.parametrize("seed", range(6))
def test_random_v6_mark_traffic_and_changes_on_both_engines(seed):
    rng = random.Random(seed)
    t = Twin(capacity=512, batch=8, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    t.set_local(local_ip6="2001:db8:2::1")
    t.set_marks(V6_MARKS)
    t.set_fwm_service(1, 1, af=6)
    t.set_fwm_service(2, 2, persist_timeout=30, netmask=64, af=6)
    t.set_fwm_service(3, 1)                                       # mark 1's v4 service
    t.set_service(4, "tcp", "2001:db8:9::1", 8002)                # under mark 1's range
    rs6 = ["2001:db8:2::2", "2001:db8:2::3"]
    for sid in (1, 2, 4):
        for i in range(2):
            t.set_dest(sid * 10 + i, sid, rs6[i], rng.choice([0, 9000]) if sid != 4 else 9,
                       rng.choice(["nat", "dr", "tun"]), P.RS_MAC[i], ifindex=10 + i)
    for i in range(2):
        t.set_dest(30 + i, 3, P.RS[i], 0, rng.choice(["nat", "dr"]), P.RS_MAC[i],
                   ifindex=10 + i)
    t.set_gateway_mac(P.GW_MAC, 2)

    def make():
        n = [0]

        def cb(svcs, flows):
            out = []
            for s in svcs:
                n[0] += 1
                out.append(s * 10 + n[0] % 2)
            return out
        return cb
    t.set_callback(make)
    now = S
    for step in range(60):
        if step == 20:
            t.set_fwm_service(5, 3, persist_timeout=10, af=6)     # mark 3 gets a service
            t.set_dest(50, 5, "2001:db8:2::4", 0, "nat", P.RS_MAC[2], ifindex=12)
        if step == 35:
            t.del_service(1)                                      # its conns live on
        if step == 45:
            t.set_marks(V6_MARKS[1:])
        frames = [mark6_frame(rng) for _ in range(rng.randrange(1, 6))]
        now += rng.choice([S // 10, S, 20 * S])
        for v, f in zip(t.run(frames, now), frames):
            if v[0] == "tx" and Ether(f).haslayer(IPv6):
                assert checksums_ok6(v[3])
    assert t.core.marks() == t.ref.marks()
    assert t.core.stats()["conns_created"] >= 10
    t.run_timers(now + 1000 * S)
    t.check(now + 1000 * S)
