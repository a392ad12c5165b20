"""lblc (ip_vs_lblc.c): a destination address sticks to its cached server while that server
is in the list, has weight > 0 and is not overloaded by the half-load rule; otherwise wlc
picks again and the cache follows. Entries expire by the kernel's 60 s collector."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from fastlvs.schedulers import Flow, RealServer, create
from tests.helpers.sched import Clock, rs

MAX_SIZE = 1024 * 16


def to(daddr, sport=40000):
    return Flow("198.51.100.7", sport, daddr, 80)


X, Y = to("203.0.113.10"), to("203.0.113.11")


def test_an_address_sticks_to_its_server_while_another_gets_the_wlc_choice():
    """ip_vs_lblc.c: a cache hit returns the cached server without comparing loads; a new
    address gets __ip_vs_lblc_schedule's weighted least-connection choice."""
    a, b = rs(1), rs(2)
    sched = create("lblc", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.activeconns = 1                       # a is now worse than b, but not overloaded
    assert sched.schedule(X) is a
    assert sched.schedule(to("203.0.113.10", sport=1)) is a   # the key is the address only
    assert sched.schedule(Y) is b


def test_half_load_rule_needs_more_active_than_weight_and_a_server_under_half():
    """is_overloaded: activeconns > weight AND some server with activeconns * 2 < weight.
    a (w 4) with 5 active stays while b has 2 (2*2 < 4 is false); with b at 1 the entry is
    replaced by wlc's choice (b: 256/4 against a: 1280/4), which then sticks."""
    a, b = rs(1, weight=4), rs(2, weight=4)
    sched = create("lblc", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.activeconns, b.activeconns = 4, 0     # equal to the weight is not "more"
    assert sched.schedule(X) is a
    a.activeconns, b.activeconns = 5, 2
    assert sched.schedule(X) is a
    b.activeconns = 1
    assert sched.schedule(X) is b
    a.activeconns = 0
    assert sched.schedule(X) is b


def test_the_half_load_witness_may_be_overload_flagged_but_not_quiesced():
    """is_overloaded scans the whole list without availability tests: an idle server with
    the overload flag is a witness (it has activeconns * 2 < weight) though wlc may not
    pick it; a weight-0 server never is (0 < 0 is false)."""
    a, b = rs(1), rs(2)
    flagged, quiesced = rs(3, weight=10, overloaded=True), rs(4, weight=0)
    with_flagged = create("lblc", [a, b, flagged], clock=Clock())
    with_quiesced = create("lblc", [a, b, quiesced], clock=Clock())
    assert with_flagged.schedule(X) is a and with_quiesced.schedule(X) is a
    a.activeconns, b.activeconns = 2, 1     # a: 512 > b: 256; b is no witness (2 < 1 false)
    assert with_quiesced.schedule(X) is a
    assert with_flagged.schedule(X) is b


def test_the_cached_servers_overload_flag_is_not_consulted():
    """ip_vs_lblc_schedule tests only IP_VS_DEST_F_AVAILABLE, weight > 0 and is_overloaded
    for a cached server: an upper-threshold overload flag does not move the address, while
    a new address skips the flagged server."""
    a, b = rs(1), rs(2)
    sched = create("lblc", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.overloaded = True
    assert sched.schedule(X) is a
    assert sched.schedule(Y) is b


def test_a_quiesced_cached_server_is_replaced_for_good():
    """weight 0 invalidates the entry; wlc's choice replaces it and stays after the old
    server's weight is restored."""
    a, b = rs(1), rs(2)
    sched = create("lblc", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.weight = 0
    sched.update([a, b])
    assert sched.schedule(X) is b
    a.weight = 1
    sched.update([a, b])
    assert sched.schedule(X) is b


def test_a_removed_server_is_never_returned():
    """__ip_vs_unlink_dest clears IP_VS_DEST_F_AVAILABLE; the entry still names the server
    but the next flow of the address is rescheduled among the remaining servers."""
    a, b, c = rs(1), rs(2), rs(3)
    sched = create("lblc", [a, b, c], clock=Clock())
    assert sched.schedule(X) is a
    sched.update([b, c])
    b.inactconns = 1
    for sport in range(5):
        assert sched.schedule(to("203.0.113.10", sport)) is c


def test_re_adding_a_removed_server_revives_the_entries_that_name_it():
    """The kernel keeps a removed server in its trash while cache entries hold it and takes
    that very server back when the same address and port are added again (ip_vs_add_dest
    -> ip_vs_trash_get_dest), so the address returns to it although wlc would now prefer
    another; a new RealServer object for the same address:port is that server; another
    port is a different server."""
    for readd in ("same", "equal", "other-port"):
        a, b = rs(1), rs(2)
        sched = create("lblc", [a, b], clock=Clock())
        assert sched.schedule(X) is a
        sched.update([b])
        back = {"same": a, "equal": rs(1), "other-port": rs(1, port=81)}[readd]
        back.inactconns = 5                 # wlc prefers b (0) now
        sched.update([back, b])
        expected = b if readd == "other-port" else back
        assert sched.schedule(X) is expected, readd


def test_ipv6_addresses_are_keyed_by_the_whole_address():
    """ip_vs_lblc_get compares full addresses; two IPv6 destinations with the same 32-bit
    fold (they share only the hash bucket) are separate entries."""
    a = RealServer("2001:db8::1", 80)
    b = RealServer("2001:db8::2", 80)
    sched = create("lblc", [a, b], clock=Clock())
    x6 = Flow("2001:db8:1::7", 40000, "2001:db8:2::1", 80, "udp")
    y6 = Flow("2001:db8:1::7", 40000, "2001:db8:2::1:0:0", 80, "udp")
    assert x6.daddr_fold == y6.daddr_fold and x6.daddr_int != y6.daddr_int
    assert sched.schedule(x6) is a
    a.inactconns = 1
    assert sched.schedule(y6) is b
    assert sched.schedule(x6) is a


def test_no_available_server_gives_none_and_keeps_the_entry():
    """__ip_vs_lblc_schedule returns NULL: no entry is made or changed."""
    assert create("lblc", [], clock=Clock()).schedule(X) is None
    a, b = rs(1), rs(2)
    sched = create("lblc", [a, b], clock=Clock())
    assert sched.schedule(X) is a
    a.weight = b.weight = 0
    sched.update([a, b])
    assert sched.schedule(X) is None
    assert sched.schedule(Y) is None
    b.weight = 1
    sched.update([a, b])
    assert sched.schedule(Y) is b
    a.weight = 1
    sched.update([a, b])
    assert sched.schedule(X) is a           # the old entry was never replaced


def _answers(times, expiration=None):
    """Schedule X at each time of `times` on a fresh a|b service; after the first answer a
    gets one inactive connection, so a fresh wlc choice is b while the entry says a."""
    clock = Clock()
    a, b = rs(1), rs(2)
    sched = create("lblc", [a, b], clock=clock)
    if expiration is not None:
        sched.expiration = expiration
    out = []
    for t in times:
        clock.t = t
        out.append("a" if sched.schedule(X) is a else "b")
        a.inactconns = 1
    return "".join(out)


def test_an_unused_entry_goes_at_the_first_full_check_a_day_later():
    """ip_vs_lblc_check_expire runs every 60 s from service creation and does a full check
    on every 30th run (each 1800 s); the full check drops entries with
    now >= lastuse + lblc_expiration (24 h). Used at t=0: kept at 86399.5, gone at the
    86400 s check. Used at t=100: still there at 88199, gone at the 88200 s check."""
    assert _answers([0, 86399.5]) == "aa"
    assert _answers([0, 86400]) == "ab"
    assert _answers([0, 100, 88199]) == "aaa"
    assert _answers([0, 100, 88200]) == "aab"


def test_every_lookup_refreshes_the_entry():
    """en->lastuse = jiffies on every cache hit, valid or not."""
    assert _answers([0, 1000, 86400]) == "aaa"
    assert _answers([0, 1000, 88200]) == "aab"


def test_the_expiration_is_the_sysctl_and_only_full_checks_apply_it():
    """lblc_expiration set to 600 s: the entry still lives at 1799 s (no full check yet, the
    table is far from full) and goes at the 1800 s full check."""
    assert _answers([0, 1799], expiration=600) == "aa"
    assert _answers([0, 1800], expiration=600) == "ab"


def _hash_bucket(n):
    # include/linux/hash.h hash_32(val, 10), written out independently for the test.
    return ((n * 0x61C88647) % 2**32) >> 22


def _over_full_table(probe_time):
    """Fill one a-only service with 16384 + 40 entries at t=0, put an idle b at the head,
    then schedule every address again at `probe_time`; returns (addresses, answers is b)."""
    clock = Clock()
    a = rs(1)
    sched = create("lblc", [a], clock=clock)
    addrs = [0x0A000000 + i for i in range(MAX_SIZE + 40)]
    flows = [Flow.from_ints(4, 0xC6336407, 40000, n, 80) for n in addrs]
    for f in flows:
        assert sched.schedule(f) is a
    b = rs(2)
    sched.update([b, a])                    # b, idle at the head, is wlc's choice from now on
    clock.t = probe_time
    return addrs, [sched.schedule(f) is b for f in flows]


def test_an_over_full_table_drops_idle_entries_bucket_by_bucket():
    """With more than IP_VS_LBLC_TAB_SIZE * 16 = 16384 entries, a non-full timer run drops
    entries idle for ENTRY_TIMEOUT (6 min): it visits buckets from rover + 1 (rover starts
    at 0), drops every idle entry of each bucket, and stops after the bucket where it has
    dropped (entries - 16384) * 4/3 = 53 of them. Entries made at t=0 are not idle at the
    60..300 s runs; at the 360 s run they all are, so buckets 1, 2, ... go until 53."""
    addrs, moved = _over_full_table(359.5)
    assert not any(moved)
    addrs, moved = _over_full_table(360.5)
    sizes = {}
    for n in addrs:
        sizes[_hash_bucket(n)] = sizes.get(_hash_bucket(n), 0) + 1
    gone, dropped, j = set(), 0, 0
    while dropped < 53:
        j += 1
        gone.add(j)
        dropped += sizes.get(j, 0)
    assert 1 < len(gone) < 10
    assert moved == [_hash_bucket(n) in gone for n in addrs]


def test_replacing_an_entry_inflates_the_collectors_count():
    """ip_vs_lblc_new unhashes a replaced entry without decrementing tbl->entries but counts
    the new one, so after 16385 replacements the collector believes the table is over full
    and drops entries idle for only 6 minutes: Y, used once at t=0, is rescheduled at
    t=400 s. Without the replacements Y keeps its server for a day."""
    for churn in (0, MAX_SIZE + 1):
        clock = Clock()
        a, b, witness = rs(1), rs(2), rs(3, weight=10, overloaded=True)
        sched = create("lblc", [a, b, witness], clock=clock)
        assert sched.schedule(X) is a and sched.schedule(Y) is a
        cur, other = a, b
        for _ in range(churn):
            cur.activeconns = 2             # > weight 1, and the witness is idle
            assert sched.schedule(X) is other
            cur.activeconns = 0
            cur, other = other, cur
        a.inactconns = 1                    # a fresh choice for Y would now be b
        clock.t = 400.0
        assert sched.schedule(Y) is (b if churn else a), churn


# -- property ------------------------------------------------------------------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("sched"), st.integers(0, 2)),
    st.tuples(st.just("load"), st.integers(0, 3), st.integers(0, 6), st.integers(0, 40)),
    st.tuples(st.just("weight"), st.integers(0, 3), st.integers(0, 5)),
    st.tuples(st.just("flag"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("toggle"), st.integers(0, 3)),
    st.tuples(st.just("time"), st.floats(0, 600)),
), max_size=40)


def _wlc_reference(servers):
    avail = [s for s in servers if s.weight > 0 and not s.overloaded]
    if not avail:
        return None
    ratio = [Fraction(s.activeconns * 256 + s.inactconns, s.weight) for s in avail]
    return avail[ratio.index(min(ratio))]


@settings(max_examples=80, deadline=None)
@given(ops)
def test_an_address_keeps_its_server_while_the_kernel_rule_allows(program):
    """Property: within a day (no expiry), an address gets the server it got last time as
    long as that server is in the list, has weight > 0 and is not overloaded by the half-
    load rule (its overload flag does not matter); otherwise it gets the wlc choice, and a
    None answer leaves the old mapping in place."""
    clock = Clock()
    pool = [rs(i + 1) for i in range(4)]
    current = list(pool)
    sched = create("lblc", current, clock=clock)
    daddrs = [to(f"203.0.113.{i}") for i in range(3)]
    last = {}
    for op in program:
        kind = op[0]
        if kind == "load":
            pool[op[1]].activeconns, pool[op[1]].inactconns = op[2], op[3]
        elif kind == "weight":
            pool[op[1]].weight = op[2]
            sched.update(current)
        elif kind == "flag":
            pool[op[1]].overloaded = op[2]
        elif kind == "toggle":
            s = pool[op[1]]
            current = [x for x in current if x is not s] if s in current else [s] + current
            sched.update(current)
        elif kind == "time":
            clock.t += op[1]
        else:
            got = sched.schedule(daddrs[op[1]])
            prev = last.get(op[1])
            if prev is not None and prev in current and prev.weight > 0 and not (
                    prev.activeconns > prev.weight
                    and any(s.activeconns * 2 < s.weight for s in current)):
                assert got is prev
            else:
                assert got is _wlc_reference(current)
            if got is not None:
                last[op[1]] = got
