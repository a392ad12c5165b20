"""Differential tests of connection sync: the extension's C decoder against
fastlvs.sync.protocol.decode on random and mutated datagrams (the same accepted entries,
skip reasons and drop reason, and the same counters after sync_receive on both engines),
and the extension's master and backup against the reference engine's under random
traffic and random sending-policy sysctls (the same messages, tables and counters)."""
from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

import fastlvs.engine._core as core
from fastlvs.engine import reference, reference_sync
from fastlvs.sync import protocol as P
from tests.sync import kernel_traffic as KT
from tests.sync import kernel_traffic_v6 as KT6

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
MASTER = json.loads((FIX / "sync_master.json").read_text())
FEED = json.loads((FIX / "scripts" / "sync_backup_input.json").read_text())
# and the IPv6, firewall-mark and SCTP recordings' datagrams
MASTER6 = json.loads((FIX / "sync_v6_master.json").read_text())
FEED6 = json.loads((FIX / "scripts" / "sync_v6_backup_input.json").read_text())
SEEDS = [bytes.fromhex(d["payload"]) for d in MASTER["datagrams"] + MASTER6["datagrams"]] + [
    bytes.fromhex(m) for s in FEED["steps"] + FEED6["steps"] for m in s["datagrams"]]
S = KT.S


def _pair(capacity=4096, served=True):
    c = KT.configure(core.Engine(capacity=capacity, local_ip="10.0.9.1",
                                 local_mac=KT.LOCAL_MAC), served)
    r = KT.configure(reference.Engine(capacity=capacity, local_ip="10.0.9.1",
                                      local_mac=KT.LOCAL_MAC), served)
    return c, r


def _as_dict(c: P.SyncConn) -> dict:
    return {"protocol": c.protocol, "caddr": c.caddr, "cport": c.cport, "vaddr": c.vaddr,
            "vport": c.vport, "daddr": c.daddr, "dport": c.dport, "flags": c.flags,
            "state": c.state, "timeout": c.timeout, "fwmark": c.fwmark, "in_seq": c.in_seq,
            "out_seq": c.out_seq, "pe_data": c.pe_data, "pe_name": c.pe_name}


def _mutate(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:                                  # flip a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:                                # truncate, header size kept
            del b[rng.randrange(len(b)):]
        elif op == 2 and len(b) >= 4:                      # truncate, header size fixed up
            del b[rng.randrange(4, len(b) + 1):]
            b[2:4] = struct.pack("!H", len(b))
        elif op == 3 and len(b) >= 12:                     # an entry's ver_size
            p = 8 + 4 * rng.randrange((len(b) - 8) // 4)
            if p + 4 <= len(b):
                b[p + 2:p + 4] = struct.pack("!H", rng.choice(
                    [0, 8, 35, 36, 37, 40, 72, 0x1024, 0xFFF, rng.randrange(65536)]))
        elif op == 4 and len(b) >= 6:                      # count, version
            b[rng.choice([4, 5])] = rng.randrange(256)
        elif op == 5:                                      # an option appended to an entry
            opt = bytes([rng.choice([1, 2, 3, 9, 0x41, 0x42, 0x43, 0x49, 0x81]),
                         rng.choice([0, 1, 3, 16, 17, 24, 200])])
            opt += bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
            b += opt
            if len(b) >= 4:
                b[2:4] = struct.pack("!H", len(b) & 0xFFFF)
        else:                                              # random bytes inserted
            at = rng.randrange(len(b) + 1)
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
    return bytes(b)


def _cases(n=3000, seed=1307):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(60))))
        else:
            out.append(_mutate(rng, rng.choice(SEEDS)))
    return out


def test_counter_names_are_the_same_in_both_engines_and_the_protocols():
    assert core.SYNC_COUNTER_NAMES == reference_sync.COUNTER_NAMES
    assert [n[5:] for n in core.SYNC_COUNTER_NAMES if n.startswith("drop_")] == [
        r for r in P.DROP_REASONS if r != P.DROP_INTERNAL]
    assert [n[5:] for n in core.SYNC_COUNTER_NAMES if n.startswith("skip_")] == list(
        P.SKIP_REASONS)


