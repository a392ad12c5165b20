"""dh: destination hashing (ip_vs_dh.c). A 256-bucket table is dealt out over the destination
list, one bucket per server in turn, whenever a server is added or removed; a new connection
goes to the bucket its destination address hashes to. No flags, no fallback. Also exports the
table for the engine's fast path.
"""
from __future__ import annotations

from array import array

from fastlvs.schedulers.base import Flow, RealServer, Scheduler
from fastlvs.schedulers.hashing import GOLDEN_RATIO_32

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
_SHIFT = 32 - TAB_BITS
_M32 = 0xFFFFFFFF


class DestinationHashing(Scheduler):
    """Destination hashing: the same destination address always maps to the same bucket;
    the bucket's server is used only while it is available."""

    name = "dh"
    valid_flags: frozenset[str] = frozenset()

    def init_service(self) -> None:
        """Deal the buckets over the current list (an empty list gives an empty table)."""
        self._reassign()

    def add_dest(self, dest: RealServer) -> None:
        """Re-deal the whole table with `dest` now at the head of the list."""
        self._reassign()

    def del_dest(self, dest: RealServer) -> None:
        """Re-deal the whole table without `dest`."""
        self._reassign()

    # No upd_dest: ip_vs_dh.c defines none, and the table ignores weights anyway, so an edit
    # changes nothing but the availability test in schedule().

    def _reassign(self) -> None:
        # Weights play no part: bucket b belongs to the (b mod n)-th server from the head.
        servers = self.servers
        if servers:
            n = len(servers)
            self._table = [servers[b % n] for b in range(TAB_SIZE)]
        else:
            self._table = [None] * TAB_SIZE

    def bucket(self, flow: Flow) -> int:
        """The table index of `flow`'s destination address fold, before any availability
        check (hash_32 of the host-order fold, top 8 bits)."""
        return (((flow.daddr_fold * GOLDEN_RATIO_32) & _M32) >> _SHIFT)

    def lookup_table(self) -> array:
        """The bucket table for the fast path: array('H') of TAB_SIZE entries.

        Entry i is 1 + the index in `self.servers` of bucket i's server, 0 for an empty
        bucket (only when the list is empty). schedule(flow) is the server at
        bucket(flow) if available (weight > 0, not overloaded), else None. The array is a
        snapshot: call again after any list change.
        """
        index = {id(rs): k + 1 for k, rs in enumerate(self.servers)}
        return array("H", (0 if rs is None else index[id(rs)] for rs in self._table))

    def schedule(self, flow: Flow) -> RealServer | None:
        """The server of the destination address's bucket if it has weight > 0 and is not
        overloaded; None otherwise (and for an empty list). There is no fallback."""
        rs = self._table[((flow.daddr_fold * GOLDEN_RATIO_32) & _M32) >> _SHIFT]
        if rs is None or rs.weight <= 0 or rs.overloaded:
            return None
        return rs


SCHEDULER = DestinationHashing
