"""IPv6, firewall-mark and SCTP conns in connection sync, against a real 6.1 IPVS
(tests/fixtures/kernel/sync_v6_*.json, made by scripts/sync_v6.sh under the kernel oracle):
the kernel master's datagrams decode into what it listed and re-encode to the same bytes; a
fastlvs master (both engines) fed the job's traffic writes the kernel's entries in the
kernel's order; a fastlvs backup fed the kernel backup's input counts and lists what the
kernel did, but for what fastlvs refuses (no such service or real server); and conns
installed from a datagram are forwarded at once, without the scheduler, to their real
server (v6 DR, NAT66, ip6ip6, SCTP with its CRC, firewall marks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

import fastlvs.engine._core as core
from fastlvs.engine import reference
from fastlvs.sync import protocol as P
from tests.sync import kernel_traffic_v6 as KT
from tests.sync.test_kernel_master import hostport, key, row_key, seconds

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
MASTER = json.loads((FIX / "sync_v6_master.json").read_text())
BACKUP = json.loads((FIX / "sync_v6_backup.json").read_text())
FEED = json.loads((FIX / "scripts" / "sync_v6_backup_input.json").read_text())
SYNCID = MASTER["syncid"]
PAYLOADS = [bytes.fromhex(d["payload"]) for d in MASTER["datagrams"]]
DECODED = [P.decode(p, SYNCID) for p in PAYLOADS]
S = KT.NS
ENGINES = {"core": core.Engine, "reference": reference.Engine}


@pytest.fixture(params=list(ENGINES))
def make(request):
    cls = ENGINES[request.param]

    def _make(scheduler=None):
        return KT.configure(cls(capacity=4096, local_ip="10.0.9.1", local_mac=KT.LOCAL_MAC),
                            scheduler)
    return _make


def entry(c: P.SyncConn) -> tuple:
    return (c.protocol, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.flags,
            c.state, c.timeout, c.fwmark)


# -- the recording itself ------------------------------------------------------------------------

def test_recording_is_from_the_oracle_kernel_and_has_every_kind():
    assert MASTER["kernel"].startswith("6.1.") and BACKUP["kernel"].startswith("6.1.")
    assert all(d.ok for d in DECODED)
    kinds = {(c.proto_name, c.template, c.ipv6, c.fwmark, c.flags & 7)
             for d in DECODED for c in d.conns}
    assert {("TCP", False, True, 0, 3), ("TCP", False, True, 0, 0), ("TCP", False, True, 0, 2),
            ("UDP", False, True, 0, 0), ("TCP", True, True, 0, 3), ("TCP", False, False, 7, 3),
            ("IP", True, False, 9, 0), ("TCP", False, False, 9, 0), ("IP", True, True, 8, 3),
            ("SCTP", False, False, 0, 0), ("SCTP", False, False, 0, 3),
            ("SCTP", False, True, 0, 3)} <= kinds
    sctp = {(c.cport, c.state_name) for d in DECODED for c in d.conns if c.protocol == 132}
    assert sctp == {(40001, "ESTABLISHED"), (40001, "S-RECEIVED"), (40001, "CLOSED"),
                    (40002, "ESTABLISHED"), (40002, "S-RECEIVED"), (40002, "CLOSED"),
                    (40003, "ESTABLISHED")}


def test_the_backup_feed_is_what_the_encoder_makes_today():
    from tests.fixtures.kernel.scripts import sync_v6_feed
    assert FEED == json.loads(json.dumps(sync_v6_feed.feed()))
    assert [s["step"] for s in BACKUP["steps"]] == [s["step"] for s in FEED["steps"]]


def test_each_kernel_datagram_reencodes_to_the_same_bytes():
    for payload, d in zip(PAYLOADS, DECODED):
        assert P.encode_message(SYNCID, d.conns) == payload
    # the v6 entries are 72 bytes; a message closed for room could not take the next entry
    for d, nxt, payload in zip(DECODED[1:], DECODED[2:], PAYLOADS[1:]):
        assert len(payload) + len(P.encode_conn(nxt.conns[0])) > P.sync_maxlen()


def test_a_mark_template_has_the_mark_as_address_and_protocol_ip():
    tpl = {(c.fwmark, c.vaddr, c.vport, c.protocol) for d in DECODED for c in d.conns
           if c.template and c.fwmark}
    assert tpl == {(9, "0.0.0.9", 0, 0), (8, "0:8::", 0, 0)}


def test_the_kernel_listed_the_last_state_it_synced():
    last = {}
    for d in DECODED:
        for c in d.conns:
            last[key(c)] = c
    listed = {row_key(r): r for r in MASTER["lnc"]}
    assert set(listed) == set(last)
    for k, r in listed.items():
        assert r["state"] == last[k].state_name, k
        assert seconds(r["expire"]) <= last[k].timeout, k


def test_the_kernel_backup_listed_what_it_was_fed_but_sctp_state_14():
    table = {}
    for i, step in enumerate(FEED["steps"]):
        for h in step["datagrams"]:
            d = P.decode(bytes.fromhex(h), SYNCID)
            for c in d.conns:
                table[key(c)] = c
        listed = {row_key(r): r["state"] for r in BACKUP["steps"][i]["lnc"]}
        assert listed == {k: c.state_name for k, c in table.items()}, step["step"]
    assert P.decode(bytes.fromhex(FEED["steps"][-1]["datagrams"][0]), SYNCID).skipped == [
        P.SKIP_STATE]


# -- a fastlvs master ---------------------------------------------------------------------------

def test_master_sends_what_the_kernel_sent_for_the_same_traffic(make):
    """The job's frames through a fastlvs master at the job's times: the entries, in order,
    are the recorded 6.1 master's (mark 8's, a v6 mark service, aside); the first message
    leaves when 2 s old as the kernel's did, with the same entries, and full messages hold
    as many 72-byte v6 entries as fit in 1472 bytes."""
    e = make()
    e.sync_start_master(SYNCID, P.sync_maxlen())
    t, msgs = 0, []
    first_t = int(MASTER["datagrams"][0]["t"] * S)
    for at, frames in KT.steps():
        if int(at * S) > first_t and not msgs:
            msgs += e.sync_take(first_t)
        for f in frames:
            t = max(t, int(at * S))
            e.process([f], [t])
            t += 20_000_000
    assert len(msgs) == 1
    assert P.decode(msgs[0], SYNCID).conns == DECODED[0].conns
    t = int(KT.BULK_T * S)
    for f in KT.bulk():
        e.process([f], [t])
        t += 10_000
    msgs += e.sync_take(t) + e.sync_take(t + 3 * S)
    got = [entry(c) for m in msgs for c in P.decode(m, SYNCID).conns]
    want = [entry(c) for d in DECODED for c in d.conns if KT.served_entry(c)]
    assert got == want
    for m, nxt in zip(msgs[1:], msgs[2:]):
        assert len(m) <= P.sync_maxlen() < len(m) + P.ENTRY_V6.size
    st = e.sync_stats()
    assert st["sent"] == len(msgs) and st["sent_conns"] == len(want)


def test_a_v6_entry_larger_than_maxlen_has_a_message_of_its_own(make):
    e = make()
    e.sync_start_master(SYNCID, 60)         # a v4 entry fits (44), a v6 one (80) does not
    frames = KT.tcp_open(10041, 9000) + KT.tcp_open(10061, 80, v6=True)
    for i, f in enumerate(frames):
        e.process([f], [S + i])
    msgs = e.sync_take(10 * S)
    assert [(len(m), len(P.decode(m, SYNCID).conns)) for m in msgs] == [(44, 1), (80, 1)]


# -- a fastlvs backup ---------------------------------------------------------------------------

def _mark8(k) -> bool:
    return "[0:8::]" in k[2] or k[2] == "[2001:db8:1::1]:9000"


def _refused(k) -> bool:
    # what fastlvs does not install where the kernel keeps an unbound entry: no such
    # service (a VIP not configured here, mark 8 without v6 marks), no such real server
    # (::9, 10.0.2.4 under mark 7; mark 9's template, synced with dport 0 as masters send
    # it, has no real server of port 0 in the NAT mark service, so the kernel's is unbound
    # too)
    return ("[2001:db8:1::99]" in k[2] or not KT.V6_MARKS and _mark8(k)
            or k[3].startswith(("[2001:db8:2::9]", "10.0.2.4:"))
            or k[2] == "0.0.0.9:0"
            or k[0] == "SCTP" and "[" in k[1])


def _our_rows(e, now):
    return {(c["proto"], hostport(c["caddr"], c["cport"]), hostport(c["vaddr"], c["vport"]),
             hostport(c["raddr"], c["rport"])): c for c in e.conns(now)}


def _our_dests(e):
    out = {}
    for sid, proto, vaddr, vport, _, rip, rport, _ in KT.services():
        a, i, _, _ = e.dest_counters(sid)
        if isinstance(proto, tuple):
            name = f"FWM {proto[1]} -> {hostport(rip, rport)}"
        else:
            pname = {6: "TCP", 17: "UDP", 132: "SCTP"}[proto]
            name = f"{pname} {hostport(vaddr, vport)} -> {hostport(rip, rport)}"
        out[name] = (a, i)
    return out


def test_backup_counts_and_lists_as_the_recorded_kernel_backup(make):
    b = make(lambda svcs, flows: pytest.fail("scheduler asked"))
    b.sync_start_backup(SYNCID)
    now = 100 * S
    for i, step in enumerate(FEED["steps"]):
        for h in step["datagrams"]:
            b.sync_receive(bytes.fromhex(h), now)
        rec = BACKUP["steps"][i]
        ours = _our_dests(b)
        assert ours == {k: (v["active"], v["inact"]) for k, v in rec["dests"].items()
                        if k in ours}, step["step"]
        kernel = {row_key(r): r for r in rec["lnc"] if not _refused(row_key(r))}
        rows = _our_rows(b, now)
        assert set(rows) == set(kernel), step["step"]
        for k, r in kernel.items():
            assert rows[k]["state"] == r["state"], k
            # the kernel was read a second or so after its install; ours at it
            assert 0 <= rows[k]["expires"] - seconds(r["expire"]) <= 5, k
        now += S
    st = b.sync_stats()
    # ::99 (and mark 8's template and conn where the engine has no v6 marks)
    assert st["refused_no_service"] == (1 if KT.V6_MARKS else 3)
    assert st["refused_no_dest"] == 3           # ::9, 10.0.2.4 under mark 7, mark 9's template
    assert st["refused_protocol"] == 2          # SCTP over IPv6, installed then updated
    assert st["skip_bad_state"] == 1 and st["dropped"] == 0


def test_kernel_master_messages_installed_list_what_the_kernel_listed(make):
    b = make()
    b.sync_start_backup(SYNCID)
    for p in PAYLOADS:
        b.sync_receive(p, 10 * S)
    rows = _our_rows(b, 10 * S)
    # the mark 9 template, synced with dport 0 (as the kernel sends it), finds no real
    # server of port 0 in a NAT mark service: the kernel keeps it unbound, fastlvs refuses
    kernel = {row_key(r): r["state"] for r in MASTER["lnc"]
              if (KT.V6_MARKS or not _mark8(row_key(r))) and r["virtual"] != "0.0.0.9:0"
              and not (r["pro"] == "SCTP" and "[" in r["source"])}
    assert {k: c["state"] for k, c in rows.items()} == kernel


# -- takeover ------------------------------------------------------------------------------------

def _l4_ok(frame: bytes) -> bool:
    """Every TCP/UDP checksum (v4 or v6 pseudo-header) and SCTP CRC32c, recomputed."""
    pkt = Ether(frame)
    for layer in (TCP, UDP, SCTP):
        lay = pkt.getlayer(layer)
        if lay is None:
            continue
        under = lay.underlayer
        u = under.copy()
        u.remove_payload()
        c = lay.copy()
        del c.chksum
        rebuilt = (IPv6 if isinstance(under, IPv6) else IP)(bytes(u / c))
        if rebuilt[layer].chksum != lay.chksum:
            return False
    if IP in pkt:
        c = pkt[IP].copy()
        del c.chksum
        if IP(bytes(c)).chksum != pkt[IP].chksum:
            return False
    return True


def _installed(make):
    b = make(lambda svcs, flows: pytest.fail("scheduler asked"))
    b.sync_start_backup(SYNCID)
    for h in FEED["steps"][0]["datagrams"]:
        b.sync_receive(bytes.fromhex(h), S)
    return b


CASES = {
    # name: (frame of the installed conn, expected (ifindex, l3 dst, l4 dport, hop/ttl))
    "v6 DR": (KT.c_tcp(30061, 80, "PA", b"more", v6=True), (16, KT.VIP6, 80, 63)),
    "NAT66": (KT.c_tcp(30071, 8080, "PA", b"more", v6=True), (17, KT.R3, 8080, 63)),
    "v6 UDP NAT": (KT.c_udp(30081, 53), (18, KT.R3, 53, 63)),
    "SCTP NAT": (KT.sctp(KT.CL, 40011, KT.VIP, 7000, "DATA"), (14, "10.0.2.3", 7001, 63)),
    "SCTP DR": (KT.sctp(KT.CL, 40012, KT.VIP, 7100, "DATA"), (15, KT.VIP, 7100, 63)),
    "fwmark DR": (KT.c_tcp(30041, 9000, "PA", b"more"), (12, KT.VIP, 9000, 63)),
    "fwmark NAT": (KT.c_tcp(30042, 9100, "PA", b"more"), (13, "10.0.2.3", 9100, 63)),
}
if KT.V6_MARKS:
    CASES["v6 fwmark DR"] = (KT.c_tcp(30043, 9000, "PA", b"more", v6=True),
                             (22, KT.VIP6, 9000, 63))


@pytest.mark.parametrize("case", list(CASES))
def test_takeover_forwards_installed_conns_without_the_scheduler(make, case):
    b = _installed(make)
    frame, (ifindex, dst, dport, ttl) = CASES[case]
    (v, _, out_if, data), = b.process_verdicts([frame], [2 * S])
    assert v == "tx" and out_if == ifindex, case
    assert _l4_ok(data), case
    p = Ether(data)
    ip = p[IPv6] if IPv6 in p else p[IP]
    l4 = p.getlayer(TCP) or p.getlayer(UDP) or p.getlayer(SCTP)
    assert (ip.dst, l4.dport) == (dst, dport), case
    assert (ip.hlim if IPv6 in p else ip.ttl) == ttl, case
    assert p.dst == KT.dest_mac(ifindex - 10)
    assert b.stats()["conns_created"] == 0


def test_takeover_tunnels_an_installed_v6_conn_ip6ip6(make):
    b = _installed(make)
    (v, _, out_if, data), = b.process_verdicts(
        [KT.c_tcp(30091, 81, "PA", b"more", v6=True)], [2 * S])
    assert v == "tx" and out_if == 20
    p = Ether(data)
    outer, inner = p[IPv6], p[IPv6].payload
    assert (outer.src, outer.dst, outer.nh) == (KT.LOCAL6, KT.R4, 41)
    assert isinstance(inner, IPv6) and (inner.dst, inner[TCP].dport) == (KT.VIP6, 81)
    c = inner[TCP].copy()
    del c.chksum
    u = inner.copy()
    u.remove_payload()
    assert IPv6(bytes(u / c))[TCP].chksum == inner[TCP].chksum
    assert b.stats()["conns_created"] == 0


def test_nat66_reply_of_an_installed_conn_goes_back_to_the_client(make):
    b = _installed(make)
    (v, _, _, data), = b.process_verdicts([KT.r_tcp(KT.R3, 8080, 30071, "A")], [2 * S])
    assert v == "tx" and _l4_ok(data)
    p = Ether(data)
    assert (p[IPv6].src, p[TCP].sport, p[IPv6].dst, p[TCP].dport) == (KT.VIP6, 8080, KT.CL6,
                                                                      30071)


@pytest.mark.parametrize("v6", [False, True])
def test_a_reply_assures_a_udp_template_in_either_family(make, v6):
    """udp_state_transition: a NAT reply assures its conn's template, NAT66 as NAT; the
    master then sends the template as ASSURED."""
    e = make()
    vip, rip, cl = (KT.VIP6, KT.R3, KT.CL6) if v6 else (KT.VIP, "10.0.2.3", KT.CL)
    e.set_service(20, 17, vip, 5353, persist_timeout=60)
    e.set_dest(20, 20, rip, 5353, "nat", KT.dest_mac(20), ifindex=30)
    e.sync_start_master(SYNCID, 1472)
    ip = IPv6 if v6 else IP
    e.process([bytes(Ether(src=KT.CL_MAC, dst=KT.LOCAL_MAC) / ip(src=cl, dst=vip)
                     / UDP(sport=5000, dport=5353) / b"q")], [S])
    assert [c["state"] for c in e.conns(S) if c["template"]] == ["NONE"]
    (v, _, _, _), = e.process_verdicts([bytes(Ether(src=KT.RS_MAC, dst=KT.LOCAL_MAC)
                                              / ip(src=rip, dst=cl)
                                              / UDP(sport=5353, dport=5000) / b"r")], [S + 1])
    assert v == "tx"
    assert [c["state"] for c in e.conns(S) if c["template"]] == ["ASSURED"]
