"""ovf (ip_vs_ovf.c): the first server in list order with the highest weight among those
not overloaded, of weight != 0 and with activeconns not above weight (activeconns == weight
still qualifies); inactive connections play no part."""
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import create
from tests.helpers.sched import FLOW, FLOW6, rs


def test_the_top_server_overflows_only_when_activeconns_exceeds_its_weight():
    """The skip test is `activeconns > weight`: with weight 3 the top server still takes
    the connection at 3 active ones and overflows to the next weight at 4."""
    a, b = rs(1, 3), rs(2, 2)
    sched = create("ovf", [a, b])
    got = []
    for act in range(5):
        a.activeconns = act
        got.append(sched.schedule(FLOW))
    assert got == [a, a, a, a, b]


def test_overflow_cascades_down_the_weights():
    """Each server in turn takes connections until it is over its own weight; with all of
    them over, there is no destination. One new active connection per pick:
    A (w 2) takes 3 (at 0, 1, 2), then B (w 1) takes 2 (at 0, 1), then none."""
    a, b = rs(1, 2), rs(2, 1)
    sched = create("ovf", [b, a])
    seq = []
    for _ in range(6):
        d = sched.schedule(FLOW)
        seq.append("-" if d is None else ("A" if d is a else "B"))
        if d is not None:
            d.activeconns += 1
    assert "".join(seq) == "AAABB-"


def test_equal_weights_keep_the_first_in_list_order():
    """`w > hw` is strict once a server is held: of equal weights the earliest wins, and
    the next one takes over only when the first is over budget."""
    a, b, c = rs(1, 1), rs(2, 2), rs(3, 2)
    sched = create("ovf", [a, b, c])
    assert sched.schedule(FLOW) is b
    b.activeconns = 3
    assert sched.schedule(FLOW) is c
    b.activeconns = 0
    assert sched.schedule(FLOW) is b
    sched.update([a, b])                  # c removed and added back: now at the head
    sched.update([c, a, b])
    assert sched.schedule(FLOW) is c


def test_inactive_connections_never_overflow_a_server():
    """Only activeconns is compared with the weight."""
    a, b = rs(1, 2, inact=1_000_000), rs(2, 1)
    assert create("ovf", [a, b]).schedule(FLOW) is a


def test_weight_zero_and_overloaded_are_skipped():
    """`w == 0` and IP_VS_DEST_F_OVERLOAD skip a server even with no connections; the flag
    is read live."""
    z, o, low = rs(1, 0), rs(2, 5, overloaded=True), rs(3, 1)
    sched = create("ovf", [z, o, low])
    assert sched.schedule(FLOW) is low
    o.overloaded = False
    assert sched.schedule(FLOW) is o


def test_none_when_nothing_qualifies():
    """Empty list, all quiesced, all over budget: the kernel returns NULL."""
    assert create("ovf", []).schedule(FLOW) is None
    assert create("ovf", [rs(1, 0), rs(2, 0)]).schedule(FLOW) is None
    assert create("ovf", [rs(1, 1, act=2), rs(2, 3, act=4)]).schedule(FLOW) is None


def test_ipv6_servers():
    """The address family plays no part in ovf."""
    a, b = rs(1, 1, v6=True), rs(2, 2, act=3, v6=True)
    assert create("ovf", [a, b]).schedule(FLOW6) is a


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), st.booleans()), max_size=10))
def test_the_pick_is_the_first_in_budget_server_of_top_weight(spec):
    """Whatever the weights, counters and flags: the earliest server of maximum weight among
    those with weight > 0, no flag and activeconns <= weight; None if there is none."""
    lst = [rs(i + 1, w, act=a, overloaded=o) for i, (w, a, o) in enumerate(spec)]
    got = create("ovf", lst).schedule(FLOW)
    ok = [r for r in lst if r.weight > 0 and not r.overloaded and r.activeconns <= r.weight]
    if not ok:
        assert got is None
    else:
        top = max(r.weight for r in ok)
        assert got is next(r for r in ok if r.weight == top)
