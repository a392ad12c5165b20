"""twos (ip_vs_twos.c): two draws r1, r2 = get_random_u32_below(total + 1) (here
rng.randrange) over the servers neither overloaded nor of weight 0, each walked down the
list to the first server where r - running weight <= 0; choice 2 wins only if
weight2 * overhead1 > weight1 * overhead2 in 32-bit ints, overhead = activeconns * 256 +
inactconns."""
import random

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import create
from fastlvs.schedulers import twos as twos_mod
from tests.helpers.sched import FLOW, rs

W_MAX = 2**31 - 1


class Draws:
    """A random source that returns scripted values and records the bounds asked for."""

    def __init__(self, *values):
        self.values = list(values)
        self.bounds = []

    def randrange(self, n):
        self.bounds.append(n)
        return self.values.pop(0)


def pick(servers, r1, r2):
    rng = Draws(r1, r2)
    got = create("twos", servers, rng=rng).schedule(FLOW)
    return got, rng.bounds


def test_the_draw_bound_is_the_eligible_weight_plus_one():
    """The first loop sums the weights of servers without IP_VS_DEST_F_OVERLOAD and with
    weight > 0, and both draws use total + 1 (so 0..total inclusive)."""
    lst = [rs(1, 0), rs(2, 1), rs(3, 5, overloaded=True), rs(4, 3)]
    _, bounds = pick(lst, 0, 0)
    assert bounds == [5, 5]


def test_a_draw_maps_to_the_first_server_its_running_sum_reaches():
    """r -= weight at each eligible server, taken at the first r <= 0: with A (1) and C (3)
    behind a weight-0 and an overloaded server, r = 0 and 1 give A, r = 2..4 give C. (So
    the first eligible server has one chance more than its weight.)"""
    z, a, y, c = rs(1, 0), rs(2, 1), rs(3, 5, overloaded=True), rs(4, 3)
    got = [pick([z, a, y, c], r, r)[0] for r in range(5)]
    assert got == [a, a, c, c, c]


def test_a_tie_keeps_the_first_draw():
    """The swap needs weight2 * overhead1 > weight1 * overhead2 (strict): A (w 1, 1 active)
    and C (w 3, 3 active) are even (3 * 256 == 1 * 768), so whichever came first stays."""
    a, c = rs(1, 1, act=1), rs(2, 3, act=3)
    assert pick([a, c], 0, 2)[0] is a
    assert pick([a, c], 2, 0)[0] is c


def test_the_lower_overhead_per_weight_wins_either_way_round():
    """One more inactive connection on C (769 vs 3 * 256) makes A the lighter per weight,
    whichever draw found it; one more on A instead makes C the lighter."""
    a, c = rs(1, 1, act=1), rs(2, 3, act=3, inact=1)
    assert pick([a, c], 0, 2)[0] is a
    assert pick([a, c], 2, 0)[0] is a
    a, c = rs(1, 1, act=1, inact=1), rs(2, 3, act=3)
    assert pick([a, c], 0, 2)[0] is c
    assert pick([a, c], 2, 0)[0] is c


def test_overhead_is_256_per_active_plus_one_per_inactive():
    """ip_vs_dest_conn_overhead: one active connection outweighs 255 inactive ones and
    equals 256 of them (a tie, so the first draw stays)."""
    a, b = rs(1, act=1), rs(2, inact=255)
    assert pick([a, b], 0, 2)[0] is b
    assert pick([a, b], 2, 0)[0] is b
    b.inactconns = 256
    assert pick([a, b], 0, 2)[0] is a
    assert pick([a, b], 2, 0)[0] is b


def test_the_products_wrap_at_32_bits_as_the_kernels_ints_do():
    """weight * overhead is an int product: 1000 * (10000 * 256) = 2.56e9 wraps negative,
    so the loaded A looks lighter than the idle B and keeps the connection in both orders
    (unwrapped arithmetic would pick B)."""
    a, b = rs(1, 1000, act=10_000), rs(2, 1000)
    assert pick([a, b], 0, 2000)[0] is a
    assert pick([a, b], 2000, 0)[0] is a


