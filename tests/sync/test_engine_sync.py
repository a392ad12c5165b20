"""Connection sync in the engines (dataplane/sync.pxi and engine/reference_sync.py), both
engines alike: the master's messages for the kernel recording's own traffic are the
entries the 6.1 master sent (sync_master.json); the recorded kernel messages installed on
a fastlvs backup list what the kernel listed; the backup counts ActiveConn/InActConn as the
recorded 6.1 backup did (sync_backup.json); refresh, expiry, templates, takeover, the
sending policy's sysctls, the bounded queue and the flood rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from fastlvs.engine import reference
from fastlvs.sync import protocol as P
from tests.core.helpers import checksums_ok
from tests.sync import kernel_traffic as KT

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
MASTER = json.loads((FIX / "sync_master.json").read_text())
BACKUP = json.loads((FIX / "sync_backup.json").read_text())
FEED = json.loads((FIX / "scripts" / "sync_backup_input.json").read_text())
S = KT.S
ENGINES = {"core": core.Engine, "reference": reference.Engine}


@pytest.fixture(params=list(ENGINES))
def make(request):
    cls = ENGINES[request.param]

    def _make(capacity=4096, served=True):
        return KT.configure(cls(capacity=capacity, local_ip="10.0.9.1",
                                local_mac=KT.LOCAL_MAC), served)
    return _make


def entry(c: P.SyncConn) -> tuple:
    return (c.protocol, c.caddr, c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.flags,
            c.state, c.timeout)


def decoded(msgs, syncid=7):
    out = []
    for m in msgs:
        d = P.decode(m, syncid)
        assert d.ok, d
        out += d.conns
    return out


def lnc_key(r: dict) -> tuple:
    return (r["pro"], r["state"], r["source"], r["virtual"], r["destination"])


def served_row(r: dict) -> bool:
    """A recorded -Lnc row of a kind this engine serves: not IPv6, not of the fwmark
    service (its template 0.0.0.7, its conns to :9000) nor of the sip one (:5060)."""
    return ("[" not in r["source"] and not r["virtual"].startswith("0.0.0.")
            and not r["virtual"].endswith((":5060", ":9000")))


def our_lnc(e, now):
    return {(c["proto"], c["state"],
             f"{c['caddr']}:{c['cport']}", f"{c['vaddr']}:{c['vport']}",
             f"{c['raddr']}:{c['rport']}"): c["expires"] for c in e.conns(now)}


# -- master ------------------------------------------------------------------------------------

def test_master_sends_what_the_kernel_sent_for_the_same_traffic(make):
    """The job's frames through a fastlvs master: the entries, in order, are the recorded
    6.1 master's (the fwmark, sip and IPv6 ones aside), and the bulk step packs as the
    kernel packed it: a full message of 40 entries, the last 5 only once 2 s old."""
    e = make()
    e.sync_start_master(7, P.sync_maxlen())
    t = 0
    for at, frames in KT.steps():
        t = KT.run(e, frames, max(t, int(at * S)))
    first = e.sync_take(int(4.7 * S))            # the early message, 2 s old by now
    bulk_t0 = int(4.787 * S)
    t = KT.run(e, KT.bulk(), bulk_t0, gap=10_000)      # back to back
    full = e.sync_take(t)
    assert e.sync_take(bulk_t0 + int(1.9 * S)) == []
    last = e.sync_take(bulk_t0 + int(2.1 * S))
    kernel = [P.decode(bytes.fromhex(d["payload"]), 7) for d in MASTER["datagrams"]]
    want = [entry(c) for d in kernel for c in d.conns if KT.recorded_kind(c)]
    got = [entry(c) for c in decoded(first + full + last)]
    assert got == want
    assert [len(P.decode(m).conns) for m in full + last] == [
        len(d.conns) for d in kernel[1:]] == [40, 5]
    assert all(len(m) <= P.sync_maxlen() for m in first + full + last)
    st = e.sync_stats()
    assert st["sent"] == len(first + full + last) and st["sent_conns"] == len(want)
    assert st["sent_bytes"] == sum(map(len, first + full + last))


def test_template_goes_before_the_conn_and_with_every_packet(make):
    e = make()
    e.sync_start_master(7, 1472)
    KT.run(e, KT._open(10031, 443), S)
    got = [(c.cport, c.template, c.state_name) for c in decoded(e.sync_take(10 * S))]
    assert got == [(0, True, "NONE"), (0, True, "ASSURED"), (10031, False, "ESTABLISHED"),
                   (0, True, "ASSURED")]
    lst = {c["cport"]: c["state"] for c in e.conns(2 * S)}
    assert lst[0] == "ASSURED"


def test_sync_persist_mode_sends_the_template_only(make):
    e = make()
    e.set_sysctl("sync_persist_mode", 1)
    e.sync_start_master(7, 1472)
    KT.run(e, KT._open(10031, 443), S)
    assert [c.cport for c in decoded(e.sync_take(10 * S))] == [0, 0, 0]


def test_udp_is_sent_at_threshold_then_every_period(make):
    e = make()
    e.sync_start_master(7, 1472)
    KT.run(e, [KT.c_udp(10021, 53)] * 110, S)
    assert len(decoded(e.sync_take(100 * S))) == 3           # packets 3, 53 and 103
    e.set_sysctl("sync_period", 0)                           # once, at the threshold
    KT.run(e, [KT.c_udp(10022, 53)] * 110, 200 * S)
    assert [c.cport for c in decoded(e.sync_take(300 * S))] == [10022]


def test_refresh_period_with_retries(make):
    """sync_refresh_period 10 s, sync_period 0: the UDP conn is sent, then not again while
    its timeout moves by less than 10 s from the last send, but sync_retries
    (2) more times an eighth of the period (1.25 s) apart, then again 10 s on."""
    e = make()
    for n, v in (("sync_period", 0), ("sync_refresh_period", 10), ("sync_retries", 2)):
        e.set_sysctl(n, v)
    e.sync_start_master(7, 1472)
    sent = []
    for k in range(60):                       # a datagram every 0.5 s for 30 s
        t = S + k * S // 2
        e.process([KT.c_udp(10021, 53)], [t])
        n = len(decoded(e.sync_take(t + 3 * S)))
        sent += [k] * n
    # with sync_period 0 every packet may send: the first does (its timeout moved by
    # 300 s from the conn's creation), two retries follow at the first packets >= 1.25 s
    # after the last send, then nothing until the timeout moved by 10 s from the last
    # send, and so on
    assert sent == [0, 3, 6, 27, 30, 33, 54, 57]
    # (10 s after the 7th packet the timeout has moved by 10 s less the retry bits of
    # the endtime, 2 ms: the kernel's arithmetic too, so the 8th packet after it sends)


def test_partial_message_waits_two_seconds_and_maxlen_splits(make):
    e = make()
    e.sync_start_master(7, 100)                   # two entries per message (8 + 2*36 + pad)
    for i in range(5):
        KT.run(e, [KT.c_udp(30000 + i, 53)] * 3, S + i * S // 10)
    msgs = e.sync_take(S + S)
    assert [len(P.decode(m).conns) for m in msgs] == [2, 2]
    assert e.sync_stats()["queued"] == 1
    assert [len(P.decode(m).conns) for m in e.sync_take(3 * S + S // 2)] == [1]


def test_bounded_queue_counts_what_it_drops(make):
    e = make()
    e.set_sysctl("sync_qlen_max", 2)
    e.sync_start_master(7, 44)                    # one entry per message
    for i in range(5):
        KT.run(e, [KT.c_udp(30000 + i, 53)] * 3, S)
    st = e.sync_stats()
    assert st["queue_overflow"] == 2 and st["queue_overflow_conns"] == 2
    assert len(e.sync_take(2 * S)) == 2


def test_stopped_master_sends_nothing_and_drops_its_queue(make):
    e = make()
    e.sync_start_master(7, 1472)
    KT.run(e, [KT.c_udp(30000, 53)] * 3, S)
    e.sync_stop_master()
    assert e.sync_take(10 * S) == []
    KT.run(e, [KT.c_udp(30001, 53)] * 3, 11 * S)
    assert e.sync_stats()["queued"] == 0


def test_sysctl_pair_rule_and_ranges(make):
    e = make()
    with pytest.raises(ValueError):
        e.set_sysctl("sync_threshold", 50)        # not below sync_period 50
    with pytest.raises(ValueError):
        e.set_sysctl("sync_period", 3)
    e.set_sysctl("sync_period", 0)
    e.set_sysctl("sync_threshold", 80)            # any threshold with period 0
    with pytest.raises(ValueError):
        e.set_sysctl("sync_retries", 4)
    assert e.sysctls()["sync_threshold"] == 80


def test_bad_start_arguments(make):
    e = make()
    for args in ((256, 1472), (-1, 1472), (7, 0), (7, 65508)):
        with pytest.raises(ValueError):
            e.sync_start_master(*args)
    with pytest.raises(ValueError):
        e.sync_start_backup(300)
    with pytest.raises(RuntimeError):
        e.sync_receive(b"", S)


# -- backup ------------------------------------------------------------------------------------

def test_kernel_messages_installed_list_what_the_kernel_listed(make):
    b = make()
    b.sync_start_backup(7)
    now = 10 * S
    for d in MASTER["datagrams"]:
        b.sync_receive(bytes.fromhex(d["payload"]), now)
    ours = our_lnc(b, now)
    kernel = [r for r in MASTER["lnc"] if served_row(r)]
    assert set(ours) == {lnc_key(r) for r in kernel}
    st = b.sync_stats()
    # sip's entries with persistence-engine data are refused as such; the other fwmark,
    # sip and IPv6 ones name services this backup does not have
    entries = decoded([bytes.fromhex(d["payload"]) for d in MASTER["datagrams"]])
    pe = [c for c in entries if c.pe_data is not None]
    other = [c for c in entries if c.pe_data is None and not KT.recorded_kind(c)]
    assert len(pe) == 3 and len(other) == 6
    assert st["refused_pe"] == len(pe) and st["refused_no_service"] == len(other)
    assert st["installed"] + st["updated"] == len(entries) - len(pe) - len(other)
    assert st["dropped"] == 0


def _backup_dests(e):
    out = {}
    for sid, proto, vport, _, rip, rport, _ in KT.SERVICES:
        a, i, _, _ = e.dest_counters(sid)
        out[f"{'TCP' if proto == 6 else 'UDP'} {KT.VIP}:{vport} -> {rip}:{rport}"] = (a, i)
    return out


def test_backup_counts_and_lists_as_the_recorded_kernel_backup(make):
    """sync_backup.json's steps (install, update, bad datagrams) fed to a fastlvs backup
    with the recorded backup's services: after each step the ActiveConn/InActConn of every
    dest fastlvs serves are the kernel's, and -Lnc lists the kernel's conns but the ones
    fastlvs refuses (fwmark, sip, IPv6, and 30003 whose real server is not configured:
    the kernel keeps it unbound)."""
    b = make()
    b.sync_start_backup(7)
    now = 100 * S
    for i, step in enumerate(FEED["steps"]):
        for hexmsg in step["datagrams"]:
            b.sync_receive(bytes.fromhex(hexmsg), now)
        rec = BACKUP["steps"][i]
        want = {k: (v["active"], v["inact"]) for k, v in rec["dests"].items()
                if k in _backup_dests(b)}
        assert _backup_dests(b) == want, step["step"]
        kernel = {lnc_key(r): r["expire"] for r in rec["lnc"]
                  if served_row(r) and not r["destination"].startswith("10.0.2.9:")}
        ours = our_lnc(b, now)
        assert set(ours) == set(kernel), step["step"]
        for k, exp in kernel.items():
            m, s = exp.split(":")
            # the kernel was read a few seconds after its install; ours at it
            assert 0 <= ours[k] - (int(m) * 60 + int(s)) <= 60, (k, ours[k], exp)
        now += S
    st = b.sync_stats()
    assert st["drop_foreign_syncid"] == 1 and st["drop_size_mismatch"] == 1
    assert st["drop_not_v1"] == 1 and st["drop_truncated"] == 1
    assert st["drop_entry_version"] == 1 and st["skip_unknown_option"] == 1
    assert st["skip_unknown_protocol"] == 1 and st["skip_bad_state"] == 1
    assert st["skip_bad_pe"] == 1 and st["refused_no_dest"] == 1


def _msg(*conns, syncid=7):
    return P.encode_message(syncid, [P.SyncConn(**c) for c in conns])


def _tcp(cport, state, flags, timeout, **kw):
    d = dict(protocol=6, caddr=KT.CL, cport=cport, vaddr=KT.VIP, vport=80, daddr="10.0.2.2",
             dport=80, flags=flags, state=state, timeout=timeout)
    d.update(kw)
    return d


def test_refresh_updates_state_counts_and_timeout_then_expiry(make):
    b = make()
    b.sync_start_backup(7)
    b.sync_receive(_msg(_tcp(30001, 1, 0x83, 900)), S)
    assert b.dest_counters(1)[:2] == (1, 0)
    b.sync_receive(_msg(_tcp(30001, 4, 0x183, 120)), 2 * S)
    assert b.dest_counters(1)[:2] == (0, 1)
    (c,) = b.conns(2 * S)
    assert (c["state"], c["expires"]) == ("FIN_WAIT", 120)
    b.sync_receive(_msg(_tcp(30001, 5, 0x183, 0)), 3 * S)      # timeout 0: the backup's own
    (c,) = b.conns(3 * S)
    assert (c["state"], c["expires"]) == ("TIME_WAIT", 120)
    st = b.sync_stats()
    assert (st["installed"], st["updated"]) == (1, 2)
    b.run_timers(3 * S + 121 * S)
    assert b.conns(125 * S) == [] and b.dest_counters(1)[:2] == (0, 0)


def test_another_real_server_replaces_or_is_ignored(make):
    b = make()
    b.set_dest(6, 1, "10.0.2.6", 80, "dr", "02:00:00:00:01:06", ifindex=16, weight=1)
    b.sync_start_backup(7)
    b.sync_receive(_msg(_tcp(30001, 1, 0x83, 900)), S)
    b.sync_receive(_msg(_tcp(30001, 4, 0x183, 120, daddr="10.0.2.6")), S)   # inactive: ignored
    assert [c["raddr"] for c in b.conns(S)] == ["10.0.2.2"]
    b.sync_receive(_msg(_tcp(30001, 1, 0x83, 900, daddr="10.0.2.6")), S)    # active: replaces
    assert [c["raddr"] for c in b.conns(S)] == ["10.0.2.6"]
    assert b.dest_counters(1)[:2] == (0, 0) and b.dest_counters(6)[:2] == (1, 0)
    assert b.sync_stats()["ignored_replaced"] == 1


def test_templates_installed_and_followed_after_takeover(make):
    """A synced template <client, 0, VIP:443> to 10.0.2.4 is listed and, once the VIP is
    served here, a new connection of that client goes to its real server without asking
    the scheduler."""
    b = make(served=False)
    b.set_dest(7, 5, "10.0.2.7", 443, "dr", "02:00:00:00:01:07", ifindex=17, weight=1)
    asked = []
    b.set_scheduler_callback(lambda svcs, flows: asked.append(flows) or [7] * len(flows))
    b.sync_start_backup(7)
    b.sync_receive(_msg(_tcp(0, 1, 0x1183, 300, vport=443, daddr="10.0.2.4", dport=443)), S)
    (t,) = b.conns(S)
    assert (t["template"], t["state"], t["expires"]) == (True, "ASSURED", 300)
    assert b.dest_counters(5)[2] == 1                  # persistconns
    b.set_vip_served(6, KT.VIP, 443, True)
    (v, _, ifindex, data), = b.process_verdicts([KT.c_tcp(10099, 443, "S")], [2 * S])
    assert v == "tx" and asked == [] and ifindex == 15
    assert Ether(data).dst == "02:00:00:00:01:05"


@pytest.mark.parametrize("fwd", ["dr", "nat"])
def test_takeover_forwards_synced_conns_at_once(make, fwd):
    """Master A syncs an established conn; backup B (VIP not served) installs it; once B
    serves the VIP the conn's next packet leaves at once to its real server without the
    scheduler, and for NAT the real server's reply is translated back to the client."""
    a = make()
    a.sync_start_master(7, 1472)
    vport, nat = (80, None) if fwd == "dr" else (8080, "10.0.2.3")
    KT.run(a, KT._open(10001, vport, nat), S)
    msgs = a.sync_take(5 * S)
    b = make(served=False)
    b.set_scheduler_callback(lambda svcs, flows: pytest.fail("scheduler asked"))
    b.sync_start_backup(7)
    for m in msgs:
        b.sync_receive(m, 6 * S)
    (v, _, _, _), = b.process_verdicts([KT.c_tcp(10001, vport, "A")], [7 * S])
    assert v == "pass"                                      # not served yet: the host's
    b.set_vip_served(6, KT.VIP, vport, True)
    (v, _, ifindex, data), = b.process_verdicts([KT.c_tcp(10001, vport, "PA", b"more")],
                                               [8 * S])
    assert v == "tx" and checksums_ok(data)
    p = Ether(data)
    if fwd == "dr":
        assert (p[IP].dst, p.dst, ifindex) == (KT.VIP, "02:00:00:00:01:01", 11)
    else:
        assert (p[IP].dst, p[TCP].dport, ifindex) == ("10.0.2.3", 8080, 12)
        (v, _, _, data), = b.process_verdicts([KT.r_tcp("10.0.2.3", 8080, 10001, "A")],
                                              [8 * S + 1])
        r = Ether(data)
        assert v == "tx" and checksums_ok(data)
        assert (r[IP].src, r[TCP].sport, r[IP].dst, r[TCP].dport) == (KT.VIP, 8080, KT.CL,
                                                                       10001)
    assert b.stats()["conns_created"] == 0


