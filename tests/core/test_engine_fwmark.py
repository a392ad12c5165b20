"""Firewall-mark services in the engine against Linux 6.1's IPVS
(tests/fixtures/kernel/fwmark_sctp.json: nft marked tcp 10.0.1.100:8000-8010 with 1 and udp
10.0.1.96/30:53 with 2 in front of the kernel's IPVS). The engine gets the same marks as its
own match rules and the same services; the recorded frames are replayed and each must be
forwarded as the kernel forwarded it (the mark's service before the address's, the dest's
port or the client's, persistence templates keyed by the mark), with the same entries."""
import json
import pathlib

import pytest
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
import fastlvs.engine.reference as reference

ENGINES = {"core": core.Engine, "reference": reference.Engine}
Engine = core.Engine


@pytest.fixture(params=list(ENGINES), autouse=True)
def engine_kind(request, monkeypatch):
    """Every test runs on the extension and on the pure-Python reference engine."""
    monkeypatch.setitem(globals(), "Engine", ENGINES[request.param])
    return request.param

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" / "fwmark_sctp.json"
KERNEL = json.loads(FIXTURE.read_text())
S = 1_000_000_000
RS_MAC = "02:00:00:00:02:02"
MARKS = [(1, "tcp", "10.0.1.100/32", 8000, 8010), (2, "udp", "10.0.1.96/30", 53, 53)]


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


def fwmark_engine():
    e = Engine(capacity=4096, local_ip="10.0.2.1", local_mac="02:00:00:00:02:01")
    e.set_marks(MARKS)
    e.set_fwm_service(1, 1)
    e.set_dest(1, 1, "10.0.2.2", 0, "nat", RS_MAC, ifindex=11)
    e.set_dest(2, 1, "10.0.2.3", 8080, "nat", RS_MAC, ifindex=11)
    e.set_service(2, "tcp", "10.0.1.100", 8005)
    e.set_dest(3, 2, "10.0.2.3", 9999, "nat", RS_MAC, ifindex=11)
    e.set_service(3, "tcp", "10.0.1.100", 9000)
    e.set_dest(4, 3, "10.0.2.2", 9000, "nat", RS_MAC, ifindex=11)
    e.set_fwm_service(4, 2, persist_timeout=120)
    e.set_dest(5, 4, "10.0.2.2", 0, "dr", RS_MAC, ifindex=11)
    e.set_dest(6, 4, "10.0.2.3", 0, "dr", RS_MAC, ifindex=11)
    e.set_gateway_mac("02:00:00:00:01:02", ifindex=10)
    e.set_scheduler_callback(rr({1: [2, 1], 2: [3], 3: [4], 4: [6, 5]}))
    return e


def steps():
    return [st for st in KERNEL["steps"] if st["step"] != "after 5 s"
            and st["step"][1] in ("tcp", "udp")]


def entry_text(c):
    return (c["proto"], f"{c['caddr']}:{c['cport']}", f"{c['vaddr']}:{c['vport']}",
            f"{c['raddr']}:{c['rport']}")


def kernel_entries(lines):
    out = set()
    for ln in lines:
        f = ln.split()
        if f and f[0] in ("TCP", "UDP", "IP"):
            out.add((f[0], f[3], f[4], f[5]))
    return out


def test_marked_frames_go_where_the_kernel_sent_them():
    e = fwmark_engine()
    now = 10 * S
    for st in steps():
        side = st["step"][0]
        now += S // 2
        v = e.process_verdicts([bytes.fromhex(st["sent"])], now)[0]
        if side == "c" and st["at_rs"]:
            assert v[0] == "tx", st["step"]
            assert v[3][14:] == bytes.fromhex(st["at_rs"][0])[14:], st["step"]
            assert v[3][:6] == bytes.fromhex(RS_MAC.replace(":", ""))
        else:
            # unmarked and unserved, or a reply of no conn: the host's (the kernel
            # routed the SYN-ACK unchanged, and answered the others itself)
            assert v[0] == "pass", (st["step"], v)
        mine = {entry_text(c) for c in e.conns(now) if c["proto"] in ("TCP", "UDP", "IP")}
        assert mine == kernel_entries(st["conns"]), st["step"]
    assert mine == kernel_entries(KERNEL["ipvsadm_Lnc_after"].splitlines())


def test_mark_service_deleted_leaves_the_address_service_and_the_conns():
    e = fwmark_engine()
    syn = bytes.fromhex(steps()[1]["sent"])          # 10.0.1.2:5001 -> 10.0.1.100:8005
    first = e.process_verdicts([syn], S)[0]
    # the mark's service (rr: its list head, 10.0.2.3:8080), not the port's (:9999)
    assert first[0] == "tx" and first[3][30:34] == bytes([10, 0, 2, 3])
    assert first[3][36:38] == (8080).to_bytes(2, "big")
    e.del_service(1)
    # the conn made by the mark's service is still found (its VIP stays known), and as its
    # server went with the service, its packets are dropped until it expires (as IPVS)
    again = e.process_verdicts([syn], 2 * S)[0]
    assert again[:2] == ("drop", "dest_unavailable")
    # a new client now reaches the port's own service
    pkt = Ether(syn)
    pkt[TCP].sport = 5999
    del pkt[TCP].chksum
    out = e.process_verdicts([bytes(pkt)], 3 * S)[0]
    assert out[0] == "tx" and out[3][36:38] == (9999).to_bytes(2, "big")


def test_marks_round_trip_and_bad_rules_are_refused():
    e = Engine(capacity=64)
    e.set_marks(MARKS + [(7, None, None, 0, 65535)])
    assert e.marks() == [(1, 6, "10.0.1.100/32", 8000, 8010), (2, 17, "10.0.1.96/30", 53, 53),
                         (7, 0, "0.0.0.0/0", 0, 65535)]
    for bad in [(0, "tcp", None, 0, 1), (1, "icmp", None, 0, 1), (1, "tcp", "nonsense", 0, 1),
                (1, "tcp", None, 9, 8), (1, "tcp", None, 0, 70000)]:
        with pytest.raises(ValueError):
            e.set_marks([bad])
    assert len(e.marks()) == 3          # a refused set leaves the rules as they were
    e.set_marks([])
    assert e.marks() == []
