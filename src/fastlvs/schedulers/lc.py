"""lc: least-connection (ip_vs_lc.c). Each new connection goes to the available server with
the smallest connection overhead, activeconns * 256 + inactconns; weights only decide
availability. Also owns `conn_overhead`, the overhead formula the wlc family and lblc/lblcr
share (include/net/ip_vs.h, ip_vs_dest_conn_overhead).
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler

# An active connection is reckoned 256 times the cost of an inactive one.
ACTIVE_FACTOR = 256


def conn_overhead(rs: RealServer) -> int:
    """activeconns * 256 + inactconns, as ip_vs_dest_conn_overhead computes it.

    The kernel computes this in a C int, which wraps once activeconns reaches 2**23
    (8,388,608 active connections on one server); Python ints do not wrap, so above that
    count our choice and the kernel's would differ. Schedulers inline the same expression in
    their loops for speed.
    """
    return rs.activeconns * ACTIVE_FACTOR + rs.inactconns


class LeastConnection(Scheduler):
    """Least-connection: the first server, in list order, whose overhead is the smallest."""

    name = "lc"
    valid_flags: frozenset[str] = frozenset()

    # ip_vs_lc.c defines no init/add/del/upd hooks: it keeps no state between calls.

    def schedule(self, flow: Flow) -> RealServer | None:
        """The available server (weight > 0, not overloaded) with the least
        activeconns * 256 + inactconns. Ties keep the earliest in list order (the kernel
        replaces its pick only on a strictly smaller overhead). None when no server is
        available or the list is empty."""
        it = iter(self.servers)
        for least in it:
            if least.weight and not least.overloaded:
                break
        else:
            return None
        loh = least.activeconns * 256 + least.inactconns
        if not loh:
            return least
        for d in it:
            # The cheap comparison first; the availability tests only for a would-be winner.
            if (doh := d.activeconns * 256 + d.inactconns) < loh \
                    and d.weight and not d.overloaded:
                if not doh:
                    # Nothing is strictly below zero: the rest of the scan cannot win.
                    return d
                least = d
                loh = doh
        return least


SCHEDULER = LeastConnection
