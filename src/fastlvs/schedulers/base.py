"""The types every scheduler shares: RealServer (a destination with its counters), Flow (the
packet fields a scheduler may look at) and Scheduler (the kernel's ip_vs_scheduler ops).

Addresses are parsed once, when a RealServer or Flow is made, into the integers the kernel's
hash functions consume, so that `schedule()` does no parsing per decision.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Iterable

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTO_NUMBERS = {v: k for k, v in PROTOCOLS.items()}

# The kernel keeps weights and thresholds in int/u32 fields; ipvsadm does not go past these.
MAX_WEIGHT = 2**31 - 1
MAX_THRESHOLD = 2**32 - 1


def _parse_addr(value, field: str):
    """Return (canonical text, family 4|6, integer, 32-bit fold) for an address field."""
    try:
        ip = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ValueError(f"{field}: not an IPv4 or IPv6 address: {value!r}") from None
    n = int(ip)
    if ip.version == 4:
        fold = n
    else:
        # The kernel folds an IPv6 address for sh/dh/mh as ip6[0]^ip6[1]^ip6[2]^ip6[3] on the
        # big-endian words and then applies ntohl(); XOR commutes with the byte swap, so the
        # fold of the host-order words is the same number.
        fold = _fold6(n)
    return str(ip), ip.version, n, fold


def _fold6(n: int) -> int:
    return (n >> 96) ^ ((n >> 64) & 0xFFFFFFFF) ^ ((n >> 32) & 0xFFFFFFFF) ^ (n & 0xFFFFFFFF)


_INT_TO_IP = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


def _check_int(value, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{field}: {value} is outside {lo}..{hi}")
    return value


class RealServer:
    """A destination (real server) of one virtual service, with the counters schedulers read.

    `weight`, `activeconns`, `inactconns`, `persistconns` and `overloaded` are plain mutable
    attributes: whoever keeps the connection table keeps them (inside the director that is
    the engine, which also applies the -x/-y hysteresis to `overloaded`). `last_weight` is the
    kernel's last non-zero weight, maintained by `Scheduler.update()`; mh builds its table from
    it so that quiescing a server (weight 0) does not remap anyone else.
    """

    __slots__ = (
        "addr", "port", "af", "addr_int", "addr_fold", "weight", "u_threshold", "l_threshold",
        "activeconns", "inactconns", "persistconns", "overloaded", "last_weight",
    )

    def __init__(self, addr, port: int, weight: int = 1, u_threshold: int = 0,
                 l_threshold: int = 0):
        self.addr, self.af, self.addr_int, self.addr_fold = _parse_addr(addr, "addr")
        self.port = _check_int(port, "port", 0, 65535)
        self.weight = _check_int(weight, "weight", 0, MAX_WEIGHT)
        self.u_threshold = _check_int(u_threshold, "u_threshold", 0, MAX_THRESHOLD)
        self.l_threshold = _check_int(l_threshold, "l_threshold", 0, MAX_THRESHOLD)
        self.activeconns = 0
        self.inactconns = 0
        self.persistconns = 0
        self.overloaded = False
        self.last_weight = self.weight

    def __repr__(self) -> str:
        host = f"[{self.addr}]" if self.af == 6 else self.addr
        return (f"RealServer({host}:{self.port} w={self.weight} "
                f"act={self.activeconns} inact={self.inactconns})")


class Flow:
    """The fields of a connection's first packet that a scheduler may use.

    Schedulers read only the integer fields (`saddr_int`, `saddr_fold`, ports, ...); the text
    forms `saddr`/`daddr` are made on demand, so the engine can build flows from integers
    with `Flow.from_ints` without formatting addresses per new connection.
    """

    __slots__ = ("sport", "dport", "protocol", "af",
                 "saddr_int", "daddr_int", "saddr_fold", "daddr_fold")

    def __init__(self, saddr, sport: int, daddr, dport: int, protocol="tcp"):
        _, saf, self.saddr_int, self.saddr_fold = _parse_addr(saddr, "saddr")
        _, daf, self.daddr_int, self.daddr_fold = _parse_addr(daddr, "daddr")
        if saf != daf:
            raise ValueError(f"saddr/daddr: address families differ ({saddr!r}, {daddr!r})")
        self.af = saf
        self.sport = _check_int(sport, "sport", 0, 65535)
        self.dport = _check_int(dport, "dport", 0, 65535)
        if isinstance(protocol, int) and not isinstance(protocol, bool):
            if protocol not in _PROTO_NUMBERS:
                raise ValueError(f"protocol: unsupported number {protocol}; valid: 6, 17, 132")
            self.protocol = _PROTO_NUMBERS[protocol]
        elif isinstance(protocol, str) and protocol.lower() in PROTOCOLS:
            self.protocol = protocol.lower()
        else:
            raise ValueError(f"protocol: {protocol!r} is not one of tcp, udp, sctp")

    @classmethod
    def from_ints(cls, af: int, saddr_int: int, sport: int, daddr_int: int, dport: int,
                  protocol: str = "tcp") -> "Flow":
        """A Flow from already-validated integers (the engine's new-connection hand-off).

        No checks are made: the caller guarantees af in (4, 6), addresses and ports in range
        and protocol one of "tcp", "udp", "sctp".
        """
        f = cls.__new__(cls)
        f.af = af
        f.saddr_int = saddr_int
        f.daddr_int = daddr_int
        if af == 4:
            f.saddr_fold = saddr_int
            f.daddr_fold = daddr_int
        else:
            f.saddr_fold = _fold6(saddr_int)
            f.daddr_fold = _fold6(daddr_int)
        f.sport = sport
        f.dport = dport
        f.protocol = protocol
        return f

    @property
    def saddr(self) -> str:
        """Source address as text."""
        return str(_INT_TO_IP[self.af](self.saddr_int))

    @property
    def daddr(self) -> str:
        """Destination address as text."""
        return str(_INT_TO_IP[self.af](self.daddr_int))

    def __repr__(self) -> str:
        return (f"Flow({self.protocol} {self.saddr}:{self.sport} -> "
                f"{self.daddr}:{self.dport})")


def available(rs: RealServer) -> bool:
    """The test most kernel schedulers apply: weight > 0 and not overloaded."""
    return rs.weight > 0 and not rs.overloaded


class Scheduler:
    """One IPVS scheduler bound to one service's destination list.

    Subclasses set `name` (the ipvsadm name), `valid_flags`, and override the kernel hooks
    `init_service`, `add_dest`, `del_dest`, `upd_dest` and `schedule`. The base class keeps
    `self.servers` in the kernel's list order (newest first) and turns a whole new list given
    to `update()` into the sequence of hook calls the kernel would have made.
    """

    name = ""
    valid_flags: frozenset[str] = frozenset()
    # ipvsadm's generic names for the scheduler flag bits, per scheduler (sh: flag-1 = sh-fallback).
    flag_aliases: dict[str, str] = {}
    # The kernel keeps any of the three generic bits on any service (ipvsadm -s rr -b flag-1
    # is accepted and listed); a scheduler reads only the bits it has a meaning for.
    generic_flags: frozenset[str] = frozenset({"flag-1", "flag-2", "flag-3"})

    def __init__(self, servers: Iterable[RealServer], flags: Iterable[str] | None = None,
                 rng=None, clock=None):
        self.flags = self._check_flags(flags)
        self.servers = self._check_servers(servers)
        self.rng = rng
        self.clock = clock if clock is not None else time.monotonic
        for rs in self.servers:
            if rs.weight > 0:
                rs.last_weight = rs.weight
        self._snapshot = {id(rs): (rs.weight, rs.u_threshold, rs.l_threshold)
                          for rs in self.servers}
        self.init_service()

    # -- flags and input checks -------------------------------------------------------------
    def _check_flags(self, flags) -> frozenset[str]:
        if flags is None:
            return frozenset()
        if isinstance(flags, str):
            flags = [f for f in flags.split(",") if f]
        out = set()
        for f in flags:
            f = self.flag_aliases.get(f, f)
            if f not in self.valid_flags and f not in self.generic_flags:
                valid = ", ".join(sorted(self.valid_flags | self.generic_flags))
                raise ValueError(f"unknown flag {f!r} for scheduler {self.name}; valid: {valid}")
            out.add(f)
        return frozenset(out)

    @staticmethod
    def _check_servers(servers) -> list[RealServer]:
        lst = list(servers)
        seen = set()
        for rs in lst:
            if not isinstance(rs, RealServer):
                raise ValueError(f"servers: expected RealServer, got {type(rs).__name__}")
            if id(rs) in seen:
                raise ValueError(f"servers: {rs!r} appears twice")
            seen.add(id(rs))
        return lst

    # -- list changes -----------------------------------------------------------------------
    def update(self, servers: Iterable[RealServer]) -> None:
        """Apply a change of the destination list as the kernel's hooks would.

        Servers missing from `servers` are removed (del_dest, in the old list's order), then
        new objects are added one by one, the one furthest from the head first (add_dest sees
        the list with the new server at its head, as IPVS inserts it). If the set is
        unchanged, every server whose weight or thresholds changed since the last call gets
        upd_dest; if none changed, upd_dest(None) runs once (an `ipvsadm -e` with the same
        values still resets the kernel's state). The final list order is `servers`' order.
        """
        new = self._check_servers(servers)
        new_ids = {id(rs) for rs in new}
        old_ids = {id(rs) for rs in self.servers}
        removed = [rs for rs in self.servers if id(rs) not in new_ids]
        added = [rs for rs in new if id(rs) not in old_ids]
        changed = False
        for rs in removed:
            self.servers.remove(rs)
            self.del_dest(rs)
            changed = True
        for rs in reversed(added):
            # __ip_vs_update_dest sets last_weight on every add, zero included; edits only
            # record a non-zero weight.
            rs.last_weight = rs.weight
            self.servers.insert(0, rs)
            self.add_dest(rs)
            changed = True
        if self.servers != new:
            self.servers = new
        if not changed:
            edited = [rs for rs in self.servers
                      if self._snapshot.get(id(rs)) != (rs.weight, rs.u_threshold, rs.l_threshold)]
            for rs in edited:
                if rs.weight > 0:
                    rs.last_weight = rs.weight
                self.upd_dest(rs)
            if not edited:
                self.upd_dest(None)
        self._snapshot = {id(rs): (rs.weight, rs.u_threshold, rs.l_threshold)
                          for rs in self.servers}

    # -- the kernel's scheduler ops; subclasses override what their .c file defines ---------
    def init_service(self) -> None:
        """Build per-service state from `self.servers` (the kernel's init_service)."""

    def add_dest(self, dest: RealServer) -> None:
        """`dest` was just inserted at the head of `self.servers`."""

    def del_dest(self, dest: RealServer) -> None:
        """`dest` was just unlinked from `self.servers`."""

    def upd_dest(self, dest: RealServer | None) -> None:
        """`dest`'s weight or thresholds were edited in place (None: unknown which)."""

    def schedule(self, flow: Flow) -> RealServer | None:
        """Pick the destination for a new connection, or None when none is available."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} servers={len(self.servers)}>"
