"""lblc: locality-based least-connection (ip_vs_lblc.c). A per-service cache maps each
destination address to the server last chosen for it; the cached server is kept while it is
in the list, has weight > 0 and is not overloaded by the kernel's half-load rule, otherwise
wlc chooses again and the cache is updated. Also owns the cache table and its periodic
expiry, which lblcr shares.
"""
from __future__ import annotations

from fastlvs.schedulers.base import Flow, RealServer, Scheduler
from fastlvs.schedulers.wlc import weighted_least

# Timings of the kernel's garbage collector, in seconds (the kernel counts jiffies; we
# compare seconds from Scheduler.clock and do not round to a tick).
CHECK_EXPIRE_INTERVAL = 60.0     # the periodic timer
ENTRY_TIMEOUT = 6 * 60.0         # idle time after which an entry may go when the table is full
DEFAULT_EXPIRATION = 24 * 60 * 60.0  # sysctl net.ipv4.vs.lblc_expiration / lblcr_expiration
COUNT_FOR_FULL_EXPIRATION = 30   # every 30th timer run (30 min) is a full expiration check
TAB_BITS = 10                    # CONFIG_IP_VS_LBLC_TAB_BITS / _LBLCR_TAB_BITS default
TAB_SIZE = 1 << TAB_BITS
TAB_MASK = TAB_SIZE - 1
MAX_SIZE = TAB_SIZE * 16         # entries above which the timer collects idle entries

_GOLDEN_RATIO_32 = 0x61C88647
_M32 = 0xFFFFFFFF
_SHIFT = 32 - TAB_BITS


def bucket_of(daddr_fold: int) -> int:
    """The hash bucket of a destination address: hash_32 of the host-order 32-bit fold,
    top TAB_BITS bits. Only the collector's visiting order depends on it."""
    return ((daddr_fold * _GOLDEN_RATIO_32) & _M32) >> _SHIFT


def is_overloaded(dest: RealServer, servers) -> bool:
    """The lblc/lblcr is_overloaded rule: dest has more active connections than its weight
    AND some server in the list (any server, quiesced or overloaded ones included) has
    activeconns * 2 < weight. The IP_VS_DEST_F_OVERLOAD flag plays no part here."""
    if dest.activeconns > dest.weight:
        for d in servers:
            if d.activeconns * 2 < d.weight:
                return True
    return False