def test_a_flood_of_sync_messages_stops_at_the_table(make):
    b = make(capacity=64)
    b.sync_start_backup(7)
    for k in range(10):
        conns = [_tcp(40000 + 20 * k + i, 1, 0x83, 900) for i in range(20)]
        b.sync_receive(_msg(*conns), S)
    st = b.sync_stats()
    assert b.conn_count() == 64 and st["installed"] == 64
    assert st["refused_table_full"] == 200 - 64


def test_flood_of_embryonic_entries_makes_way_under_drop_entry(make):
    """Synced entries in SYN_RECV are embryos as the scheduler's are: with drop_entry on,
    a full table takes them for new entries; established ones are never dropped."""
    b = make(capacity=64)
    b.set_sysctl("drop_entry", 3)
    b.sync_start_backup(7)
    b.sync_receive(_msg(*[_tcp(40000 + i, 1, 0x83, 900) for i in range(8)]), S)
    for k in range(10):
        b.sync_receive(_msg(*[_tcp(41000 + 20 * k + i, 3, 0x83, 60) for i in range(20)]), S)
    est = [c for c in b.conns(S) if c["state"] == "ESTABLISHED"]
    assert len(est) == 8 and b.conn_count() <= 64


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x07\x00\x09\x01\x01\x00\x00\x00",
                                  b"\x00\x07\x00\x08\x05\x01\x00\x00", bytes(4000)])
