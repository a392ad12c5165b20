"""The engine against what Linux 6.1's IPVS was recorded doing with connection entries
(tests/fixtures/kernel/conns.json, made by tests/fixtures/kernel/scripts/conns.sh on the
kernel oracle): a deleted real server with expire_nodest_conn 0 and 1, conn_reuse_mode 0/1/2
with and without persistence, -o one-packet scheduling, sloppy_tcp, secure_tcp's state
table and drop_entry. Each test replays the recorded sequence here and compares the
decisions (forwarded or not, to which server, which entries remain, their states)."""
import json
import pathlib

import pytest

from tests.core import packets as P
from tests.core.helpers import S, engine

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" / "conns.json"
KERNEL = json.loads(FIXTURE.read_text())
CASES = KERNEL["cases"]


def steps(case):
    return {st["step"]: st for st in CASES[case]["steps"]}


def forwarded(st):
    return bool(st["to_rs"])


def rs_of(st):
    """The real server the step's packet went to (NAT: its address; DR: the one entry's)."""
    return st["to_rs"][0]["dst"] if st["to_rs"] else None


def expire_s(text):
    m, s = text.split(":")
    return int(m) * 60 + int(s)


def alternating():
    """A scheduler callback that alternates between dests 1 and 2, as rr does over two."""
    state = {"next": 1}

    def cb(svcs, flows):
        out = []
        for _ in flows:
            out.append(state["next"])
            state["next"] = 3 - state["next"]
        return out
    return cb


def entry(e, sport, now):
    got = [c for c in e.conns(now) if c["cport"] == sport and not c["template"]]
    assert len(got) <= 1
    return got[0] if got else None


def tx(v):
    return v[0][0] == "tx"


# -- a deleted real server (issue item 13) ---------------------------------------------------
def test_deleted_dest_drops_and_keeps_entry_as_6_1_does():
    k = steps("nodest_default")
    e = engine("nat", rport=8080)
    for f in (P.tcp("S", sport=1001), P.reply_tcp("SA", cport=1001), P.tcp("A", sport=1001)):
        assert e.process_verdicts([f], 1 * S)[0][0] == "tx"
    e.del_dest(1)
    # the client's data: kernel dropped it (nothing reached the server), entry kept
    v = e.process_verdicts([P.tcp("PA", sport=1001, payload=b"x" * 10)], 2 * S)
    assert not forwarded(k["client data after -d"])
    assert v[0][:2] == ("drop", "dest_unavailable")
    assert k["client data after -d"]["conns"][0]["state"] == "ESTABLISHED"
    # ...and its timer not re-armed: the server's reply below re-armed it, and 2 s later,
    # across a dropped SYN, the kernel's entry had 2 s less to live
    kd = [expire_s(k[s]["conns"][0]["expire"]) for s in ("RS reply after -d", "wait 2 s")]
    assert kd[1] <= kd[0] - 2
    assert entry(e, 1001, 2 * S)["expires"] == 899           # armed at 1 s, not at 2 s
    # the server's reply is still translated back to the VIP and re-arms the entry
    kr = k["RS reply after -d"]
    assert kr["to_client"][0]["src"] == "10.0.1.1" and expire_s(kr["conns"][0]["expire"]) >= 899
    v = e.process_verdicts([P.reply_tcp("PA", cport=1001)], 3 * S)
    assert tx(v) and entry(e, 1001, 3 * S)["expires"] == 900
    # a SYN on the same tuple: ESTABLISHED is no port reuse, so it is dropped too
    ks = k["client SYN same tuple after -d"]
    assert not forwarded(ks) and [c["state"] for c in ks["conns"]] == ["ESTABLISHED"]
    v = e.process_verdicts([P.tcp("S", sport=1001)], 4 * S)
    assert v[0][0] == "drop" and entry(e, 1001, 4 * S)["state"] == "ESTABLISHED"
    # the same server added back: the entry carries on
    assert forwarded(k["client data after re-add"])
    e.set_dest(1, 1, P.RS[0], 8080, "nat", P.RS_MAC[0], ifindex=10)
    assert tx(e.process_verdicts([P.tcp("PA", sport=1001, payload=b"y")], 5 * S))


