"""sh (ip_vs_sh.c): hand-worked tables and buckets, flags, list changes, and properties.

Buckets are worked by hand with hash_32(v, 8) = top byte of v * 0x61C88647 mod 2**32:
key 0 -> 0, 1 -> 97, 2 -> 195, 3 -> 37 (see test_hashing.py), so flows from 0.0.0.1,
0.0.0.2, 0.0.0.3 land in buckets 97, 195, 37.
"""
import random

import pytest
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from fastlvs.schedulers.sh import TAB_SIZE
from tests.helpers.sched import rs


def flow(saddr, sport=40000, daddr="203.0.113.10", dport=80, proto="tcp"):
    return Flow(saddr, sport, daddr, dport, proto)


@pytest.fixture
def abc():
    # list order A, B, C (head first); weights 1, 2, 0 -> buckets repeat A, B, B, C
    return rs(1, 1), rs(2, 2), rs(3, 0)


def test_reassign_pattern_by_weight(abc):
    """ip_vs_sh_reassign: from the head, each server fills `weight` consecutive buckets
    (`++d_count >= weight`), so weight 0 still takes one bucket; the walk wraps."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    assert s.lookup_table().tolist() == [1, 2, 2, 3] * 64


def test_schedule_hand_worked(abc):
    """ip_vs_sh_get: bucket = hash_32(ntohl(saddr), 8); 97 % 4 = 1 -> B, 37 % 4 = 1 -> B,
    0 -> A, and 195 % 4 = 3 -> C whose weight is 0, so no destination (None)."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    assert s.schedule(flow("0.0.0.1")) is b
    assert s.schedule(flow("0.0.0.3")) is b
    assert s.schedule(flow("0.0.0.0")) is a
    assert s.schedule(flow("0.0.0.2")) is None
    assert [s.bucket(flow(x)) for x in ("0.0.0.1", "0.0.0.2", "0.0.0.3")] == [97, 195, 37]


def test_source_port_and_destination_ignored_without_sh_port(abc):
    """Without IP_VS_SVC_F_SCHED_SH_PORT the port passed to the hash is 0 and only the
    source address is hashed."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    assert s.schedule(flow("0.0.0.1", sport=1, daddr="198.51.100.9", dport=443)) is b


def test_fallback_probe_order(abc):
    """ip_vs_sh_get_fallback: roffset = (offset + ihash) % 256 is passed as the hashkey's
    offset, which adds the hash again, so the probes are (2*ihash + offset) % 256, not
    ihash + 1, ... For 0.0.0.2 (bucket 195, C, weight 0): first probe 390 % 256 = 134,
    134 % 4 = 2 -> B. (A naive "next bucket" probe would give 196 -> A.)"""
    a, b, c = abc
    s = create("sh", [a, b, c], flags={"sh-fallback"})
    assert s.schedule(flow("0.0.0.2")) is b


def test_fallback_skips_overloaded_and_weight0(abc):
    """is_unavailable(): weight <= 0 or IP_VS_DEST_F_OVERLOAD. 0.0.0.1 -> bucket 97 (B,
    overloaded); probes 194 (B), 195 (C, weight 0), 196 (A) -> A."""
    a, b, c = abc
    b.overloaded = True
    s = create("sh", [a, b, c], flags="sh-fallback")
    assert s.schedule(flow("0.0.0.1")) is a
    s2 = create("sh", [a, b, c])
    assert s2.schedule(flow("0.0.0.1")) is None


def test_flag_aliases(abc):
    """ipvsadm's flag-1 / flag-2 are sh-fallback / sh-port (IP_VS_SVC_F_SCHED1/2)."""
    s = create("sh", list(abc), flags="flag-1,flag-2")
    assert s.flags == {"sh-fallback", "sh-port"}
    with pytest.raises(ValueError):
        create("sh", list(abc), flags={"mh-port"})


