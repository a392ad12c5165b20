"""wrr (ip_vs_wrr.c): passes over the list with a falling threshold cw = mw, mw - di, ..., 1
(di = gcd of the positive weights, mw = max weight - di + 1), taking every server that is not
overloaded and has weight >= cw; every add/del/edit recomputes di and mw, restarts at the
head and keeps cw unless it no longer fits."""
from math import gcd

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import RealServer, create
from fastlvs.schedulers import wrr as wrr_mod
from tests.helpers.sched import FLOW, FLOW6, picks


def make(spec: str, weights, v6: bool = False, overloaded: str = ""):
    """Named servers in list order ("ABC" -> A first) with the given weights, and a wrr
    scheduler over them."""
    s = {}
    for i, (name, w) in enumerate(zip(spec, weights)):
        s[name] = RealServer(f"2001:db8::{i + 1}" if v6 else f"192.0.2.{i + 1}", 80, weight=w)
        s[name].overloaded = name in overloaded
    return s, create("wrr", list(s.values()))


def test_a_round_takes_the_heaviest_first_then_lowers_the_threshold():
    """Weights 4, 3, 2 (di 1, mw 4): cw 4 -> A; cw 3 -> A B; cw 2 -> A B C; cw 1 -> A B C;
    then the round repeats from cw = mw."""
    s, sched = make("ABC", [4, 3, 2])
    assert picks(sched, s, 18) == "AABABCABC" * 2


def test_the_step_is_the_gcd_of_the_weights():
    """Weights 4, 2: di = 2, mw = 4 - 1 = 3, so the passes are cw 3 (A) and cw 1 (A B):
    A A B, the 2:1 ratio in three picks rather than six."""
    s, sched = make("AB", [4, 2])
    assert picks(sched, s, 6) == "AABAAB"


def test_weight_zero_is_left_out_of_the_gcd_and_never_picked():
    """ip_vs_wrr_gcd_weight looks only at weights > 0: 6, 0, 3 gives di 3, mw 4:
    cw 4 -> A, cw 1 -> A C."""
    s, sched = make("ABC", [6, 0, 3])
    assert picks(sched, s, 6) == "AACAAC"


def test_overloaded_servers_still_count_for_gcd_and_max():
    """gcd and max weight read every server, flags aside: with C (weight 3) overloaded,
    di is gcd(4, 2, 3) = 1 and mw = 4, giving A A A B A B per round; were C left out,
    di would be 2 and the round A A B."""
    s, sched = make("ABC", [4, 2, 3], overloaded="C")
    assert picks(sched, s, 12) == "AAABAB" * 2


def test_empty_list_all_quiesced_and_all_overloaded_give_none():
    """mw == 0 (no positive weight) fails at once; with positive weights but every server
    overloaded the walk gives up after a whole round."""
    assert create("wrr", []).schedule(FLOW) is None
    s, sched = make("AB", [0, 0])
    assert picks(sched, s, 2) == "--"
    s, sched = make("AB", [2, 1], overloaded="AB")
    assert picks(sched, s, 2) == "--"


def test_after_a_failed_round_from_the_top_the_round_restarts():
    """Weights 2, 1 (mw 2): after A at cw 2, all overloaded: the walk lowers cw to 1, wraps
    to cw 0 after a last pass and gives up with the mark at the head and cw = mw. So once
    the flags clear, the round restarts: A A B (the undisturbed sequence was A B A A B)."""
    s, sched = make("AB", [2, 1])
    assert picks(sched, s, 1) == "A"
    s["A"].overloaded = s["B"].overloaded = True
    assert picks(sched, s, 1) == "-"
    s["A"].overloaded = s["B"].overloaded = False
    assert picks(sched, s, 5) == "AABAA"


def test_after_a_failed_last_pass_the_walk_resumes_after_the_same_server():
    """Weights 2, 1: after A (cw 2), A (cw 1), all overloaded. The walk wraps, then does a
    last pass (cw 1) from the head that stops at `last` (A): the mark stays at A with cw 1,
    so once the flags clear the next pick is B, then a new round A A B."""
    s, sched = make("AB", [2, 1])
    assert picks(sched, s, 2) == "AA"
    s["A"].overloaded = s["B"].overloaded = True
    assert picks(sched, s, 2) == "--"
    s["A"].overloaded = s["B"].overloaded = False
    assert picks(sched, s, 4) == "BAAB"


