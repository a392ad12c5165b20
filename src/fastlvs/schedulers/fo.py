"""fo: weighted failover (ip_vs_fo.c). Every new connection goes to the available server with
the highest weight; among equal weights the one nearest the list head (the newest) wins.
No state between calls: the choice follows the weights and overloaded flags as they are.
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler


class WeightedFailover(Scheduler):
    """Weighted failover: the highest-weight server that is not overloaded."""

    name = "fo"

    def schedule(self, flow: Flow) -> RealServer | None:
        """The first server, in list order, holding the highest weight among servers that
        are not overloaded. The comparison is strict and starts from 0, so a later server
        of equal weight never displaces an earlier one and weight 0 is never chosen. None
        when no server is available or the list is empty."""
        best = None
        top = 0
        for rs in self.servers:
            if not rs.overloaded:
                w = rs.weight
                if w > top:
                    best = rs
                    top = w
        return best


SCHEDULER = WeightedFailover
