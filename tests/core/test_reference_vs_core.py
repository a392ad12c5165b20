"""Differential tests: the extension (`_core.Engine`) against the pure-Python reference
(`engine/reference.py`). Both get the same configuration calls and the same frames at the same
times; every answer (verdicts, output bytes and interfaces, errors), and after each step the
global counters, per-service and per-dest stats, dest counters and the conn listing must be
identical. The packet cases of packets.py, whole connections per forwarding method, NAT
replies, ICMP errors about conns, persistence, hash schedulers, timeouts, batches, TTL,
partial checksums, the client-MAC table (the reference is given the extension's hsiphash
key, so both place clients in the same sets), and the fuzzer's frames."""
from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP

import fastlvs.engine._core as core
import fastlvs.engine._testing as testing
from fastlvs.engine import reference
from fastlvs.sync import protocol as sync_protocol
from tests.core import packets as P
from tests.core.helpers import S, checksums_ok
from tests.fuzz import fuzz_engine

DEST_IDS = range(0, 70)          # past the 64 dest slots allocated at start
SVC_IDS = range(0, 6)


def same_keys(c, r):
    """The reference gets the extension's random keys: the same client-MAC table sets, the
    same per-source shares of the reassembly area, the same drop_entry picks."""
    r.neigh.key = testing.neigh_key(c)
    r.seed = testing.engine_seed(c)
    r.rnd = testing.engine_rnd(c)


def _call(fn, args, kw):
    try:
        return fn(*args, **kw), None
    except Exception as exc:    # compared between the engines
        return None, exc


def _err(exc):
    return None if exc is None else (type(exc).__name__, str(exc))


class Twin:
    """The two engines side by side: every method call goes to both and must answer alike."""

    def __init__(self, **kw):
        self.core = core.Engine(**kw)
        self.ref = reference.Engine(**kw)
        same_keys(self.core, self.ref)
        self.sent = 0

    def __getattr__(self, name):
        def both(*args, **kw):
            a, ea = _call(getattr(self.core, name), args, kw)
            b, eb = _call(getattr(self.ref, name), args, kw)
            assert _err(ea) == _err(eb), (name, args, kw)
            assert a == b, (name, args, kw)
            if ea is not None:
                raise ea
            return a
        return both

    def set_callback(self, make):
        """make() -> a scheduler callback; each engine gets its own, and both must be asked
        the same questions."""
        self.asked = {"core": [], "ref": []}
        for which, eng in (("core", self.core), ("ref", self.ref)):
            fn = make()

            def cb(svcs, flows, fn=fn, log=self.asked[which]):
                log.append((list(svcs), list(flows)))
                return fn(svcs, flows)
            eng.set_scheduler_callback(cb)

    def run(self, frames, ts):
        """Both engines' verdicts for `frames`; checks they agree and returns them."""
        a, ea = _call(self.core.process_verdicts, (frames, ts), {})
        b, eb = _call(self.ref.process_verdicts, (frames, ts), {})
        assert _err(ea) == _err(eb)
        if ea is None:
            for i, (x, y) in enumerate(zip(a, b)):
                assert x == y, (i, frames[i].hex())
            self.sent += sum(1 for v in a if v[0] == "tx")
        asked = self.__dict__.get("asked")
        if asked is not None:
            assert asked["core"] == asked["ref"]
        self.check()
        if ea is not None:
            raise ea
        return a

    def state(self, eng, now=None):
        def get(fn, *args):
            try:
                return fn(*args)
            except KeyError:
                return "KeyError"
        return {"stats": eng.stats(), "conn_count": eng.conn_count(),
                "frag": eng.frag_stats(), "sysctls": eng.sysctls(),
                "defense": eng.defense_state(), "memory": eng.memory_bytes(),
                "timeouts": eng.get_timeouts(), "conns": eng.conns(now),
                "svcs": [get(eng.service_stats, s) for s in SVC_IDS],
                "dests": [(get(eng.dest_stats, d), get(eng.dest_counters, d))
                          for d in DEST_IDS]}

    def check(self, now=None):
        a, b = self.state(self.core, now), self.state(self.ref, now)
        for k in a:
            assert a[k] == b[k], k


def topology(t: Twin, fwd="dr", persist=0, netmask=None, ndest=3, **dest_kw):
    """Service 1 = TCP VIP:80, 2 = UDP VIP:53, dests 1..ndest / 11..10+ndest (RS[i]); NAT
    dests listen on other ports so that both port rewrites are exercised."""
    t.set_service(1, 6, P.VIP, 80, persist_timeout=persist, netmask=netmask)
    t.set_service(2, 17, P.VIP, 53, persist_timeout=persist, netmask=netmask)
    rport = (8080, 5353) if fwd == "nat" else (80, 53)
    for i in range(ndest):
        t.set_dest(1 + i, 1, P.RS[i], rport[0], fwd, P.RS_MAC[i], ifindex=10 + i, **dest_kw)
        t.set_dest(11 + i, 2, P.RS[i], rport[1], fwd, P.RS_MAC[i], ifindex=10 + i, **dest_kw)
    t.set_gateway_mac(P.GW_MAC, 2)


def round_robin():
    n = [0]

    def cb(svcs, flows):
        out = []
        for s in svcs:
            n[0] += 1
            out.append((1 if s == 1 else 11) + n[0] % 3)
        return out
    return cb


def twin(fwd="dr", mtu=1500, capacity=4096, batch=64, **kw):
    t = Twin(capacity=capacity, batch=batch, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC,
             mtu=mtu)
    topology(t, fwd, **kw)
    t.set_callback(round_robin)
    return t


FWDS = ["dr", "nat", "tun"]


# -- the packet cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("case", P.CASES, ids=lambda c: c.name)
def test_packet_case(case, fwd):
    t = twin(fwd)
    t.run([case.frame], 1 * S)                  # alone: a new flow (or not ours)
    # after the flow's opening packet: a known conn
    opener = P.udp() if case.name.startswith("udp") else P.tcp("S")
    t.run([opener, case.frame], 2 * S)
    t.run([case.frame] * 3, 3 * S)              # three in one batch
    if case in P.GOOD:
        assert t.sent > 0


@pytest.mark.parametrize("fwd", FWDS)
def test_all_cases_in_one_batch(fwd):
    t = twin(fwd)
    t.run([c.frame for c in P.CASES] * 2, 5 * S)
    t.run([c.frame for c in P.CASES], 6 * S)
    assert t.sent > 0


# -- whole connections --------------------------------------------------------------------------

def reply(flags, cport=40000, rs=0, payload=b""):
    return P.reply_tcp(flags, rs=P.RS[rs], rport=8080, cport=cport, payload=payload)


@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("split", [False, True], ids=["one_per_batch", "one_batch"])
def test_tcp_connection_lifecycle(fwd, split):
    """Handshake, data, close (with the RS's answers under NAT), each client on its own
    port; the clock moves through every state's timeout and the sweep."""
    t = twin(fwd)
    t.set_sweep_budget(8)
    steps = []
    for k in range(3):
        cport = 40000 + k
        steps += [P.tcp("S", sport=cport)]
        if fwd == "nat":
            steps += [reply("SA", cport, rs=(k + 1) % 3)]
        steps += [P.tcp("A", sport=cport), P.tcp("PA", sport=cport, payload=b"x" * 300)]
        if fwd == "nat":
            steps += [reply("PA", cport, rs=(k + 1) % 3, payload=b"y" * 500),
                      reply("FA", cport, rs=(k + 1) % 3)]
        steps += [P.tcp("FA", sport=cport), P.tcp("A", sport=cport)]
    if split:
        t.run(steps, 10 * S)
    else:
        for i, f in enumerate(steps):
            t.run([f], (10 + i) * S)
    for now in (20, 75, 140, 200, 1000, 2000):
        t.check(now * S)
        t.run_timers(now * S, 5)
        t.check()
    t.run([P.tcp("S", sport=40000)], 3000 * S)
    assert t.sent >= len(steps) - (9 if fwd == "nat" else 0)


@pytest.mark.parametrize("fwd", FWDS)
def test_udp_flows_and_nat_replies(fwd):
    t = twin(fwd)
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    for k in range(5):
        t.run([P.udp(sport=1000 + k), P.udp(sport=1000 + k, payload=b"z" * 99)], (k + 1) * S)
        t.run([P.reply_udp(rs=P.RS[(k + 1) % 3], cport=1000 + k)], (k + 2) * S)
    t.run([P.reply_udp(rs=P.RS[2], cport=9999)], 10 * S)       # no conn: passed
    t.set_timeouts(udp=30)
    t.run([P.udp(sport=1000)], 40 * S)
    t.run([P.udp(sport=1001)], 400 * S)
    t.run_timers(500 * S)
    t.check()


