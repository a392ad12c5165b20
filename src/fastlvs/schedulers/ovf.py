"""ovf: overflow connection (ip_vs_ovf.c). Keeps new connections on the highest-weight server
until its active connections exceed its weight, then overflows to the next weight down.
Only activeconns counts: inactive connections never push a server over (the kernel warns
that this makes ovf a poor fit for UDP). No state between calls.
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler


class Overflow(Scheduler):
    """Overflow: the highest-weight server still within its connection budget."""

    name = "ovf"

    def schedule(self, flow: Flow) -> RealServer | None:
        """Among servers that are not overloaded, have weight > 0 and activeconns <= weight
        (a server is passed over only once activeconns is strictly above its weight), the
        first in list order with the highest weight; a later server of equal weight never
        displaces it. None when no server qualifies or the list is empty."""
        best = None
        top = 0
        for rs in self.servers:
            w = rs.weight
            if rs.overloaded or rs.activeconns > w or w == 0:
                continue
            if best is None or w > top:
                best = rs
                top = w
        return best


SCHEDULER = Overflow
