"""nq (ip_vs_nq.c): the first available server with no active connection, at once; if
every available server is busy, the least (activeconns + 1) / weight, first on ties."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from tests.helpers.sched import FLOW, rs


def test_the_first_idle_server_wins_whatever_the_weights():
    """ip_vs_nq.c returns an available server with activeconns == 0 as soon as the scan
    meets it: a busy server of weight 100 earlier in the list and an idle one of weight 100
    later both lose to the first idle server; inactive connections do not make it busy."""
    busy, idle, idle_big = rs(1, weight=100, act=1), rs(2, inact=1000), rs(3, weight=100)
    assert create("nq", [busy, idle, idle_big]).schedule(FLOW) is idle


def test_idle_but_unavailable_servers_are_skipped():
    """ip_vs_nq.c tests the overload flag and weight == 0 before the idle shortcut; with no
    available idle server it falls back to (act + 1) / weight: 4/1 against 6/2 -> d."""
    s = [rs(1, weight=0), rs(2, overloaded=True), rs(3, act=3), rs(4, weight=2, act=5)]
    assert create("nq", s).schedule(FLOW) is s[3]


def test_busy_servers_compare_like_sed_with_ties_to_the_first():
    """ip_vs_nq.c: loh * w > doh * lw, strict: 3/3 ties 2/2 and the first stays."""
    a, b = rs(1, weight=3, act=2), rs(2, weight=2, act=1)
    assert create("nq", [a, b]).schedule(FLOW) is a
    assert create("nq", [b, a]).schedule(FLOW) is b


def test_empty_and_all_unavailable_give_none():
    """ip_vs_nq.c returns NULL when no server qualifies, idle or not."""
    assert create("nq", []).schedule(FLOW) is None
    assert create("nq", [rs(1, weight=0), rs(2, overloaded=True)]).schedule(FLOW) is None


def test_a_counted_sequence_between_weights_1_and_3():
    """Hand-worked, each pick gaining one active connection, a (w 1) before b (w 3): a idle
    -> a; b idle -> b; then 2 | 2/3 -> b; 2 | 1 -> b; 2 | 4/3 -> b; 2 | 5/3 -> b;
    2 | 2 -> a (tie); 3 | 2 -> b. (sed would start with b: 1/1 against 1/3.)"""
    a, b = rs(1, weight=1), rs(2, weight=3)
    sched = create("nq", [a, b])
    got = ""
    for _ in range(8):
        d = sched.schedule(FLOW)
        d.activeconns += 1
        got += "a" if d is a else "b"
    assert got == "abbbbbab"


def test_list_changes_take_effect_on_the_next_pick():
    """A new idle server added at the head is taken at once; quiescing it sends the next
    flow back to the expected-delay choice; an idle server at the tail is found too."""
    a, b = rs(1, act=2), rs(2, act=1)
    sched = create("nq", [a, b])
    assert sched.schedule(FLOW) is b
    c = rs(3)
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is c
    c.weight = 0
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is b
    d = rs(4)
    sched.update([c, a, b, d])
    assert sched.schedule(FLOW) is d


def test_ipv6_servers():
    """Addresses play no part."""
    a = RealServer("2001:db8::1", 80)
    b = RealServer("2001:db8::2", 80)
    a.activeconns = 1
    flow = Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")
    assert create("nq", [a, b]).schedule(flow) is b


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 5), st.booleans()), max_size=8))
def test_idle_first_then_least_expected_delay(spec):
    """Property: the first available idle server if any, else the first available server
    with the least (act + 1) / weight; None when nothing is available."""
    servers = [rs(i + 1, w, a, 0, o) for i, (w, a, o) in enumerate(spec)]
    got = create("nq", servers).schedule(FLOW)
    avail = [s for s in servers if s.weight > 0 and not s.overloaded]
    if not avail:
        assert got is None
        return
    idle = [s for s in avail if s.activeconns == 0]
    if idle:
        assert got is idle[0]
        return
    best = min(Fraction(s.activeconns + 1, s.weight) for s in avail)
    assert got is next(s for s in avail if Fraction(s.activeconns + 1, s.weight) == best)