def test_expire_nodest_conn_ends_entries_at_once_as_6_1_does():
    k = steps("nodest_expire")
    e = engine("nat", rport=8080, ndest=2, sched=lambda s, f: [1] * len(f))
    e.set_sysctl("expire_nodest_conn", 1)
    for f in (P.tcp("S", sport=2001), P.reply_tcp("SA", cport=2001), P.tcp("A", sport=2001)):
        assert tx(e.process_verdicts([f], 1 * S))
    # kernel: the entry was gone right after -d (the delayed flush runs a jiffy later) and
    # the client's next packet reached the director's own stack (which answered RST)
    kd = k["client data right after -d"]
    assert kd["conns"] == [] and not forwarded(kd)
    assert kd["to_client"][0]["flags"] == "R"
    e.del_dest(1)
    assert entry(e, 2001, 1 * S) is None and e.conn_count() == 0
    v = e.process_verdicts([P.tcp("PA", sport=2001, payload=b"x")], 2 * S)
    assert v[0][:2] == ("pass", "tcp_not_syn")
    # the dest comes back at once: an entry still there would be ended on its next packet
    e.set_dest(1, 1, P.RS[0], 8080, "nat", P.RS_MAC[0], ifindex=10)
    e.process([P.tcp("S", sport=2002), P.tcp("A", sport=2002)], 3 * S)
    e.set_sysctl("expire_nodest_conn", 0)
    e.del_dest(1)                                    # entry kept (expire_nodest_conn=0)
    e.set_sysctl("expire_nodest_conn", 1)
    v = e.process_verdicts([P.tcp("PA", sport=2002, payload=b"x")], 4 * S)
    assert v[0][:2] == ("pass", "tcp_not_syn") and entry(e, 2002, 4 * S) is None


def test_expire_nodest_conn_reschedules_a_syn_over_a_quiesced_dest():
    k = steps("nodest_expire")
    before = rs_of(k["W SYN 2003"])
    after = rs_of(k["SYN same tuple, weight 0"])
    assert forwarded(k["client data, weight 0"]) and after != before
    e = engine("nat", rport=8080, ndest=2, sched=alternating())
    e.set_sysctl("expire_nodest_conn", 1)
    e.process([P.tcp("S", sport=2003), P.reply_tcp("SA", cport=2003), P.tcp("A", sport=2003)],
              1 * S)
    first = entry(e, 2003, 1 * S)["raddr"]
    e.set_dest(1, 1, P.RS[0], 8080, "nat", P.RS_MAC[0], ifindex=10, weight=0)
    assert tx(e.process_verdicts([P.tcp("PA", sport=2003, payload=b"x")], 2 * S))
    out = e.process([P.tcp("S", sport=2003)], 3 * S)
    assert out and out[0][1] == 11                    # the other dest's interface
    c = entry(e, 2003, 3 * S)
    assert c["raddr"] != first and c["state"] == "SYN_RECV"


# -- conn_reuse_mode (issue item 17) -----------------------------------------------------------
def kernel_reuse(mode, persist):
    """{"TIME_WAIT"|"CLOSE"|"FIN_WAIT": rescheduled?} as the kernel did: the SYN went to
    the other server (non-persistent), or a new entry was made (persistent; told by the
    servers' connection counts, which a reused entry does not raise)."""
    k = steps(f"reuse_mode{mode}{'_persist' if persist else ''}")
    st = CASES[f"reuse_mode{mode}{'_persist' if persist else ''}"]["steps"]
    out = {}
    for state, opener, label in (("TIME_WAIT", "SYN 3", "SYN same tuple on TIME_WAIT"),
                                 ("CLOSE", "SYN 3", "SYN same tuple on CLOSE"),
                                 ("FIN_WAIT", "DR SYN 3", "DR SYN same tuple on FIN_WAIT")):
        i = [s["step"] for s in st].index(label)
        opened = [s for s in st[:i] if s["step"].startswith(opener)][-1]
        new = [c for c in k[label]["conns"] if c["source"].endswith(
            ":" + opened["step"].split()[-1])]
        assert [c["state"] for c in new] == ["SYN_RECV"]
        if state == "FIN_WAIT":
            first = [c for c in opened["conns"] if c["source"] == new[0]["source"]]
            out[state] = first[0]["destination"] != new[0]["destination"]
        else:
            out[state] = rs_of(opened) != rs_of(k[label])
    if persist:
        # the template keeps the server either way; the counts say no entry was made:
        # three conns were opened in the case, three counted (a reschedule adds one)
        last = st[-1]["dests"]
        made = sum(v["conns"] for a, v in last.items())
        out = {s: made > 3 for s in out}
    return out


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("persist", [False, True])
def test_conn_reuse_mode_as_6_1(mode, persist):
    expect = kernel_reuse(mode, persist)
    got = {}
    for state in ("TIME_WAIT", "CLOSE", "FIN_WAIT"):
        fwd = "dr" if state == "FIN_WAIT" else "nat"
        e = engine(fwd, rport=8080, ndest=2, sched=alternating(),
                   persist=60 if persist else 0)
        e.set_sysctl("conn_reuse_mode", mode)
        seq = {"TIME_WAIT": [P.tcp("S"), P.reply_tcp("SA"), P.tcp("A"), P.tcp("FA"),
                             P.reply_tcp("FA")],
               "CLOSE": [P.tcp("S"), P.reply_tcp("SA"), P.tcp("A"), P.tcp("R")],
               "FIN_WAIT": [P.tcp("S"), P.tcp("A"), P.tcp("FA")]}[state]
        for f in seq:
            e.process([f], 1 * S)
        c = entry(e, 40000, 1 * S)
        assert c["state"] == state
        created = e.stats()["conns_created"]
        out = e.process([P.tcp("S")], 2 * S)
        assert len(out) == 1
        c2 = entry(e, 40000, 2 * S)
        assert c2["state"] == "SYN_RECV"
        got[state] = e.stats()["conns_created"] > created
        if not persist:
            assert (c2["raddr"] != c["raddr"]) == got[state]
    assert got == expect, (mode, persist)