def test_garbage_is_counted_never_raised(make, data):
    b = make()
    b.sync_start_backup(7)
    b.sync_receive(data, S)
    st = b.sync_stats()
    assert st["dropped"] == 1 and st["installed"] == 0 and b.conn_count() == 0


def test_master_and_backup_at_once(make):
    e = make()
    e.sync_start_master(7, 1472)
    e.sync_start_backup(8)
    e.sync_receive(_msg(_tcp(30001, 1, 0x83, 900), syncid=8), S)
    e.sync_receive(_msg(_tcp(30002, 1, 0x83, 900), syncid=7), S)   # foreign: dropped
    assert [c["cport"] for c in e.conns(S)] == [30001]
    KT.run(e, [KT.c_tcp(30001, 80, "A")] * 50, 2 * S)               # in_pkts = threshold
    assert [c.cport for c in decoded(e.sync_take(10 * S))] == [30001]


def test_sync_state_is_allocated_only_once_sync_starts(make):
    e = make()
    before = e.memory_bytes()
    KT.run(e, [KT.c_udp(30000, 53)] * 5, S)
    assert e.memory_bytes() == before
    e.sync_start_backup(0)
    assert e.memory_bytes() == before + 16 * 4096
    assert e.entry_size == 56


def test_one_packet_service_sends_only_the_template(make):
    """-o (ops) UDP: the conn lives for one datagram and is never sent (IP_VS_CONN_F_ONE_
    PACKET); its template is, as the kernel's ip_vs_sync_conn does."""
    e = make()
    e.set_service(3, 17, KT.VIP, 53, persist_timeout=60, ops=True)
    e.sync_start_master(7, 1472)
    KT.run(e, [KT.c_udp(30000 + i, 53) for i in range(4)], S)
    got = decoded(e.sync_take(10 * S))
    assert got and all(c.template and c.cport == 0 for c in got)


