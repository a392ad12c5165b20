"""wlc (ip_vs_wlc.c): least (activeconns * 256 + inactconns) / weight among available
servers, compared by exact cross-multiplication; ties keep the first server in list order."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from tests.helpers.sched import FLOW, rs


def test_overhead_is_divided_by_weight():
    """ip_vs_wlc.c: 256 / 1 (one active conn at weight 1) is more than 512 / 3."""
    a, b = rs(1, weight=1, act=1), rs(2, weight=3, act=2)
    assert create("wlc", [a, b]).schedule(FLOW) is b


def test_inactive_connections_count_one_256th():
    """include/net/ip_vs.h: overhead = activeconns * 256 + inactconns."""
    a, b = rs(1, inact=10), rs(2, inact=9)
    assert create("wlc", [a, b]).schedule(FLOW) is b
    a, b = rs(1, act=1), rs(2, inact=257)
    assert create("wlc", [a, b]).schedule(FLOW) is a


def test_equal_ratios_keep_the_first_server():
    """ip_vs_wlc.c: the pick changes only when loh * w > doh * lw strictly, so 512/2 and
    256/1 tie and the first in list order stays."""
    a, b = rs(1, weight=2, act=2), rs(2, weight=1, act=1)
    assert create("wlc", [a, b]).schedule(FLOW) is a
    assert create("wlc", [b, a]).schedule(FLOW) is b


def test_cross_multiplication_is_exact_for_large_weights():
    """ip_vs_wlc.c multiplies in 64 bits ((__s64)loh * weight), so ratios differing by
    about 2**-62 are still told apart: (2**31-2)/(2**31-1) > (2**31-3)/(2**31-2)."""
    wa, wb = 2**31 - 1, 2**31 - 2
    a = rs(1, weight=wa, act=(wa - 1) // 256, inact=(wa - 1) % 256)
    b = rs(2, weight=wb, act=(wb - 1) // 256, inact=(wb - 1) % 256)
    assert a.activeconns * 256 + a.inactconns == wa - 1
    assert create("wlc", [a, b]).schedule(FLOW) is b
    # Two inactive connections fewer make a the lighter: (wa-3)/wa < (wb-1)/wb.
    a.inactconns -= 2
    assert create("wlc", [a, b]).schedule(FLOW) is a


def test_quiesced_and_overloaded_servers_are_never_picked():
    """ip_vs_wlc.c: the first pick needs weight > 0 and no IP_VS_DEST_F_OVERLOAD; later
    servers skip the overload flag and a weight of 0 can never compare lower."""
    idle0, idle_ovl = rs(1, weight=0), rs(2, overloaded=True)
    busy, busier = rs(3, act=5), rs(4, act=6)
    sched = create("wlc", [idle0, idle_ovl, busy, busier, rs(5, weight=0), rs(6, overloaded=True)])
    assert sched.schedule(FLOW) is busy


def test_empty_and_all_unavailable_give_none():
    """ip_vs_wlc.c returns NULL when no server has weight > 0 without the overload flag."""
    assert create("wlc", []).schedule(FLOW) is None
    assert create("wlc", [rs(1, weight=0), rs(2, weight=5, overloaded=True)]).schedule(FLOW) is None


def test_a_counted_sequence_between_weights_3_and_1():
    """Hand-worked, each pick gaining one active connection, a (w 3) listed before b (w 1):
    a 0 | b 0 -> a; 85.3 | 0 -> b; 85.3 | 256 -> a; 170.7 | 256 -> a; 256 | 256 -> a (tie,
    first); 341 | 256 -> b; 341 | 512 -> a; 426 | 512 -> a; 512 | 512 -> a; 597 | 512 -> b."""
    a, b = rs(1, weight=3), rs(2, weight=1)
    sched = create("wlc", [a, b])
    got = ""
    for _ in range(10):
        d = sched.schedule(FLOW)
        d.activeconns += 1
        got += "a" if d is a else "b"
    assert got == "abaaabaaab"


def test_list_changes_take_effect_on_the_next_pick():
    """A new server enters at the head (list_add_rcu) and, idle, wins; editing its weight to
    0 quiesces it; removing the current favourite leaves the next least loaded."""
    a, b = rs(1, weight=2, act=1), rs(2, weight=1, act=1)   # 128 | 256
    sched = create("wlc", [a, b])
    assert sched.schedule(FLOW) is a
    c = rs(3, weight=1)
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is c
    c.weight = 0
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is a
    sched.update([c, b])
    assert sched.schedule(FLOW) is b


def test_ipv6_servers():
    """Addresses play no part: an IPv6 service picks the same way."""
    a = RealServer("2001:db8::1", 80, weight=1)
    b = RealServer("2001:db8::2", 80, weight=4)
    a.activeconns, b.activeconns = 1, 3                      # 256 | 192
    flow = Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")
    assert create("wlc", [a, b]).schedule(flow) is b


servers_st = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 20), st.integers(0, 600), st.booleans()),
    max_size=8)


@settings(max_examples=150, deadline=None)
@given(servers_st)
def test_never_picks_a_server_more_loaded_per_weight_than_an_available_one(spec):
    """Property (ip_vs_wlc.c): the pick is available, no available server has a strictly
    smaller overhead / weight, and among the least loaded it is the first in list order;
    None only when no server is available."""
    servers = [rs(i + 1, w, a, i_, o) for i, (w, a, i_, o) in enumerate(spec)]
    got = create("wlc", servers).schedule(FLOW)
    avail = [s for s in servers if s.weight > 0 and not s.overloaded]
    if not avail:
        assert got is None
        return
    assert got in avail
    ratio = {id(s): Fraction(s.activeconns * 256 + s.inactconns, s.weight) for s in avail}
    assert all(ratio[id(got)] <= ratio[id(s)] for s in avail)
    assert got is next(s for s in avail if ratio[id(s)] == ratio[id(got)])
