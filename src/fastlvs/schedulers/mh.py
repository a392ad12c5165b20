"""mh: Maglev hashing (ip_vs_mh.c). Every add/del/edit rebuilds a 4093-slot lookup table in
which each server claims slots along its own permutation (offset and skip from hsiphash of its
address and port), `turns` slots per pass; a new connection goes to the slot its source
address (and, with mh-port, source port) hashes to. Flags: mh-fallback, mh-port. Also exports
the table for the engine's fast path.
"""
from __future__ import annotations

from array import array
from math import gcd

from fastlvs.schedulers.base import Flow, RealServer, Scheduler
from fastlvs.schedulers.hashing import hsiphash_u32_fn

# CONFIG_IP_VS_MH_TAB_INDEX defaults to 12: the table size is the prime at index 12 - 8 of
# the kernel's list, and 12 / 2 bits is what the largest turns count may occupy.
PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
TAB_INDEX = 12
TAB_SIZE = PRIMES[TAB_INDEX - 8]
TAB_BITS = TAB_INDEX // 2

# generate_hash_secret(): fixed, not random, so every director builds the same table.
# hsiphash_key_t holds two unsigned longs; both halves carry the same constant.
HASH1_KEY = (2654435761, 2654435761)
HASH2_KEY = (2654446892, 2654446892)

_M32 = 0xFFFFFFFF
_hash1 = hsiphash_u32_fn(HASH1_KEY)
_hash2 = hsiphash_u32_fn(HASH2_KEY)

# hsiphash in pure Python costs microseconds, several times a kernel lookup's whole budget.
# The slot of a key depends only on the 32-bit key (the hash key is a constant), so it is
# shared by every mh service; the memo is simply emptied when it reaches its cap.
_SLOT_CACHE_MAX = 1 << 16
_slot_cache: dict[int, int] = {}
_PERM_CACHE_MAX = 1 << 14
_perm_cache: dict[int, tuple[int, int]] = {}


def mh_slot(key: int) -> int:
    """ip_vs_mh_hashkey with hash1, modulo the table size: the slot of a 32-bit key.

    The key is (offset + host-order port + host-order address fold) mod 2**32, hashed as a
    native little-endian u32 (hsiphash of 4 bytes), the same for IPv4 and IPv6.
    """
    key &= _M32
    slot = _slot_cache.get(key)
    if slot is None:
        if len(_slot_cache) >= _SLOT_CACHE_MAX:
            _slot_cache.clear()
        slot = _slot_cache[key] = _hash1(key) % TAB_SIZE
    return slot


def mh_permutation(addr_fold: int, port: int) -> tuple[int, int]:
    """(offset, skip) of a destination: its permutation of the table is
    offset, offset+skip, offset+2*skip, ... modulo TAB_SIZE.

    Both come from the same key (destination port + address fold, mod 2**32), offset with
    hash1 mod TAB_SIZE and skip with hash2 mod (TAB_SIZE - 1), plus 1 so it is never 0.
    The destination port always takes part, whatever the service flags.
    """
    key = (port + addr_fold) & _M32
    perm = _perm_cache.get(key)
    if perm is None:
        if len(_perm_cache) >= _PERM_CACHE_MAX:
            _perm_cache.clear()
        perm = _perm_cache[key] = (_hash1(key) % TAB_SIZE, _hash2(key) % (TAB_SIZE - 1) + 1)
    return perm