COUNT = json.loads((FIX / "sync_backup_count.json").read_text())
COUNT_FEED = json.loads((FIX / "scripts" / "sync_backup_count_input.json").read_text())


def test_backup_counting_recorded_on_6_1(make):
    """sync_backup_count.json (sync.sh backup_count under the oracle): a 6.1 backup counts a
    synced conn by its INACTIVE flag whatever its state (SYN_RECV with the flag clear and
    UDP with it clear are ActiveConn, ESTABLISHED with it set is InActConn), a refresh that
    flips the flag moves the count, an active entry to another real server replaces the
    conn, an inactive one is ignored, a template is not counted, a 1 s timeout expires.
    fastlvs, fed the same datagrams step by step, shows the same counts and conns, but
    for the ones it refuses where the kernel keeps them unbound (a VIP without a service,
    a real server not configured)."""
    assert COUNT["kernel"].startswith("6.1.")
    b = make()
    b.sync_start_backup(7)
    now = 100 * S
    for i, step in enumerate(COUNT_FEED["steps"]):
        for hexmsg in step["datagrams"]:
            b.sync_receive(bytes.fromhex(hexmsg), now)
        now += 2 * S                      # the kernel was read a second or two later
        b.run_timers(now)
        rec = COUNT["steps"][i]
        assert rec["step"] == step["step"]
        want = {k: (v["active"], v["inact"]) for k, v in rec["dests"].items()
                if k in _backup_dests(b)}
        assert _backup_dests(b) == want, step["step"]
        kernel = {lnc_key(r) for r in rec["lnc"] if served_row(r)
                  and not r["virtual"].endswith(":81")
                  and not r["destination"].startswith("10.0.2.9:")}
        assert set(our_lnc(b, now)) == kernel, step["step"]
    st = b.sync_stats()
    assert st["refused_no_service"] == 1 and st["refused_no_dest"] == 1
    assert st["ignored_replaced"] == 1


