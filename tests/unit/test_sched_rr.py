"""rr (ip_vs_rr.c): a saved list position, a walk that starts just after it and wraps, servers
overloaded or of weight 0 stepped over, and del_dest moving the position back one server
when the saved server itself is removed."""
from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import RealServer, create
from tests.helpers.sched import FLOW, FLOW6, picks


def make(spec: str, v6: bool = False):
    """Named servers in list order ("ABC" -> A first) and an rr scheduler over them."""
    s = {}
    for i, name in enumerate(spec):
        s[name] = RealServer(f"2001:db8::{i + 1}" if v6 else f"192.0.2.{i + 1}", 80)
    return s, create("rr", list(s.values()))


def test_first_round_follows_the_list_from_the_head():
    """ip_vs_rr_init_svc saves the list head, so the first walk starts at the first server
    (the newest, as the kernel's list is kept) and goes on in list order, wrapping."""
    s, sched = make("ABC")
    assert picks(sched, s, 7) == "ABCABCA"


def test_weight_zero_and_overloaded_servers_are_stepped_over():
    """ip_vs_rr_schedule takes a server only if it lacks IP_VS_DEST_F_OVERLOAD and has
    weight > 0; the flag is read live, so clearing it lets the server back in at its turn."""
    s, sched = make("ABCD")
    s["B"].weight = 0
    s["C"].overloaded = True
    assert picks(sched, s, 4) == "ADAD"
    s["C"].overloaded = False
    assert picks(sched, s, 4) == "ACDA"


def test_the_saved_server_is_tried_last_and_can_be_picked_again():
    """The walk ends at the saved server itself (checked before the stop test), so a sole
    available server is returned on every call."""
    s, sched = make("ABC")
    s["A"].weight = 0
    s["C"].overloaded = True
    assert picks(sched, s, 3) == "BBB"


def test_no_available_server_gives_none_and_keeps_the_position():
    """When the walk comes back to the saved server without a hit the kernel returns NULL
    and leaves sched_data alone: the next success continues after the same server."""
    s, sched = make("ABC")
    assert picks(sched, s, 1) == "A"
    for rs in s.values():
        rs.overloaded = True
    assert picks(sched, s, 2) == "--"
    for rs in s.values():
        rs.overloaded = False
    assert picks(sched, s, 2) == "BC"


def test_empty_list_and_all_quiesced_give_none():
    """An empty list and a list of weight-0 servers both make ip_vs_rr_schedule fail."""
    assert create("rr", []).schedule(FLOW) is None
    s, sched = make("AB")
    for rs in s.values():
        rs.weight = 0
    assert picks(sched, s, 2) == "--"


def test_a_server_added_at_the_head_does_not_move_the_position():
    """rr has no add_dest hook: list_add_rcu puts the new server first and sched_data
    still names the saved server, so the newcomer's turn comes after the wrap."""
    s, sched = make("ABC")
    assert picks(sched, s, 2) == "AB"
    s["D"] = RealServer("192.0.2.44", 80)
    sched.update([s["D"], s["A"], s["B"], s["C"]])
    assert picks(sched, s, 5) == "CDABC"


def test_a_server_added_before_any_pick_is_first():
    """With sched_data still at the head, the walk starts at the new head server."""
    s, sched = make("AB")
    s["D"] = RealServer("192.0.2.44", 80)
    sched.update([s["D"], s["A"], s["B"]])
    assert picks(sched, s, 4) == "DABD"


def test_removing_the_saved_server_continues_with_its_successor():
    """ip_vs_rr_del_dest: when the saved entry is unlinked, sched_data becomes its
    predecessor (reached via the still-valid next->prev), so the next pick is the server
    that followed the removed one; not the head (reset) and not one further (index kept)."""
    s, sched = make("ABCD")
    assert picks(sched, s, 2) == "AB"
    sched.update([s["A"], s["C"], s["D"]])
    assert picks(sched, s, 4) == "CDAC"


def test_removing_the_saved_first_server_falls_back_to_the_head():
    """The predecessor of the first entry is the list head itself."""
    s, sched = make("ABC")
    assert picks(sched, s, 1) == "A"
    sched.update([s["B"], s["C"]])
    assert picks(sched, s, 3) == "BCB"


def test_removing_other_servers_leaves_the_position_on_the_same_server():
    """Only the saved entry moves sched_data; removals before or after it do not."""
    s, sched = make("ABCDE")
    assert picks(sched, s, 3) == "ABC"
    sched.update([s["B"], s["C"], s["E"]])     # A before, D after the saved C
    assert picks(sched, s, 3) == "EBC"


def test_remove_and_add_in_one_update():
    """Removals run first (position: B removed -> A), then the addition at the head."""
    s, sched = make("ABC")
    assert picks(sched, s, 2) == "AB"
    s["D"] = RealServer("192.0.2.44", 80)
    sched.update([s["D"], s["A"], s["C"]])
    assert picks(sched, s, 4) == "CDAC"


def test_an_edit_does_not_touch_the_position():
    """rr has no upd_dest hook: an `ipvsadm -e` changes availability only."""
    s, sched = make("ABC")
    assert picks(sched, s, 1) == "A"
    s["B"].weight = 0
    sched.update(list(s.values()))
    assert picks(sched, s, 3) == "CAC"
    s["B"].weight = 2
    sched.update(list(s.values()))
    assert picks(sched, s, 3) == "ABC"


def test_ipv6_servers_rotate_the_same_way():
    """The address family plays no part in rr."""
    s, sched = make("ABC", v6=True)
    s["B"].overloaded = True
    assert picks(sched, s, 4, FLOW6) == "ACAC"


@settings(max_examples=60, deadline=None)
@given(avail=st.lists(st.booleans(), min_size=1, max_size=9), warmup=st.integers(0, 12))
def test_each_round_visits_every_available_server_once_in_cyclic_order(avail, warmup):
    """From any saved position, as many picks as there are available servers return each
    of them exactly once, in list order from the one after the saved server."""
    lst = [RealServer(f"192.0.2.{i + 1}", 80, weight=1 if a else 0) for i, a in enumerate(avail)]
    sched = create("rr", lst)
    last = None
    for _ in range(warmup):
        last = sched.schedule(FLOW)
    up = [i for i, rs in enumerate(lst) if rs.weight > 0]
    got = [lst.index(sched.schedule(FLOW)) if up else None for _ in range(len(up))]
    if not up:
        assert sched.schedule(FLOW) is None
        return
    start = lst.index(last) if last is not None else -1
    expected = sorted(up, key=lambda i: (i <= start, i))
    assert got == expected