def mh_turns(servers) -> list[int]:
    """Slots each server claims per populate pass, from `last_weight` (so a quiesced server
    keeps its slots). Weights are divided by the gcd of the positive last_weights, then
    shifted right so the largest fits in TAB_BITS bits; a server whose share shifts down to
    0 still gets 1 if its last_weight is non-zero. All zeros when no last_weight is > 0."""
    g = 0
    top = 0
    for rs in servers:
        lw = rs.last_weight
        if lw > 0:
            g = gcd(g, lw)
        if lw > top:
            top = lw
    if g < 1:
        return [0] * len(servers)
    shift = max((top // g).bit_length() - TAB_BITS, 0)
    return [((rs.last_weight // g) >> shift) or (1 if rs.last_weight != 0 else 0)
            for rs in servers]


def mh_populate(perms, turns) -> list[int]:
    """The Maglev fill: slot -> 1 + index of its owner in the given order (0: table empty).

    Passes run over the servers in list order; within a pass each server with turns > 0
    claims `turns` slots one after another, each time the first free slot at or after its
    current permutation position, and the fill stops the moment the last slot is taken.
    """
    size = TAB_SIZE
    owner = [0] * size
    active = [k for k, t in enumerate(turns) if t > 0]
    if not active:
        return owner
    pos = [p[0] for p in perms]
    skips = [p[1] for p in perms]
    filled = 0
    while True:
        for k in active:
            p = pos[k]
            s = skips[k]
            own = k + 1
            for _ in range(turns[k]):
                while owner[p]:
                    p += s
                    if p >= size:
                        p -= size
                owner[p] = own
                filled += 1
                if filled == size:
                    return owner
            pos[k] = p


class MaglevHashing(Scheduler):
    """Maglev hashing: a source address (and port, with mh-port) keeps its server while the
    server set is stable, and a list change remaps only a small part of the other flows."""

    name = "mh"
    valid_flags = frozenset({"mh-fallback", "mh-port"})
    flag_aliases = {"flag-1": "mh-fallback", "flag-2": "mh-port"}

    def init_service(self) -> None:
        """Build the table from the current list.

        Servers with last_weight 0 (added with weight 0 and never given one) take no slot;
        with no server of positive last_weight the table is empty and schedule() gives None.
        More than TAB_SIZE servers is refused with ValueError, as the kernel's init fails.
        """
        self._fallback = "mh-fallback" in self.flags
        self._use_port = "mh-port" in self.flags
        self._table: list[RealServer | None] = [None] * TAB_SIZE
        if not self._reassign():
            raise ValueError(f"mh: at most {TAB_SIZE} destinations, got {len(self.servers)}")

    def add_dest(self, dest: RealServer) -> None:
        """Rebuild the table (`dest` is at the head of the list, so it claims first)."""
        self._reassign()

    def del_dest(self, dest: RealServer) -> None:
        """Rebuild the table without `dest`."""
        self._reassign()

    def upd_dest(self, dest: RealServer | None) -> None:
        """Rebuild the table; setting a weight to 0 leaves last_weight, so the table (and
        every other server's flows) stays as it was and only the server's own flows stop."""
        self._reassign()

    def _reassign(self) -> bool:
        servers = self.servers
        if len(servers) > TAB_SIZE:
            # The kernel returns -EINVAL before touching the table: the old one stays.
            return False
        turns = mh_turns(servers)
        perms = [mh_permutation(rs.addr_fold, rs.port) for rs in servers]
        owner = mh_populate(perms, turns)
        if owner[0]:
            self._table = [servers[o - 1] for o in owner]
        else:
            self._table = [None] * TAB_SIZE
        return True

    def bucket(self, flow: Flow) -> int:
        """The table slot `flow` hashes to (offset 0), before any availability check: key =
        source address fold + (source port with mh-port, else 0), hashed with hash1."""
        return mh_slot((flow.sport if self._use_port else 0) + flow.saddr_fold)

    def lookup_table(self) -> array:
        """The slot table for the fast path: array('H') of TAB_SIZE entries.

        Entry i is 1 + the index in `self.servers` of slot i's owner, 0 for an empty slot
        (the whole table is empty when no server has last_weight > 0). To reproduce
        schedule(): i = bucket(flow); its server answers if available (weight > 0, not
        overloaded); else None, or with mh-fallback the first available owner of the slots
        mh_slot(key + (i + k) % TAB_SIZE) for k = 0..TAB_SIZE-1, where key is bucket()'s
        key. The array is a snapshot: call again after any list change. (Past TAB_SIZE
        servers the kernel keeps a stale table; its slots of removed servers read as 0.)
        """
        index = {id(rs): k + 1 for k, rs in enumerate(self.servers)}
        return array("H", (0 if rs is None else index.get(id(rs), 0) for rs in self._table))

    def schedule(self, flow: Flow) -> RealServer | None:
        """The server of the flow's slot if available (weight > 0 and not overloaded), else
        None; a quiesced server keeps its slots, so its flows get None rather than moving.

        With mh-fallback an unavailable first choice makes the scheduler try the slots of
        key + (slot + k) % TAB_SIZE for k = 0, 1, ... (rehashing each time) and return the
        first available owner; None if there is none or the table is empty.
        """
        key = ((flow.sport if self._use_port else 0) + flow.saddr_fold) & _M32
        slot = _slot_cache.get(key)
        if slot is None:
            slot = mh_slot(key)
        rs = self._table[slot]
        if rs is None:
            return None
        if rs.weight > 0 and not rs.overloaded:
            return rs
        if not self._fallback:
            return None
        table = self._table
        hash1 = _hash1
        for offset in range(TAB_SIZE):
            roffset = offset + slot
            if roffset >= TAB_SIZE:
                roffset -= TAB_SIZE
            rs = table[hash1((roffset + key) & _M32) % TAB_SIZE]
            if rs is None:
                break
            if rs.weight > 0 and not rs.overloaded:
                return rs
        return None


SCHEDULER = MaglevHashing