def test_nat_reply_without_route_and_learned_macs():
    t = twin("nat")
    t.set_gateway_mac(None)
    t.run([P.tcp("S", sport=1)], 1 * S)
    t.run([reply("SA", 1, rs=1)], 1 * S)                # rr chose RS[1]; no route back
    t.set_learn_ifindex(7)
    clients = ["198.51.100.%d" % i for i in range(1, 40)]
    t.run([P.tcp("S", sport=2, src=c) for c in clients], 2 * S)
    t.run([P.reply_tcp("SA", rs=P.RS[j % 3], rport=8080, client=c, cport=2)
           for j, c in enumerate(clients)], 3 * S)
    assert t.core.stats()["no_route"] == 1


def test_time_wait_syn_reopens_and_rst():
    t = twin("nat")
    t.set_timeouts(tcp=50, tcpfin=20)
    seq = [P.tcp("S"), reply("SA", rs=2), P.tcp("A"), P.tcp("FA"), reply("FA", rs=2),
           P.tcp("A"), P.tcp("S"), P.tcp("R"), P.tcp("SR"), P.tcp("S", sport=5),
           P.tcp("", sport=5)]
    for i, f in enumerate(seq):
        t.run([f], (1 + i) * S)
    t.check(30 * S)


# -- persistence, hash schedulers, overload -----------------------------------------------------

@pytest.mark.parametrize("fwd", FWDS)
def test_persistence_templates(fwd):
    t = twin(fwd, persist=60, netmask=24)
    clients = ["198.51.100.%d" % i for i in (1, 2, 3)] + ["198.51.101.%d" % i for i in (1, 2)]
    # several clients of one /24 in one batch: the first one's template wins
    t.run([P.tcp("S", src=c, sport=3000) for c in clients], 1 * S)
    t.run([P.udp(src=c, sport=3000) for c in clients], 2 * S)
    t.run([P.tcp("S", src=c, sport=3001) for c in clients], 30 * S)
    t.del_dest(1)                       # its templates become unusable
    t.run([P.tcp("S", src=c, sport=3002) for c in clients], 40 * S)
    t.set_dest(1, 1, P.RS[0], 8080 if fwd == "nat" else 80, fwd, P.RS_MAC[0], ifindex=10)
    t.run([P.tcp("S", src=c, sport=3003) for c in clients], 50 * S)
    for now in (70, 100, 200, 1000):
        t.run_timers(now * S)
        t.check((now + 30) * S)
    t.run([P.tcp("S", src=c, sport=3004) for c in clients], 1200 * S)


@pytest.mark.parametrize("kind", ["sh", "dh", "mh"])
@pytest.mark.parametrize("flags", [0, 1, 2, 3])
def test_hash_schedulers(kind, flags):
    t = twin("dr")
    table = [1, 2, 3, 0, 2] * 13 + [1]
    t.set_hash_table(1, table, kind, flags)
    t.set_hash_table(2, [11, 12, 13] * 20 + [11], kind, flags)
    frames = [P.tcp("S", src="198.51.100.%d" % (i % 50 + 1), sport=2000 + i)
              for i in range(120)]
    frames += [P.udp(src="198.51.100.%d" % (i + 1), sport=i + 1) for i in range(30)]
    t.run(frames, 1 * S)
    t.set_dest(2, 1, P.RS[1], 80, "dr", P.RS_MAC[1], ifindex=11, weight=0)
    t.set_dest(3, 1, P.RS[2], 80, "dr", P.RS_MAC[2], ifindex=12, u_threshold=2)
    t.run([P.tcp("S", src="198.51.100.%d" % (i + 1), sport=3000 + i) for i in range(80)],
          2 * S)
    t.del_dest(1)
    t.run([P.tcp("S", src="198.51.100.%d" % (i + 1), sport=4000 + i) for i in range(80)],
          3 * S)
    t.set_hash_table(1, None, kind)
    t.run([P.tcp("S", sport=5000)], 4 * S)
    assert t.sent > 0


@pytest.mark.parametrize("sched", [0, "sh", "mh"])
def test_service_edit_and_its_hash_table(sched):
    """set_service after set_hash_table (as an edit does): a hash kind keeps the table,
    sched 0 hands new flows back to the Python scheduler."""
    t = twin("dr")
    t.set_hash_table(1, [1, 2, 3] * 30, "sh", 0)
    t.set_service(1, 6, P.VIP, 80, sched=sched)
    t.run([P.tcp("S", src="198.51.100.%d" % (i + 1)) for i in range(40)], 1 * S)
    assert len(t.asked["core"]) == (1 if sched == 0 else 0)


def test_overload_thresholds():
    t = twin("dr", u_threshold=4, l_threshold=2)
    flows = [P.tcp("S", sport=6000 + i) for i in range(30)]
    t.run(flows, 1 * S)
    t.run([P.tcp("R", sport=6000 + i) for i in range(12)], 2 * S)
    t.set_dest(2, 1, P.RS[1], 80, "dr", P.RS_MAC[1], ifindex=11, u_threshold=8)
    t.set_dest(3, 1, P.RS[2], 80, "dr", P.RS_MAC[2], ifindex=12, u_threshold=0)
    t.run([P.tcp("S", sport=7000 + i) for i in range(10)], 3 * S)
    t.run_timers(100 * S)
    t.check()


# -- TUN and the MTU ----------------------------------------------------------------------------

@pytest.mark.parametrize("df", [True, False])
@pytest.mark.parametrize("tos", [0, 0xFF])
def test_tun_over_mtu(df, tos):
    t = twin("tun", mtu=600)
    big = P.tcp("S", payload=b"b" * 700, df=df, tos=tos, ttl=9)
    out = t.run([big, P.tcp("S", sport=2, payload=b"s" * 100, df=df, tos=tos), big], 1 * S)
    for v in out:
        if v[0] == "tx":
            # too big without DF: the tunnel packet in fragments, checked put back together
            assert checksums_ok(_joined(v[3]) if isinstance(v[3], list) else v[3])
    t.set_local(mtu=1500, local_ip="192.0.2.2")
    t.run([big], 2 * S)


# -- tables, timers, batches, errors ------------------------------------------------------------

@pytest.mark.parametrize("budget", [0, 1, 3, 64])
def test_small_table_and_sweep(budget):
    t = twin("nat", capacity=8, persist=0)
    t.set_sweep_budget(budget)
    for k in range(12):
        frames = [P.udp(sport=100 + (k * 3 + j) % 11) for j in range(4)]
        t.run(frames, (1 + k * 70) * S)
    t.run_timers(2000 * S, 2)
    t.run_timers(budget=3)
    t.run_timers()


def test_small_table_persistence_full():
    t = twin("dr", capacity=3, persist=100, netmask=32)
    t.run([P.tcp("S", src="198.51.100.%d" % (i + 1)) for i in range(4)], 1 * S)
    t.run([P.tcp("S", src="198.51.100.1", sport=7)], 2 * S)


