"""rr: round-robin (ip_vs_rr.c). Owns the one piece of state the kernel keeps: the saved list
position (the last server picked, or the list head), how a pick walks on from it, and how it
moves when the saved server is removed. Servers that are overloaded or have weight 0 are
stepped over; adding a server (at the head) never moves the position.
"""
from __future__ import annotations

from typing import Iterable

from fastlvs.schedulers.base import Flow, RealServer, Scheduler

_HEAD = -1  # the saved position is the list head: the next walk starts at servers[0]


class RoundRobin(Scheduler):
    """Round-robin over the destination list in kernel order (newest first).

    State: `_pos`, the index of the last server picked (`_HEAD` = none yet), with `_cur`, the
    server object at that index, so the position survives list edits as a kernel list
    pointer does.
    """

    name = "rr"

    def init_service(self) -> None:
        """Start at the list head: the first pick is servers[0] if it is available."""
        self._pos = _HEAD
        self._cur: RealServer | None = None

    def add_dest(self, dest: RealServer) -> None:
        """`dest` went in at index 0; the saved server (if any) shifts one place right.

        The kernel's rr has no add_dest hook, so its pointer keeps naming the same server
        (or the head: then the newcomer is the next one tried).
        """
        if self._pos != _HEAD:
            self._pos += 1

    def del_dest(self, dest: RealServer) -> None:
        """Removing the saved server moves the position to its predecessor (the head if it
        was first), so the next pick starts with the server that followed it. Removing any
        other server leaves the position on the same server."""
        pos = self._pos
        if pos == _HEAD:
            return
        if dest is self._cur:
            # The removed server sat at `pos`; the one before it is still at pos - 1.
            pos -= 1
            self._pos = pos
            self._cur = self.servers[pos] if pos != _HEAD else None
        elif pos >= len(self.servers) or self.servers[pos] is not self._cur:
            # Exactly one server left the list; if ours moved, it moved one place left.
            self._pos = pos - 1

    def update(self, servers: Iterable[RealServer]) -> None:
        """As Scheduler.update(); afterwards the saved index is re-derived from the saved
        server in case the final list order differs from the one the hooks saw."""
        super().update(servers)
        cur = self._cur
        if cur is not None and not (self._pos < len(self.servers)
                                    and self.servers[self._pos] is cur):
            self._pos = self.servers.index(cur)

    def schedule(self, flow: Flow) -> RealServer | None:
        """The first available server after the saved position, wrapping round the list;
        the saved server itself is tried last. None (position unchanged) when every server
        is overloaded or has weight 0, or the list is empty."""
        servers = self.servers
        n = len(servers)
        i = self._pos + 1
        if i >= n:
            if n == 0:
                return None
            i = 0
        dest = servers[i]
        if dest.weight > 0 and not dest.overloaded:
            self._pos = i
            self._cur = dest
            return dest
        # Slow walk: the rest of the list after i, then from the front up to the saved one.
        for _ in range(n - 1):
            i += 1
            if i == n:
                i = 0
            dest = servers[i]
            if dest.weight > 0 and not dest.overloaded:
                self._pos = i
                self._cur = dest
                return dest
        return None


SCHEDULER = RoundRobin
