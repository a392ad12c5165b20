"""Engine.conns_slice: the connection listing walked a bounded number of slots at a time,
each entry that lives through the walk listed once, entries made or freed meanwhile
tolerated, and its arguments checked."""
import pytest

from tests.core import packets as P
from tests.core.helpers import S, engine


def _syns(first: int, n: int) -> list[bytes]:
    tmpl = P.tcp("S")
    return [P._fix_ip_csum(P._patch(tmpl, 26, (first + i).to_bytes(4, "big")))
            for i in range(n)]


def _walk(e, limit, between=None, now_ns=None):
    out, cursor, calls = [], 0, 0
    while cursor is not None:
        part, cursor = e.conns_slice(cursor, limit, now_ns)
        assert len(part) <= limit
        out.extend(part)
        calls += 1
        assert calls <= 10_000
        if between is not None:
            between(calls)
    return out, calls


def test_slices_put_together_are_the_whole_listing():
    e = engine(capacity=4096)
    e.process(_syns(0x0B000001, 1000), 1 * S)
    whole = e.conns()
    assert len(whole) == 1000
    for limit in (1, 7, 256, 1000, 5000):
        got, calls = _walk(e, limit)
        assert got == whole
        assert calls == -(-1000 // limit)
    assert e.conns_slice(0, None) == (whole, None)
    assert e.conns_slice(1000, 10) == ([], None)


def test_a_sparse_slice_may_be_empty_and_the_walk_goes_on():
    e = engine(capacity=4096)
    e.process(_syns(0x0B000001, 300), 1 * S)
    e.process(_syns(0x0C000001, 10), 100 * S)    # the first 300 expire (SYN_RECV: 60 s)
    e.run_timers(100 * S)
    got, calls = _walk(e, 50, now_ns=100 * S)
    assert len(got) == 10 and calls == 300 // 50     # the used range stays 300 slots
    sizes = [len(e.conns_slice(i, 50, 100 * S)[0]) for i in range(0, 300, 50)]
    assert sum(sizes) == 10 and 0 in sizes
    assert {c["caddr"] for c in got} == {f"12.0.0.{i}" for i in range(1, 11)}


def test_entries_living_through_the_walk_are_listed_once_despite_churn():
    e = engine(capacity=8192)
    e.process(_syns(0x0B000001, 2000), 1 * S)
    stay = {c["caddr"] for c in e.conns()}
    made = iter(range(0x0D000001, 0x0D000001 + 10_000, 20))

    def churn(_calls):
        e.process(_syns(next(made), 20), 1 * S)  # new entries land in free slots anywhere

    got, _ = _walk(e, 100, between=churn)
    listed = [c["caddr"] for c in got]
    assert len(listed) == len(set(listed))
    assert stay <= set(listed)


def test_bad_arguments_are_refused():
    e = engine()
    with pytest.raises(ValueError, match="start"):
        e.conns_slice(-1, 10)
    with pytest.raises(ValueError, match="limit"):
        e.conns_slice(0, 0)
