"""The daemon's rings and what steers traffic into them: per interface, an AF_XDP socket on
every RX queue (our steering program redirects by queue) or one AF_PACKET socket (it sees all
queues) with an nftables ingress drop, opened when the wanted steering first names the
interface; the steering keys kept equal to the wanted ones plus the director's own addresses,
followed as they change; NAPI placement and busy-poll sysfs settings of each interface opened;
queue discovery.

Keys are plain tuples (kind, proto, addr, port), kind "service" (proto, VIP, vport: frames to
it), "rserver" (proto, RIP, rport: NAT replies from it) or "local" ("", address, 0: a NAT
real server's frame to it answers the director's own connection and stays the kernel's); this
module knows nothing of services or the director.
"""
from __future__ import annotations

import array
import fcntl
import logging
import socket
import struct

from fastlvs.engine.contract import RING_MAX_PORTS as MAX_PORTS
from fastlvs.system import nft
from fastlvs.system.napi import NapiPlacement, SysfsTuning
from fastlvs.system.netlink import AddressMonitor

log = logging.getLogger("fastlvs")

Key = tuple  # (kind, proto, addr, port)

UMEM_FRAMES = 4 * 4096 * 2
RING_SLOTS = 4096           # an interface's RX (and fill) ring slots, shared by its queues
MIN_QUEUE_RING = 512


class PortError(Exception):
    """A port that must open cannot (AF_XDP demanded and refused): the one line to print."""


def xdp_missing() -> str | None:
    """Why the AF_XDP backend is not in this build (one line), or None when it is."""
    from fastlvs.engine import _core

    return None if _core.XDP_BUILT else _core.XDP_MISSING


def rx_queue_count(ifname: str) -> int:
    """How many RX queues `ifname` (in this thread's namespace) delivers on: the ethtool
    channel counts (rx + combined), else the kernel's IFLA_NUM_RX_QUEUES. The XDP program
    passes frames of a queue without a socket to the kernel, so open a port on each."""
    buf = array.array("I", [0x3C] + [0] * 8)          # ETHTOOL_GCHANNELS
    ifr = struct.pack("16sP", ifname.encode()[:15], buf.buffer_info()[0])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(s.fileno(), 0x8946, ifr)           # SIOCETHTOOL
        n = buf[5] + buf[8]                            # rx_count + combined_count
        if n > 0:
            return n
    except OSError:
        pass
    finally:
        s.close()
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = ipr.link("get", index=socket.if_nametoindex(ifname))
        n = links[0].get_attr("IFLA_NUM_RX_QUEUES") if links else None
    return int(n or 1)


def link_kind(ifname: str) -> str | None:
    """The rtnetlink kind of `ifname` ("veth", "bridge", ...; None for a plain NIC)."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        links = ipr.link("get", index=socket.if_nametoindex(ifname))
    info = links[0].get_attr("IFLA_LINKINFO") if links else None
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def queue_ring_size(n: int) -> int:
    """Ring size of each of `n` queues: the interface's RING_SLOTS shared out (a power of
    two, at least MIN_QUEUE_RING), so that the fill rings of a many-queue interface do not
    hold the whole shared UMEM while most queues idle."""
    ring = RING_SLOTS
    while ring > MIN_QUEUE_RING and ring * n > RING_SLOTS:
        ring //= 2
    return ring


def xdp_ports(ifname: str, umem=None, queues: int | None = None, **kwargs) -> list:
    """An XdpPort on every RX queue of `ifname` (`queues`, else rx_queue_count) sharing one
    XdpUmem (made when None, sized for all queues); kwargs go to XdpPort, ring_size defaulting
    to queue_ring_size. On error, the ports made so far are closed."""
    from fastlvs.engine import _core

    n = queues or rx_queue_count(ifname)
    ring = kwargs.setdefault("ring_size", queue_ring_size(n))
    if umem is None:
        umem = _core.XdpUmem(frames=4 * ring * n, frame_size=kwargs.pop("frame_size", 4096))
    ports = []
    try:
        for q in range(n):
            ports.append(_core.XdpPort(ifname, queue=q, umem=umem, **kwargs))
    except BaseException:
        for p in ports:
            p.close()
        raise
    return ports


class Steering:
    """What makes a port's interface deliver the keyed traffic to the port: the XDP
    program's maps for an XdpPort, an nftables netdev-ingress drop (so the kernel does not
    answer it too) for a PacketPort. Create it in the port's network namespace."""

    def __init__(self, port):
        self.port = port
        self.nft = nft.NftIngressDrop([port.ifname]) if port.backend == "packet" else None

    def changes(self, add, discard) -> list:
        """Apply add/discard on the XDP maps now; for nft, return the change to commit."""
        if self.nft is not None:
            return [(self.nft, list(add), list(discard))]
        for kind, proto, addr, port in add:
            if kind == "local":
                self.port.add_local(addr)
            else:
                getattr(self.port, f"add_{kind}")(proto, addr, port)
        for kind, proto, addr, port in discard:
            if kind == "local":
                self.port.del_local(addr)
            else:
                getattr(self.port, f"del_{kind}")(proto, addr, port)
        return []

    def add(self, kind, proto, addr, port) -> None:
        """Steer one key now. Adding a present key is a no-op."""
        nft.commit(self.changes([(kind, proto, addr, port)], ()))

    def discard(self, kind, proto, addr, port) -> None:
        """Stop steering one key now. Removing an absent key is a no-op."""
        nft.commit(self.changes((), [(kind, proto, addr, port)]))

    @property
    def nft_table(self) -> str | None:
        return None if self.nft is None else self.nft.table

    def close(self) -> None:
        if self.nft is not None:
            self.nft.close()