# -- handover (fastlvs's own: a master giving up a VIP sends all of its conns) ----------------

VIP2 = "10.0.1.9"


def _handover_master(make):
    """A master with a second VIP (DR :80 to 10.0.2.5) and conns the per-packet policy has
    not sent: a bare SYN (SYN_RECV) on each VIP, a persistent SYN (its template too), a
    UDP datagram; and an established NAT conn it has sent."""
    a = make()
    a.set_service(6, 6, VIP2, 80)
    a.set_dest(6, 6, "10.0.2.5", 80, "dr", "02:00:00:00:01:06", ifindex=16, weight=1)
    a.set_scheduler_callback(lambda svcs, flows: list(svcs))
    a.sync_start_master(7, 1472)
    t = KT.run(a, [KT.c_tcp(10001, 80, "S"), KT.c_tcp(10031, 443, "S"), KT.c_udp(10021, 53)]
               + KT._open(10011, 8080, "10.0.2.3"), S)
    t = KT.run(a, [bytes(Ether(src=KT.CL_MAC, dst=KT.LOCAL_MAC) / IP(src=KT.CL, dst=VIP2)
                         / TCP(sport=10041, dport=80, flags="S", seq=1000))], t)
    by_policy = decoded(a.sync_take(t + 10 * S))
    # the conns wait for their threshold packet (templates go with every packet)
    assert {(c.cport, c.template) for c in by_policy} == {(0, True), (10011, False)}
    return a, t + 10 * S