def test_an_overloaded_flag_set_mid_round_is_read_at_once():
    """The flag is tested on every step of the walk, with no hook involved."""
    s, sched = make("ABC", [1, 1, 1])
    assert picks(sched, s, 2) == "AB"
    s["C"].overloaded = True
    assert picks(sched, s, 3) == "ABA"
    s["C"].overloaded = False
    assert picks(sched, s, 3) == "BCA"


def test_an_edit_restarts_at_the_head_but_keeps_cw():
    """ip_vs_wrr_dest_changed sets cl to the head and keeps cw while 0 < cw <= mw (di 1):
    weights 3, 2, 1, picks A (cw 3), A (cw 2); an edit (even one that changes nothing)
    then walks from the head at cw 2: A B, then cw 1: A B C, then cw 3: A."""
    s, sched = make("ABC", [3, 2, 1])
    assert picks(sched, s, 2) == "AA"
    sched.update(list(s.values()))
    assert picks(sched, s, 6) == "ABABCA"


def test_an_edit_that_lowers_the_top_weight_clamps_cw_to_mw():
    """cw > new mw becomes mw: weights 3, 2, 1, pick A (cw 3); A's weight to 1 gives mw 2,
    so the walk goes on from the head at cw 2: B, then cw 1: A B C, then cw 2: B."""
    s, sched = make("ABC", [3, 2, 1])
    assert picks(sched, s, 1) == "A"
    s["A"].weight = 1
    sched.update(list(s.values()))
    assert picks(sched, s, 5) == "BABCB"


def test_an_edit_that_changes_di_moves_cw_onto_the_new_grid():
    """With di > 1, cw becomes (cw / di) * di + 1: weights 6, 4, 2 (di 2, mw 5) pick A at
    cw 5 and A at cw 3; B and C set to 3 give di 3, mw 4 and cw (3 / 3) * 3 + 1 = 4, so
    the walk takes A (cw 4), then A B C (cw 1), then A. Keeping cw at 3 would give A B C."""
    s, sched = make("ABC", [6, 4, 2])
    assert picks(sched, s, 2) == "AA"
    s["B"].weight = s["C"].weight = 3
    sched.update(list(s.values()))
    assert picks(sched, s, 5) == "AABCA"


def test_a_server_added_at_the_head_restarts_the_walk_there():
    """add_dest is dest_changed too: after A of A B (equal weights), a new C linked at the
    head is next, not B."""
    s, sched = make("AB", [1, 1])
    assert picks(sched, s, 1) == "A"
    s["C"] = RealServer("192.0.2.33", 80, weight=1)
    sched.update([s["C"], s["A"], s["B"]])
    assert picks(sched, s, 4) == "CABC"


def test_a_removal_restarts_the_walk_at_the_head():
    """del_dest is dest_changed: after A B of A B C, removing A walks from the head (B),
    where rr would have gone on to C."""
    s, sched = make("ABC", [1, 1, 1])
    assert picks(sched, s, 2) == "AB"
    sched.update([s["B"], s["C"]])
    assert picks(sched, s, 3) == "BCB"


def test_a_weight_raised_without_update_is_read_live():
    """The walk reads weights live while di and mw stay as the last hook left them:
    weights 2, 1 (mw 2) pick A at cw 2; B raised to 5 without update() is now taken at
    cw 2 as well: B, then cw 1: A B, then cw 2: A B."""
    s, sched = make("AB", [2, 1])
    assert picks(sched, s, 1) == "A"
    s["B"].weight = 5
    assert picks(sched, s, 5) == "BABAB"


def test_a_weight_lowered_without_update_is_read_live():
    """Weights 3, 3, 1 (mw 3): cw 3 -> A B, cw 2 -> A B, cw 1 -> A B C. After A, B set to
    1 without update(): B is passed over at cw 3 and 2 until the cw 1 pass."""
    s, sched = make("ABC", [3, 3, 1])
    assert picks(sched, s, 1) == "A"
    s["B"].weight = 1
    assert picks(sched, s, 5) == "AABCA"


def test_ipv6_servers_follow_the_same_passes():
    """The address family plays no part in wrr."""
    s, sched = make("ABC", [4, 3, 2], v6=True)
    assert picks(sched, s, 9, FLOW6) == "AABABCABC"


def test_a_round_too_big_for_the_table_is_walked_the_same_way(monkeypatch):
    """The round table is only an accelerator: without it (a round over ROUND_CAP) the
    literal walk gives the same sequence."""
    monkeypatch.setattr(wrr_mod, "ROUND_CAP", 2)
    s, sched = make("ABC", [4, 3, 2])
    assert picks(sched, s, 18) == "AABABCABC" * 2
    assert not sched._round