def test_all_unavailable_none_even_with_fallback():
    """The fallback loop covers all 256 buckets and returns NULL when no server is
    available (here: two weight-0 servers, which still own buckets A, B, A, B, ...)."""
    a, b = rs(1, 0), rs(2, 0)
    s = create("sh", [a, b], flags={"sh-fallback"})
    assert s.lookup_table().tolist() == [1, 2] * 128
    assert s.schedule(flow("0.0.0.1")) is None
    assert s.schedule(flow("0.0.0.2")) is None


def test_empty_list():
    """An empty list leaves every bucket NULL: schedule() returns None with or without
    fallback, and the exported table is all zeros."""
    for flags in (None, {"sh-fallback"}):
        s = create("sh", [], flags=flags)
        assert s.schedule(flow("0.0.0.1")) is None
        assert s.lookup_table().tolist() == [0] * TAB_SIZE


def test_sh_port_hashes_source_port_plus_address(abc):
    """ip_vs_sh_hashkey: hash_32(ntohs(port) + ntohl(addr)) with the source port under
    sh-port: 0.0.0.1:1 -> key 2 -> 195 -> C (None); 0.0.0.1:0 -> 97 -> B; 0.0.0.0:3 -> 37
    -> B."""
    a, b, c = abc
    s = create("sh", [a, b, c], flags={"sh-port"})
    assert s.schedule(flow("0.0.0.1", sport=1)) is None
    assert s.schedule(flow("0.0.0.1", sport=0)) is b
    assert s.schedule(flow("0.0.0.0", sport=3)) is b
    assert s.schedule(flow("0.0.0.0", sport=3, proto="udp")) is b
    assert s.schedule(flow("0.0.0.0", sport=3, proto="sctp")) is b


def test_sh_port_sum_wraps_32_bits(abc):
    """The sum is an unsigned int: 255.255.255.255 with port 2 wraps to 1 -> bucket 97."""
    a, b, c = abc
    s = create("sh", [a, b, c], flags={"sh-port"})
    assert s.bucket(flow("255.255.255.255", sport=2)) == 97
    assert s.schedule(flow("255.255.255.255", sport=2)) is b


def test_ipv6_fold():
    """IPv6 keys fold the four big-endian words with XOR, then ntohl: ::1 folds to 1
    (bucket 97, like 0.0.0.1) and 0:0:0:5:0:0:0:7 to 5 ^ 7 = 2 (bucket 195). Folding the
    raw little-endian words would give 0x02000000 -> bucket 142 instead."""
    a = RealServer("2001:db8::1", 80, weight=1)
    b = RealServer("2001:db8::2", 80, weight=2)
    c = RealServer("2001:db8::3", 80, weight=1)
    s = create("sh", [a, b, c])
    assert s.schedule(Flow("::1", 1, "2001:db8::80", 80)) is b          # 97 % 4 = 1
    assert s.bucket(Flow("0:0:0:5:0:0:0:7", 1, "2001:db8::80", 80)) == 195
    assert s.schedule(Flow("0:0:0:5:0:0:0:7", 1, "2001:db8::80", 80)) is c  # 195 % 4 = 3


def test_upd_dest_refills_with_new_weights(abc):
    """upd_dest = ip_vs_sh_dest_changed: B's weight 2 -> 1 gives A, B, C repeating
    (256 = 85*3 + 1, so bucket 255 is A): 97 % 3 = 1 -> B, 195 % 3 = 0 -> A."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    b.weight = 1
    s.update([a, b, c])
    t = s.lookup_table().tolist()
    assert t[:6] == [1, 2, 3, 1, 2, 3] and t[255] == 1
    assert s.schedule(flow("0.0.0.1")) is b
    assert s.schedule(flow("0.0.0.2")) is a


def test_add_at_head_refills(abc):
    """add_dest: the new server is list_add_rcu'd at the head, so it owns bucket 0:
    D, A, B, B, C repeating; 195 % 5 = 0 -> D, 97 % 5 = 2 -> B, bucket 255 -> D."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    d = rs(4, 1)
    s.update([d, a, b, c])
    t = s.lookup_table().tolist()
    assert t[:5] == [1, 2, 3, 3, 4] and t[255] == 1
    assert s.schedule(flow("0.0.0.2")) is d
    assert s.schedule(flow("0.0.0.1")) is b


