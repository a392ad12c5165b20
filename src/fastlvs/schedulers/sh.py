"""sh: source hashing (ip_vs_sh.c). A 256-bucket table is refilled from the destination list
on every add/del/edit; a new connection goes to the bucket its source address (and, with
sh-port, source port) hashes to. Flags: sh-fallback (probe other buckets when that server is
unavailable) and sh-port. Also exports the table for the engine's fast path.
"""
from __future__ import annotations

from array import array

from fastlvs.schedulers.base import Flow, RealServer, Scheduler
from fastlvs.schedulers.hashing import GOLDEN_RATIO_32

TAB_BITS = 8
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
_SHIFT = 32 - TAB_BITS
_M32 = 0xFFFFFFFF


def sh_hashkey(fold: int, port: int, offset: int = 0) -> int:
    """ip_vs_sh_hashkey: bucket of (host-order port + host-order address fold).

    The sum wraps at 32 bits before hash_32; `offset` is added after hashing, modulo the
    table size (so the fallback's probe sequence is not "next bucket", see schedule()).
    """
    return (offset + ((((port + fold) * GOLDEN_RATIO_32) & _M32) >> _SHIFT)) & TAB_MASK


class SourceHashing(Scheduler):
    """Source hashing: the same client address (and port, with sh-port) always maps to the
    same bucket; the bucket's server is used only while it is available."""

    name = "sh"
    valid_flags = frozenset({"sh-fallback", "sh-port"})
    flag_aliases = {"flag-1": "sh-fallback", "flag-2": "sh-port"}

    def init_service(self) -> None:
        """Fill the table from the current list (an empty list gives an all-empty table)."""
        self._fallback = "sh-fallback" in self.flags
        self._use_port = "sh-port" in self.flags
        self._reassign()

    def add_dest(self, dest: RealServer) -> None:
        """Refill the whole table: every bucket may change owner, as in the kernel."""
        self._reassign()

    def del_dest(self, dest: RealServer) -> None:
        """Refill the whole table without `dest`."""
        self._reassign()

    def upd_dest(self, dest: RealServer | None) -> None:
        """Refill the whole table: bucket counts follow the (new) weights."""
        self._reassign()

    def _reassign(self) -> None:
        # Walk the list from its head, giving each server `weight` consecutive buckets; the
        # count check is `++count >= weight`, so a weight-0 server still takes one bucket,
        # and the walk wraps to the head until all 256 buckets are filled.
        servers = self.servers
        table: list[RealServer | None] = [None] * TAB_SIZE
        if servers:
            n = len(servers)
            i = 0
            count = 0
            for b in range(TAB_SIZE):
                rs = servers[i]
                table[b] = rs
                count += 1
                if count >= rs.weight:
                    count = 0
                    i += 1
                    if i == n:
                        i = 0
        self._table = table

    def bucket(self, flow: Flow) -> int:
        """The table index `flow` hashes to (offset 0), before any availability check.

        The key is the source address fold plus, with sh-port, the source port (0 without
        the flag). This is the kernel's first probe; schedule() starts from it.
        """
        port = flow.sport if self._use_port else 0
        return ((((port + flow.saddr_fold) * GOLDEN_RATIO_32) & _M32) >> _SHIFT)

    def lookup_table(self) -> array:
        """The bucket table for the fast path: array('H') of TAB_SIZE entries.

        Entry i is 1 + the index in `self.servers` of bucket i's server, 0 for an empty
        bucket (only when the list is empty). To reproduce schedule() from it: take
        i = bucket(flow); the server answers if available (weight > 0, not overloaded);
        otherwise, without sh-fallback, None; with sh-fallback probe buckets
        (2*i + k) % TAB_SIZE for k = 0..TAB_SIZE-1 (the kernel adds the start bucket to the
        probe offset and then adds the hash again) and take the first available server.
        The array is a snapshot: call again after any list change.
        """
        index = {id(rs): k + 1 for k, rs in enumerate(self.servers)}
        return array("H", (0 if rs is None else index[id(rs)] for rs in self._table))

    def schedule(self, flow: Flow) -> RealServer | None:
        """The bucket's server if available (weight > 0 and not overloaded), else None.

        With sh-fallback, an unavailable first choice makes the scheduler probe the buckets
        (offset + 2*bucket) % 256 for offset 0..255 and return the first available server;
        None if none is (or if the list is empty).
        """
        port = flow.sport if self._use_port else 0
        h = (((port + flow.saddr_fold) * GOLDEN_RATIO_32) & _M32) >> _SHIFT
        rs = self._table[h]
        if rs is None:
            return None
        if rs.weight > 0 and not rs.overloaded:
            return rs
        if not self._fallback:
            return None
        table = self._table
        for offset in range(TAB_SIZE):
            # the probe offset already includes h, and the hashkey adds h once more
            rs = table[(offset + h + h) & TAB_MASK]
            if rs is None:
                break
            if rs.weight > 0 and not rs.overloaded:
                return rs
        return None


SCHEDULER = SourceHashing
