"""One way to build the engine and its director, for the daemon and for `fastlvs replay`
alike: the Engine's limits come from the settings, and the Director gets the ring loop when
the extension has one. Nothing else constructs an Engine for the product.
"""
from __future__ import annotations

from fastlvs.control.director import Director, NextHop


def build_director(nexthop: NextHop, *, capacity: int, batch: int, local_ip: str = "",
                   local_mac="", mtu: int = 1500) -> Director:
    """A Director over a new Engine (the compiled extension) of `capacity` connection
    entries, `batch` frames per pass, our `local_ip`/`local_mac` and `mtu` towards the real
    servers; `nexthop(ip)` resolves real servers as Director documents it. ValueError (the
    engine's) for limits out of range."""
    from fastlvs.engine import _core

    engine = _core.Engine(capacity=capacity, batch=batch, local_ip=local_ip,
                          local_mac=local_mac, mtu=mtu)
    return Director(engine, nexthop, poll=_core.poll)


__all__ = ["build_director"]