def test_remove_refills(abc):
    """del_dest: without A the table is B, B, C repeating; 195 % 3 = 0 -> B."""
    a, b, c = abc
    s = create("sh", [a, b, c])
    s.update([b, c])
    assert s.lookup_table().tolist()[:6] == [1, 1, 2, 1, 1, 2]
    assert s.schedule(flow("0.0.0.2")) is b
    assert s.schedule(flow("0.0.0.0")) is b


def test_weight_larger_than_table():
    """A weight >= 256 at the head fills every bucket before the walk moves on."""
    a, b = rs(1, 300), rs(2, 1)
    s = create("sh", [a, b])
    assert set(s.lookup_table().tolist()) == {1}


def test_blocks_of_100():
    """Weights 100 each: buckets 0-99 A, 100-199 B, 200-255 C; 97 -> A, 195 -> B."""
    a, b, c = rs(1, 100), rs(2, 100), rs(3, 100)
    s = create("sh", [a, b, c])
    t = s.lookup_table().tolist()
    assert t == [1] * 100 + [2] * 100 + [3] * 56
    assert s.schedule(flow("0.0.0.1")) is a
    assert s.schedule(flow("0.0.0.2")) is b


def _random_servers(rnd, n):
    out = []
    for i in range(n):
        r = RealServer(f"10.0.{i // 200}.{i % 200 + 1}", 80, weight=rnd.choice([0, 1, 1, 2, 3, 7]))
        r.overloaded = rnd.random() < 0.15
        out.append(r)
    return out


@pytest.mark.parametrize("flags", [None, {"sh-port"}, {"sh-fallback"}, {"sh-port", "sh-fallback"}])
def test_schedule_matches_own_table(flags):
    """Differential: for random flows, servers[table[bucket(flow)] - 1] is what schedule()
    returns whenever that server is available; without fallback an unavailable bucket
    server means None, with fallback the answer follows the (2*i + k) probe order."""
    rnd = random.Random(5)
    servers = _random_servers(rnd, 23)
    s = create("sh", servers, flags=flags)
    table = s.lookup_table()
    for _ in range(2000):
        f = Flow(rnd.getrandbits(32), rnd.randrange(65536), "203.0.113.10", 80)
        i = s.bucket(f)
        owner = s.servers[table[i] - 1]
        got = s.schedule(f)
        if owner.weight > 0 and not owner.overloaded:
            assert got is owner
        elif not s.flags & {"sh-fallback"}:
            assert got is None
        else:
            want = None
            for k in range(TAB_SIZE):
                cand = s.servers[table[(2 * i + k) % TAB_SIZE] - 1]
                if cand.weight > 0 and not cand.overloaded:
                    want = cand
                    break
            assert got is want


addr4 = st.integers(min_value=0, max_value=2**32 - 1)
port = st.integers(min_value=0, max_value=65535)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(weights=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=12),
       saddr=addr4, sport1=port, sport2=port, daddr1=addr4, daddr2=addr4,
       use_port=st.booleans(), fallback=st.booleans())
def test_same_key_same_server(weights, saddr, sport1, sport2, daddr1, daddr2, use_port,
                              fallback):
    """Property: the scheduler is a pure function of its key. Without sh-port the key is the
    source address (ports and destination are ignored); with sh-port it is address+port.
    Asking again never changes the answer."""
    servers = [RealServer(f"10.1.0.{i + 1}", 80, weight=w) for i, w in enumerate(weights)]
    flags = set()
    if use_port:
        flags.add("sh-port")
    if fallback:
        flags.add("sh-fallback")
    s = create("sh", servers, flags=flags)
    f1 = Flow(saddr, sport1, daddr1, 80)
    f2 = Flow(saddr, sport1 if use_port else sport2, daddr2, 443, "udp")
    first = s.schedule(f1)
    assert s.schedule(f2) is first
    assert s.schedule(f1) is first