class Ports:
    """The rings of one daemon. `backend` is "auto" (AF_XDP, falling back to AF_PACKET for
    good at the first interface where it does not attach), "xdp" (PortError instead) or
    "packet". `sync(wanted)` opens the ports of every interface `wanted` names that has none
    and makes each interface's steering keys equal to wanted[ifindex] plus a "local" key per
    address of this namespace, nft changes of the whole set in one transaction; `follow()`
    (once per loop pass) keeps the local keys in step with address changes. close() leaves
    nothing attached and is safe to call twice."""

    def __init__(self, nl, backend: str, *, busy_poll: int = 0, cpu: int | None = None,
                 mtu: int | None = None, state=None):
        self.nl = nl
        self.state = state                           # a state.StateFile, or None
        self.backend = backend
        self.busy_poll = busy_poll
        self.mtu = mtu
        self.ports: dict[int, object] = {}           # ifindex -> XdpPort (queue 0) | PacketPort
        self.queues: dict[int, list] = {}            # ifindex -> its ports, one per RX queue
        self.steering: dict[int, Steering] = {}
        self.steered: dict[int, set] = {}            # ifindex -> installed keys
        self.wanted: dict[int, set] = {}             # ifindex -> keys sync() was given
        self.local: set = set()                      # ("local", "", addr, 0) per own address
        self.addresses: AddressMonitor | None = None
        self.umem = None
        self.napi = NapiPlacement(cpu) if cpu is not None else None
        self.sysfs = SysfsTuning()
        self.offload: tuple[int, int] | None = None  # (map fd, max entries): the engine's

    def list(self) -> list:
        """The open ports, interfaces in the order they were opened, each interface's queues
        in order (what the ring loop polls)."""
        return [p for queues in self.queues.values() for p in queues]

    def open(self, ifindex: int):
        """The port of `ifindex` (queue 0's; the steering goes through it), opened now with
        the ports of its other queues if it has none."""
        from fastlvs.engine import _core

        if ifindex in self.ports:
            return self.ports[ifindex]
        name = self.nl.interface_by_index(ifindex).name
        queues = None
        if self.backend in ("xdp", "auto"):
            try:
                # A queue without a socket would give its share of the VIP traffic to the
                # kernel (which answers RST) and NAT replies would leave untranslated.
                n = rx_queue_count(name)
                have = len(self.list())
                if have + n > MAX_PORTS:
                    raise RuntimeError(f"{n} RX queues: with the {have} rings open, more than "
                                       f"the {MAX_PORTS} one loop polls (fewer queues: "
                                       f"ethtool -L {name})")
                if self.umem is None:
                    # One UMEM for every port: a frame received on one interface is sent on
                    # another by descriptor, without a copy.
                    self.umem = _core.XdpUmem(frames=UMEM_FRAMES, frame_size=self.frame_size())
                off = {} if self.offload is None else {"offload_fd": self.offload[0],
                                                       "offload_max": self.offload[1]}
                queues = xdp_ports(name, umem=self.umem, queues=n, mode="auto",
                                   busy_poll=bool(self.busy_poll), **off)
                port = queues[0]
            except (OSError, RuntimeError) as e:
                if self.backend == "xdp":
                    raise PortError(f"{name}: cannot attach AF_XDP: {e}") from None
                log.info("%s: AF_XDP unavailable (%s); using AF_PACKET", name, e)
                self.backend = "packet"
                port = _core.PacketPort(name)
            else:
                if self.backend == "auto":
                    self.backend = "xdp"
                if self.busy_poll:
                    port.tuning.update(self.sysfs.busy_poll(name))
        else:
            port = _core.PacketPort(name)
        self.ports[ifindex] = port
        self.queues[ifindex] = queues or [port]      # AF_PACKET: one socket sees every queue
        self.steering[ifindex] = Steering(port)
        self.steered[ifindex] = set()
        log.info("%s: %s backend, %s, %d RX queue(s)", name, port.backend, port.mode,
                 len(self.queues[ifindex]))
        if self.napi is not None:
            self.napi.place(name)
        self._record()
        return port

    def _record(self) -> None:
        # what a successor must undo if this process dies without close()
        if self.state is None:
            return
        self.state.update(
            xdp=[p.ifname for p in self.ports.values() if p.backend == "xdp"],
            nft_tables=[s.nft.table for s in self.steering.values()
                        if s.nft is not None and s.nft.created],
            sysfs={f"{i}/{k}": v for (i, k), v in self.sysfs.saved.items()},
            threaded=dict(self.napi._threaded) if self.napi is not None else {})

    def sync(self, wanted: dict[int, set]) -> list:
        """Open the ports `wanted` needs and make every port's keys equal to wanted (a port
        `wanted` does not name keeps its keys). Returns the ports opened by this call."""
        opened = []
        for ifindex in wanted:
            if ifindex not in self.ports:
                self.open(ifindex)
                opened += self.queues[ifindex]
        for ifindex, keys in wanted.items():
            self.wanted[ifindex] = set(keys)
        if self.addresses is None:
            # the monitor before the first read: no change falls between the two
            self.addresses = AddressMonitor()
            self.local = self._local_keys()
        self._steer(list(wanted))
        return opened

    def follow(self) -> None:
        """Bring the local-address keys of every interface up to date after an address of
        this namespace was added or removed (reads the news without blocking)."""
        if self.addresses is None or not self.addresses.changed():
            return
        self.local = self._local_keys()
        self._steer(list(self.wanted))

    def _local_keys(self) -> set:
        return {("local", "", addr, 0) for addr in self.nl.local_addresses()}

    def _steer(self, ifindexes) -> None:
        # installed keys := wanted + local, for these interfaces, nft in one transaction
        batch, full = [], {}
        for ifindex in ifindexes:
            keys = full[ifindex] = self.wanted[ifindex] | self.local
            have = self.steered[ifindex]
            add, discard = keys - have, have - keys
            if add or discard:
                batch += self.steering[ifindex].changes(sorted(add), sorted(discard))
        nft.commit(batch)
        self.steered.update(full)
        if batch:
            self._record()

    def frame_size(self) -> int:
        """UMEM chunk size: 2048 when every interface's largest frame fits one with the
        kernel's 256 bytes of XDP headroom (TUN's 20 bytes and a VLAN tag included), else
        4096. Smaller chunks are faster: at 4096 every frame's headers fall on the same few
        cache sets. Any interface counts, as NAT replies may arrive on one opened later."""
        worst = max(self.nl.max_mtu(), self.mtu or 0) + 14 + 4 + 20
        return 2048 if worst <= 2048 - 256 else 4096

    def stats(self) -> dict:
        """{ifname: counters} of every interface's rings: ours (rx, tx, drops, wake-ups),
        and for AF_XDP the steering program's and the kernel's socket counters (rx_ring_full:
        frames the kernel dropped because we were behind), summed over its RX queues, with
        each queue's own under "queues" ({queue number: counters})."""
        out = {}
        for ifindex, port in self.ports.items():
            per = {}
            for q in self.queues[ifindex]:
                st = dict(q.stats())
                if hasattr(q, "xsk_stats"):
                    try:
                        st.update(q.xsk_stats())
                    except OSError as e:
                        st["xsk_stats"] = f"unavailable: {e}"
                per[getattr(q, "queue", 0)] = st
            total = {"backend": port.backend}
            for st in per.values():
                for k, v in st.items():
                    total[k] = total.get(k, 0) + v if isinstance(v, int) else v
            if port.backend == "xdp":
                total["umem_frame_size"] = port.umem.frame_size
                total["queues"] = per
            if hasattr(port, "steer_stats"):
                try:
                    total.update(port.steer_stats())
                except OSError as e:
                    total["steer_stats"] = f"unavailable: {e}"
            out[port.ifname] = total
        return out

    def offload_native(self) -> bool:
        """Whether every open port's program runs in native (driver) mode on an interface
        whose XDP_TX/redirect needs nothing from its peer: not a veth (a veth delivers what
        XDP sends only where its peer runs NAPI, which the director cannot see to)."""
        if not self.ports:
            return False
        for p in self.ports.values():
            if p.backend != "xdp" or not p.mode.startswith("native"):
                return False
            if link_kind(p.ifname) == "veth":
                return False
        return True

    def describe(self) -> str:
        return ", ".join(f"{p.ifname} ({p.backend} {p.mode}"
                         + (f", {len(self.queues[i])} queues)" if len(self.queues[i]) > 1
                            else ")")
                         for i, p in self.ports.items())

    def close(self) -> None:
        # the NAPI placement before the ports: a veth without its XDP program may have no
        # NAPI left, and then its threaded setting can no longer be written back
        closers = [self.napi, *self.steering.values(), *self.list(), self.sysfs,
                   self.umem, self.addresses]
        for closer in closers:
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as e:          # teardown goes on: leave nothing else behind
                log.warning("cleanup: %s", e)
        self.napi = self.umem = self.addresses = None
        self.ports = {}
        self.queues = {}
        self.steering = {}
        self.steered = {}
        self.wanted = {}
        if self.state is not None:
            self.state.close()
            self.state = None


__all__ = ["PortError", "Ports", "Steering", "queue_ring_size", "rx_queue_count", "xdp_missing",
           "xdp_ports"]
