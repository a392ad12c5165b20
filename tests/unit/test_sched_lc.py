"""lc (ip_vs_lc.c): least activeconns * 256 + inactconns among available servers, weights
only deciding availability; ties keep the first server in list order."""
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from fastlvs.schedulers.lc import conn_overhead
from tests.helpers.sched import FLOW, rs


def test_one_active_connection_weighs_256_inactive_ones():
    """include/net/ip_vs.h ip_vs_dest_conn_overhead: activeconns << 8 + inactconns, so 255
    inactive connections are lighter than one active one and 257 are heavier."""
    a, b = rs(1, act=1), rs(2, inact=255)
    assert create("lc", [a, b]).schedule(FLOW) is b
    b.inactconns = 257
    assert create("lc", [a, b]).schedule(FLOW) is a
    assert conn_overhead(a) == 256 and conn_overhead(b) == 257


def test_ties_keep_the_first_server_in_list_order():
    """ip_vs_lc.c: the pick changes only on `doh < loh` (strict), so of equal overheads
    the earliest in the list wins, whichever end it was added at."""
    a, b, c = rs(1, act=1), rs(2, inact=256), rs(3, act=1)
    assert create("lc", [a, b, c]).schedule(FLOW) is a
    assert create("lc", [c, b, a]).schedule(FLOW) is c
    assert create("lc", [b, a, c]).schedule(FLOW) is b


def test_weight_is_ignored_except_zero():
    """ip_vs_lc.c compares bare overheads: a weight of 100 does not make a loaded server
    preferable to a lightly loaded server of weight 1."""
    big, small = rs(1, weight=100, inact=10), rs(2, weight=1, inact=5)
    assert create("lc", [big, small]).schedule(FLOW) is small


def test_quiesced_and_overloaded_servers_are_skipped_even_when_idle():
    """ip_vs_lc.c skips IP_VS_DEST_F_OVERLOAD and weight == 0 before comparing."""
    idle0, idle_ovl, busy = rs(1, weight=0), rs(2, overloaded=True), rs(3, act=9, inact=9)
    assert create("lc", [idle0, idle_ovl, busy]).schedule(FLOW) is busy


def test_empty_and_all_unavailable_give_none():
    """ip_vs_lc.c returns NULL ("no destination available") when nothing qualifies."""
    assert create("lc", []).schedule(FLOW) is None
    assert create("lc", [rs(1, weight=0), rs(2, overloaded=True)]).schedule(FLOW) is None


def test_a_sequence_with_connections_counted_and_list_changes():
    """Hand-worked: each pick gets one active connection. From three idle servers the
    picks go a, b, c (each the first of the zero overheads), then a again (all 256, the
    first wins). A server added at the head with no connections wins next; quiescing it
    (weight 0) hands the choice back to the least loaded of the others; removing b leaves
    a and c."""
    a, b, c = rs(1), rs(2), rs(3)
    sched = create("lc", [a, b, c])
    got = []
    for _ in range(4):
        d = sched.schedule(FLOW)
        d.activeconns += 1
        got.append(d)
    assert got == [a, b, c, a]        # overheads now a=512, b=256, c=256
    d = rs(4)
    sched.update([d, a, b, c])
    assert sched.schedule(FLOW) is d
    d.weight = 0
    sched.update([d, a, b, c])
    assert sched.schedule(FLOW) is b
    sched.update([d, a, c])
    assert sched.schedule(FLOW) is c
    c.inactconns = 300                # c = 556 > a = 512
    assert sched.schedule(FLOW) is a


def test_ipv6_servers():
    """The overhead ignores addresses: IPv6 services schedule the same way."""
    a = RealServer("2001:db8::1", 80)
    b = RealServer("2001:db8::2", 80)
    a.activeconns = 1
    flow = Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")
    assert create("lc", [a, b]).schedule(flow) is b


servers_st = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 20), st.integers(0, 600), st.booleans()),
    max_size=8)


@settings(max_examples=150, deadline=None)
@given(servers_st)
def test_never_picks_a_more_loaded_server_than_an_available_one(spec):
    """Property (ip_vs_lc.c): the pick is available and no available server has a strictly
    smaller overhead; among the least loaded it is the first in list order; None only when
    no server has weight > 0 and no overload flag."""
    servers = [rs(i + 1, w, a, i_, o) for i, (w, a, i_, o) in enumerate(spec)]
    got = create("lc", servers).schedule(FLOW)
    avail = [s for s in servers if s.weight > 0 and not s.overloaded]
    if not avail:
        assert got is None
        return
    assert got in avail
    load = {id(s): s.activeconns * 256 + s.inactconns for s in servers}
    assert all(load[id(got)] <= load[id(s)] for s in avail)
    assert got is next(s for s in avail if load[id(s)] == load[id(got)])
    # weight plays no part: the same pick with every available weight multiplied
    for s in avail:
        s.weight *= 7
    assert create("lc", servers).schedule(FLOW) is got
