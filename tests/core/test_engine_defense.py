"""Flood defences (drop_entry, drop_packet, secure_tcp, amemthresh as free entries) on a small
conn table: a spoofed-SYN flood larger than the table must not stop established conns or
most legitimate new ones once drop_entry is on; the kernel's modes, and what its default
(all off) does."""
import json
import pathlib
import random

from tests.core import packets as P
from tests.core.helpers import S, engine


KERNEL = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" /
                     "conns.json").read_text())


_SYN = P.tcp("S", sport=1000)


def spoofed(n, rng):
    """n SYNs from distinct random sources in 10/8 (the IP checksum made right, the TCP one
    left as is: the engine reads, never checks it, and the copies are cheap)."""
    out = []
    for _ in range(n):
        a = rng.randrange(0x0A000000, 0x0AFFFFFF)
        out.append(P._fix_ip_csum(P._patch(_SYN, 26, a.to_bytes(4, "big"))))
    return out


def run_flood(e, rng, flood_total, legit, est_keys, t0):
    """Per round: a legit client's SYN, half the round's spoofed SYNs, its ACK, the other
    half, and one data packet of every established conn. Returns (legit conns opened,
    established packets sent, forwarded)."""
    opened = sent = tx = 0
    per_round = flood_total // legit
    data = [P.tcp("PA", src=s, sport=p, payload=b"x") for s, p in est_keys]
    t = t0
    for i in range(legit):
        t += S // 50
        src, sport = f"198.51.100.{1 + i % 250}", 20000 + i
        syn = e.process_verdicts([P.tcp("S", src=src, sport=sport)], t)
        flood = spoofed(per_round, rng)
        e.process(flood[:per_round // 2], t)
        ack = e.process_verdicts([P.tcp("A", src=src, sport=sport)], t)
        e.process(flood[per_round // 2:], t)
        if syn[0][0] == "tx" and ack[0][0] == "tx":
            if any(c["caddr"] == src and c["cport"] == sport and c["state"] == "ESTABLISHED"
                   for c in e.conns(t)):
                opened += 1
        v = e.process_verdicts(data, t)
        sent += len(v)
        tx += sum(1 for x in v if x[0] == "tx")
    return opened, sent, tx


def setup(capacity, **sysctls):
    e = engine("dr", capacity=capacity)
    for k, v in sysctls.items():
        e.set_sysctl(k, v)
    est = [(f"198.51.100.{200 + i}", 30000 + i) for i in range(16)]
    e.process([P.tcp("S", src=s, sport=p) for s, p in est], 1 * S)
    e.process([P.tcp("A", src=s, sport=p) for s, p in est], 1 * S)
    assert sum(1 for c in e.conns() if c["state"] == "ESTABLISHED") == 16
    return e, est


def test_flood_with_drop_entry_keeps_established_and_legit():
    rng = random.Random(7)
    e, est = setup(256, drop_entry=1, amemthresh=32)
    legit = 100
    opened, sent, tx = run_flood(e, rng, 40 * legit, legit, est, 2 * S)   # 4000 > 256
    st = e.stats()
    assert st["table_full"] == 0 and st["drop_entry"] > 3000, st
    assert tx == sent == 16 * legit                   # established: every packet forwarded
    assert opened >= 0.9 * legit, opened
    assert e.sysctls()["drop_entry"] == 2             # automatic mode, in force: reads 2
    assert e.defense_state()["drop_entry"]


def test_flood_without_defence_refuses_new_conns_as_ipvs_would():
    # drop_entry = 0 (the kernel's default): a full table takes no new conn until entries
    # expire; established ones still flow
    rng = random.Random(8)
    e, est = setup(256)
    opened, sent, tx = run_flood(e, rng, 4000, 100, est, 2 * S)
    assert tx == sent
    # only the clients before the flood filled the table (240 free / 40 a round) got in
    assert opened <= 7 and e.stats()["table_full"] > 3000
    assert e.stats()["drop_entry"] == 0


def test_full_table_reclaims_expired_embryos_first():
    # a table full of SYN_RECV entries that have timed out (60 s) takes new conns even
    # with every defence off, without waiting for the paced sweep
    rng = random.Random(9)
    e = engine("dr", capacity=64)
    e.process(spoofed(64, rng), 1 * S)
    assert e.conn_count() == 64
    v = e.process_verdicts([P.tcp("S", sport=5)], 62 * S)
    assert v[0][0] == "tx" and e.stats()["table_full"] == 0 and e.stats()["drop_entry"] == 0


def test_automatic_modes_follow_free_entries():
    rng = random.Random(10)
    e = engine("dr", capacity=64)
    for k in ("drop_entry", "drop_packet", "secure_tcp"):
        e.set_sysctl(k, 1)
    e.set_sysctl("amemthresh", 16)
    assert e.sysctls()["drop_entry"] == 1 and not e.defense_state()["drop_entry"]
    e.process(spoofed(52, rng), 1 * S)           # 12 free < 16
    e.process([], 2 * S)
    e.process([P.udp(sport=1)], 2 * S)           # a batch at t = 2 s runs the defence tick
    ds = e.defense_state()
    assert ds["drop_entry"] and ds["secure_tcp"]
    # drop_packet's automatic rate: amemthresh / (amemthresh - free) = 16 / (16 - 12) = 4
    assert ds["drop_rate"] == 4
    assert {k: e.sysctls()[k] for k in ("drop_entry", "drop_packet", "secure_tcp")} == \
        {"drop_entry": 2, "drop_packet": 2, "secure_tcp": 2}
    e.run_timers(200 * S)                        # everything expires: room again
    e.process([P.udp(sport=2)], 200 * S)
    assert {k: e.sysctls()[k] for k in ("drop_entry", "drop_packet", "secure_tcp")} == \
        {"drop_entry": 1, "drop_packet": 1, "secure_tcp": 1}
    assert e.defense_state() == {"drop_entry": False, "drop_rate": 0, "secure_tcp": False}


def test_drop_packet_always_drops_one_in_am_droprate():
    # recorded on 6.1: drop_packet=3, am_droprate=4, 12 SYNs: the 1st, 5th and 9th dropped
    rec = KERNEL["cases"]["drop_packet_always"]["steps"]
    kernel = [i for i, st in enumerate(rec[:12]) if not st["to_rs"]]
    e = engine("dr", capacity=256)
    e.set_sysctl("am_droprate", 4)
    e.set_sysctl("drop_packet", 3)
    v = e.process_verdicts([P.tcp("S", sport=6001 + i) for i in range(12)], 1 * S)
    dropped = [i for i, x in enumerate(v) if x[:2] == ("drop", "drop_packet")]
    assert dropped == kernel == [0, 4, 8]
    # a packet of an existing conn is never dropped by it
    v = e.process_verdicts([P.tcp("A", sport=6002)], 1 * S)
    assert v[0][0] == "tx"


def test_drop_entry_always_drops_embryos_not_established():
    rng = random.Random(11)
    e, est = setup(4096, drop_entry=3)
    e.process(spoofed(1000, rng), 2 * S)
    n0 = e.conn_count()
    for k in range(3, 40):
        e.process([P.udp(sport=k)], k * S // 1)
    states = [c["state"] for c in e.conns()]
    assert states.count("ESTABLISHED") == 16
    assert e.stats()["drop_entry"] > 0 and e.conn_count() < n0


def test_sysctl_refusals():
    e = engine("dr")
    for name, value in (("nope", 1), ("drop_entry", 4), ("conn_reuse_mode", -1),
                        ("am_droprate", 0)):
        try:
            e.set_sysctl(name, value)
        except ValueError as err:
            assert name in str(err)
        else:
            raise AssertionError(f"{name}={value} accepted")


def test_full_table_takes_room_from_the_new_conns_own_chain():
    # drop_entry in force and fewer than its reserve free (an eighth of 64 = 8): the new
    # conn's insert drops the SYN_RECV entries of its own bucket's chain, which its lookup
    # has just read, young or old, and not the oldest entry elsewhere; a conn whose chain
    # is empty takes a free entry and drops nothing
    import ipaddress
    from fastlvs.engine import _testing as testing
    from fastlvs.engine import reference
    rng = random.Random(12)
    e = engine("dr", capacity=64)
    e.set_sysctl("drop_entry", 3)
    ref = reference.Engine(capacity=64)
    ref.seed = testing.engine_seed(e)

    def bucket(src, sport):
        return ref._conn_bucket((int(ipaddress.IPv4Address(src)), sport, 6))

    flood = spoofed(56, rng)
    e.process(flood, 1 * S)                  # 8 free: the reserve exactly, nothing dropped
    assert e.conn_count() == 56 and e.stats()["drop_entry"] == 0
    held = {}
    for c in e.conns():
        held.setdefault(bucket(c["caddr"], c["cport"]), []).append((c["caddr"], c["cport"]))
    # the youngest flood entry whose chain holds at most 2 (all of it may go: 8 - 6 = 2)
    young = next(k for k in ((str(ipaddress.IPv4Address(f[26:30])), 1000)
                             for f in reversed(flood)) if len(held[bucket(*k)]) <= 2)
    oldest = (str(ipaddress.IPv4Address(flood[0][26:30])), 1000)
    keys = [(f"198.51.100.{k % 250 + 1}", 7000 + k) for k in range(4000)]
    empty = next(k for k in keys if bucket(*k) not in held)
    shared = next(k for k in keys if bucket(*k) == bucket(*young))
    # the same second as the flood: no once-a-second random drop in between
    v = e.process_verdicts([P.tcp("S", src=empty[0], sport=empty[1]),    # 7 free after it
                            P.tcp("S", src=shared[0], sport=shared[1])], 1 * S)
    assert [x[0] for x in v] == ["tx", "tx"]
    dropped = held[bucket(*young)]
    left = {(c["caddr"], c["cport"]) for c in e.conns()}
    assert not left & set(dropped)
    assert e.stats()["drop_entry"] == len(dropped)
    assert empty in left and shared in left
    assert oldest in dropped or oldest in left
