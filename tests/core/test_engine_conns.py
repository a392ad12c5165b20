"""Connection entries: TCP states and active/inactive counts against hand-worked sequences,
timeouts with explicit timestamps, expiry, persistence templates, quiescing, overload
hysteresis, table full, deleted dests and the Python scheduler callback."""
import pytest

import fastlvs.engine._core as core
from tests.core import packets as P
from tests.core.helpers import S, engine


def states(e):
    return sorted((c["state"], c["template"]) for c in e.conns())


def counts(e, d=1):
    s = e.dest_stats(d)
    return s["activeconns"], s["inactconns"], s["persistconns"]


def test_dr_tcp_sequence_input_only_table():
    e = engine("dr")
    e.process([P.tcp("S")], 1 * S)
    assert states(e) == [("SYN_RECV", False)] and counts(e) == (1, 0, 0)
    assert e.conns()[0]["expires"] == 60
    e.process([P.tcp("A")], 2 * S)
    assert states(e) == [("ESTABLISHED", False)] and counts(e) == (1, 0, 0)
    assert e.conns(2 * S)[0]["expires"] == 900
    e.process([P.tcp("FA")], 3 * S)          # input-only: ES -fin-> FIN_WAIT, inactive
    assert states(e) == [("FIN_WAIT", False)] and counts(e) == (0, 1, 0)
    e.process([P.tcp("A")], 4 * S)
    assert states(e) == [("FIN_WAIT", False)]
    assert e.run_timers(4 * S + 119 * S) == 0
    assert e.run_timers(4 * S + 120 * S) == 1
    assert counts(e) == (0, 0, 0) and e.conn_count() == 0


def test_rst_closes():
    e = engine("dr")
    e.process([P.tcp("S"), P.tcp("A"), P.tcp("R")], 1 * S)
    assert states(e) == [("CLOSE", False)] and counts(e) == (0, 1, 0)
    assert e.conns()[0]["expires"] == 10


def test_nat_sequence_with_output_table():
    e = engine("nat", rport=8080)
    e.process([P.tcp("S")], 1 * S)
    assert states(e) == [("SYN_RECV", False)] and counts(e) == (1, 0, 0)
    e.process([P.reply_tcp("SA", rport=8080)], 2 * S)
    assert states(e) == [("SYN_RECV", False)]
    e.process([P.tcp("A")], 3 * S)
    assert states(e) == [("ESTABLISHED", False)]
    e.process([P.tcp("FA")], 4 * S)          # input table: ES -fin-> CLOSE_WAIT
    assert states(e) == [("CLOSE_WAIT", False)] and counts(e) == (0, 1, 0)
    e.process([P.reply_tcp("FA", rport=8080)], 5 * S)   # output: CW -fin-> TIME_WAIT
    assert states(e) == [("TIME_WAIT", False)]


def test_syn_on_time_wait_reschedules():
    calls = []
    e = engine("nat", rport=8080, sched=lambda s, f: calls.append(len(f)) or [1] * len(f))
    e.process([P.tcp("S"), P.tcp("A"), P.tcp("FA")], 1 * S)
    e.process([P.reply_tcp("FA", rport=8080)], 2 * S)
    assert states(e) == [("TIME_WAIT", False)]
    e.process([P.tcp("S")], 3 * S)
    assert states(e) == [("SYN_RECV", False)] and calls == [1, 1]
    assert e.dest_stats(1)["conns"] == 2


def test_udp_is_inactive_and_times_out():
    e = engine("dr", proto=17, vport=53)
    e.process([P.udp()], 1 * S)
    assert states(e) == [("UDP", False)] and counts(e) == (0, 1, 0)
    e.set_timeouts(udp=30)
    e.process([P.udp()], 2 * S)
    assert e.conns(2 * S)[0]["expires"] == 30
    # lazy expiry: a packet after the timeout opens a new conn
    e.process([P.udp()], 40 * S)
    assert e.dest_stats(1)["conns"] == 2 and e.conn_count() == 1


def test_established_timeout_change_applies_on_next_transition():
    e = engine("dr")
    e.set_timeouts(tcp=100, tcpfin=50)
    e.process([P.tcp("S"), P.tcp("A")], 1 * S)
    assert e.conns(1 * S)[0]["expires"] == 100
    assert e.get_timeouts() == (100, 50, 300)


def test_expired_syn_recv_not_syn_is_passed():
    e = engine("dr")
    e.process([P.tcp("S")], 1 * S)
    v = e.process_verdicts([P.tcp("A")], 62 * S)
    assert v[0][:2] == ("pass", "tcp_not_syn")
    assert e.conn_count() == 0 and counts(e) == (0, 0, 0)


