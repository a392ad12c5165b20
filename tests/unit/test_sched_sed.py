"""sed (ip_vs_sed.c): least (activeconns + 1) / weight among available servers; inactive
connections ignored; ties keep the first server in list order."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from tests.helpers.sched import FLOW, rs


def test_the_new_connection_counts_so_idle_servers_compare_by_weight():
    """ip_vs_sed.c overhead = activeconns + 1: two idle servers are 1/1 against 1/10, so
    the heavier one wins where wlc would take the first (0 against 0)."""
    a, b = rs(1, weight=1), rs(2, weight=10)
    assert create("sed", [a, b]).schedule(FLOW) is b
    assert create("wlc", [a, b]).schedule(FLOW) is a


def test_inactive_connections_are_ignored():
    """ip_vs_sed_dest_overhead reads activeconns only."""
    a, b = rs(1, inact=100000), rs(2, act=1)
    assert create("sed", [a, b]).schedule(FLOW) is a


def test_equal_expected_delays_keep_the_first_server():
    """ip_vs_sed.c replaces its pick only when loh * w > doh * lw strictly: 2/2 ties 1/1."""
    a, b = rs(1, weight=2, act=1), rs(2, weight=1)
    assert create("sed", [a, b]).schedule(FLOW) is a
    assert create("sed", [b, a]).schedule(FLOW) is b


def test_quiesced_and_overloaded_servers_are_never_picked():
    """ip_vs_sed.c: the first pick needs weight > 0 and no overload flag, later servers skip
    the flag and a weight of 0 never compares lower."""
    s = [rs(1, weight=0), rs(2, weight=50, overloaded=True), rs(3, act=4), rs(4, weight=0),
         rs(5, weight=50, overloaded=True), rs(6, act=3)]
    assert create("sed", s).schedule(FLOW) is s[5]


def test_empty_and_all_unavailable_give_none():
    """ip_vs_sed.c returns NULL when no server qualifies."""
    assert create("sed", []).schedule(FLOW) is None
    assert create("sed", [rs(1, weight=0), rs(2, overloaded=True)]).schedule(FLOW) is None


def test_a_counted_sequence_between_weights_3_and_1():
    """Hand-worked, each pick gaining one active connection, a (w 3) before b (w 1):
    1/3 | 1 -> a; 2/3 | 1 -> a; 1 | 1 -> a (tie); 4/3 | 1 -> b; 4/3 | 2 -> a; 5/3 | 2 -> a;
    2 | 2 -> a (tie); 7/3 | 2 -> b."""
    a, b = rs(1, weight=3), rs(2, weight=1)
    sched = create("sed", [a, b])
    got = ""
    for _ in range(8):
        d = sched.schedule(FLOW)
        d.activeconns += 1
        got += "a" if d is a else "b"
    assert got == "aaabaaab"


def test_list_changes_take_effect_on_the_next_pick():
    """A server added at the head competes at once; a weight edited to 0 quiesces it."""
    a, b = rs(1, weight=1, act=1), rs(2, weight=1, act=2)    # 2 | 3
    sched = create("sed", [a, b])
    assert sched.schedule(FLOW) is a
    c = rs(3, weight=1, act=1)                               # 2: ties a, but c is first now
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is c
    c.weight = 0
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is a
    sched.update([c, b])
    assert sched.schedule(FLOW) is b


def test_ipv6_servers():
    """Addresses play no part."""
    a = RealServer("2001:db8::1", 80, weight=1)
    b = RealServer("2001:db8::2", 80, weight=3)
    a.activeconns, b.activeconns = 0, 3                      # 1 | 4/3
    flow = Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")
    assert create("sed", [a, b]).schedule(flow) is a


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 20), st.booleans()), max_size=8))
def test_picks_the_first_least_expected_delay(spec):
    """Property: the pick is the first available server with the least (act + 1) / weight."""
    servers = [rs(i + 1, w, a, 0, o) for i, (w, a, o) in enumerate(spec)]
    got = create("sed", servers).schedule(FLOW)
    avail = [s for s in servers if s.weight > 0 and not s.overloaded]
    if not avail:
        assert got is None
        return
    best = min(Fraction(s.activeconns + 1, s.weight) for s in avail)
    assert got is next(s for s in avail if Fraction(s.activeconns + 1, s.weight) == best)
