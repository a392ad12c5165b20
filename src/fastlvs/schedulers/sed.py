"""sed: shortest expected delay (ip_vs_sed.c). Each new connection goes to the available
server with the smallest (activeconns + 1) / weight: the delay the new job would expect
there, counting itself. Inactive connections play no part.
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler


class ShortestExpectedDelay(Scheduler):
    """Shortest expected delay: the least (activeconns + 1) / weight, earliest on ties."""

    name = "sed"
    valid_flags: frozenset[str] = frozenset()

    # ip_vs_sed.c defines no init/add/del/upd hooks: it keeps no state between calls.

    def schedule(self, flow: Flow) -> RealServer | None:
        """The available server (weight > 0, not overloaded) with the least
        (activeconns + 1) / weight. The kernel compares loh * w > doh * lw and replaces its
        pick only when that holds strictly, so ties keep the earliest in list order. None
        when no server is available or the list is empty."""
        # Start from an infinitely loaded pick (overhead 1 at weight 0): the first available
        # server wins exactly where the kernel's first loop picks it, and a weight-0 server
        # never wins (loh * 0 > doh * lw is false, doh >= 1).
        least = None
        loh = 1
        lw = 0
        for d in self.servers:
            # The cheap comparison first; the overloaded test only for a would-be winner.
            if loh * d.weight > (doh := d.activeconns + 1) * lw and not d.overloaded:
                least = d
                loh = doh
                lw = d.weight
        return least


SCHEDULER = ShortestExpectedDelay