def test_persistence_template_pins_client_network():
    choice = iter([1, 2, 3, 1, 2, 3])
    e = engine("dr", ndest=3, persist=300, netmask=24,
               sched=lambda s, f: [next(choice) for _ in f])
    out = e.process([P.tcp("S", src="198.51.100.7", sport=1000)], 1 * S)
    out += e.process([P.tcp("S", src="198.51.100.8", sport=2000)], 2 * S)
    out += e.process([P.tcp("S", src="198.51.101.9", sport=3000)], 3 * S)
    assert [o[1] for o in out] == [10, 10, 11]
    tm = [c for c in e.conns() if c["template"]]
    assert sorted((c["caddr"], c["cport"], c["raddr"]) for c in tm) == [
        ("198.51.100.0", 0, P.RS[0]), ("198.51.101.0", 0, P.RS[1])]
    assert counts(e, 1) == (2, 0, 1) and counts(e, 2) == (1, 0, 1)
    # the template outlives its timeout while it controls conns, then expires
    e.process([P.tcp("A", src="198.51.100.7", sport=1000)], 4 * S)   # ES: 900 s
    e.run_timers(400 * S)
    assert counts(e, 1)[2] == 1
    e.run_timers(2000 * S)
    e.run_timers(2400 * S)
    assert counts(e, 1) == (0, 0, 0) and e.conn_count() == 0


def test_persistence_uses_quiescent_dest_but_not_deleted():
    e = engine("dr", ndest=2, persist=300, sched=lambda s, f: [1] * len(f))
    e.process([P.tcp("S", sport=1)], 1 * S)
    e.set_dest(1, 1, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10, weight=0)
    e.set_scheduler_callback(lambda s, f: [2] * len(f))
    out = e.process([P.tcp("S", sport=2)], 2 * S)
    assert out[0][1] == 10          # expire_quiescent_template = 0: still the old dest
    e.del_dest(1)
    out = e.process([P.tcp("S", sport=3)], 3 * S)
    assert out[0][1] == 11          # template invalid: rescheduled, new template
    v = e.process_verdicts([P.tcp("A", sport=1)], 4 * S)
    assert v[0][:2] == ("drop", "dest_unavailable")   # a deleted dest's conns: dropped (6.1)


def test_expire_quiescent_template_reschedules_persistent_clients():
    e = engine("dr", ndest=2, persist=300, sched=lambda s, f: [1] * len(f))
    e.set_sysctl("expire_quiescent_template", 1)
    e.process([P.tcp("S", sport=1)], 1 * S)
    e.set_dest(1, 1, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10, weight=0)
    e.set_scheduler_callback(lambda s, f: [2] * len(f))
    out = e.process([P.tcp("S", sport=2)], 2 * S)
    assert out[0][1] == 11          # the template of a weight-0 dest is not followed
    out = e.process([P.tcp("A", sport=1)], 3 * S)
    assert out[0][1] == 10          # its existing conns still flow


def test_deleted_dest_id_reserved_while_referenced():
    e = engine("dr", ndest=2)
    e.process([P.tcp("S")], 1 * S)
    e.del_dest(1)
    with pytest.raises(ValueError):
        e.set_dest(1, 1, "192.0.2.99", 80, "dr", P.RS_MAC[0])
    v = e.process_verdicts([P.tcp("S", sport=5)], 2 * S)    # callback says 1: gone
    assert v[0][:2] == ("drop", "no_dest")
    e.set_dest(1, 1, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10)   # back from the trash
    assert e.dest_stats(1)["inactconns"] + e.dest_stats(1)["activeconns"] == 1
    e.del_dest(1)
    e.run_timers(100 * S)
    e.set_dest(1, 1, "192.0.2.99", 80, "dr", P.RS_MAC[0])   # free again


def test_quiescing_in_c_hash_path():
    e = engine("dr", ndest=2)
    e.set_hash_table(1, [1] * 256, "sh", 0)
    e.process([P.tcp("S", sport=10)], 1 * S)
    e.set_dest(1, 1, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10, weight=0)
    v = e.process_verdicts([P.tcp("S", sport=11), P.tcp("A", sport=10)], 2 * S)
    assert v[0][:2] == ("drop", "no_dest") and v[1][0] == "tx"
    e.set_hash_table(1, [1, 2] * 128, "sh", 1)           # fallback finds dest 2
    out = e.process([P.tcp("S", sport=12, src="198.51.100.1")], 3 * S)
    assert out[0][1] == 11