# -- -o one-packet scheduling (issue item 15) ------------------------------------------------
def test_ops_schedules_every_datagram_and_keeps_no_entry():
    st = [s for s in CASES["ops"]["steps"] if s["step"].startswith("udp datagram")]
    kernel_rs = [rs_of(s) for s in st]
    assert all(s["conns"] == [] for s in st)
    assert kernel_rs[0] != kernel_rs[1] and kernel_rs[0::2] == [kernel_rs[0]] * 2
    e = engine("nat", proto=17, vport=53, rport=5353, ndest=2, sched=alternating())
    e.set_service(1, 17, P.VIP, 53, ops=True)
    # one batch of four datagrams of one flow, then four batches of one
    out = e.process([P.udp(sport=4001)] * 4, 1 * S)
    assert [o[1] for o in out] == [10, 11, 10, 11] and e.conns() == []
    out = [e.process([P.udp(sport=4001)], 2 * S)[0][1] for _ in range(4)]
    assert out == [10, 11, 10, 11] and e.conn_count() == 0
    assert e.dest_stats(1)["conns"] == 4 and e.dest_stats(1)["inactconns"] == 0
    # the server's answer finds no entry: the kernel forwarded it untranslated
    kr = steps("ops")["RS reply to 4001"]
    assert kr["to_client"][0]["src"] == "10.0.2.2"
    v = e.process_verdicts([P.reply_udp(cport=4001)], 3 * S)
    assert v[0][0] == "pass"


def test_ops_with_persistence_follows_the_template():
    st = [s for s in CASES["ops"]["steps"] if s["step"].startswith("udp -o -p")]
    assert len({rs_of(s) for s in st}) == 1
    assert all([c["source"] for c in s["conns"]] == ["10.0.1.2:0"] for s in st)
    e = engine("nat", proto=17, vport=53, rport=5353, ndest=2, sched=alternating())
    e.set_service(1, 17, P.VIP, 53, persist_timeout=60, ops=True)
    out = [e.process([P.udp(sport=4003)], (1 + i) * S)[0][1] for i in range(3)]
    assert out == [10, 10, 10]
    assert [c["template"] for c in e.conns()] == [True]


def test_ops_is_ignored_for_tcp_which_ipvsadm_refuses():
    assert KERNEL["tcp_ops_add"]["rc"] != 0
    assert "only for UDP" in KERNEL["tcp_ops_add"]["stderr"]
    e = engine("dr", ndest=2, sched=alternating())
    e.set_service(1, 6, P.VIP, P.VPORT, ops=True)
    out = e.process([P.tcp("S"), P.tcp("A")], 1 * S)
    assert [o[1] for o in out] == [10, 10] and len(e.conns()) == 1