def test_a_weight_sum_past_the_int_range_wraps_too():
    """Two servers of weight 2**31 - 1: total + 1 wraps to -1, passed as u32 0xffffffff;
    a draw of 2**31 + 5 reads back as a negative int, A's subtraction wraps it to 6 > 0,
    and B takes it. Plus a third of weight 1, the bound wraps to 0: get_random_u32()."""
    a, b = rs(1, W_MAX), rs(2, W_MAX)
    got, bounds = pick([a, b], 2**31 + 5, 2**31 + 5)
    assert got is b and bounds == [2**32 - 1] * 2
    assert pick([a, b], 5, 5)[0] is a
    got, bounds = pick([a, b, rs(3, 1)], 0, 0)
    assert got is a and bounds == [2**32] * 2


def test_no_available_server_gives_none_without_drawing():
    """The kernel returns NULL after the first loop, before any random number."""
    for lst in ([], [rs(1, 0)], [rs(1, 2, overloaded=True), rs(2, 0)]):
        got, bounds = pick(lst, 0, 0)
        assert got is None and bounds == []


def test_flags_and_weights_are_read_on_every_call():
    """No hook is needed: a flag or weight changed in place changes the sums at once."""
    a, b = rs(1, 1), rs(2, 1)
    rng = Draws(2, 2, 1, 1, 5, 5)
    sched = create("twos", [a, b], rng=rng)
    assert sched.schedule(FLOW) is b
    b.overloaded = True
    assert sched.schedule(FLOW) is a
    b.overloaded = False
    b.weight = 4
    assert sched.schedule(FLOW) is b
    assert rng.bounds == [3, 3, 2, 2, 6, 6]


def test_without_an_rng_the_module_source_is_used(monkeypatch):
    """rng=None draws from the module-level random.Random()."""
    stub = Draws(1, 1)
    monkeypatch.setattr(twos_mod, "_default_rng", stub)
    a, b = rs(1, 1), rs(2, 1)
    assert create("twos", [a, b]).schedule(FLOW) is a
    assert stub.bounds == [3, 3]


def test_each_decision_takes_exactly_two_randrange_draws():
    """With a random.Random, one decision advances it by randrange(total + 1) twice."""
    lst = [rs(1, 2), rs(2, 3, overloaded=True), rs(3, 4)]
    rng, ref = random.Random(7), random.Random(7)
    create("twos", lst, rng=rng).schedule(FLOW)
    ref.randrange(7)
    ref.randrange(7)
    assert rng.getstate() == ref.getstate()


def test_ipv6_servers():
    """The address family plays no part in twos."""
    a, b = rs(1, 1, v6=True), rs(2, 2, act=1, v6=True)
    got, _ = pick([a, b], 0, 3)
    assert got is a


@settings(max_examples=80, deadline=None)
@given(spec=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 300),
                               st.booleans()), min_size=1, max_size=8),
       u1=st.floats(0, 1, exclude_max=True), u2=st.floats(0, 1, exclude_max=True))
def test_the_choice_follows_the_two_walks_and_the_cross_product(spec, u1, u2):
    """For any list and draws: the result is choice 2 exactly when w2 * o1 > w1 * o2, where
    each choice is the first eligible server whose running weight reaches its draw."""
    lst = [rs(i + 1, w, act=a, inact=n, overloaded=o) for i, (w, a, n, o) in enumerate(spec)]
    elig = [r for r in lst if r.weight > 0 and not r.overloaded]
    total = sum(r.weight for r in elig)
    if not total:
        assert pick(lst, 0, 0)[0] is None
        return
    r1, r2 = int(u1 * (total + 1)), int(u2 * (total + 1))

    def walk(r):
        for e in elig:
            r -= e.weight
            if r <= 0:
                return e

    c1, c2 = walk(r1), walk(r2)
    o1 = c1.activeconns * 256 + c1.inactconns
    o2 = c2.activeconns * 256 + c2.inactconns
    want = c2 if c2.weight * o1 > c1.weight * o2 else c1
    assert pick(lst, r1, r2)[0] is want
