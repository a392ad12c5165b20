"""The built extension against the engine's contract (fastlvs.engine.contract): the counter
indices the C code writes, the forwarding-method ids and hash-scheduler kinds it takes, and its
limits are the contract's. A stale build (contract.py edited, extension not rebuilt) fails here."""
import pytest

import fastlvs.engine._core as core
from fastlvs.engine import contract as K
from tests.core import packets as P
from tests.core.helpers import S, engine


def test_counter_names_in_the_engines_index_order():
    e = core.Engine(capacity=64)
    assert tuple(e.stats()) == K.COUNTER_NAMES
    assert core.COUNTER_NAMES == K.COUNTER_NAMES


@pytest.mark.parametrize("case", P.BAD, ids=lambda c: c.name)
def test_each_drop_reason_is_counted_under_its_own_name(case):
    # The C code counts into C_<NAME>; the reason it reports is the name at that index of
    # COUNTER_NAMES. A reason and its counter agreeing, with exactly one counter moved besides
    # rx (and passed for a pass), means the C index and the contract's order agree.
    e = engine("dr")
    before = e.stats()
    (verdict, reason, _, _), = e.process_verdicts([case.frame], 1 * S)
    after = e.stats()
    moved = {k for k in K.COUNTER_NAMES if after[k] != before[k]} - {"rx"}
    expect = {reason} | ({"passed"} if verdict == "pass" else set())
    assert reason in K.COUNTER_NAMES
    assert moved == expect, (verdict, reason, moved)


def test_forwarded_and_created_are_counted_under_their_names():
    e = engine("dr")
    out = e.process([P.tcp("S")], 1 * S)
    assert len(out) == 1
    st = e.stats()
    assert (st["rx"], st["tx"], st["conns_created"]) == (1, 1, 1)


@pytest.mark.parametrize("name", K.FWD_NAMES)
def test_fwd_ids_are_the_contracts(name):
    # a dest given the contract's integer id forwards exactly as one given the name
    by_id, by_name = engine(K.fwd_id(name)), engine(name)
    frames = [P.tcp("S"), P.tcp("A", payload=b"x" * 40)]
    assert by_id.process(frames, 1 * S) == by_name.process(frames, 1 * S)
    assert [c["fwd"] for c in by_id.conns()] == [name]


def test_every_fwd_alias_names_its_method():
    for alias, fwd in K.FWD_ALIASES.items():
        e = engine(alias)
        e.process([P.tcp("S")], 1 * S)
        assert [c["fwd"] for c in e.conns()] == [K.FWD_NAMES[fwd - 1]]


@pytest.mark.parametrize("kind", sorted(K.HASH_KINDS))
def test_hash_kinds_are_the_contracts(kind):
    # the same table under the contract's integer kind and under its name picks the same
    # dests for the same flows
    table = [1 + (i % 3) for i in range(256 if kind != "mh" else 251)]
    frames = [P.tcp("S", sport=1024 + i, src=f"198.51.100.{1 + i}") for i in range(40)]
    out = []
    for k in (K.HASH_KINDS[kind], kind):
        e = engine("dr", ndest=3)
        e.set_hash_table(1, table, k, 0)
        out.append([(i, ifx) for i, ifx, _ in e.process(frames, 1 * S)])
    assert out[0] == out[1] and len(out[0]) == len(frames)
    # dh hashes the destination (one VIP here: one dest); sh and mh the source: spread
    assert len({ifx for _, ifx in out[0]}) == (1 if kind == "dh" else 3)


def test_limits_are_the_contracts():
    core.Engine(capacity=64, batch=K.BATCH_MAX, mtu=K.MTU_MIN)
    core.Engine(capacity=64, mtu=K.MTU_MAX)
    for bad in ({"batch": K.BATCH_MAX + 1}, {"mtu": K.MTU_MIN - 1}, {"mtu": K.MTU_MAX + 1}):
        with pytest.raises(ValueError):
            core.Engine(capacity=64, **bad)
    e = core.Engine(capacity=64)
    assert e.batch == K.BATCH_DEFAULT
    assert core.Engine().capacity == K.CAPACITY_DEFAULT
    e.set_service(K.MAX_SERVICES, "tcp", P.VIP, 80)
    e.set_dest(1, K.MAX_SERVICES, P.RS[0], 80, "dr", P.RS_MAC[0])
    with pytest.raises(ValueError):
        e.set_service(K.MAX_SERVICES + 1, "udp", P.VIP, 53)
    for proto, num in K.PROTOCOLS.items():
        e.set_service(2, proto, P.VIP, 1000 + num)
