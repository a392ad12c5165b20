"""What the scheduler tests build their cases from: real servers on 192.0.2.0/24 (or
2001:db8::/64) with given counters, the usual client flows, a settable clock and a pick
recorder. One definition, shared by every tests/unit/test_sched_*.py."""
from __future__ import annotations

from fastlvs.schedulers import Flow, RealServer

FLOW = Flow("198.51.100.7", 40000, "203.0.113.10", 80)
FLOW6 = Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")


def rs(host, weight=1, act=0, inact=0, overloaded=False, *, port=80, v6=False):
    """Real server 192.0.2.<host> (2001:db8::<host> with v6) on `port`, with the given
    weight, activeconns, inactconns and overload flag."""
    r = RealServer(f"2001:db8::{host}" if v6 else f"192.0.2.{host}", port, weight=weight)
    r.activeconns, r.inactconns, r.overloaded = act, inact, overloaded
    return r


class Clock:
    """A clock the test moves by hand: set `.t`, the scheduler reads it by calling."""

    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def picks(sched, s: dict, n: int, flow=FLOW) -> str:
    """The next n picks as server names ("-" for None), `s` mapping name -> server."""
    name = {id(server): k for k, server in s.items()}
    return "".join("-" if d is None else name[id(d)]
                   for d in (sched.schedule(flow) for _ in range(n)))