def test_batch_of_one_and_callback_answers():
    """Batches of one frame, and a scheduler answering none, None, an unknown id, a dest of
    another service, then good ones."""
    t = Twin(capacity=64, batch=1, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    topology(t, "nat")
    t.set_callback(lambda: _replay([[0], [None], [99], [12], [2], [1], [3]]))
    t.run([P.tcp("S", sport=i) for i in range(9)], 1 * S)
    assert t.sent > 0


def _replay(answers):
    it = iter(answers)

    def cb(svcs, flows):
        return next(it, [1] * len(flows))
    return cb


def test_followers_of_a_flow_the_scheduler_refused():
    """Several frames of one new flow in a batch, the scheduler answering 0 for it: the
    leader is dropped as no_dest, its followers as the extension decides for each protocol."""
    t = twin("nat")
    t.set_callback(lambda: _replay([[0, 0], [2, 0]]))
    t.run([P.tcp("S", sport=9), P.udp(sport=9), P.tcp("S", sport=9), P.tcp("A", sport=9),
           P.udp(sport=9)], 1 * S)
    t.run([P.tcp("S", sport=9), P.udp(sport=9), P.tcp("A", sport=9), P.udp(sport=9)], 2 * S)


def _from_mac(frame, mac):
    return frame[:6] + bytes.fromhex(mac.replace(":", "")) + frame[12:]


def test_learning_takes_the_first_mac_of_new_nat_conns_only():
    """With learning on, a DR conn teaches nothing; the first NAT conn of a client does, and
    a later MAC of that client does not replace it."""
    t = twin("dr")
    t.set_gateway_mac(None)
    t.set_learn_ifindex(4)
    t.run([_from_mac(P.tcp("S", sport=1), "02:00:00:00:0b:01")], 1 * S)
    for i in range(3):
        t.set_dest(1 + i, 1, P.RS[i], 80, "nat", P.RS_MAC[i], ifindex=10 + i)
    t.run([_from_mac(P.tcp("S", sport=2), "02:00:00:00:0b:02")], 2 * S)
    t.run([_from_mac(P.tcp("S", sport=3), "02:00:00:00:0b:03")], 3 * S)
    out = t.run([P.reply_tcp("SA", rs=P.RS[i], rport=80, cport=c)
                 for c in (2, 3) for i in range(3)], 4 * S)
    sent = [v for v in out if v[0] == "tx"]
    assert len(sent) == 2 and all(v[3][:6] == bytes.fromhex("02000000 0b02") for v in sent)


@pytest.mark.parametrize("bad", ["raise", "short", "negative", "none"])
def test_callback_errors_are_raised_after_the_batch(bad):
    t = twin("dr")

    def make():
        def cb(svcs, flows):
            if bad == "raise":
                raise LookupError("scheduler broke")
            if bad == "short":
                return [1] * (len(flows) - 1)
            return [-1] * len(flows)
        return cb
    if bad == "none":
        t.core.set_scheduler_callback(None)
        t.ref.set_scheduler_callback(None)
    else:
        t.set_callback(make)
    with pytest.raises(Exception):
        t.run([P.tcp("S", sport=1), P.tcp("S", sport=1), P.tcp("S", sport=2)] + [P.udp()] * 70,
              1 * S)
    t.set_callback(round_robin)
    t.run([P.tcp("S", sport=1), P.udp()], 2 * S)


def test_config_errors_alike():
    t = twin("dr")
    bad_calls = [
        ("set_service", (0, 6, P.VIP, 80)), ("set_service", (3, 1, P.VIP, 80)),
        ("set_service", (3, 6, "::1", 80)), ("set_service", (3, 6, P.VIP, 80)),
        ("set_service", (3, 6, P.VIP, 81), {"netmask": 33}),
        ("set_dest", (1, 9, P.RS[0], 80)), ("set_dest", (0, 1, P.RS[0], 80)),
        ("set_dest", (4, 1, P.RS[0], 80, "bogus")), ("set_dest", (4, 1, P.RS[0], 80, 7)),
        ("set_dest", (4, 1, P.RS[0], 80, "dr", "02:00")),
        ("set_dest", (1, 1, P.RS[2], 99)), ("set_hash_table", (9, [1], "sh")),
        ("set_hash_table", (1, [], "sh")), ("set_hash_table", (1, [1], 7)),
        ("set_timeouts", (-1,)), ("set_local", (None, None, 40)),
    ]
    for name, args, *kw in bad_calls:
        with pytest.raises((ValueError, KeyError, TypeError)):
            getattr(t, name)(*args, **(kw[0] if kw else {}))
    for v in (0, 8, 1 << 31, 1 << 40):
        try:
            t.set_dest(v, 1, P.RS[0], 80)
        except (ValueError, OverflowError):
            pass
    t.check()
    with pytest.raises(ValueError):
        Twin(capacity=0)
    with pytest.raises(ValueError):
        Twin(batch=257)
    with pytest.raises(ValueError):
        Twin(mtu=67)
    assert t.memory_bytes() == t.core.memory_bytes()
    assert t.ref.entry_size == t.core.entry_size and t.ref.capacity == t.core.capacity


def test_deleted_dest_and_service_live_on():
    t = twin("nat")
    t.run([P.tcp("S", sport=i) for i in range(6)] + [P.udp(sport=i) for i in range(6)], 1 * S)
    t.del_dest(2)
    t.del_dest(2)
    with pytest.raises(ValueError):
        t.set_dest(2, 1, P.RS[0], 8080, "nat")       # id still referenced
    t.run([P.tcp("A", sport=i) for i in range(6)] + [reply("A", i, rs=1) for i in range(6)],
          2 * S)
    t.del_service(2)
    t.run([P.udp(sport=i) for i in range(8)], 3 * S)
    t.set_service(2, 17, P.VIP, 53)
    t.set_dest(12, 2, P.RS[1], 5353, "nat", P.RS_MAC[1], ifindex=11)     # revived
    t.run([P.udp(sport=i) for i in range(8)], 4 * S)
    t.set_service(1, 6, "203.0.113.11", 80)          # the service moves; its conns stay
    t.run([P.tcp("A", sport=i) for i in range(6)], 5 * S)
    t.run_timers(10_000 * S)
    t.set_dest(2, 1, P.RS[0], 8080, "nat")           # free again
    t.run([P.tcp("S", sport=99, dst="203.0.113.11")], 10_001 * S)


@pytest.mark.parametrize("fwd", FWDS)
def test_an_absent_vip_is_the_kernels_and_its_conns_wait(fwd):
    """set_vip_served(False): frames to that VIP:port pass (new flows and known conns alike)
    while the other service of the address and the NAT replies go on; served again, the
    known conns carry on with their dests."""
    t = twin(fwd)
    t.run([P.tcp("S", sport=i) for i in range(6)] + [P.udp(sport=i) for i in range(3)], 1 * S)
    t.set_vip_served(6, P.VIP, 80, False)
    t.set_vip_served(6, P.VIP, 80, False)           # again: no change
    replies = [reply("A", i, rs=r) for i in range(6) for r in range(3)] if fwd == "nat" else []
    verdicts = t.run([P.tcp("A", sport=i) for i in range(6)] + [P.tcp("S", sport=9)]
                     + [P.udp(sport=i) for i in range(3)] + replies, 2 * S)
    assert [v[0] for v in verdicts[:7]] == ["pass"] * 7
    assert [v[0] for v in verdicts[7:10]] == ["tx"] * 3
    t.set_vip_served(6, P.VIP, 80, True)
    verdicts = t.run([P.tcp("A", sport=i) for i in range(6)], 3 * S)
    assert [v[0] for v in verdicts] == ["tx"] * 6
    with pytest.raises(ValueError):
        t.set_vip_served(6, P.VIP, 70000, False)
    with pytest.raises(ValueError):
        t.set_vip_served(6, "::1", 80, False)       # ::/96 is no v6 address here


# -- TTL, partial checksums, the client-MAC table ----------------------------------------------

def _set_ttl(frame: bytes, ttl: int, l2=14) -> bytes:
    """The frame with its IP TTL set and its IP header checksum made right again."""
    return P._fix_ip_csum(P._patch(frame, l2 + 8, bytes([ttl])), l2)


def _icmp_type(frame: bytes):
    ip = 14
    return frame[ip + 20] if frame[ip + 9] == 1 else None


@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("ttl", [0, 1, 2, 64])
def test_ttl(fwd, ttl):
    """Requests (a new flow's first packet, a known conn's, one longer than the quote, one
    VLAN-tagged) and NAT replies at TTL 0, 1, 2, 64: decremented and forwarded, or answered
    with time exceeded (from the VIP, or the director's address for a reply)."""
    t = twin(fwd)
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    reqs = [_set_ttl(P.tcp("S", sport=1), ttl), _set_ttl(P.udp(sport=1), ttl),
            _set_ttl(P.tcp("PA", sport=1, payload=b"L" * 1200), ttl),
            _set_ttl(P.udp(sport=2, payload=b"u" * 700), ttl),
            _set_ttl(P.tcp("S", sport=3, vlan=7), ttl, l2=18)]
    out = t.run(reqs, 1 * S)
    out += t.run([_set_ttl(P.tcp("S", sport=4), 64)], 2 * S)
    replies = [_set_ttl(reply(f, c, rs=r), ttl) for c in (1, 4) for r in range(3)
               for f in ("SA", "A")]
    replies += [_set_ttl(P.reply_udp(rs=P.RS[r], cport=c), ttl) for c in (1, 2)
                for r in range(3)]
    out += t.run(replies, 3 * S)
    sent = [v[3] for v in out if v[0] == "tx"]
    assert sent and all(checksums_ok(f) for f in sent)
    untagged = [f for f in sent if f[12:14] == b"\x08\x00"]
    if ttl <= 1:
        assert any(_icmp_type(f) == 11 for f in untagged)
        assert t.core.stats()["ttl_exceeded"] > 0
    else:
        # (the flow opened at TTL 64 is forwarded at 63)
        assert all(f[22] in (ttl - 1, 63) or f[14 + 9] == 4 for f in untagged)
        assert any(f[22] == ttl - 1 for f in untagged)


def test_ttl_expired_reply_without_a_local_address():
    t = Twin(capacity=64, local_ip="", local_mac=P.LOCAL_MAC)
    same_keys(t.core, t.ref)
    topology(t, "nat")
    t.set_callback(round_robin)
    t.run([P.tcp("S", sport=1), P.tcp("S", sport=2)], 1 * S)
    out = t.run([_set_ttl(reply("SA", c, rs=r), 1) for c in (1, 2) for r in range(3)], 2 * S)
    assert any(v[:2] == ("drop", "ttl_exceeded") for v in out)


def _partial(frame: bytes, l2=14) -> bytes:
    """The frame as a sender with checksum offload hands it over: the L4 checksum field
    holds the pseudo-header sum, folded, not complemented."""
    b = bytearray(frame)
    ip = b[l2:]
    ihl = (ip[0] & 0xF) * 4
    proto = ip[9]
    if proto == 17:
        l4len = int.from_bytes(ip[ihl + 4:ihl + 6], "big")
    else:
        l4len = int.from_bytes(ip[2:4], "big") - ihl
    ps = sum(int.from_bytes(ip[i:i + 2], "big") for i in range(12, 20, 2)) + proto + l4len
    while ps >> 16:
        ps = (ps & 0xFFFF) + (ps >> 16)
    off = l2 + ihl + (16 if proto == 6 else 6)
    b[off:off + 2] = ps.to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("fwd", FWDS)
def test_partial_checksums(fwd):
    """Requests and NAT replies with partial checksums (TCP, UDP, odd lengths, a VLAN tag),
    beside complete ones and a UDP datagram without a checksum."""
    t = twin(fwd)
    frames = [_partial(P.tcp("S", sport=1, payload=b"x" * 1001)),
              _partial(P.udp(sport=1, payload=b"q" * 333)),
              _partial(P.tcp("S", sport=2, payload=b"v" * 64, vlan=12), l2=18),
              P.tcp("S", sport=3, payload=b"c" * 10), P.udp(sport=3, zero_csum=True),
              _partial(P.udp(sport=4, payload=b""))]
    out = t.run(frames, 1 * S)
    out += t.run([_partial(reply("SA", c, rs=r, payload=b"r" * 77)) for c in (1, 2, 3)
                  for r in range(3)]
                 + [_partial(P.reply_udp(rs=P.RS[r], cport=c)) for c in (1, 4) for r in range(3)],
                 2 * S)
    sent = [v[3] for v in out if v[0] == "tx"]
    assert sent and all(checksums_ok(f) for f in sent)
    assert t.core.stats()["csum_completed"] >= 4


@pytest.mark.parametrize("capacity", [1, 64, 65, 1000, 4096])
def test_neighbor_slots(capacity):
    t = Twin(capacity=capacity)
    assert t.core.neighbor_slots == t.ref.neighbor_slots


def _client_mac(k: int) -> str:
    return "02:00:00:%02x:%02x:%02x" % (k >> 16 & 0xFF, k >> 8 & 0xFF, k & 0xFF)


def _ask_and_reply(t: Twin, clients, mac_of, ts, cport=7):
    """Each client opens a UDP flow from its MAC, then every RS answers it: where the
    replies went shows what the client-MAC table holds."""
    t.run([_from_mac(P.udp(sport=cport, src=c), mac_of(c)) for c in clients], ts)
    return t.run([P.reply_udp(rs=P.RS[r], cport=cport, client=c)
                  for c in clients for r in range(3)], ts)


def _client(k: int) -> str:
    return "198.51.%d.%d" % (100 + k // 250, 1 + k % 250)


def test_many_clients_beyond_the_table():
    """320 clients through a 64-slot table in rounds (sets overflow, the oldest learned
    entries make room), then each client again from a new MAC: those still known keep
    their first MAC; kernel entries fill sets and are never pushed out by learning."""
    t = twin("nat", capacity=64)
    t.set_learn_ifindex(7)
    t.set_timeouts(udp=5)
    clients = [_client(k) for k in range(320)]
    first = {c: _client_mac(k) for k, c in enumerate(clients)}
    second = {c: _client_mac(k + 0x10000) for k, c in enumerate(clients)}
    for r in range(8):
        _ask_and_reply(t, clients[r * 40:(r + 1) * 40], first.get, (1 + r * 10) * S)
    for r in range(8):
        out = _ask_and_reply(t, clients[r * 40:(r + 1) * 40], second.get, (100 + r * 10) * S)
        assert [v for v in out if v[0] == "tx"]
    for k in range(0, 200, 3):
        t.set_neighbor(clients[k], _client_mac(k + 0x20000), 9)
    for k in range(0, 60, 9):
        t.set_neighbor(clients[k], None)
    for r in range(8):
        _ask_and_reply(t, clients[r * 40:(r + 1) * 40], first.get, (200 + r * 10) * S)
    # past the learned entries' age: all learned again, kernel entries stay
    for r in range(8):
        _ask_and_reply(t, clients[r * 40:(r + 1) * 40], second.get, (1300 + r * 10) * S)
    assert t.core.neighbor_slots == 64


def test_learned_entries_age_unless_used():
    """A learned entry used by a reply within ~900 s lives on; one left alone ages out and
    the client's next conn teaches its new MAC."""
    t = twin("nat")
    t.set_learn_ifindex(7)
    t.set_timeouts(udp=2000)
    a, b = "198.51.100.1", "198.51.100.2"
    t.run([_from_mac(P.udp(sport=1, src=c), _client_mac(i)) for i, c in enumerate((a, b))],
          1 * S)
    t.run([P.reply_udp(rs=P.RS[r], cport=1, client=a) for r in range(3)], 800 * S)
    t.run([_from_mac(P.udp(sport=2, src=c), _client_mac(9 + i)) for i, c in enumerate((a, b))],
          1000 * S)
    out = t.run([P.reply_udp(rs=P.RS[r], cport=2, client=c) for c in (a, b)
                 for r in range(3)], 1001 * S)
    macs = {v[3][:6] for v in out if v[0] == "tx"}
    assert len(macs) == 2


def test_off_link_clients_with_subnets():
    """With the learning interface's subnets set, replies to clients outside them go to the
    gateway MAC (even with a neighbour entry) and their frames teach nothing."""
    t = twin("nat")
    t.set_learn_ifindex(7)
    with pytest.raises(ValueError):
        t.set_client_subnets(["10.%d.0.0/16" % i for i in range(17)])
    with pytest.raises(ValueError):
        t.set_client_subnets(["198.51.100.0/33"])
    t.set_client_subnets(["198.51.100.0/24", "192.0.2.128/25"])
    on = ["198.51.100.%d" % i for i in range(1, 6)] + ["192.0.2.200"]
    off = ["100.64.0.%d" % i for i in range(1, 6)] + ["192.0.2.100"]
    t.set_neighbor(off[0], "02:00:00:00:0e:01", 4)
    t.set_neighbor(on[0], "02:00:00:00:0e:02", 4)
    mac = {c: _client_mac(k) for k, c in enumerate(on + off)}
    out = _ask_and_reply(t, on + off, mac.get, 1 * S)
    gw = bytes.fromhex(P.GW_MAC.replace(":", ""))
    sent = [v for v in out if v[0] == "tx"]
    assert sum(1 for v in sent if v[3][:6] == gw) == len(off)
    t.set_client_subnets([])
    _ask_and_reply(t, on + off, mac.get, 2 * S, cport=8)


def test_gateway_change():
    """Entries learned from frames that came through the gateway follow its new MAC (and
    interface); entries learned from clients and kernel entries stay."""
    t = twin("nat")
    t.set_learn_ifindex(7)
    clients = ["198.51.100.%d" % i for i in range(1, 9)]
    via_gw = set(clients[::2])
    t.set_neighbor(clients[1], P.GW_MAC, 5)              # a kernel entry with that MAC too
    mac = {c: (P.GW_MAC if c in via_gw else _client_mac(k)) for k, c in enumerate(clients)}
    _ask_and_reply(t, clients, mac.get, 1 * S)
    t.set_gateway_mac("02:00:00:00:00:fd", 6)
    out = _ask_and_reply(t, clients, mac.get, 2 * S, cport=8)
    new_gw = bytes.fromhex("0200000000fd")
    assert sum(1 for v in out if v[0] == "tx" and v[3][:6] == new_gw) == len(via_gw)
    t.set_gateway_mac(None)
    t.set_gateway_mac(P.GW_MAC, 2)                      # from none: nothing to follow
    _ask_and_reply(t, clients, mac.get, 3 * S, cport=9)
    t.set_gateway_mac(P.GW_MAC, 3)                      # the same MAC: nothing to follow
    _ask_and_reply(t, clients, mac.get, 4 * S, cport=10)


# -- fragments ----------------------------------------------------------------------------------

def _cut(frame: bytes, pieces, ipid=1, l2=14, options=b""):
    """Fragments of `frame`'s IP packet: one per (start, end) range of its payload, in the
    order given (overlaps, gaps and odd sizes as asked), with IP id `ipid`."""
    ihl = (frame[l2] & 0xF) * 4
    payload = frame[l2 + ihl:l2 + int.from_bytes(frame[l2 + 2:l2 + 4], "big")]
    hdr = bytearray(frame[l2:l2 + 20])
    out = []
    for a, e in pieces:
        h = bytearray(hdr) + options
        h[0] = 0x40 | len(h) // 4
        h[2:4] = (len(h) + e - a).to_bytes(2, "big")
        h[4:6] = ipid.to_bytes(2, "big")
        h[6:8] = ((a >> 3) | (0x2000 if e < len(payload) else 0)
                  | (0x4000 if hdr[6] & 0x40 else 0)).to_bytes(2, "big")
        out.append(_set_ttl(frame[:l2] + bytes(h) + payload[a:e], h[8], l2))
    return out


def _joined(pieces, l2=14) -> bytes:
    """The packet that `pieces` (fragments, each with a good IP checksum) were cut from."""
    body = bytearray()
    for x in pieces:
        h = x[l2:l2 + 20]
        assert _set_ttl(x, x[l2 + 8], l2) == x           # the IP checksum is right
        a = (int.from_bytes(h[6:8], "big") & 0x1FFF) * 8
        n = int.from_bytes(h[2:4], "big") - 20
        body[a:a + n] = x[l2 + 20:l2 + 20 + n]
    h = bytearray(pieces[0][l2:l2 + 20])
    h[2:4] = (20 + len(body)).to_bytes(2, "big")
    h[6:8] = (int.from_bytes(h[6:8], "big") & 0x4000).to_bytes(2, "big")
    return _set_ttl(pieces[0][:l2] + bytes(h) + bytes(body), h[8], l2)


def _even(n: int, size: int):
    return [(a, min(a + size, n)) for a in range(0, n, size)]


@pytest.mark.parametrize("fwd", FWDS)
def test_fragmented_requests(fwd):
    """Datagrams to the VIP in fragments: in order, reversed, spread over batches, with a
    duplicate, an overlap, the last first, too many pieces, a bad size, options, a TTL of 1,
    a VLAN tag; beside fragments that are not ours (another address, another protocol)."""
    t = twin(fwd, mtu=900 if fwd == "tun" else 1500)
    big_udp = P.udp(sport=1, payload=b"U" * 2992)           # 3000 bytes of UDP
    big_tcp = P.tcp("S", sport=2, payload=b"T" * 2980)      # 3000 bytes of TCP
    frames = _cut(big_udp, _even(3000, 1480), ipid=1)
    frames += _cut(big_tcp, _even(3000, 800)[::-1], ipid=2)
    frames += _cut(P.udp(sport=3, payload=b"d" * 1992), [(0, 1000), (1000, 2000), (0, 1000)],
                   ipid=3)
    frames += _cut(P.udp(sport=4, payload=b"o" * 1992), [(0, 1000), (992, 2000)], ipid=4)
    frames += _cut(P.udp(sport=5, payload=b"l" * 1992), [(1000, 2000), (0, 1000)], ipid=5)
    frames += _cut(P.udp(sport=6, payload=b"m" * 792), _even(800, 8), ipid=6)
    frames += _cut(P.udp(sport=7, payload=b"b" * 992), [(0, 500), (500, 1000)], ipid=7)
    frames += _cut(P.udp(sport=8, payload=b"p" * 992), [(0, 496), (496, 1000)], ipid=8,
                   options=b"\x01\x01\x01\x00")
    frames += _cut(_set_ttl(P.udp(sport=9, payload=b"t" * 1192), 1), _even(1200, 400),
                   ipid=9)
    frames += _cut(P.udp(sport=10, payload=b"v" * 1592, vlan=5), _even(1600, 600), ipid=10,
                   l2=18)
    frames += _cut(P.udp(sport=11, dst="203.0.113.99", payload=b"x" * 992), _even(1000, 504),
                   ipid=11)
    frames += _cut(P.tcp("S", sport=12, payload=b"s" * 980), _even(1000, 504), ipid=12)[:1]
    out = t.run(frames[:23], 1 * S)
    out += t.run(frames[23:], 2 * S)
    out += t.run(_cut(big_udp, _even(3000, 1000), ipid=20)[:2], 3 * S)
    out += t.run(_cut(big_udp, _even(3000, 1000), ipid=20)[2:], 4 * S)
    sent = [v for v in out if v[0] == "tx"]
    for v in sent:
        pieces = v[3] if isinstance(v[3], list) else [v[3]]
        l2 = 18 if pieces[0][12:14] == b"\x81\x00" else 14
        assert checksums_ok(_joined(pieces, l2))
    assert any(isinstance(v[3], list) and len(v[3]) > 1 for v in sent)
    st = t.core.stats()
    assert st["frag_reasm"] >= 5 and st["frag_bad"] >= 2 and st["frag_held"] > 0


def _icmp_errors():
    """ICMP errors about the conns of client port 40000 (and of none): from the client side
    about what it was sent, from each server's side about what it got, about TUN's IPIP
    packets; every error type, quotes cut anywhere, bad checksums, TTL 1 and 2, a VLAN tag,
    a router's address, a cut ICMP header, and errors in fragments."""
    f = []
    for q in (0, 8, 19, 20, 23, 24, 28, 48, 560):
        f.append(P.icmp_about_reply(3, 4, quote=q, payload=b"e" * 600))
        f.append(P.icmp_about_reply(3, 3, quote=q, proto=17, vport=53))
        for r in range(3):
            f.append(P.icmp_about_request(3, 4, quote=q, rs=P.RS[r]))
            f.append(P.icmp_about_request(3, 3, quote=q, rs=P.RS[r], proto=17, rport=5353))
            f.append(P.icmp_about_ipip(quote=q + 20, rs=P.RS[r]))
    for typ, code in ((3, 0), (3, 1), (3, 2), (3, 13), (4, 0), (11, 0), (11, 1), (12, 0),
                      (0, 0), (8, 0), (5, 1)):
        f.append(P.icmp_about_reply(typ, code, quote=28))
        f.append(P.icmp_about_request(typ, code, quote=28, rs=P.RS[1]))
        f.append(P.icmp_about_ipip(typ, code, rs=P.RS[2]))
    for r in range(3):
        f += [P.icmp_about_reply(bad_csum=True), P.icmp_about_request(rs=P.RS[r], ttl=1),
              P.icmp_about_request(rs=P.RS[r], bad_csum=True), P.icmp_about_ipip(df=False),
              P.icmp_about_request(rs=P.RS[r], src="192.0.2.99", ttl=2),
              P.icmp_about_ipip(rs=P.RS[r], bad_csum=True)]
    f += [P.icmp_about_reply(ttl=1), P.icmp_about_reply(ttl=2), P.icmp_about_reply(vlan=9),
          P.icmp_about_reply(cport=40001), P.icmp_about_reply(src="198.51.100.1"),
          bytes(P.eth() / IP(src=P.CLIENT, dst=P.VIP, proto=1) / b"\x03\x04\x00\x00")]
    big = P.icmp_about_reply(3, 4, quote=548, payload=b"f" * 600)
    f += _cut(big, _even(556, 304), ipid=77)
    f += _cut(P.icmp_about_request(3, 3, quote=300, rs=P.RS[1]), _even(308, 160), ipid=78)
    return f


@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("split", [False, True], ids=["one_batch", "one_per_batch"])
def test_icmp_errors(fwd, split):
    """ICMP errors about conns (ip_vs_in_icmp, ip_vs_out_icmp): forwarded, translated,
    answered or left alone alike, with the same counters, byte for byte."""
    t = twin(fwd, mtu=600 if fwd == "tun" else 1500)
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    openers = [P.tcp("S", sport=40000), P.udp(sport=40000)]
    errors = _icmp_errors()
    if split:
        out = t.run(openers, 1 * S)
        for i, fr in enumerate(errors):
            out += t.run([fr], 2 * S + i)
    else:
        out = t.run(openers + errors, 1 * S)
    sent = [v for v in out if v[0] == "tx"]
    for v in sent:
        for fr in (v[3] if isinstance(v[3], list) else [v[3]]):
            ip = fuzz_engine.l3(fr)
            assert fuzz_engine.ip_ok(ip)
        ip = fuzz_engine.l3(_joined(v[3]) if isinstance(v[3], list) else v[3])
        assert fuzz_engine.l4_ok(ip)
    st = t.core.stats()
    assert st["icmp_related"] >= 10 and st["icmp_no_conn"] > 0
    assert st["icmp_bad_checksum"] > 0


def test_fragmented_nat_replies():
    t = twin("nat")
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    t.run([P.udp(sport=k) for k in range(1, 4)], 1 * S)
    frames = []
    for k in range(1, 4):
        for r in range(3):
            rep = P.reply_udp(rs=P.RS[r], cport=k, payload=b"R" * 2500)
            frames += _cut(rep, _even(2508, 1200), ipid=100 + 3 * k + r)
    out = t.run(frames, 2 * S)
    assert any(v[0] == "tx" and isinstance(v[3], list) and len(v[3]) == 3 for v in out)


def test_fragments_out_of_room_and_time():
    """The smallest area: per-source shares and the queue limit fill, incomplete datagrams
    expire after ipfrag_time (by later frames' time and by run_timers)."""
    t = Twin(capacity=256, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, frag_mem=64 << 10)
    topology(t, "dr")
    t.set_callback(round_robin)
    clients = ["198.51.100.%d" % i for i in range(1, 41)]
    # one source past its share of the queues (a quarter of them), then of the blocks
    t.run([_cut(P.udp(sport=1, src=clients[0], payload=b"q" * 2992), [(0, 1000)],
                ipid=900 + k)[0] for k in range(6)], S // 2)
    t.run(_cut(P.udp(sport=1, src=clients[1], payload=b"w" * 60000), _even(60008, 1480)[:-1],
               ipid=1), S // 2)
    for r in range(3):
        frames = []
        for k, c in enumerate(clients):
            for d in range(3):
                frames += _cut(P.udp(sport=k + 1, src=c, payload=b"z" * 2992),
                               [(0, 1000), (2000, 3000)], ipid=r * 10 + d)
        t.run(frames[:200], (1 + r * 12) * S)
        t.run(frames[200:], (2 + r * 12) * S)
    t.run(_cut(P.udp(sport=1, src=clients[0], payload=b"z" * 2992), [(1000, 2000)],
               ipid=0), 20 * S)
    t.run_timers(100 * S)
    t.run(_cut(P.udp(sport=1, src=clients[0], payload=b"z" * 2992), _even(3000, 1000),
               ipid=0), 101 * S)
    assert t.core.stats()["frag_no_room"] > 0 and t.core.stats()["frag_timeout"] > 0
    with pytest.raises(ValueError):
        Twin(frag_mem=1000)


def test_fragments_past_a_sources_share_of_blocks():
    """1 MiB of blocks, a quarter of them a source's share: the fifth 60 KB datagram of one
    client finds no room, another client's does."""
    t = Twin(capacity=256, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, frag_mem=1 << 20)
    topology(t, "dr")
    t.set_callback(round_robin)
    big = [P.udp(sport=1, src=c, payload=b"w" * 60000) for c in (P.CLIENT, "198.51.100.99")]
    for k in range(6):
        t.run(_cut(big[0], _even(60008, 1480)[:-1], ipid=k), 1 * S)
    out = t.run(_cut(big[1], _even(60008, 1480), ipid=1), 2 * S)
    assert out[-1][0] == "tx" and t.core.stats()["frag_no_room"] > 0


# -- IPVS sysctls, flood defences, deleted dests, -o --------------------------------------------

def test_sysctls_alike():
    t = twin("dr")
    for name, value in [("conn_reuse_mode", 4), ("drop_entry", -1), ("am_droprate", 0),
                        ("bogus", 1), ("amemthresh", 1 << 33)]:
        with pytest.raises(ValueError):
            t.set_sysctl(name, value)
    for name, value in [("sloppy_tcp", 7), ("expire_nodest_conn", True), ("amemthresh", 0),
                        ("drop_packet", 3), ("drop_packet", 0), ("conn_reuse_mode", 3)]:
        t.set_sysctl(name, value)
        t.check()


@pytest.mark.parametrize("fwd", ["dr", "nat"])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
@pytest.mark.parametrize("nodest", [0, 1])
def test_conn_reuse_and_deleted_dests(fwd, mode, nodest):
    """SYNs over entries in TIME_WAIT, CLOSE, FIN_WAIT and of a quiesced or deleted real
    server, per conn_reuse_mode and expire_nodest_conn; sloppy_tcp picks up a mid-stream
    ACK."""
    t = twin(fwd)
    t.set_sysctl("conn_reuse_mode", mode)
    t.set_sysctl("expire_nodest_conn", nodest)
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    rport = 8080 if fwd == "nat" else 80
    ports = range(1, 10)
    t.run([P.tcp("S", sport=c) for c in ports], 1 * S)
    closing = [P.tcp("FA", sport=1), P.tcp("A", sport=1), P.tcp("R", sport=2),
               P.tcp("FA", sport=3)]
    if fwd == "nat":
        closing += [P.reply_tcp("FA", rs=P.RS[r], rport=rport, cport=1) for r in range(3)]
    t.run(closing, 2 * S)
    t.set_dest(2, 1, P.RS[1], rport, fwd, P.RS_MAC[1], ifindex=11, weight=0)
    t.run([P.tcp("S", sport=c) for c in ports], 3 * S)
    t.del_dest(3)
    t.run([P.tcp("A", sport=c) for c in ports] + [P.tcp("S", sport=c) for c in ports], 4 * S)
    t.set_sysctl("sloppy_tcp", 1)
    t.run([P.tcp("A", sport=50 + c) for c in ports], 5 * S)
    t.run_timers(200 * S)
    t.check()


def test_expire_quiescent_template():
    t = twin("dr", persist=60, netmask=24)
    t.set_sysctl("expire_quiescent_template", 1)
    clients = ["198.51.100.%d" % i for i in range(1, 6)]
    t.run([P.tcp("S", src=c, sport=1) for c in clients], 1 * S)
    for d in (1, 2, 3):
        t.set_dest(d, 1, P.RS[d - 1], 80, "dr", P.RS_MAC[d - 1], ifindex=9 + d, weight=0)
    t.set_dest(1, 1, P.RS[0], 80, "dr", P.RS_MAC[0], ifindex=10, weight=1)
    t.run([P.tcp("S", src=c, sport=2) for c in clients], 2 * S)


def test_one_packet_scheduling():
    """-o: each UDP datagram scheduled alone, no entry kept (TCP services ignore it)."""
    t = twin("nat")
    t.set_service(2, 17, P.VIP, 53, ops=True)
    t.set_service(1, 6, P.VIP, 80, ops=True)
    out = t.run([P.udp(sport=5), P.udp(sport=5), P.udp(sport=6), P.tcp("S", sport=5)], 1 * S)
    assert sum(1 for v in out if v[0] == "tx") == 4
    assert len(t.asked["core"][0][0]) == 4
    t.set_service(2, 17, P.VIP, 53, persist_timeout=30, ops=True)
    t.run([P.udp(sport=k) for k in range(8)], 2 * S)


def _from_rs(proto="tcp", flags="A", rs=P.RS[0], sport=8080, dst=P.CLIENT, dport=999,
             ttl=64, payload=b"", vlan=None, df=False):
    l2 = P.eth(vlan, src=P.RS_MAC[0], dst=P.LOCAL_MAC)
    ip = IP(src=rs, dst=dst, ttl=ttl, flags="DF" if df else 0)
    l4 = (TCP(sport=sport, dport=dport, flags=flags, seq=5000, ack=1001) if proto == "tcp"
          else UDP(sport=sport, dport=dport))
    return bytes(l2 / ip / l4 / payload)


@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("value", [0, 1])
def test_nat_icmp_send(fwd, value):
    """Packets from the real servers' side that belong to no conn: from a NAT dest's
    address and port (TCP, UDP, RST, TTL 1, to the director, big, VLAN), from another port
    or protocol, and a conn's own replies; again after the dest is deleted."""
    t = twin(fwd)
    t.set_sysctl("nat_icmp_send", value)
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    rport = 8080 if fwd == "nat" else 80
    t.run([P.tcp("S", sport=c) for c in (1, 2)] + [P.udp(sport=3)], 1 * S)
    frames = [_from_rs(sport=rport, dport=1, flags="SA"), _from_rs(sport=rport),
              _from_rs(sport=rport, flags="RA"), _from_rs(sport=rport, flags="S"),
              _from_rs("udp", sport=5353 if fwd == "nat" else 53, payload=b"u" * 30),
              _from_rs("udp", sport=5353 if fwd == "nat" else 53, payload=b"u" * 900, df=True),
              _from_rs("udp", sport=rport), _from_rs(sport=9999), _from_rs(sport=rport, ttl=1),
              _from_rs(sport=rport, ttl=2), _from_rs(sport=rport, dst=P.LOCAL_IP, ttl=1),
              _from_rs(sport=rport, vlan=5, payload=b"p" * 40),
              _from_rs(sport=rport, rs=P.RS[1], dport=2), _from_rs(sport=rport, rs=P.RS[2])]
    out = t.run(frames, 2 * S)
    if fwd == "nat" and value:
        assert out[1][0] == "tx" and out[2][0] == "pass" and out[7][0] == "pass"
        assert t.core.stats()["nat_icmp_sent"] > 0
    else:
        assert t.core.stats()["nat_icmp_sent"] == 0
    for v in out:
        if v[0] == "tx":
            assert checksums_ok(v[3])
    t.del_dest(1)
    t.run(frames, 3 * S)
    t.set_sysctl("nat_icmp_send", 1 - value)
    t.run(frames, 4 * S)


@pytest.mark.parametrize("value", [0, 1])
@pytest.mark.parametrize("mtu", [600, 1500])
def test_pmtu_disc_tun(value, mtu):
    """TUN packets over and under the MTU, with and without DF, TCP and UDP, an ICMP error
    about a conn too big for the tunnel, a whole batch of big ones and fragments to
    reassemble, per pmtu_disc."""
    t = twin("tun", mtu=mtu)
    t.set_sysctl("pmtu_disc", value)
    sizes = [0, 200, 559, 560, 561, 900, 1400, 1460]
    frames = [P.tcp("S", sport=10 + i, payload=b"z" * n, df=df)
              for i, n in enumerate(sizes) for df in (True, False)]
    frames += [P.udp(sport=50 + i, payload=b"w" * n, df=True) for i, n in enumerate(sizes)]
    out = t.run(frames, 1 * S)
    big = [v for v, fr in zip(out, frames) if len(fr) - 14 + 20 > mtu]
    for v in out:
        if v[0] == "tx":
            pieces = v[3] if isinstance(v[3], list) else [v[3]]
            assert all(len(x) - 14 <= mtu for x in pieces)
            # _joined checks every piece's IP checksum; the whole gets all checked
            assert checksums_ok(_joined(pieces) if len(pieces) > 1 else pieces[0])
    if value == 0:
        assert all(v[0] == "tx" for v in out)
    elif big:
        assert t.core.stats()["frag_needed_sent"] > 0
    t.run([P.icmp_about_reply(3, 4, 1400, quote=548, payload=b"x" * 600, cport=10)], 2 * S)
    t.run([P.tcp("A", sport=100 + k, payload=b"b" * 1400, df=False) for k in range(64)],
          3 * S)
    t.run(_cut(P.udp(sport=77, payload=b"f" * 1000), _even(1008, 504)), 4 * S)


@pytest.mark.parametrize("defence", ["drop_entry", "drop_packet", "secure_tcp"])
@pytest.mark.parametrize("level", [1, 3])
@pytest.mark.parametrize("fwd", ["dr", "nat"])
def test_flood_defences(defence, level, fwd):
    """A SYN flood from many sources into a small table with a defence on (automatic or
    always), real clients completing handshakes among it, seconds of frame time passing."""
    t = twin(fwd, capacity=64)
    t.set_sysctl("amemthresh", 40)
    t.set_sysctl(defence, level)
    t.set_sysctl("am_droprate", 4)
    rport = 8080 if fwd == "nat" else 80
    t.set_neighbor(P.CLIENT, P.CLIENT_MAC, 3)
    for sec in range(12):
        frames = [P.tcp("S", src="10.%d.%d.%d" % (sec, k // 200, k % 200 + 1), sport=k + 1)
                  for k in range(30)]
        frames += [P.tcp("S", sport=1000 + sec)]
        t.run(frames, (1 + sec) * S)
        follow = [P.tcp("A", sport=1000 + sec)]
        if fwd == "nat":
            follow = [P.reply_tcp("SA", rs=P.RS[r], rport=rport, cport=1000 + sec)
                      for r in range(3)] + follow
        t.run(follow, (1 + sec) * S + S // 2)
    t.run_timers(100 * S)
    st = t.core.stats()
    assert st["table_full"] + st["drop_entry"] + st["drop_packet"] > 0


def test_conns_in_slices():
    """The listing walked in slices (sparse after expiries and frees) and its errors."""
    t = twin("nat", capacity=64, persist=30, netmask=24)
    t.run([P.tcp("S", src="198.51.100.%d" % (k % 7 + 1), sport=k) for k in range(40)], 1 * S)
    t.run([P.tcp("R", src="198.51.100.%d" % (k % 7 + 1), sport=k) for k in range(0, 40, 3)],
          2 * S)
    t.run_timers(20 * S)
    for limit in (None, 1, 5, 64, 1000):
        for start in (0, 3, 39, 40, 200):
            t.conns_slice(start, limit)
            t.conns_slice(start, limit, 25 * S)
    for bad in ((-1, None), (0, 0), (0, -4)):
        with pytest.raises(ValueError):
            t.conns_slice(*bad)


# -- the fuzzer's frames and random configuration changes ---------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_frames(seed):
    rng = random.Random(seed)
    a = fuzz_engine.make_engine()
    b = fuzz_engine.make_engine(engine_cls=reference.Engine)
    t = Twin.__new__(Twin)
    t.core, t.ref, t.sent = a, b, 0
    same_keys(a, b)
    # both run a sync master, and backups of the same services take what they send
    backups = [fuzz_engine.make_engine(), fuzz_engine.make_engine(engine_cls=reference.Engine)]
    for e in (a, b):
        e.sync_start_master(1, 1472)
    for e in backups:
        e.sync_start_backup(1)
    pool = fuzz_engine.seeds(rng)
    ts = S
    for _ in range(40):
        frames = [fuzz_engine.mutate(rng, rng.choice(pool)) if rng.random() < 0.8
                  else rng.choice(pool) for _ in range(64)]
        ts += rng.randint(0, 30 * S)
        t.run(frames, ts)
        msgs = a.sync_take(ts)
        assert msgs == b.sync_take(ts)
        for m in msgs:
            d = sync_protocol.decode(m, 1)
            assert d.ok and sync_protocol.encode_message(1, d.conns) == m
            for e in backups:
                e.sync_receive(m, ts)
    assert t.sent > 0
    assert a.sync_stats() == b.sync_stats() and a.sync_stats()["sent_conns"] > 0
    assert backups[0].sync_stats() == backups[1].sync_stats()
    assert backups[0].conns(ts) == backups[1].conns(ts)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations(seed):
    """Traffic interleaved with configuration changes, clock jumps and timer runs."""
    rng = random.Random(seed)
    fwd = rng.choice(FWDS)
    t = twin(fwd, capacity=rng.choice([16, 64, 4096]), persist=rng.choice([0, 0, 30]),
             netmask=rng.choice([None, 24]), batch=rng.choice([1, 7, 64]))
    if rng.random() < 0.5:
        t.set_learn_ifindex(5)
    ts = S
    clients = ["198.51.100.%d" % i for i in range(1, 9)]
    for _ in range(60):
        k = rng.random()
        if k < 0.55:
            frames = []
            for _ in range(rng.randint(1, 40)):
                c = rng.choice(clients)
                sport = rng.randint(1, 6)
                r = rng.random()
                if r < 0.5:
                    frames.append(P.tcp(rng.choice(["S", "A", "PA", "FA", "R", "SA", ""]),
                                        sport=sport, src=c, payload=b"d" * rng.randint(0, 50)))
                elif r < 0.75:
                    frames.append(P.udp(sport=sport, src=c))
                elif r < 0.9:
                    frames.append(P.reply_tcp(rng.choice(["SA", "A", "FA", "R"]),
                                              rs=rng.choice(P.RS), rport=8080, client=c,
                                              cport=sport))
                else:
                    frames.append(P.reply_udp(rs=rng.choice(P.RS), rport=5353, client=c,
                                              cport=sport))
            t.run(frames, [ts + rng.randint(0, 5 * S) for _ in frames]
                  if rng.random() < 0.3 else ts)
        elif k < 0.65:
            ts += rng.choice([1, 10, 100, 400]) * S
            t.run_timers(ts, rng.choice([None, 1, 5]))
        elif k < 0.75:
            i = rng.randint(0, 2)
            svc = rng.choice([1, 2])
            did = i + 1 if svc == 1 else i + 11
            port = (8080 if svc == 1 else 5353) if fwd == "nat" else (80 if svc == 1 else 53)
            try:
                t.set_dest(did, svc, P.RS[i], port, rng.choice(FWDS), P.RS_MAC[i],
                           ifindex=10 + i, weight=rng.choice([0, 1, 3]),
                           u_threshold=rng.choice([0, 2, 5]), l_threshold=rng.choice([0, 1]))
            except ValueError:
                pass
        elif k < 0.82:
            t.del_dest(rng.choice([1, 2, 3, 11, 12, 13]))
        elif k < 0.86:
            t.set_timeouts(*(rng.choice([0, 5, 50]) for _ in range(3)))
        elif k < 0.9:
            svc = rng.choice([1, 2])
            kind = rng.choice(["sh", "dh", "mh", None])
            ids = [1, 2, 3] if svc == 1 else [11, 12, 13]
            t.set_hash_table(svc, None if kind is None else ids * 7 + [0], kind or "sh",
                             rng.randint(0, 3))
        elif k < 0.93:
            t.del_service(rng.choice([1, 2]))
            topology(t, fwd)
        else:
            ts += rng.randint(0, 3) * S
        t.check(ts + rng.randint(0, 200) * S)


# -- `fastlvs replay` on either engine ------------------------------------------------------------

REPLAY_RULES = f"""-A -t {P.VIP}:80 -s wlc
-a -t {P.VIP}:80 -r {P.RS[0]}:8080 -m -w 1
-a -t {P.VIP}:80 -r {P.RS[1]}:8080 -m -w 2
-A -u {P.VIP}:53 -s sh -b sh-port
-a -u {P.VIP}:53 -r {P.RS[0]}:53 -g
-a -u {P.VIP}:53 -r {P.RS[2]}:53 -i
-A -t {P.VIP}:443 -s rr -p 30 -M 255.255.255.0
-a -t {P.VIP}:443 -r {P.RS[1]}:443 -g
-a -t {P.VIP}:443 -r {P.RS[2]}:443 -i
"""


def test_replay_output_is_the_same_on_both_engines(tmp_path, monkeypatch):
    """The replay of one capture (NAT with replies, sh, persistence, TUN, junk, timeouts
    crossed by the capture's clock) writes byte-identical pcaps and the same counters."""
    from fastlvs import replay

    rng = random.Random(5)
    frames, opened = [], [("198.51.100.1", 1000)]
    t = 1000.0
    for i in range(400):
        c = "198.51.100.%d" % rng.randint(1, 20)
        sport = rng.randint(1000, 1010)
        k = rng.random()
        if k < 0.35:
            flags, dport = rng.choice(["S", "S", "A", "PA", "FA"]), rng.choice([80, 443])
            f = P.tcp(flags, sport=sport, src=c, dport=dport,
                      payload=b"p" * rng.randint(0, 1400))
            if (flags, dport) == ("S", 80):
                opened.append((c, sport))
        elif k < 0.55:
            f = P.udp(sport=sport, src=c, payload=b"u" * rng.randint(0, 1480))
        elif k < 0.85:
            c, sport = rng.choice(opened[-5:])
            f = P.reply_tcp(rng.choice(["SA", "A", "FA"]), rs=rng.choice(P.RS[:2]),
                            rport=8080, client=c, cport=sport, payload=b"r" * rng.randint(0, 99))
        else:
            f = fuzz_engine.mutate(rng, P.tcp("S", sport=sport, src=c))
        t += rng.choice([0.001, 0.01, 0.5, 1, 1, 5, 70])
        frames.append((t, f))
    # a nanosecond pcap, written by hand so that the capture's clock is exactly ours
    with open(tmp_path / "in.pcap", "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for ts, f in frames:
            ns = round(ts * 1e9)
            fh.write(struct.pack("<IIII", ns // S, ns % S, len(f), len(f)) + f)
    (tmp_path / "rules").write_text(REPLAY_RULES)

    def replay_with(kind):
        out = tmp_path / f"out-{kind}.pcap"
        opts = replay.ReplayOptions(
            rules=str(tmp_path / "rules"), input=str(tmp_path / "in.pcap"), output=str(out),
            local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=1400, capacity=64,
            neighbors={P.RS[i]: P.RS_MAC[i] for i in range(3)} | {"192.0.2.254": P.GW_MAC},
            gateway="192.0.2.254", list_file=str(tmp_path / f"list-{kind}"))
        with monkeypatch.context() as m:
            if kind == "reference":
                m.setattr(core, "Engine", reference.Engine)
            res = replay.run(opts)
        res.pop("seconds")
        return res, out.read_bytes(), (tmp_path / f"list-{kind}").read_text()

    a, b = replay_with("core"), replay_with("reference")
    assert a[0]["frames_out"] > 100
    assert a[0]["services"][0]["outpkts"] > 10          # NAT replies went back
    assert a == b


# -- port-0 services (all ports of a VIP) -------------------------------------------------------

def port0_twin(fwd, rport=0):
    """Service 1 = TCP VIP:80 (the specific one), 3 = TCP VIP:0 and 4 = UDP VIP:0, both
    persistent as ipvsadm requires; dests 21..23 / 31..33 on port `rport` (0: the client's)."""
    t = Twin(capacity=4096, batch=64, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=1500)
    t.set_service(1, 6, P.VIP, 80)
    t.set_dest(1, 1, P.RS[0], 80, fwd, P.RS_MAC[0], ifindex=10)
    t.set_service(3, 6, P.VIP, 0, persist_timeout=300)
    t.set_service(4, 17, P.VIP, 0, persist_timeout=300)
    for i in range(3):
        t.set_dest(21 + i, 3, P.RS[i], rport, fwd, P.RS_MAC[i], ifindex=10 + i)
        t.set_dest(31 + i, 4, P.RS[i], rport, fwd, P.RS_MAC[i], ifindex=10 + i)
    t.set_gateway_mac(P.GW_MAC, 2)
    def make():
        n = [0]

        def cb(svcs, flows):
            out = []
            for s in svcs:
                n[0] += 1
                out.append({1: 1, 3: 21, 4: 31}[s] + (0 if s == 1 else n[0] % 3))
            return out
        return cb
    t.set_callback(make)
    return t


@pytest.mark.parametrize("fwd", FWDS)
@pytest.mark.parametrize("rport", [0, 8443])
def test_port0_services(fwd, rport):
    """Every port of the VIP goes to the port-0 service except 80 (its own service); one
    client's source port to several VIP ports makes one conn per port, all on the server of
    the client's one template; the conns keep the client's port even with a dest on `rport`
    (recorded on 6.1: tests/fixtures/kernel/port0.json), so NAT replies come from it."""
    t = port0_twin(fwd, rport)
    c2 = "198.51.100.9"
    ports = (22, 443, 8000, 80)
    t.run([P.tcp("S", sport=5000, dport=d) for d in ports], 1 * S)
    t.run([P.tcp("S", sport=5000, dport=d, src=c2) for d in ports], 1 * S)
    t.run([P.udp(sport=5000, dport=d) for d in (53, 1234)], 2 * S)
    t.run([P.tcp("A", sport=5000, dport=d, payload=b"x" * 50) for d in ports], 3 * S)
    t.run([P.reply_tcp("SA", rs=P.RS[k], rport=d, cport=5000)
           for k in range(3) for d in (22, 443, 9999, 8443)], 4 * S)
    t.run([P.reply_udp(rs=P.RS[k], rport=d, cport=5000)
           for k in range(3) for d in (53, 1234, 8443)], 4 * S)
    t.run([P.icmp_about_reply(vport=d, cport=5000) for d in (22, 443, 80, 7)], 5 * S)
    t.run([P.icmp_about_request(rs=r, rport=d, cport=5000)
           for r in P.RS for d in (22, 443, 8443)], 5 * S)
    conns = t.core.conns()
    mine = sorted((c["vport"], c["rport"], c["template"]) for c in conns
                  if c["caddr"] == P.CLIENT and c["proto"] == "TCP")
    expect = sorted([(22, 22, False), (443, 443, False), (8000, 8000, False),
                     (80, 80, False), (0, 0, True)])
    assert mine == expect, conns
    t.del_service(3)                       # conns live on; new ports pass to the kernel
    t.run([P.tcp("A", sport=5000, dport=22), P.tcp("S", sport=5001, dport=22)], 6 * S)
    t.set_service(3, 6, P.VIP, 0, persist_timeout=300)
    t.set_dest(21, 3, P.RS[0], rport, fwd, P.RS_MAC[0], ifindex=10)
    t.run([P.tcp("S", sport=5002, dport=23)], 7 * S)
    for now in (100, 400, 1000):
        t.run_timers(now * S)
        t.check()
