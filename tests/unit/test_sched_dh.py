"""dh (ip_vs_dh.c): hand-worked tables and buckets, list changes, and properties.

Buckets are worked by hand with hash_32(v, 8) = top byte of v * 0x61C88647 mod 2**32:
key 0 -> 0, 1 -> 97, 2 -> 195, 3 -> 37 (see test_hashing.py).
"""
import random

import pytest
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from fastlvs.schedulers.dh import TAB_SIZE
from tests.helpers.sched import rs


def to(daddr, saddr="198.51.100.1", sport=40000, dport=80):
    return Flow(saddr, sport, daddr, dport)


def test_table_ignores_weights():
    """ip_vs_dh_reassign deals one bucket per server in list order, whatever the weights:
    weights 5, 1, 0 still give A, B, C, A, B, C, ... (256 = 85*3 + 1: bucket 255 is A)."""
    a, b, c = rs(1, 5), rs(2, 1), rs(3, 0)
    s = create("dh", [a, b, c])
    t = s.lookup_table().tolist()
    assert t == ([1, 2, 3] * 86)[:256]
    assert t[255] == 1


def test_schedule_hand_worked():
    """ip_vs_dh_hashkey: hash_32(ntohl(daddr), 8); 0.0.0.1 -> 97 % 3 = 1 -> B,
    0.0.0.2 -> 195 % 3 = 0 -> A, 0.0.0.3 -> 37 % 3 = 1 -> B. The source is not hashed."""
    a, b, c = rs(1), rs(2), rs(3)
    s = create("dh", [a, b, c])
    assert s.schedule(to("0.0.0.1")) is b
    assert s.schedule(to("0.0.0.2")) is a
    assert s.schedule(to("0.0.0.3", saddr="198.51.100.99", sport=1, dport=443)) is b
    assert [s.bucket(to(x)) for x in ("0.0.0.1", "0.0.0.2", "0.0.0.3")] == [97, 195, 37]


def test_unavailable_gives_none_no_fallback():
    """ip_vs_dh_schedule returns NULL when the bucket's dest has weight <= 0 or is
    overloaded; there is no fallback to another bucket."""
    a, b, c = rs(1), rs(2, 0), rs(3)
    s = create("dh", [a, b, c])
    assert s.schedule(to("0.0.0.1")) is None     # B, weight 0
    assert s.schedule(to("0.0.0.2")) is a
    a.overloaded = True
    assert s.schedule(to("0.0.0.2")) is None


def test_no_flags_accepted():
    """ip_vs_dh.c reads no scheduler flags."""
    with pytest.raises(ValueError):
        create("dh", [rs(1)], flags={"sh-port"})


def test_empty_and_all_unavailable():
    """Empty list: every bucket NULL -> None; all servers weight 0 -> None."""
    s = create("dh", [])
    assert s.schedule(to("0.0.0.1")) is None
    assert s.lookup_table().tolist() == [0] * TAB_SIZE
    s = create("dh", [rs(1, 0), rs(2, 0)])
    assert s.schedule(to("0.0.0.1")) is None
    assert s.schedule(to("0.0.0.2")) is None


def test_ipv6_fold():
    """IPv6 destinations fold their four big-endian words with XOR (then ntohl): ::1 -> 1
    -> bucket 97, 0:0:0:5:0:0:0:7 -> 5 ^ 7 = 2 -> bucket 195."""
    a, b, c = (RealServer(f"2001:db8::{i}", 80) for i in (1, 2, 3))
    s = create("dh", [a, b, c])
    assert s.schedule(Flow("2001:db8::99", 1, "::1", 80)) is b
    assert s.schedule(Flow("2001:db8::99", 1, "0:0:0:5:0:0:0:7", 80)) is a


def test_add_at_head_and_remove():
    """add_dest/del_dest re-deal the table: D added at the head owns bucket 0 (D, A, B, C):
    97 % 4 = 1 -> A, 195 % 4 = 3 -> C; removing A then gives D, B, C: 97 % 3 = 1 -> B."""
    a, b, c = rs(1), rs(2), rs(3)
    s = create("dh", [a, b, c])
    d = rs(4)
    s.update([d, a, b, c])
    assert s.lookup_table().tolist()[:4] == [1, 2, 3, 4]
    assert s.schedule(to("0.0.0.1")) is a
    assert s.schedule(to("0.0.0.2")) is c
    s.update([d, b, c])
    assert s.schedule(to("0.0.0.1")) is b


def test_weight_edit_changes_only_availability():
    """dh has no upd_dest: a weight edit leaves the table; weight 0 makes the bucket's
    flows get None, and restoring the weight brings them back to the same server."""
    a, b, c = rs(1), rs(2), rs(3)
    s = create("dh", [a, b, c])
    before = s.lookup_table().tolist()
    b.weight = 0
    s.update([a, b, c])
    assert s.lookup_table().tolist() == before
    assert s.schedule(to("0.0.0.1")) is None
    b.weight = 9
    s.update([a, b, c])
    assert s.schedule(to("0.0.0.1")) is b


def test_schedule_matches_own_table():
    """Differential: servers[table[bucket(flow)] - 1] is schedule(flow) when available,
    and None otherwise."""
    rnd = random.Random(3)
    servers = []
    for i in range(37):
        r = RealServer(f"10.0.0.{i + 1}", 80, weight=rnd.choice([0, 1, 2, 5]))
        r.overloaded = rnd.random() < 0.15
        servers.append(r)
    s = create("dh", servers)
    table = s.lookup_table()
    for _ in range(2000):
        f = Flow("198.51.100.1", 1, rnd.getrandbits(32), 80)
        owner = s.servers[table[s.bucket(f)] - 1]
        want = owner if owner.weight > 0 and not owner.overloaded else None
        assert s.schedule(f) is want


addr4 = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=12),
       daddr=addr4, saddr1=addr4, saddr2=addr4,
       sport=st.integers(min_value=0, max_value=65535))
def test_same_key_same_server(weights, daddr, saddr1, saddr2, sport):
    """Property: the destination address alone decides; any source, port or protocol with
    the same destination gets the same answer, and asking again never changes it."""
    servers = [RealServer(f"10.1.0.{i + 1}", 80, weight=w) for i, w in enumerate(weights)]
    s = create("dh", servers)
    first = s.schedule(Flow(saddr1, 1000, daddr, 80))
    assert s.schedule(Flow(saddr2, sport, daddr, 443, "udp")) is first
    assert s.schedule(Flow(saddr1, 1000, daddr, 80)) is first
