"""nq: never queue (ip_vs_nq.c). A new connection goes to the first available server, in
list order, that has no active connection; when every available server is busy, it goes to
the one with the shortest expected delay, (activeconns + 1) / weight, as sed would choose.
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler


class NeverQueue(Scheduler):
    """Never queue: an idle server at once, else the shortest expected delay."""

    name = "nq"
    valid_flags: frozenset[str] = frozenset()

    # ip_vs_nq.c defines no init/add/del/upd hooks: it keeps no state between calls.

    def schedule(self, flow: Flow) -> RealServer | None:
        """The first available server (weight > 0, not overloaded) with activeconns == 0,
        ignoring inactive connections; if none is idle, the available server with the least
        (activeconns + 1) / weight, ties keeping the earliest in list order (strict
        comparison, as in the kernel). None when no server is available or the list is
        empty."""
        # Same infinitely-loaded starting pick as sed: the first available busy server wins
        # the first comparison, a weight-0 server never does.
        least = None
        loh = 1
        lw = 0
        for d in self.servers:
            a = d.activeconns
            if a:
                if loh * d.weight > (a + 1) * lw and not d.overloaded:
                    least = d
                    loh = a + 1
                    lw = d.weight
            elif d.weight and not d.overloaded:
                # The kernel returns an idle available server without looking further.
                return d
        return least


SCHEDULER = NeverQueue