def _key(c: P.SyncConn) -> tuple:
    return (c.cport, c.vaddr, c.vport, c.daddr, c.dport, c.template, c.state_name)


def test_handover_queues_every_live_conn_of_the_vip_whatever_its_state(make):
    a, now = _handover_master(make)
    before = a.sync_stats()["sent_conns"]
    n, nxt = a.sync_queue_all(KT.VIP, now_ns=now)
    msgs = a.sync_take(now)                      # at once: the last message is closed
    got = {_key(c) for c in decoded(msgs)}
    assert (n, nxt) == (5, None) and len(msgs) == 1
    assert got == {(10001, KT.VIP, 80, "10.0.2.2", 80, False, "SYN_RECV"),
                   (10031, KT.VIP, 443, "10.0.2.4", 443, False, "SYN_RECV"),
                   (0, KT.VIP, 443, "10.0.2.4", 443, True, "NONE"),
                   (10021, KT.VIP, 53, "10.0.2.3", 53, False, "UDP"),
                   (10011, KT.VIP, 8080, "10.0.2.3", 8080, False, "ESTABLISHED")}
    # the other VIP's conn only with it (or with all), and a walk in slices is one walk
    n2, _ = a.sync_queue_all(VIP2, now_ns=now)
    assert n2 == 1 and [_key(c) for c in decoded(a.sync_take(now))] == [
        (10041, VIP2, 80, "10.0.2.5", 80, False, "SYN_RECV")]
    a.sync_queue_all(None, now_ns=now)
    whole = a.sync_take(now)
    start, total = 0, 0
    while start is not None:
        k, start = a.sync_queue_all(None, start, 2, now_ns=now)
        total += k
        assert start is None or a.sync_take(now) == []     # nothing closed mid-walk
    assert total == 6 and a.sync_take(now) == whole
    # expired entries are not sent
    assert a.sync_queue_all(KT.VIP, now_ns=now + 1000 * S) == (1, None)   # the template
    a.sync_take(now + 1000 * S)
    st = a.sync_stats()
    assert st["sent_conns"] - before == 5 + 1 + 6 + 6 + 1


