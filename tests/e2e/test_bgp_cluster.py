"""Losing and adding directors behind ECMP (lab/cluster.py: a BIRD router, three directors
each with fastlvs + BIRD, three real servers), DR and TUN, mh, 1,000 long-lived keep-alive
connections from 64 client addresses: a director's fastlvs SIGKILLed, the director added
back, one drained gracefully (SIGTERM: withdraw, drain, exit), added back. Every connection
must survive each step (goal 0 broken: mh picks the same real server on every director and
sloppy_tcp lets a director take a connection mid-stream). A connection counts as broken on
an error, a reset, no answer in 10 s, or an answer from another real server. wlc with the
IPVS sync daemon on every director (full mesh): a lost and a drained director break none."""
from __future__ import annotations

import os
import signal
import time

import pytest

from fastlvs.lab.cluster import Cluster
from tests.e2e.e2e_support import DECAP_SRC

CONNS = 1000


@pytest.mark.parametrize("mode", ["dr", "tun"])
def test_losing_and_adding_directors_breaks_no_connection(mode):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cl = Cluster(mode=mode, sched="mh", decap_src=DECAP_SRC, prefix="fe").build()
    ll = None
    try:
        for i in range(3):
            cl.start_director(i)
        cl.wait_nexthops(3)
        ll = cl.long_lived(CONNS)
        spread = cl.spread()
        assert all(n > CONNS // 10 for n in spread.values()), spread   # ECMP spread them
        steps = []
        cl.stop_director(1, signal.SIGKILL)
        cl.wait_nexthops(2)
        steps.append(("sigkill", ll.probe()))
        cl.start_director(1)
        cl.wait_nexthops(3)
        steps.append(("added back", ll.probe()))
        assert cl.stop_director(2, signal.SIGTERM) == 0   # graceful: withdraw, drain, exit
        assert cl.nexthops() == sorted(cl.director_ips[:2])
        steps.append(("drained", ll.probe()))
        cl.start_director(2)
        cl.wait_nexthops(3)
        steps.append(("added back", ll.probe()))
        ll.close()
        assert steps == [("sigkill", 0), ("added back", 0), ("drained", 0),
                         ("added back", 0)], steps
    finally:
        if ll is not None:          # a failed step must not leave 1,000 sockets open
            ll.close()
        cl.destroy()


def test_wlc_with_full_mesh_sync_keeps_connections_of_a_lost_director():
    """wlc is no hash: a connection moved to another director survives only if that
    director has its entry, which the IPVS sync daemons (master and backup on each
    director, one group) copy. One director SIGKILLed, added back, then another drained:
    0 broken. The drained one hands every connection over first (sync's handover): the
    director added back had only what was synced since it started."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cl = Cluster(sched="wlc", sync=True, prefix="fw").build()
    ll = None
    try:
        for i in range(3):
            cl.start_director(i)
        cl.wait_nexthops(3)
        ll = cl.long_lived(CONNS)
        ll.probe()                  # a third packet: each connection reaches sync_threshold
        # every director holds every connection (its own, and the others' through sync)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            held = [sum("ESTABLISHED" in ln for ln in d.admin("-Lnc").stdout.splitlines())
                    for d in cl.fastlvs.values()]
            if min(held) >= CONNS:
                break
            time.sleep(0.5)
        assert min(held) >= CONNS, held
        steps = []
        cl.stop_director(1, signal.SIGKILL)
        cl.wait_nexthops(2)
        steps.append(("sigkill", ll.probe()))
        cl.start_director(1)
        cl.wait_nexthops(3)
        steps.append(("added back", ll.probe()))
        assert cl.stop_director(2, signal.SIGTERM) == 0
        cl.wait_nexthops(2)
        steps.append(("drained", ll.probe()))
        ll.close()
        assert steps == [("sigkill", 0), ("added back", 0), ("drained", 0)], steps
    finally:
        if ll is not None:          # a failed step must not leave 1,000 sockets open
            ll.close()
        cl.destroy()