def kernel_walk(servers, mark):
    """ip_vs_wrr_schedule step by step, as a reference for the table's shortcuts. `mark`
    is [cl, cw, mw, di] with cl = -1 for the head; returns an index or None."""
    cl, cw, mw, di = mark
    if mw == 0:
        return None
    i, last, stop, last_pass, restarted = cl, cl, None, False, False
    n = len(servers)
    while True:
        i += 1
        if i == n:
            i, cw = -1, cw - di
            if cw <= 0:
                cw = mw
                if last_pass or last == -1:
                    mark[:2] = [-1, cw]
                    return None
                restarted = True
            last_pass = cw <= di
            if last_pass and restarted and last != -1:
                stop = last
            continue
        rs = servers[i]
        if not rs.overloaded and rs.weight >= cw:
            mark[:2] = [i, cw]
            return i
        if i == stop:
            mark[:2] = [i, cw]
            return None


def kernel_changed(servers, mark):
    """ip_vs_wrr_dest_changed on the reference mark."""
    pos = [rs.weight for rs in servers if rs.weight > 0]
    di = 1
    if pos:
        di = pos[0]
        for w in pos[1:]:
            di = gcd(di, w)
    mw = max([0] + [rs.weight for rs in servers]) - (di - 1)
    cw = mark[1]
    if cw > mw or cw == 0:
        cw = mw
    elif di > 1:
        cw = cw // di * di + 1
    mark[:] = [-1, cw, mw, di]


weights_st = st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 12]), min_size=1, max_size=7)


@settings(max_examples=80, deadline=None)
@given(weights=weights_st, over=st.lists(st.booleans(), min_size=7, max_size=7),
       edit=st.lists(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 12]), min_size=7, max_size=7),
       warmup=st.integers(0, 20))
def test_a_full_round_picks_each_available_server_weight_over_gcd_times(weights, over, edit,
                                                                        warmup):
    """Over sum(weight / di) consecutive picks (available servers only; di from all
    positive weights) each available server is picked exactly weight / di times: from a
    fresh service, again for the next round, and after an edit whatever the warm-up."""
    lst = [RealServer(f"192.0.2.{i + 1}", 80, weight=w) for i, w in enumerate(weights)]
    for rs, o in zip(lst, over):
        rs.overloaded = o
    sched = create("wrr", lst)

    def check_round():
        pos = [rs.weight for rs in lst if rs.weight > 0]
        di = 0
        for w in pos:
            di = gcd(di, w)
        avail = [rs for rs in lst if rs.weight > 0 and not rs.overloaded]
        if not avail:
            assert sched.schedule(FLOW) is None
            return
        length = sum(rs.weight // di for rs in avail)
        got = [sched.schedule(FLOW) for _ in range(length)]
        for rs in avail:
            assert sum(1 for d in got if d is rs) == rs.weight // di

    check_round()
    check_round()
    for _ in range(warmup):
        sched.schedule(FLOW)
    for rs, w in zip(lst, edit):
        rs.weight = w
    sched.update(lst)
    check_round()


@settings(max_examples=60, deadline=None)
@given(weights=weights_st,
       ops=st.lists(st.tuples(st.sampled_from(["pick", "pick", "pick", "flag", "weight",
                                               "edit", "add", "del"]),
                              st.integers(0, 50), st.sampled_from([0, 1, 2, 3, 4, 6, 8])),
                    max_size=120))
def test_table_and_literal_walk_agree_under_live_changes(weights, ops):
    """Against a step-by-step reference of ip_vs_wrr_schedule/dest_changed: flags and
    weights changed live (no hook) and list changes through update() give the same picks."""
    lst = [RealServer(f"192.0.2.{i + 1}", 80, weight=w) for i, w in enumerate(weights)]
    sched = create("wrr", lst)
    mark = [-1, 0, 0, 0]
    kernel_changed(lst, mark)
    for op, j, w in ops:
        if op == "pick":
            got = sched.schedule(FLOW)
            want = kernel_walk(lst, mark)
            assert got is (None if want is None else lst[want])
        elif op == "add":
            lst.insert(0, RealServer(f"192.0.2.{100 + j}", 80, weight=w))
            sched.update(lst)
            kernel_changed(lst, mark)
        elif not lst:
            continue
        elif op == "flag":
            lst[j % len(lst)].overloaded ^= True
        elif op == "weight":
            lst[j % len(lst)].weight = w
        elif op == "edit":
            lst[j % len(lst)].weight = w
            sched.update(lst)
            kernel_changed(lst, mark)
        elif op == "del":
            del lst[j % len(lst)]
            sched.update(lst)
            kernel_changed(lst, mark)