def test_overload_hysteresis():
    e = engine("dr", proto=17, vport=53, u_threshold=4)
    e.set_timeouts(udp=10)
    e.process([P.udp(sport=i) for i in range(4)], 1 * S)
    assert e.dest_stats(1)["overloaded"]
    e.process([P.udp(sport=0)], 8 * S)         # refresh one conn; the others expire
    e.run_timers(15 * S)
    assert e.dest_stats(1)["inactconns"] == 1 and not e.dest_stats(1)["overloaded"]
    e.process([P.udp(sport=i) for i in range(4)], 251 * S)
    assert e.dest_stats(1)["overloaded"]
    e.set_dest(1, 1, P.RS[0], 53, "dr", P.RS_MAC[0], ifindex=10, u_threshold=8)
    assert not e.dest_stats(1)["overloaded"]   # raised -x clears the flag


def test_table_full_then_reuse_of_expired():
    e = engine("dr", proto=17, vport=53, capacity=4)
    v = e.process_verdicts([P.udp(sport=i) for i in range(5)], 1 * S)
    assert [x[0] for x in v] == ["tx"] * 4 + ["drop"] and v[4][1] == "table_full"
    out = e.process([P.udp(sport=9)], 400 * S)
    assert len(out) == 1 and e.conn_count() == 1


def test_idle_conns_expire_under_other_traffic_within_a_second_of_frame_time():
    # The sweep after each batch walks only the entries ever used, paced to once per second
    # of frame time and at most 64 per batch; a million-entry table must not delay it.
    e = engine("dr", proto=17, vport=53, capacity=1 << 20)
    e.process([P.udp(sport=i) for i in range(200)], 1 * S)
    assert e.conn_count() == 200
    t = 1 * S + 300 * S                       # every one of them expired now, none looked up
    e.process([P.udp(sport=1000)], t)
    assert 200 - 64 <= e.conn_count() - 1 < 200       # one batch inspects at most 64
    for k in range(1, 12):
        e.process([P.udp(sport=1000)], t + k * S // 10)
    assert e.conn_count() == 1
    assert e.stats()["conns_expired"] == 200


def test_callback_gets_each_new_flow_once_per_batch():
    seen = []

    def cb(svcs, flows):
        seen.append((list(svcs), list(flows)))
        return [1] * len(flows)

    e = engine("dr", sched=cb)
    out = e.process([P.tcp("S"), P.tcp("S"), P.tcp("S", sport=7)], 1 * S)
    assert len(out) == 3
    assert len(seen) == 1 and seen[0][0] == [1, 1]
    af, saddr, sport, daddr, dport, proto = seen[0][1][0]
    from fastlvs.schedulers import Flow
    f = Flow.from_ints(af, saddr, sport, daddr, dport, proto)
    assert (f.saddr, f.sport, f.daddr, f.dport, f.protocol) == (P.CLIENT, 40000, P.VIP, 80, "tcp")


def test_callback_error_is_reraised_after_the_batch():
    def cb(svcs, flows):
        raise KeyError("boom")

    e = engine("dr", sched=cb)
    with pytest.raises(KeyError):
        e.process([P.tcp("S", sport=2), P.tcp("S", sport=3)], 1 * S)
    assert e.stats()["callback_error"] == 2 and e.conn_count() == 0
    e.set_scheduler_callback(lambda s, f: [1] * len(f))
    assert len(e.process([P.tcp("S", sport=2)], 2 * S)) == 1


def test_callback_no_dest():
    e = engine("dr", sched=lambda s, f: [0] * len(f))
    v = e.process_verdicts([P.tcp("S")], 1 * S)
    assert v[0][:2] == ("drop", "no_dest") and e.stats()["no_dest"] == 1


def test_deleted_service_conns_dropped_until_they_expire():
    # -D unlinks the service's dests: their conns are dropped as after -d (IPVS 6.1)
    e = engine("dr")
    e.process([P.tcp("S")], 1 * S)
    e.del_service(1)
    v = e.process_verdicts([P.tcp("A"), P.tcp("S", sport=9)], 2 * S)
    assert v[0][:2] == ("drop", "dest_unavailable") and v[1][:2] == ("pass", "no_service")
    assert e.conn_count() == 1


def test_entry_size_and_config_checks():
    e = core.Engine(capacity=10)
    assert e.entry_size <= 56
    with pytest.raises(ValueError):
        e.set_service(0, 6, "10.0.0.1", 80)
    with pytest.raises(ValueError):
        e.set_dest(1, 5, "10.0.0.1", 80)
    e.del_dest(77)
    e.del_service(77)