class ExpiringTable:
    """The kernel's ip_vs_lblc(r)_table: destination address -> entry, with its collector.

    `entries` maps Flow.daddr_int to a list whose slot 1 is the entry's last-use time and
    slot 2 its hash bucket; slot 0 (and any later slots) belong to the scheduler. A service
    carries one address family, so the integer alone is the key.

    `count` is the kernel's tbl->entries, which drives the collector; it is kept apart from
    len(entries) because lblc's entry replacement increments it without a matching
    decrement (see LocalityBasedLeastConnection.schedule).

    The periodic timer (first run one interval after creation, then every interval) is
    replayed lazily: `expire(now)` runs every timer tick due by `now`, each with its own
    tick time, before the caller looks anything up. Between two calls nothing but the timer
    touches the table, so the lazy replay removes exactly what the kernel's timer would have.
    """

    __slots__ = ("entries", "count", "expiration", "next_tick", "_t0", "_tick", "_rover",
                 "_counter")

    def __init__(self, now: float, expiration: float) -> None:
        self.entries: dict[int, list] = {}
        self.count = 0
        self.expiration = expiration
        self._t0 = now
        self._tick = 1
        self.next_tick = now + CHECK_EXPIRE_INTERVAL
        self._rover = 0
        self._counter = 1

    def _go_to(self, tick: int) -> None:
        self._tick = tick
        self.next_tick = self._t0 + tick * CHECK_EXPIRE_INTERVAL

    def _last_tick_by(self, x: float) -> int:
        """The number of the last tick due at or before time x."""
        t0 = self._t0
        k = int((x - t0) // CHECK_EXPIRE_INTERVAL)
        while t0 + (k + 1) * CHECK_EXPIRE_INTERVAL <= x:
            k += 1
        while k > 0 and t0 + k * CHECK_EXPIRE_INTERVAL > x:
            k -= 1
        return k

    def expire(self, now: float) -> None:
        """Run every timer tick due at or before `now`, oldest first.

        Every 30th run is a full check: it drops the entries unused for `expiration`.
        Any other run only counts, unless `count` exceeds MAX_SIZE: then it drops entries
        idle for ENTRY_TIMEOUT, bucket by bucket from where the previous such run stopped,
        until (count - MAX_SIZE) * 4/3 of them (at most MAX_SIZE/2) are gone or every
        bucket was visited, and the run does not count. Runs of ticks that cannot change
        anything are skipped arithmetically rather than replayed one by one.
        """
        while self.next_tick <= now:
            t = self.next_tick
            if self._counter % COUNT_FOR_FULL_EXPIRATION == 0:
                self._full_check(t)
                self._counter = 1
                self._go_to(self._tick + 1)
            elif self.count <= MAX_SIZE:
                # Until the next full check only the counter moves: jump there (or past now).
                n = min(self._last_tick_by(now) - self._tick + 1,
                        COUNT_FOR_FULL_EXPIRATION - self._counter)
                self._counter += n
                self._go_to(self._tick + n)
            elif self._collect(t) or self.count <= MAX_SIZE:
                self._go_to(self._tick + 1)
            elif self.entries:
                # Every bucket was visited and the table is still over MAX_SIZE: the next run
                # that can drop anything is the first one after the oldest remaining entry
                # has idled ENTRY_TIMEOUT.
                due = min(en[1] for en in self.entries.values()) + ENTRY_TIMEOUT
                k = self._last_tick_by(due)
                if self._t0 + k * CHECK_EXPIRE_INTERVAL < due:
                    k += 1
                self._go_to(max(self._tick + 1, k))
            else:
                # Nothing left to drop, yet the (drifted) count stays over MAX_SIZE.
                self._go_to(self._last_tick_by(now) + 1)

    def _full_check(self, t: float) -> None:
        # Visits every bucket, so the rover ends where it started.
        exp = self.expiration
        stale = [k for k, en in self.entries.items() if not t < en[1] + exp]
        for k in stale:
            del self.entries[k]
        self.count -= len(stale)

    def _collect(self, t: float) -> bool:
        """One over-full tick; False if it visited every bucket (the goal was not met)."""
        goal = (self.count - MAX_SIZE) * 4 // 3
        if goal > MAX_SIZE // 2:
            goal = MAX_SIZE // 2
        by_bucket: dict[int, list[int]] = {}
        for k, en in self.entries.items():
            if not t < en[1] + ENTRY_TIMEOUT:
                by_bucket.setdefault(en[2], []).append(k)
        entries = self.entries
        j = self._rover
        met = False
        for _ in range(TAB_SIZE):
            j = (j + 1) & TAB_MASK
            stale = by_bucket.get(j)
            if stale:
                # Every idle entry of a visited bucket goes, even past the goal.
                for k in stale:
                    del entries[k]
                self.count -= len(stale)
                goal -= len(stale)
                if goal <= 0:
                    met = True
                    break
        self._rover = j
        return met


def same_dest(a: RealServer, b: RealServer) -> bool:
    """Whether the kernel would treat `a` and `b` as one destination (af, address, port)."""
    return a.af == b.af and a.addr_int == b.addr_int and a.port == b.port


class LocalityBasedLeastConnection(Scheduler):
    """Locality-based least-connection: a destination address sticks to one server.

    `expiration` (seconds, default 24 h) is the lblc_expiration sysctl: a cache entry unused
    that long is dropped by the next full check (every 30 minutes). Set it on the instance;
    the collector reads it at each check, as the kernel reads the sysctl.
    """

    name = "lblc"
    valid_flags: frozenset[str] = frozenset()
    expiration = DEFAULT_EXPIRATION

    def init_service(self) -> None:
        """Start with an empty cache; the collector's first run is due 60 s from now."""
        self._table = ExpiringTable(self.clock(), self.expiration)
        self._live = set(self.servers)

    def add_dest(self, dest: RealServer) -> None:
        """`dest` becomes usable again for entries that name it. The kernel keeps a removed
        server (in its trash) while cache entries hold it and takes that same server back
        when one with the same address and port is added, so entries naming the removed
        object are pointed at `dest`."""
        live = self._live
        live.add(dest)
        for en in self._table.entries.values():
            old = en[0]
            if old not in live and same_dest(old, dest):
                en[0] = dest

    def del_dest(self, dest: RealServer) -> None:
        """Entries keep naming `dest` but it is never returned again (the kernel clears
        IP_VS_DEST_F_AVAILABLE); the next flow of such an address is rescheduled."""
        self._live.discard(dest)

    def schedule(self, flow: Flow) -> RealServer | None:
        """The cached server of flow's destination address if it is still in the list, has
        weight > 0 and is not overloaded by the half-load rule (see `is_overloaded`; the
        overloaded flag is NOT checked for a cached server, as in the kernel). Otherwise the
        wlc choice over the list, which becomes the cached server; None (cache untouched)
        when wlc finds no available server. Every lookup refreshes the entry's last use."""
        now = self.clock()
        tbl = self._table
        if now >= tbl.next_tick:
            tbl.expiration = self.expiration
            tbl.expire(now)
        key = flow.daddr_int
        en = tbl.entries.get(key)
        if en is not None:
            en[1] = now
            dest = en[0]
            if dest.weight > 0 and dest in self._live \
                    and not (dest.activeconns > dest.weight and is_overloaded(dest, self.servers)):
                return dest
        dest = weighted_least(self.servers)
        if dest is None:
            return None
        if en is None:
            tbl.entries[key] = [dest, now, bucket_of(flow.daddr_fold)]
            tbl.count += 1
        elif en[0] is not dest:
            # The kernel unhashes the old entry and hashes a fresh one, but only the hashing
            # counts (tbl->entries is never decremented here), so the collector's count
            # drifts up by one per replacement; the collector acts on that count.
            tbl.entries[key] = [dest, now, en[2]]
            tbl.count += 1
        return dest


SCHEDULER = LocalityBasedLeastConnection