def test_handover_lets_the_new_master_finish_a_handshake_begun_on_the_old(make):
    """The SYN went through the old master (A), the client's ACK and data reach the new
    one (B): with A's handover installed, B forwards them to the same real server without
    asking its scheduler, and the conn becomes ESTABLISHED there."""
    a, now = _handover_master(make)
    a.sync_queue_all(KT.VIP, now_ns=now)
    msgs = a.sync_take(now)
    b = make(served=False)
    b.set_scheduler_callback(lambda svcs, flows: pytest.fail("scheduler asked"))
    b.sync_start_backup(7)
    for m in msgs:
        b.sync_receive(m, now)
    assert b.sync_stats()["installed"] == 5
    b.set_vip_served(6, KT.VIP, 80, True)
    (v, _, ifindex, data), = b.process_verdicts([KT.c_tcp(10001, 80, "PA", b"hi")],
                                               [now + S])
    p = Ether(data)
    assert v == "tx" and checksums_ok(data) and ifindex == 11
    assert (p[IP].dst, p.dst, bytes(p[TCP].payload)) == (KT.VIP, "02:00:00:00:01:01", b"hi")
    states = {c["cport"]: c["state"] for c in b.conns(now + S)}
    assert states[10001] == "ESTABLISHED" and b.stats()["conns_created"] == 0


def test_handover_needs_a_running_master_and_sane_arguments(make):
    a = make()
    with pytest.raises(RuntimeError):
        a.sync_queue_all(KT.VIP)
    a.sync_start_master(7, 1472)
    assert a.sync_queue_all(KT.VIP) == (0, None)
    with pytest.raises(ValueError):
        a.sync_queue_all(KT.VIP, -1)
    with pytest.raises(ValueError):
        a.sync_queue_all(KT.VIP, 0, 0)
    with pytest.raises(ValueError):
        a.sync_queue_all("not an address")