@pytest.mark.parametrize("syncid", [0, 7])
def test_c_decoder_matches_protocol_decode(syncid):
    e = core.Engine(capacity=16)
    seen = set()
    for data in _cases():
        want = P.decode(data, syncid)
        assert want.error != P.DROP_INTERNAL
        got = e.sync_decode(data, syncid)
        assert got == ([_as_dict(c) for c in want.conns], want.skipped, want.error), data.hex()
        seen.add(want.error)
        seen.update(want.skipped)
    # the mutations reach every reason but the ones a v1 header rules out by construction
    assert len(seen) >= 14, seen


def test_receive_counts_the_same_on_both_engines():
    c, r = _pair()
    c.sync_start_backup(7)
    r.sync_start_backup(7)
    for i, data in enumerate(_cases(1500, seed=99)):
        c.sync_receive(data, S + i * 1000)
        r.sync_receive(data, S + i * 1000)
    assert c.sync_stats() == r.sync_stats()
    assert c.conns(2 * S) == r.conns(2 * S)
    assert c.sync_stats()["dropped"] > 500


def _traffic(rng: random.Random, n: int):
    """n frames of random flows over the five services, NAT replies among them."""
    flows = [(sid, rng.randrange(20000, 20060)) for sid in range(1, 6) for _ in range(6)]
    out = []
    for _ in range(n):
        sid, cport = rng.choice(flows)
        _, proto, vport, _, rip, rport, fwd = KT.SERVICES[sid - 1]
        if proto == 17:
            out.append(KT.c_udp(cport, vport))
        elif fwd == "nat" and rng.random() < 0.3:
            out.append(KT.r_tcp(rip, rport, cport, rng.choice(["SA", "A", "FA", "R"])))
        else:
            out.append(KT.c_tcp(cport, vport, rng.choice(
                ["S", "A", "A", "PA", "PA", "FA", "R", "SA"])))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_master_and_backup_agree_with_the_reference(seed):
    rng = random.Random(seed)
    (cm, rm), (cb, rb) = _pair(), _pair(capacity=64)
    settings = {"sync_threshold": rng.choice([0, 1, 3]),
                "sync_period": rng.choice([0, 5, 50]),
                "sync_refresh_period": rng.choice([0, 0, 2, 30]),
                "sync_retries": rng.randrange(4), "sync_persist_mode": rng.randrange(2),
                "sync_qlen_max": rng.choice([1, 3, 4096])}
    if settings["sync_period"] and settings["sync_threshold"] >= settings["sync_period"]:
        settings["sync_period"] = 0
    maxlen = rng.choice([44, 100, 1472])
    for e in (cm, rm):
        e.set_sysctl("sync_period", 0)
        for k, v in settings.items():
            e.set_sysctl(k, v)
        e.sync_start_master(7, maxlen)
    for e in (cb, rb):
        e.sync_start_backup(7)
    t = S
    frames = _traffic(rng, 1500)
    for k in range(0, len(frames), 25):
        chunk = frames[k:k + 25]
        times = [t + j * rng.randrange(1, 400_000_000) for j in range(len(chunk))]
        t = times[-1] + 1
        assert cm.process(chunk, times) == rm.process(chunk, times)
        if rng.random() < 0.5:
            a, b = cm.sync_take(t), rm.sync_take(t)
            assert a == b
            for m in a:
                assert P.decode(m, 7).ok and len(m) <= max(maxlen, 44)
                cb.sync_receive(m, t)
                rb.sync_receive(m, t)
        if rng.random() < 0.1:
            assert cm.run_timers(t) == rm.run_timers(t)
            assert cb.run_timers(t) == rb.run_timers(t)
    assert cm.sync_stats() == rm.sync_stats()
    assert cb.sync_stats() == rb.sync_stats()
    assert cm.conns(t) == rm.conns(t) and cb.conns(t) == rb.conns(t)
    for sid in range(1, 6):
        assert cb.dest_counters(sid) == rb.dest_counters(sid)
    assert cm.sync_stats()["sent_conns"] > 0 and cb.sync_stats()["installed"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_handover_agrees_with_the_reference(seed):
    """After random traffic (and random expiry), the whole-table and per-VIP handover walks,
    in random slices and with a random maxlen, queue the same messages on both engines."""
    rng = random.Random(100 + seed)
    cm, rm = _pair()
    maxlen = rng.choice([44, 100, 1472])
    persist = rng.randrange(2)
    for e in (cm, rm):
        e.set_sysctl("sync_persist_mode", persist)
        e.sync_start_master(7, maxlen)
    t = S
    frames = _traffic(rng, 800)
    for k in range(0, len(frames), 25):
        chunk = frames[k:k + 25]
        times = [t + j * rng.randrange(1, 200_000_000) for j in range(len(chunk))]
        t = times[-1] + 1
        assert cm.process(chunk, times) == rm.process(chunk, times)
    assert cm.sync_take(t) == rm.sync_take(t)
    for vaddr in (None, KT.VIP, "10.0.1.77"):
        now = t + rng.randrange(0, 200) * S
        start = 0
        while start is not None:
            limit = rng.choice([None, 1, 7, 100])
            a = cm.sync_queue_all(vaddr, start, limit, now_ns=now)
            assert a == rm.sync_queue_all(vaddr, start, limit, now_ns=now)
            start = a[1]
        a, b = cm.sync_take(now), rm.sync_take(now)
        assert a == b
        assert all(P.decode(m, 7).ok for m in a)
        if vaddr != "10.0.1.77":
            assert a
    assert cm.sync_stats() == rm.sync_stats()


def _pair6(capacity=4096):
    return tuple(KT6.configure(cls(capacity=capacity, local_ip="10.0.9.1",
                                   local_mac=KT6.LOCAL_MAC))
                 for cls in (core.Engine, reference.Engine))


def test_receive_of_v6_mark_and_sctp_entries_counts_the_same_on_both_engines():
    """Mutated datagrams to backups that have v6, firewall-mark and SCTP services: the
    same installs, refusals and table on both engines."""
    c, r = _pair6()
    c.sync_start_backup(7)
    r.sync_start_backup(7)
    for i, data in enumerate(_cases(1500, seed=606)):
        c.sync_receive(data, S + i * 1000)
        r.sync_receive(data, S + i * 1000)
    st = c.sync_stats()
    assert st == r.sync_stats()
    assert c.conns(2 * S) == r.conns(2 * S)
    assert st["installed"] > 20 and st["refused_protocol"] > 0 and st["refused_no_dest"] > 0
    kinds = {(x["proto"], ":" in x["caddr"], x["template"]) for x in c.conns(2 * S)}
    assert {("TCP", True, False), ("UDP", True, False), ("SCTP", False, False),
            ("IP", False, True)} <= kinds


_SCTP_CLIENT = ["INIT", "COOKIE_ECHO", "DATA", "DATA", "SHUTDOWN", "SHUTDOWN_COMPLETE"]
_SCTP_SERVER = ["INIT_ACK", "COOKIE_ACK", "SHUTDOWN_ACK"]


def _traffic6(rng: random.Random, n: int):
    """n frames of random flows over the v6 recording's services (v6 TCP/UDP DR, NAT66,
    ip6ip6, persistent v6; v4 marks 7 and 9; SCTP NAT and DR), NAT replies among them."""
    flows = [(sid, rng.randrange(20000, 20040)) for sid in range(1, len(KT6.SERVICES) + 1)
             for _ in range(5)]
    out = []
    for _ in range(n):
        sid, cport = rng.choice(flows)
        _, proto, vaddr, vport, _, rip, rport, fwd = KT6.SERVICES[sid - 1]
        if isinstance(proto, tuple):            # marks 7 (:9000) and 9 (:9100), TCP
            vport = 9000 if proto[1] == 7 else 9100
            if fwd == "nat" and rng.random() < 0.3:
                out.append(KT6.r_tcp(rip, rport, cport, rng.choice(["SA", "A", "FA"])))
            else:
                out.append(KT6.c_tcp(cport, vport, rng.choice(["S", "A", "PA", "FA", "R"])))
        elif proto == 132:
            if fwd == "nat" and rng.random() < 0.3:
                out.append(KT6.sctp(rip, rport, KT6.CL, cport, rng.choice(_SCTP_SERVER), False))
            else:
                out.append(KT6.sctp(KT6.CL, cport, vaddr, vport, rng.choice(_SCTP_CLIENT)))
        elif proto == 17:
            out.append(KT6.c_udp(cport, vport, v6=":" in vaddr))
        elif fwd == "nat" and rng.random() < 0.3:
            out.append(KT6.r_tcp(rip, rport, cport, rng.choice(["SA", "A", "FA", "R"])))
        else:
            out.append(KT6.c_tcp(cport, vport, rng.choice(
                ["S", "A", "A", "PA", "PA", "FA", "R", "SA"]), v6=":" in vaddr))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_v6_mark_and_sctp_master_and_backup_agree_with_the_reference(seed):
    """As above over IPv6, firewall-mark and SCTP services: the same messages from both
    masters (v6 entries, marks, SCTP states), the same tables and counts on both backups."""
    rng = random.Random(600 + seed)
    (cm, rm), (cb, rb) = _pair6(), _pair6(capacity=64)
    settings = {"sync_threshold": rng.choice([0, 1, 3]),
                "sync_period": rng.choice([0, 5, 50]),
                "sync_refresh_period": rng.choice([0, 2, 30]),
                "sync_retries": rng.randrange(4), "sync_persist_mode": rng.randrange(2)}
    if settings["sync_period"] and settings["sync_threshold"] >= settings["sync_period"]:
        settings["sync_period"] = 0
    maxlen = rng.choice([60, 100, 1472])
    for e in (cm, rm):
        e.set_sysctl("sync_period", 0)
        for k, v in settings.items():
            e.set_sysctl(k, v)
        e.sync_start_master(7, maxlen)
    for e in (cb, rb):
        e.sync_start_backup(7)
    t = S
    frames = _traffic6(rng, 1200)
    kinds = set()
    for k in range(0, len(frames), 25):
        chunk = frames[k:k + 25]
        times = [t + j * rng.randrange(1, 400_000_000) for j in range(len(chunk))]
        t = times[-1] + 1
        assert cm.process(chunk, times) == rm.process(chunk, times)
        if rng.random() < 0.5:
            a, b = cm.sync_take(t), rm.sync_take(t)
            assert a == b
            for m in a:
                d = P.decode(m, 7)
                assert d.ok and len(m) <= max(maxlen, 80)
                kinds |= {(c.protocol, c.ipv6, c.fwmark != 0) for c in d.conns}
                cb.sync_receive(m, t)
                rb.sync_receive(m, t)
        if rng.random() < 0.1:
            assert cm.run_timers(t) == rm.run_timers(t)
            assert cb.run_timers(t) == rb.run_timers(t)
    assert cm.sync_stats() == rm.sync_stats()
    assert cb.sync_stats() == rb.sync_stats()
    assert cm.conns(t) == rm.conns(t) and cb.conns(t) == rb.conns(t)
    for sid in range(1, len(KT6.SERVICES) + 1):
        assert cb.dest_counters(sid) == rb.dest_counters(sid)
    assert {(6, True, False), (132, False, False), (6, False, True)} <= kinds
