"""fo (ip_vs_fo.c): the first server in list order with the highest weight among those not
overloaded; the comparison `weight > hw` starts from hw = 0 and is strict."""
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import create
from tests.helpers.sched import FLOW, FLOW6, rs


def test_the_highest_weight_takes_every_connection():
    """ip_vs_fo.c keeps the server with the largest weight; nothing rotates."""
    a, b, c = rs(1, 1), rs(2, 3), rs(3, 2)
    sched = create("fo", [a, b, c])
    assert [sched.schedule(FLOW) for _ in range(3)] == [b, b, b]


def test_equal_weights_keep_the_first_in_list_order():
    """`weight > hw` is strict: a later server of the same weight never displaces the
    earlier one, so the newest (nearest the head) wins a tie."""
    a, b, c = rs(1, 2), rs(2, 3), rs(3, 3)
    assert create("fo", [a, b, c]).schedule(FLOW) is b
    assert create("fo", [a, c, b]).schedule(FLOW) is c


def test_a_server_added_at_the_head_wins_a_tie():
    """list_add_rcu links a new server first, so with equal top weights it takes over."""
    a, b = rs(1, 3), rs(2, 3)
    sched = create("fo", [a, b])
    assert sched.schedule(FLOW) is a
    d = rs(4, 3)
    sched.update([d, a, b])
    assert sched.schedule(FLOW) is d
    sched.update([a, b])
    assert sched.schedule(FLOW) is a


def test_overloaded_servers_fail_over_to_the_next_weight():
    """IP_VS_DEST_F_OVERLOAD is read live: the top server overloaded hands over to the next
    highest, and takes back when the flag clears."""
    a, b, c = rs(1, 1), rs(2, 5), rs(3, 4)
    sched = create("fo", [a, b, c])
    b.overloaded = True
    assert sched.schedule(FLOW) is c
    c.overloaded = True
    assert sched.schedule(FLOW) is a
    b.overloaded = False
    assert sched.schedule(FLOW) is b


def test_weight_edits_apply_and_connections_do_not_matter():
    """Only weights decide: a busy top server keeps the traffic; lowering its weight (an
    `ipvsadm -e`) moves it."""
    a, b = rs(1, 5, act=10_000, inact=10_000), rs(2, 4)
    sched = create("fo", [a, b])
    assert sched.schedule(FLOW) is a
    a.weight = 4
    sched.update([a, b])
    assert sched.schedule(FLOW) is a      # 4 == 4: the first stays
    a.weight = 3
    sched.update([a, b])
    assert sched.schedule(FLOW) is b


def test_weight_zero_is_never_chosen_and_none_when_nothing_is_available():
    """hw starts at 0 and the test is `> hw`, so weight 0 never qualifies; with nothing
    that qualifies (or an empty list) the kernel returns NULL."""
    assert create("fo", []).schedule(FLOW) is None
    assert create("fo", [rs(1, 0), rs(2, 0)]).schedule(FLOW) is None
    assert create("fo", [rs(1, 0), rs(2, 7, overloaded=True)]).schedule(FLOW) is None
    z, one = rs(1, 0), rs(2, 1)
    assert create("fo", [z, one]).schedule(FLOW) is one


def test_ipv6_servers():
    """The address family plays no part in fo."""
    a, b = rs(1, 1, v6=True), rs(2, 2, v6=True)
    assert create("fo", [a, b]).schedule(FLOW6) is b


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=10))
def test_the_pick_is_the_first_available_server_of_top_weight(spec):
    """Whatever the weights and flags: None iff no server has weight > 0 and no flag;
    otherwise the earliest such server whose weight is the maximum among them."""
    lst = [rs(i + 1, w, overloaded=o) for i, (w, o) in enumerate(spec)]
    got = create("fo", lst).schedule(FLOW)
    avail = [r for r in lst if r.weight > 0 and not r.overloaded]
    if not avail:
        assert got is None
    else:
        top = max(r.weight for r in avail)
        assert got is next(r for r in avail if r.weight == top)
