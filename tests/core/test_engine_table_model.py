"""Differential property test: the C connection table against a dict model under random
sequences of packets and clock jumps (insert, refresh, lazy expiry, sweep, table full)."""
from hypothesis import given, settings, strategies as st

from tests.core import packets as P
from tests.core.helpers import S, engine

TIMEOUT = 300
CAP = 6

steps = st.lists(st.tuples(st.integers(0, 11), st.integers(0, 200), st.booleans()),
                 min_size=1, max_size=60)


@settings(max_examples=80, deadline=None)
@given(steps)
def test_table_matches_dict_model(seq):
    e = engine("dr", proto=17, vport=53, capacity=CAP)
    frames = [P.udp(sport=1000 + i) for i in range(12)]
    model = {}            # sport -> expires (s)
    created = full = 0
    t = 1
    for client, dt, sweep in seq:
        t += dt
        live = {k: v for k, v in model.items() if v > t}
        sport = 1000 + client
        if sport in live:
            live[sport] = t + TIMEOUT
        elif len(live) >= CAP:
            full += 1
        else:
            live[sport] = t + TIMEOUT
            created += 1
        model = live
        e.process([frames[client]], t * S)
        if sweep:
            e.run_timers(t * S)
        got = {c["cport"]: c["expires"] for c in e.conns(t * S)}
        assert got == {k: v - t for k, v in model.items()}
        assert e.dest_stats(1)["conns"] == created
        assert e.stats()["table_full"] == full
        # counters follow entries: an expired entry counts until it is reclaimed
        assert e.dest_stats(1)["inactconns"] == e.conn_count()
        if sweep:
            assert e.conn_count() == len(model)
    e.run_timers((t + TIMEOUT) * S)
    assert e.conn_count() == 0 and e.dest_stats(1)["inactconns"] == 0
