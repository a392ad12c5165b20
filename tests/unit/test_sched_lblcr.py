"""lblcr (ip_vs_lblcr.c): each destination address owns a server set; a flow goes to the
set's least loaded usable member unless it is overloaded by the half-load rule, in which
case wlc's choice joins the set; a set unchanged for lblcr_expiration sheds its most loaded
member."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from tests.helpers.sched import Clock, rs


def to(daddr, sport=40000):
    return Flow("198.51.100.7", sport, daddr, 80)


X, Y = to("203.0.113.10"), to("203.0.113.11")


def _replicated(clock, expiration=None):
    """a (w 2) and b (w 2); X -> a, then a overloaded (3 active > 2, b idle is under half)
    makes wlc add b: X's set is [b, a] (newest first), last changed at clock time 10."""
    a, b = rs(1, weight=2), rs(2, weight=2)
    sched = create("lblcr", [a, b], clock=clock)
    if expiration is not None:
        sched.expiration = expiration
    assert sched.schedule(X) is a
    clock.t = 10.0
    a.activeconns = 3
    assert sched.schedule(X) is b
    a.activeconns = 0
    return sched, a, b


def test_a_new_address_gets_the_wlc_choice_and_keeps_it():
    """ip_vs_lblcr_new makes a one-member set; the set's minimum is its only member, kept
    while it is not overloaded even if another server is now less loaded."""
    a, b = rs(1), rs(2)
    sched = create("lblcr", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.inactconns = 5
    assert sched.schedule(X) is a
    assert sched.schedule(to("203.0.113.10", sport=9)) is a
    assert sched.schedule(Y) is b


def test_an_overloaded_member_brings_in_a_replica_and_the_set_shares_the_address():
    """When ip_vs_dest_set_min's pick is overloaded (is_overloaded), wlc's choice is added
    to the set (at its head) and returned; from then on the address goes to the least
    loaded member of the set, ties to the newest member."""
    clock = Clock()
    sched, a, b = _replicated(clock)
    b.activeconns = 1                       # b 128 against a 0
    assert sched.schedule(X) is a
    a.activeconns = 1                       # 128 each: the head (b) wins the tie
    assert sched.schedule(X) is b
    b.activeconns = 2                       # b 256 against a 128
    assert sched.schedule(X) is a
    c = rs(3, weight=2)
    sched.update([c, a, b])                 # c, idle, is not in X's set
    assert sched.schedule(X) is a
    assert sched.schedule(Y) is c


def test_the_set_minimum_skips_overload_flagged_members():
    """Unlike lblc's cached server, ip_vs_dest_set_min skips members with the overload flag:
    X moves to wlc's choice, which joins the set."""
    a, b = rs(1), rs(2)
    sched = create("lblcr", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.overloaded = True
    assert sched.schedule(X) is b
    a.overloaded = False
    b.inactconns = 1
    assert sched.schedule(X) is a           # a is still a member, and now the lighter one


def test_an_old_set_sheds_its_most_loaded_member():
    """After more than lblcr_expiration without a change (time_after: strictly more), a set
    of two or more loses ip_vs_dest_set_max's member, the most loaded per weight. Set
    [b, a] changed at t=10 with expiration 100: still whole at 110, a (more loaded) shed at
    111 -- seen at 112 where b, now much heavier, is still X's only member."""
    for when, expect in ((110.0, "a"), (111.0, "b")):
        clock = Clock()
        sched, a, b = _replicated(clock, expiration=100)
        a.activeconns = 1                   # a 128, b 0
        clock.t = when
        assert sched.schedule(X) is b
        clock.t = 112.0
        b.inactconns = 1000                 # b 500 against a 128: the set's min is a if present
        assert sched.schedule(X) is {"a": a, "b": b}[expect], when


def test_a_single_member_is_never_shed():
    """Shedding needs atomic_read(&en->set.size) > 1: a one-member set keeps its server
    however old, so X stays on a while wlc would now choose b."""
    clock = Clock()
    a, b = rs(1), rs(2)
    sched = create("lblcr", [a, b], clock=clock)
    sched.expiration = 100
    assert sched.schedule(X) is a
    a.inactconns = 5
    for t in (500.0, 501.0, 502.0):
        clock.t = t
        assert sched.schedule(X) is a


def test_shedding_counts_as_a_change_of_the_set():
    """ip_vs_dest_set_erase sets lastmod: after shedding at 121 the remaining pair is safe
    until 221, so at 122 nothing more is shed and c, made the lightest again at 123, is
    still a member."""
    clock = Clock()
    a, b, c = rs(1, weight=2), rs(2, weight=2), rs(3, weight=2)
    sched = create("lblcr", [a, b, c], clock=clock)
    sched.expiration = 100
    assert sched.schedule(X) is a
    clock.t = 10.0
    a.activeconns = 3                       # overloaded, b and c idle witnesses
    assert sched.schedule(X) is b           # set [b, a]
    clock.t = 20.0
    b.activeconns = 3                       # both members overloaded, c idle
    assert sched.schedule(X) is c           # set [c, b, a], changed at 20
    a.activeconns, b.activeconns = 2, 1     # a 256, b 128, c 0
    clock.t = 121.0
    assert sched.schedule(X) is c           # a, the most loaded, is shed; changed at 121
    clock.t = 122.0
    c.inactconns = 1000                     # c 500: b is the set's minimum
    assert sched.schedule(X) is b
    clock.t = 123.0
    c.inactconns = 0
    assert sched.schedule(X) is c


def test_the_shed_member_is_still_returned_and_a_removed_member_still_counts():
    """Removed from the list, b stays in X's set: it is never picked (no
    IP_VS_DEST_F_AVAILABLE) but keeps the set at two, and ip_vs_dest_set_max does not test
    availability, so on expiry the live a (128) is shed as the more loaded against b (0) --
    and a, already chosen as the set's minimum, is still returned. The next flow finds only
    b in the set, reschedules to a and adds it back."""
    clock = Clock()
    sched, a, b = _replicated(clock, expiration=100)
    sched.update([a])
    clock.t = 20.0
    assert sched.schedule(X) is a
    a.activeconns = 1
    clock.t = 111.0
    assert sched.schedule(X) is a           # shed, yet returned
    clock.t = 112.0
    assert sched.schedule(X) is a           # rescheduled: set [a, b] changed at 112
    # b comes back: it is still in the set and idle, so it is the set's minimum again.
    sched.update([b, a])
    assert sched.schedule(X) is b


def test_the_most_loaded_member_must_have_weight():
    """ip_vs_dest_set_max considers members with weight > 0 only: with b quiesced, a is
    shed however idle b is; once b's weight is back, X's set is just b."""
    clock = Clock()
    sched, a, b = _replicated(clock, expiration=100)
    a.activeconns = 1
    b.weight = 0
    sched.update([a, b])
    clock.t = 111.0
    assert sched.schedule(X) is a           # set min (b has no weight), then a is shed
    b.weight = 2
    sched.update([a, b])
    b.inactconns = 300                      # b 150 against a 128: a would win if present
    clock.t = 112.0
    assert sched.schedule(X) is b


def test_a_removed_member_is_never_returned_until_its_address_returns():
    """A server removed from the list is skipped in every set; a server added again with
    the same address:port is the kernel's trashed dest taken back, so sets that hold it use
    the new object."""
    a, b = rs(1), rs(2)
    sched = create("lblcr", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    sched.update([b])
    b.inactconns = 5
    for sport in range(3):
        assert sched.schedule(to("203.0.113.10", sport)) is b   # set [b, a]
    a2 = rs(1)
    sched.update([a2, b])
    assert sched.schedule(X) is a2          # a2 is a's slot in the set (0 against b's 5)


def test_an_unused_entry_goes_at_the_first_full_check_a_day_later():
    """Same collector as lblc: full checks every 1800 s drop entries with
    now >= lastuse + lblcr_expiration (24 h): X's whole set goes at the 86400 s check."""
    for when, expect in ((86399.5, "a"), (86400.0, "b")):
        clock = Clock()
        a, b = rs(1), rs(2)
        sched = create("lblcr", [a, b], clock=clock)
        assert sched.schedule(X) is a
        a.inactconns = 1
        clock.t = when
        assert sched.schedule(X) is {"a": a, "b": b}[expect], when


def test_ipv6_addresses_have_their_own_sets():
    """Sets are keyed by the whole destination address, IPv6 included."""
    a = RealServer("2001:db8::1", 80)
    b = RealServer("2001:db8::2", 80)
    sched = create("lblcr", [a, b], clock=Clock())
    x6 = Flow("2001:db8:1::7", 40000, "2001:db8:2::1", 80, "udp")
    y6 = Flow("2001:db8:1::7", 40000, "2001:db8:2::1:0:0", 80, "udp")
    assert sched.schedule(x6) is a
    a.inactconns = 1
    assert sched.schedule(y6) is b
    assert sched.schedule(x6) is a


def test_no_available_server_gives_none():
    """Empty list, or every server quiesced or flagged: NULL, with or without an entry."""
    assert create("lblcr", [], clock=Clock()).schedule(X) is None
    a, b = rs(1), rs(2, overloaded=True)
    sched = create("lblcr", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.weight = 0
    sched.update([a, b])
    assert sched.schedule(X) is None
    assert sched.schedule(Y) is None
    a.weight = 1
    sched.update([a, b])
    assert sched.schedule(X) is a


# -- property ------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("sched"), st.integers(0, 2)),
    st.tuples(st.just("load"), st.integers(0, 3), st.integers(0, 6), st.integers(0, 40)),
    st.tuples(st.just("weight"), st.integers(0, 3), st.integers(0, 5)),
    st.tuples(st.just("flag"), st.integers(0, 3), st.booleans()),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_the_answer_is_a_set_member_or_the_wlc_choice(program):
    """Property (no expiry within the run): each answer is either the least loaded usable
    member of what the address was given before, or -- when that member is overloaded by
    the half-load rule or none is usable -- the wlc choice over the list."""
    pool = [rs(i + 1) for i in range(4)]
    sched = create("lblcr", pool, clock=Clock())
    daddrs = [to(f"203.0.113.{i}") for i in range(3)]
    members = {}
    for op in program:
        if op[0] == "load":
            pool[op[1]].activeconns, pool[op[1]].inactconns = op[2], op[3]
        elif op[0] == "weight":
            pool[op[1]].weight = op[2]
            sched.update(pool)
        elif op[0] == "flag":
            pool[op[1]].overloaded = op[2]
        else:
            got = sched.schedule(daddrs[op[1]])
            mine = members.setdefault(op[1], [])
            usable = [m for m in mine if m.weight > 0 and not m.overloaded]
            best = None
            if usable:
                ratio = [Fraction(m.activeconns * 256 + m.inactconns, m.weight) for m in usable]
                best = usable[ratio.index(min(ratio))]
            if best is not None and not (best.activeconns > best.weight and any(
                    s.activeconns * 2 < s.weight for s in pool)):
                assert got is best
                continue
            avail = [s for s in pool if s.weight > 0 and not s.overloaded]
            if not avail:
                assert got is None
                continue
            ratio = [Fraction(s.activeconns * 256 + s.inactconns, s.weight) for s in avail]
            assert got is avail[ratio.index(min(ratio))]
            if got not in mine:
                mine.insert(0, got)
