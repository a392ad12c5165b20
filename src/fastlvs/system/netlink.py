"""What the daemon asks the kernel over rtnetlink (pyroute2), in the kernel's own words:
interfaces (ifindex, MAC, MTU, addresses), `ip route get`, neighbours (looked up, and
resolved by the kernel on request), whether an address is local, this namespace's own
addresses, and monitors of neighbour and address changes. Everything is read-only except
the resolution request (NTF_USE), which only makes the kernel do what it would do for a packet
of its own.

The VIP rule: a virtual service's address is served while it is local to this host (or
network namespace), in every forwarding mode, as IPVS requires for non-fwmark services. The
kernel must own the VIP so that it answers ARP for it (clients and routers then send VIP
traffic to the director's MAC) and so that it drops, rather than forwards, what it sees of
that traffic on AF_PACKET (where the nftables ingress drop keeps it from answering). An
address assigned to any interface counts, and so does a local route
(`ip route add local VIP/32 dev lo`, or a whole prefix), which is how to own a VIP that the
upstream router routes to the director without the director announcing it by ARP. A VIP
that is not local is not an error (`vip_local`): a VRRP backup waits for it, and
`AddressMonitor(routes=True)` says when to look again. `vip_problem` keeps what can never
be a VIP.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time
from dataclasses import dataclass

# <linux/neighbour.h>
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY
NTF_USE = 0x01
# <linux/rtnetlink.h>
RTN_UNICAST = 1
RTN_LOCAL = 2
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400

_POLL = 0.01          # seconds between neighbour-table reads while the kernel resolves


class NetlinkError(Exception):
    """The kernel cannot give what was asked; str() is one line naming the object."""


class NoAnswer(NetlinkError):
    """A neighbour the kernel was asked to resolve has not answered (yet): asking again
    later may succeed, unlike the other NetlinkErrors."""


@dataclass(frozen=True)
class Interface:
    """A link as `ip addr show NAME` describes it: `addresses` are the IPv4 ones as
    "a.b.c.d/len" strings, primary first; `mac` is 6 bytes (zeros for a link without one)."""

    name: str
    index: int
    mac: bytes
    mtu: int
    addresses: tuple[str, ...]
    up: bool

    @property
    def ips(self) -> tuple[str, ...]:
        """The addresses without their prefix lengths."""
        return tuple(a.split("/")[0] for a in self.addresses)


@dataclass(frozen=True)
class Route:
    """What `ip route get DST` answers: the output interface, the gateway (None when DST is
    on a directly attached network), the preferred source address, and the route type
    (RTN_LOCAL when DST is one of this host's addresses)."""

    dst: str
    oif: int
    gateway: str | None
    prefsrc: str | None
    type: int

    @property
    def local(self) -> bool:
        return self.type == RTN_LOCAL

    @property
    def nexthop(self) -> str:
        """The address whose MAC frames to `dst` carry: the gateway, or `dst` itself."""
        return self.gateway or self.dst


def _mac_bytes(text: str | None) -> bytes:
    if not text:
        return b"\0" * 6
    return bytes(int(p, 16) for p in text.split(":"))


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def _canonical(ip: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise NetlinkError(f"{what} {ip!r}: not an IP address") from None


class Netlink:
    """One rtnetlink socket for queries, in the caller's network namespace or in the named
    one (`Netlink(netns="name")`, as `ip -n name`). Not thread-safe; close() when done (or
    use it as a context manager)."""

    def __init__(self, netns: str | None = None):
        from pyroute2 import IPRoute     # only the daemon needs pyroute2

        # groups=0: a query socket must not also collect every multicast announcement
        # (pyroute2's default subscribes to most groups, which fills the socket's buffer).
        self._ipr = IPRoute(groups=0, netns=netns)

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- links ---------------------------------------------------------------------------------
    def interface(self, name: str) -> Interface:
        """The interface called `name`; NetlinkError "NAME: no such interface" otherwise."""
        found = self._ipr.link_lookup(ifname=name) if name else []
        if not found:
            raise NetlinkError(f"{name}: no such interface")
        return self.interface_by_index(found[0])

    def interface_by_index(self, index: int) -> Interface:
        """The interface with this ifindex; NetlinkError if there is none."""
        try:
            link = self._ipr.get_links(index)[0]
        except Exception as e:           # pyroute2's NetlinkError (ENODEV) and the like
            raise NetlinkError(f"ifindex {index}: no such interface ({e})") from None
        addrs = tuple(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
                      for a in self._ipr.get_addr(index=index, family=socket.AF_INET))
        return Interface(name=link.get("IFLA_IFNAME"), index=index,
                         mac=_mac_bytes(link.get("IFLA_ADDRESS")), mtu=link.get("IFLA_MTU"),
                         addresses=addrs, up=bool(link["flags"] & 1))

    def global_ipv6(self, index: int) -> list[str]:
        """The interface's IPv6 addresses of global scope (no link-local ones), as `ip -6
        addr show scope global` lists them, without prefix lengths."""
        return [a.get("IFA_ADDRESS") for a in self._ipr.get_addr(index=index,
                                                                 family=socket.AF_INET6)
                if a.get("IFA_ADDRESS") and a["scope"] == 0]

    def max_mtu(self) -> int:
        """The largest MTU of this namespace's interfaces, loopback left out (0 if none)."""
        mtus = [link.get("IFLA_MTU") or 0 for link in self._ipr.get_links()
                if not link["flags"] & 0x8]          # IFF_LOOPBACK
        return max(mtus, default=0)

    # -- routes --------------------------------------------------------------------------------
    def route_get(self, ip: str) -> Route:
        """`ip route get IP`: NetlinkError "IP: Network is unreachable" (the kernel's
        error text) when no route leads there."""
        ip = _canonical(ip, "route to")
        try:
            msg = self._ipr.route("get", dst=ip, family=_family(ip))[0]
        except Exception as e:
            code = getattr(e, "code", None)
            reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(e)
            raise NetlinkError(f"{ip}: {reason}") from None
        return Route(dst=ip, oif=msg.get("RTA_OIF"), gateway=msg.get("RTA_GATEWAY"),
                     prefsrc=msg.get("RTA_PREFSRC"), type=msg["type"])

    def is_local(self, ip: str) -> bool:
        """Whether the kernel delivers `ip` locally (an address of this host or namespace, or
        inside a local route). An unroutable address is not local."""
        try:
            return self.route_get(ip).local
        except NetlinkError:
            return False

    def local_addresses(self) -> set[str]:
        """Every address of every interface of this namespace, IPv4 and IPv6, as `ip addr`
        lists them (without prefix lengths): the addresses the director's own connections
        are answered to."""
        return {a.get("IFA_ADDRESS") for a in self._ipr.get_addr()
                if a.get("IFA_ADDRESS") and a["family"] in (socket.AF_INET, socket.AF_INET6)}

    # -- neighbours ----------------------------------------------------------------------------
    def neighbour(self, ip: str, ifindex: int) -> bytes | None:
        """The MAC the kernel has for `ip` on `ifindex` when its entry is usable
        (REACHABLE, STALE, DELAY, PROBE, PERMANENT, NOARP with an address), else None.
        Only reads: never triggers resolution."""
        ip = _canonical(ip, "neighbour")
        for n in self._ipr.neigh("dump", family=_family(ip), ifindex=ifindex):
            if n.get("NDA_DST") == ip and n["state"] & NUD_VALID and n.get("NDA_LLADDR"):
                return _mac_bytes(n.get("NDA_LLADDR"))
        return None

    def neighbours(self, ifindex: int, family: int = socket.AF_INET) -> list[tuple[str, bytes]]:
        """Every usable neighbour of `family` (AF_INET, or AF_INET6) on `ifindex` as (ip,
        MAC), as `ip -4 neigh show dev X` lists the reachable, stale, delayed, probed and
        permanent ones."""
        out = []
        for n in self._ipr.neigh("dump", family=family, ifindex=ifindex):
            if n["state"] & NUD_VALID and n.get("NDA_LLADDR") and n.get("NDA_DST"):
                out.append((n.get("NDA_DST"), _mac_bytes(n.get("NDA_LLADDR"))))
        return out

    def default_gateway(self, family: int = socket.AF_INET) -> str | None:
        """The default route's gateway (IPv4, or IPv6 with family=AF_INET6), or None when
        there is no such route or it has no gateway (a device route)."""
        for r in self._ipr.get_default_routes(family=family):
            gw = r.get("RTA_GATEWAY")
            if gw:
                return gw
        return None

    def resolve(self, ip: str, ifindex: int, timeout: float = 3.0) -> bytes:
        """The MAC of `ip` on `ifindex`, asking the kernel to resolve it when it has no
        usable entry, and waiting at most `timeout` seconds (the kernel's default gives up
        after 3 unanswered ARP requests a second apart).

        The request is an RTM_NEWNEIGH with NTF_USE (`ip neigh replace IP dev X use`): the
        kernel starts ARP/ND exactly as for an outgoing packet of its own, and no packet
        goes to `ip`. NetlinkError when no answer comes in time."""
        mac = self.neighbour(ip, ifindex)
        if mac is not None:
            return mac
        ip = _canonical(ip, "neighbour")
        try:
            self._ipr.neigh("replace", dst=ip, ifindex=ifindex, family=_family(ip),
                            flags=NTF_USE)
        except Exception as e:
            raise NetlinkError(f"{ip}: the kernel refused to resolve it on ifindex "
                               f"{ifindex} ({e})") from None
        deadline = time.monotonic() + timeout
        while True:
            mac = self.neighbour(ip, ifindex)
            if mac is not None:
                return mac
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL)
        name = self._ifname(ifindex)
        raise NoAnswer(f"{ip}: no ARP/ND answer on {name} within {timeout:g} s")

    def _ifname(self, ifindex: int) -> str:
        try:
            return self.interface_by_index(ifindex).name
        except NetlinkError:
            return f"ifindex {ifindex}"

    def nexthop(self, ip: str, timeout: float = 3.0) -> tuple[bytes, int]:
        """(MAC, ifindex) to send frames for `ip` to, as the kernel would: the route's output
        interface, and the MAC of its gateway or of `ip` itself when on-link (resolved if
        needed). Raises NetlinkError (one line). A local address is refused: the director
        cannot forward to itself."""
        route = self.route_get(ip)
        if route.local:
            raise NetlinkError(f"{ip} is an address of this host")
        return self.resolve(route.nexthop, route.oif, timeout), route.oif

    def nexthops(self, ips, timeout: float = 3.0, waited: float | None = None) -> dict:
        """nexthop() of many addresses at once: {ip: (MAC, ifindex) or NetlinkError}. The
        kernel is asked to resolve every missing neighbour first and the answers are awaited
        together, so the whole call waits at most `timeout` seconds, not one per address.
        An unanswered one is NoAnswer, whose message names `waited` seconds when the caller
        has been asking for that long already (default: `timeout`)."""
        out: dict = {}
        pending: dict[str, tuple[str, int]] = {}
        for ip in dict.fromkeys(ips):
            try:
                route = self.route_get(ip)
                if route.local:
                    raise NetlinkError(f"{ip} is an address of this host")
                out[ip] = (self.resolve(route.nexthop, route.oif, 0), route.oif)
            except NoAnswer:
                pending[ip] = (route.nexthop, route.oif)
            except NetlinkError as e:
                out[ip] = e
        deadline = time.monotonic() + timeout
        while pending:
            for ip, (hop, oif) in list(pending.items()):
                mac = self.neighbour(hop, oif)
                if mac is not None:
                    out[ip] = (mac, oif)
                    del pending[ip]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(_POLL)
        for ip, (hop, oif) in pending.items():
            out[ip] = NoAnswer(f"{hop}: no ARP/ND answer on {self._ifname(oif)} within "
                               f"{max(timeout, waited or 0):g} s")
        return out


def vip_problem(vip: str) -> str | None:
    """Why `vip` can never be a virtual service's address (one line), or None: not an IP
    address, the unspecified address, a multicast or the limited broadcast address (no
    host owns those as its own unicast address). Whether it is on this host now is
    `vip_local`'s question, and its answer may change."""
    try:
        ip = ipaddress.ip_address(_canonical(vip, "VIP"))
    except NetlinkError as e:
        return str(e)
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        kind = ("the unspecified address" if ip.is_unspecified else
                "a multicast address" if ip.is_multicast else "the broadcast address")
        return f"VIP {ip} is {kind}: a virtual service needs a unicast address"
    return None


def vip_local(nl: Netlink, vip: str) -> bool:
    """Whether `vip` is served here now: an address of this host (network namespace) or
    inside a local route, as the kernel decides for a packet to it (`ip route get`)."""
    return nl.is_local(vip)


def dr_problem(nl: Netlink, rip: str) -> str | None:
    """Why real server `rip` cannot be a direct-routing (or None): DR only rewrites MACs,
    so the real server must be on a directly attached network (no gateway in between)."""
    try:
        route = nl.route_get(rip)
    except NetlinkError as e:
        return str(e)
    if route.gateway:
        return (f"{route.dst} is reached through gateway {route.gateway}: direct routing "
                f"needs the real server on a network attached to this host")
    return None


class _Monitor:
    """A socket subscribed to rtnetlink `groups`, read without waiting. After an overrun
    (the kernel dropped news: ENOBUFS) pyroute2 keeps the error on its socket and raises it
    at every later use, so the socket is opened again; the caller re-reads the whole state,
    after the new subscription, so no change falls between the two."""

    def __init__(self, groups: int, netns: str | None = None):
        self._groups, self._netns = groups, netns
        self._open()

    def _open(self) -> None:
        from pyroute2 import IPRoute     # only the daemon needs pyroute2

        self._ipr = IPRoute(groups=self._groups, netns=self._netns)
        self._ipr.bind(groups=self._groups)

    def _messages(self) -> list | None:
        # every message queued now; None after an overrun
        out: list = []
        try:
            while select.select([self._ipr], [], [], 0)[0]:
                out += self._ipr.get()
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            try:
                self._ipr.close()
            except Exception:           # the socket is broken already; a new one follows
                pass
            self._open()
            return None
        return out

    def fileno(self) -> int:
        return self._ipr.fileno()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NeighbourMonitor(_Monitor):
    """Neighbour-table changes as the kernel announces them (RTMGRP_NEIGH), for the
    daemon's loop: `fileno()` polls readable when there is news, `changes()` reads it all
    without blocking and returns [(ip, mac or None, ifindex)], in order, where None means
    the entry is no longer usable (FAILED, INCOMPLETE, deleted). Only IPv4 and IPv6
    unicast neighbours are reported. After an overrun `changes()` raises NetlinkError:
    re-read the table."""

    def __init__(self, netns: str | None = None):
        super().__init__(RTMGRP_NEIGH, netns)

    def changes(self) -> list[tuple[str, bytes | None, int]]:
        msgs = self._messages()
        if msgs is None:
            # report nothing rather than a partial picture
            raise NetlinkError("neighbour monitor overrun: re-read the table")
        out = []
        for m in msgs:
            if m.get("family") not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = m.get("NDA_DST")
            if ip is None:
                continue
            usable = (m.get("event") == "RTM_NEWNEIGH" and m["state"] & NUD_VALID
                      and m.get("NDA_LLADDR"))
            out.append((ip, _mac_bytes(m.get("NDA_LLADDR")) if usable else None,
                        m["ifindex"]))
        return out


class AddressMonitor(_Monitor):
    """Whether this namespace's addresses changed (RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR),
    and with `routes=True` its local routes too (`ip route add local ...`: RTN_LOCAL routes
    only, so a routing daemon's churn of unicast routes costs a look, not a re-read):
    `changed()` reads all news without blocking and says whether any was added or removed
    since the last call (also after an overrun, when the kernel dropped news): then re-read
    them all. Create it before the first read, so that no change falls between the two."""

    def __init__(self, netns: str | None = None, routes: bool = False):
        groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
        if routes:
            groups |= RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        super().__init__(groups, netns)

    def changed(self) -> bool:
        msgs = self._messages()
        return msgs is None or any(_news(m) for m in msgs)


def _news(m) -> bool:
    event = m.get("event")
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        return True
    return event in ("RTM_NEWROUTE", "RTM_DELROUTE") and m.get("type") == RTN_LOCAL


__all__ = ["AddressMonitor", "Interface", "NeighbourMonitor", "NetlinkError", "Netlink", "NoAnswer",
           "Route", "dr_problem", "vip_local", "vip_problem"]