# -- sloppy_tcp ---------------------------------------------------------------------------------
def test_sloppy_tcp_as_6_1():
    k = steps("sloppy_tcp")
    assert not forwarded(k["ACK without conn, sloppy_tcp=0"])
    ks = k["ACK without conn, sloppy_tcp=1"]
    assert forwarded(ks) and [c["state"] for c in ks["conns"]] == ["ESTABLISHED"]
    assert not forwarded(k["RST without conn, sloppy_tcp=1"])
    assert len(k["RST without conn, sloppy_tcp=1"]["conns"]) == 1
    e = engine("nat", rport=8080)
    assert e.process_verdicts([P.tcp("A", sport=5001)], 1 * S)[0][:2] == ("pass",
                                                                          "tcp_not_syn")
    e.set_sysctl("sloppy_tcp", 1)
    assert tx(e.process_verdicts([P.tcp("A", sport=5002)], 1 * S))
    assert entry(e, 5002, 1 * S)["state"] == "ESTABLISHED"
    assert e.process_verdicts([P.tcp("R", sport=5003)], 1 * S)[0][0] == "pass"
    assert entry(e, 5003, 1 * S) is None


# -- the flood defences' modes and secure_tcp's table --------------------------------------------
def test_automatic_defences_read_2_while_in_force():
    assert KERNEL["auto_modes_low_memory"]["after_2s"] == {
        "drop_entry": "2", "drop_packet": "2", "secure_tcp": "2"}
    e = engine("dr", capacity=64)
    for n in ("drop_entry", "drop_packet", "secure_tcp"):
        e.set_sysctl(n, 1)
    e.set_sysctl("amemthresh", 100)                  # more than the table: always short
    assert {n: e.sysctls()[n] for n in ("drop_entry", "drop_packet", "secure_tcp")} == {
        n: int(v) for n, v in KERNEL["auto_modes_low_memory"]["after_2s"].items()}


def test_secure_tcp_states_as_6_1():
    k = CASES["secure_tcp_active"]["steps"]
    want = [(c["state"], expire_s(c["expire"])) for s in k for c in s["conns"]
            if c["virtual"].endswith(":88")]
    e = engine("nat", rport=8080)
    e.set_sysctl("secure_tcp", 3)
    got = []
    for f in (P.tcp("S"), P.tcp("A"), P.reply_tcp("SA"), P.tcp("A")):
        e.process([f], 1 * S)
        c = entry(e, 40000, 1 * S)
        got.append((c["state"], c["expires"]))
    # -Lnc rounds down the second it is in: 60 s shows as 00:59
    assert [(s, x + 1) for s, x in want[:4]] == got
    kd = [c["state"] for s in k for c in s["conns"] if c["virtual"].endswith(":89")]
    e = engine("dr")
    e.set_sysctl("secure_tcp", 3)
    seen = []
    for f in (P.tcp("S"), P.tcp("A")):
        e.process([f], 1 * S)
        seen.append(entry(e, 40000, 1 * S)["state"])
    assert seen == [kd[0], kd[-1]] == ["SYNACK", "ESTABLISHED"]
    assert KERNEL["secure_tcp_timeouts"].split()[-3:] == ["900", "120", "300"]


def test_drop_entry_drops_embryos_and_spares_established_as_6_1():
    st = CASES["drop_entry_always"]["steps"]
    counts = [(sum(c["state"] == "SYN_RECV" for c in s["conns"]),
               sum(c["state"] == "ESTABLISHED" for c in s["conns"]))
              for s in st if s["step"].startswith(("before", "drop_entry=3"))]
    assert counts[-1][0] < counts[0][0] and {c[1] for c in counts} == {4}
    e = engine("nat", rport=8080, capacity=512)
    e.process([P.tcp("S", sport=8001 + i) for i in range(400)], 1 * S)
    for i in range(4):
        e.process([P.tcp("S", sport=9101 + i), P.reply_tcp("SA", cport=9101 + i),
                   P.tcp("A", sport=9101 + i)], 1 * S)
    e.set_sysctl("drop_entry", 3)
    for t in range(2, 12):
        e.process([P.udp(sport=9)], t * S)            # a batch a second runs the defence
    states = [c["state"] for c in e.conns()]
    assert states.count("ESTABLISHED") == 4
    assert states.count("SYN_RECV") < 400 and e.stats()["drop_entry"] == 400 - states.count(
        "SYN_RECV")
