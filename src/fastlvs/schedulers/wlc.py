"""wlc: weighted least-connection (ip_vs_wlc.c). Each new connection goes to the available
server with the smallest overhead / weight, overhead = activeconns * 256 + inactconns.
Also exports `weighted_least`, the same choice, which lblc and lblcr fall back to (their
private __ip_vs_lblc(r)_schedule is this very loop).
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler


def weighted_least(servers) -> RealServer | None:
    """The first server in `servers`' order with the least overhead / weight among those
    with weight > 0 and not overloaded; None if there is none.

    The kernel compares loh * w > doh * lw (64-bit products of 32-bit ints: exact, as here)
    and replaces its pick only when that holds strictly, so a tie keeps the earlier server.
    """
    # Start from an infinitely loaded pick (overhead 1 at weight 0): the first available
    # server then wins the comparison exactly where the kernel's first loop would pick it,
    # and a weight-0 server can never win (loh * 0 > doh * lw is false for doh >= 0).
    least = None
    loh = 1
    lw = 0
    for d in servers:
        # Overhead times 256 (see lc.conn_overhead); `* 256` beats `<< 8` on CPython 3.11.
        if loh * d.weight > (doh := d.activeconns * 256 + d.inactconns) * lw \
                and not d.overloaded:
            if not doh:
                # Zero load: no later server can compare strictly lower.
                return d
            least = d
            loh = doh
            lw = d.weight
    return least


class WeightedLeastConnection(Scheduler):
    """Weighted least-connection: the least (activeconns * 256 + inactconns) / weight."""

    name = "wlc"
    valid_flags: frozenset[str] = frozenset()

    # ip_vs_wlc.c defines no init/add/del/upd hooks: it keeps no state between calls.

    def schedule(self, flow: Flow) -> RealServer | None:
        """The available server (weight > 0, not overloaded) with the least
        (activeconns * 256 + inactconns) / weight; ties keep the earliest in list order.
        None when no server is available or the list is empty."""
        # weighted_least's loop, repeated here to save a call per decision.
        least = None
        loh = 1
        lw = 0
        for d in self.servers:
            if loh * d.weight > (doh := d.activeconns * 256 + d.inactconns) * lw \
                    and not d.overloaded:
                if not doh:
                    return d
                least = d
                loh = doh
                lw = d.weight
        return least


SCHEDULER = WeightedLeastConnection
