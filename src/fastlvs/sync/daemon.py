"""The IPVS sync daemons' side in the process: the multicast sockets, set up as ip_vs_sync.c's
make_send_sock()/make_receive_sock() set them up, and their bounded work per loop turn. A
master multicasts what Director.sync_take() hands it; a backup hands every datagram it reads
to Director.sync_receive(). `SyncDaemons` keeps at most one master and one backup (both may
run at once, as in the kernel) and answers --start-daemon, --stop-daemon and -L --daemon.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import ipaddress
import logging
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from fastlvs.sync import protocol

log = logging.getLogger("fastlvs.sync")

MASTER, BACKUP = "master", "backup"
DEFAULT_TTL = 1
RECV_BUDGET = 256          # datagrams read per loop turn: a flood costs one turn this much
RECV_BUDGET_MAX = 4096     # ... doubled turn by turn while datagrams are still waiting
BACKUP_RCVBUF = 4 << 20    # a backup's SO_RCVBUF when sync_sock_size is 0 (see below)
SEND_BUDGET = 256          # datagrams sent per loop turn
SEND_QUEUE_MAX = 1024      # datagrams waiting for room in a full send buffer (then dropped)
HANDOVER_SLICE = 16384     # table slots a handover walks between two sends of its messages
HANDOVER_WAIT = 1.0        # seconds a handover may hold the loop to get its messages out
IFNAMSIZ = 16

# ioctls and socket options Python's socket module does not name
_SIOCGIFADDR, _SIOCGIFMTU, _SIOCGIFINDEX = 0x8915, 0x8921, 0x8933
_IP_MTU_DISCOVER, _IP_PMTUDISC_DONT = 10, 0
_IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DONT = 23, 0
_SO_RCVBUFFORCE = 33


class SyncError(Exception):
    """A sync daemon the director refuses to start or stop; str() is the one line ipvsadm
    prints for the kernel's refusal, `errno` the kernel's error."""

    def __init__(self, message: str, err: int = errno.EINVAL):
        self.errno = err
        super().__init__(message)


# What ipvsadm 1.31 prints when the kernel refuses a sync daemon command (libipvs'
# ipvs_strerror() for the start/stop calls; other errors print strerror()).
_START_ERRORS = {errno.EEXIST: "Daemon has already run", errno.ENODEV: "No such device"}
_STOP_ERRORS = {errno.ESRCH: "No daemon is running"}


def _refusal(err: int, table: dict) -> SyncError:
    return SyncError(table.get(err) or os.strerror(err), err)


@dataclass(frozen=True)
class SyncConfig:
    """One running sync daemon's settings, with the kernel's defaults filled in as
    start_sync_thread() fills them: group 224.0.0.81 (IPv4), port 8848, ttl 1, and `maxlen`
    the sync message length (protocol.sync_maxlen: a master 1500 less the headers unless
    asked, a backup its interface's MTU less the headers)."""

    state: str
    ifname: str
    syncid: int = 0
    maxlen: int = 0
    group: str = protocol.SYNC_GROUP
    port: int = protocol.SYNC_PORT
    ttl: int = DEFAULT_TTL

    @property
    def ipv6(self) -> bool:
        return ":" in self.group

    def describe(self) -> str:
        """The line `ipvsadm -L --daemon` prints for it."""
        return (f"{self.state} sync daemon (mcast={self.ifname}, syncid={self.syncid}, "
                f"maxlen={self.maxlen}, group={self.group}, port={self.port}, ttl={self.ttl})")


def config_of(opts, mtu: int) -> SyncConfig:
    """The SyncConfig of --start-daemon's options (ipvsadm.SyncDaemonOptions or anything with
    its fields), defaults filled in for an interface of `mtu`."""
    group = opts.group or protocol.SYNC_GROUP
    v6 = ":" in group
    return SyncConfig(state=opts.state, ifname=opts.ifname, syncid=opts.syncid,
                      maxlen=protocol.sync_maxlen(mtu, opts.state == MASTER, opts.maxlen or 0,
                                                  ipv6_group=v6),
                      group=str(ipaddress.ip_address(group)),
                      port=opts.port or protocol.SYNC_PORT, ttl=opts.ttl or DEFAULT_TTL)


# -- the interface, as the kernel looks it up in the caller's network namespace ----------------
@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    mtu: int
    ipv4: str | None        # the address a master's socket is bound to (None: none there)


def lookup_interface(name: str) -> Interface:
    """The interface `name` in this process's network namespace (ioctls, so the answer is
    the namespace's whatever /sys shows). SyncError ENODEV when there is none."""
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or "\0" in name:
        raise _refusal(errno.ENODEV, _START_ERRORS)
    req = name.encode().ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            index = struct.unpack_from("i", fcntl.ioctl(s, _SIOCGIFINDEX, req), 16)[0]
            mtu = struct.unpack_from("i", fcntl.ioctl(s, _SIOCGIFMTU, req), 16)[0]
        except OSError as e:
            raise _refusal(e.errno or errno.ENODEV, _START_ERRORS) from None
        try:
            raw = fcntl.ioctl(s, _SIOCGIFADDR, req)
            ipv4 = socket.inet_ntoa(raw[20:24])
        except OSError:
            ipv4 = None
    return Interface(name, index, mtu, ipv4)


# -- the sockets ------------------------------------------------------------------------------
def open_send_socket(cfg: SyncConfig, dev: Interface, sock_size: int = 0) -> socket.socket:
    """A master's socket, as make_send_sock() makes it: multicast out of `dev`, loopback off,
    the configured TTL, no path-MTU discovery (the datagram may be fragmented), SO_SNDBUF
    from the sync_sock_size sysctl when it is set, bound to the interface's IPv4 address
    (the source the backups see), connected to group:port. Non-blocking."""
    family = socket.AF_INET6 if cfg.ipv6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setblocking(False)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                         struct.pack("4s4si", b"\0" * 4, b"\0" * 4, dev.index))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
            s.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, dev.index)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, cfg.ttl)
            s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DONT)
        if sock_size > 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sock_size)
        if family == socket.AF_INET:
            if dev.ipv4 is None:
                log.warning("sync: %s has no IPv4 address; the master's messages leave "
                            "without a source address of it", dev.name)
            s.bind((dev.ipv4 or "0.0.0.0", 0))
            s.connect((cfg.group, cfg.port))
        else:
            s.connect((cfg.group, cfg.port, 0, dev.index))
    except OSError:
        s.close()
        raise
    return s


def open_receive_socket(cfg: SyncConfig, dev: Interface, sock_size: int = 0) -> socket.socket:
    """A backup's socket, as make_receive_sock() makes it: address reuse, SO_RCVBUF from the
    sync_sock_size sysctl when it is set, bound to `dev` and to group:port, the group joined
    on `dev`. Non-blocking. With sync_sock_size 0 fastlvs does not keep the system's default
    (about 200 KB, a tenth of a second of 50,000 new conns/s on the master): it asks for
    BACKUP_RCVBUF past net.core.rmem_max (SO_RCVBUFFORCE, as root), which the kernel doubles
    for its bookkeeping, room for some 2 s of them; without the privilege, rmem_max caps it."""
    family = socket.AF_INET6 if cfg.ipv6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock_size > 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sock_size)
        else:
            try:
                s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, BACKUP_RCVBUF)
            except PermissionError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BACKUP_RCVBUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.name.encode())
        group = socket.inet_pton(family, cfg.group)
        if family == socket.AF_INET:
            s.bind((cfg.group, cfg.port))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                         struct.pack("4s4si", group, b"\0" * 4, dev.index))
        else:
            s.bind((cfg.group, cfg.port, 0, dev.index))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                         group + struct.pack("I", dev.index))
    except OSError:
        s.close()
        raise
    return s


# -- one running daemon ----------------------------------------------------------------------
class _Daemon:
    """One sync daemon's socket and counters."""

    def __init__(self, cfg: SyncConfig, sock: socket.socket, now_ns: int):
        self.cfg = cfg
        self.sock = sock
        self.started_ns = now_ns
        self.last_ns = 0                # last message sent (master) or received (backup)
        self.messages = 0
        self.bytes = 0
        self.errors = 0                 # send errors (master), read errors (backup)
        self.dropped = 0                # master: datagrams dropped while the buffer was full
        self.budget = RECV_BUDGET       # backup: datagrams to read this turn at most
        # (when taken, datagram) not sent yet: the socket's buffer was full
        self.pending: collections.deque[tuple[int, bytes]] = collections.deque()

    def close(self) -> None:
        self.sock.close()


class SyncDaemons:
    """The director's master and backup sync daemons: at most one of each, both at once
    allowed. `start()`/`stop()` are --start-daemon/--stop-daemon (SyncError with ipvsadm's
    line when refused: a running one started again, an unknown interface, stopping one that
    does not run); `listing()` is -L --daemon; `poll(now_ns)` is one loop turn's work;
    `stats()` the counters for metrics; `close()` stops both.

    `director` is the engine's client (Director.sync_start_master/... ); `sock_size()`
    returns the sync_sock_size sysctl (0: the system's default buffers); `lookup(name)`
    finds an interface (lookup_interface in the daemon)."""

    def __init__(self, director, sock_size=lambda: 0, lookup=lookup_interface,
                 clock=time.monotonic_ns):
        self.director = director
        self.sock_size = sock_size
        self.lookup = lookup
        self.clock = clock
        self.master: _Daemon | None = None
        self.backup: _Daemon | None = None
        self.receive_failures = 0       # sync_receive raised: a defect, logged once
        self._total = collections.Counter()   # counts of daemons since stopped

    # -- commands
    def start(self, opts) -> SyncConfig:
        """Start a master or backup daemon with `opts` (ipvsadm.SyncDaemonOptions or the
        like). A real server of another family than its service refuses (EINVAL), then the
        interface is looked up (ENODEV), then a running daemon of that state refuses
        (EEXIST), in the kernel's order. Nothing is left behind
        when it fails. Returns the daemon's settings, defaults filled in."""
        self._check_mixed_families()        # the netlink handler's check, before the rest
        dev = self.lookup(opts.ifname)
        cfg = config_of(opts, dev.mtu)
        if getattr(self, cfg.state) is not None:
            raise _refusal(errno.EEXIST, _START_ERRORS)
        size = int(self.sock_size() or 0)
        try:
            if cfg.state == MASTER:
                sock = open_send_socket(cfg, dev, size)
            else:
                sock = open_receive_socket(cfg, dev, size)
        except OSError as e:
            raise _refusal(e.errno or errno.EINVAL, _START_ERRORS) from None
        try:
            if cfg.state == MASTER:
                self.director.sync_start_master(cfg.syncid, cfg.maxlen)
            else:
                self.director.sync_start_backup(cfg.syncid)
        except BaseException:
            sock.close()
            raise
        setattr(self, cfg.state, _Daemon(cfg, sock, self.clock()))
        log.info("sync: %s", cfg.describe())
        return cfg

    def stop(self, state: str) -> None:
        """Stop the master or backup daemon; SyncError ESRCH ("No daemon is running") when
        it does not run."""
        d = getattr(self, state)
        if d is None:
            raise _refusal(errno.ESRCH, _STOP_ERRORS)
        try:
            if state == MASTER:
                self.director.sync_stop_master()
            else:
                self.director.sync_stop_backup()
        finally:
            self._retire(d)
            setattr(self, state, None)
            log.info("sync: %s sync daemon stopped", state)

    def running(self, state: str) -> SyncConfig | None:
        """The settings of the running `state` daemon, or None."""
        d = getattr(self, state)
        return None if d is None else d.cfg

    def listing(self) -> str:
        """`ipvsadm -L --daemon`: a line per running daemon, the master first; "" if none."""
        return "".join(d.cfg.describe() + "\n" for d in (self.master, self.backup) if d)

    def _check_mixed_families(self) -> None:
        # ip_vs_genl_new_daemon(): the protocol cannot carry a conn whose real server is of
        # another family than its service, so no daemon starts while such a dest exists
        for svc in getattr(self.director, "table", ()):
            for d in svc.dests:
                if (":" in d.addr) != (":" in svc.vaddr):
                    raise SyncError(os.strerror(errno.EINVAL), errno.EINVAL)

    # -- the loop
    def poll(self, now_ns: int | None = None) -> int:
        """One loop turn: the master sends what the director has ready (at most
        SEND_BUDGET datagrams), the backup reads at most its budget (RECV_BUDGET, doubled
        while datagrams keep waiting, up to RECV_BUDGET_MAX) and hands
        each to the director. Never raises for what the network does; returns the
        datagrams handled."""
        now = self.clock() if now_ns is None else now_ns
        done = 0
        if self.master is not None:
            done += self._send(self.master, now)
        if self.backup is not None:
            done += self._receive(self.backup, now)
        return done

    def _send(self, d: _Daemon, now: int, take: bool = True, budget: int = SEND_BUDGET) -> int:
        taken = self.director.sync_take(now) if take else None
        if taken:
            d.pending.extend((now, data) for data in taken)
            while len(d.pending) > SEND_QUEUE_MAX:   # the oldest are the stalest
                d.pending.popleft()
                d.dropped += 1
        sent = 0
        while d.pending and sent < budget:
            data = d.pending[0][1]
            try:
                d.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break                   # the buffer is full: the rest waits for next turn
            except OSError as e:
                # the kernel's master logs and goes on (the interface went down, no route):
                # the message is lost, the daemon is not
                d.errors += 1
                if d.errors == 1 or d.errors % 1000 == 0:
                    log.warning("sync: master send error: %s (%d so far)", e.strerror or e,
                                d.errors)
            else:
                d.messages += 1
                d.bytes += len(data)
                d.last_ns = now
            d.pending.popleft()
            sent += 1
        return sent

    def handover(self, vips: list[str] | None, wait: float = HANDOVER_WAIT) -> tuple[int, int]:
        """fastlvs's handover (the kernel has none): a master giving up `vips` (None: all)
        multicasts every live conn and template of them now, whatever their state and packet
        count (a handshake in flight, SYN_RECV, included), through its own socket, so that
        the director taking the VIPs over knows them all. Holds the loop until they are
        sent, `wait` seconds at most (what is left then goes out in the next turns, as
        usual). Returns (entries queued, datagrams sent); (0, 0) when no master runs."""
        d = self.master
        if d is None:
            return 0, 0
        deadline = self.clock() + int(wait * 1e9)
        queued, sent = 0, d.messages
        for vip in ([None] if vips is None else vips):
            start = 0
            while start is not None:
                now = self.clock()
                n, start = self.director.sync_queue_all(vip, start, HANDOVER_SLICE, now)
                queued += n
                if not self._drain(d, deadline):
                    log.warning("sync: handover of %s not sent within %gs; the rest follows",
                                vip or "all VIPs", wait)
                    return queued, d.messages - sent
        return queued, d.messages - sent

    def _drain(self, d: _Daemon, deadline: int) -> bool:
        # every message the director has ready, sent, waiting for room in the socket's
        # buffer until `deadline`; False when time ran out first
        now = self.clock()
        d.pending.extend((now, data) for data in self.director.sync_take(now))
        p = select.poll()
        p.register(d.sock, select.POLLOUT)
        while d.pending:
            before = len(d.pending)
            self._send(d, now, take=False, budget=len(d.pending))
            if not d.pending:
                break
            now = self.clock()
            if now >= deadline:
                return False
            if len(d.pending) == before:
                p.poll(max(1, (deadline - now) // 1_000_000))
        return True

    def _receive(self, d: _Daemon, now: int) -> int:
        size = d.cfg.maxlen            # the kernel reads at most maxlen: a longer datagram
        got = 0                        # arrives cut short and fails the size check
        # a turn that read its whole budget leaves datagrams waiting (a master's burst): the
        # next one reads twice as many, up to RECV_BUDGET_MAX; an emptied socket resets it
        budget, d.budget = d.budget, min(d.budget * 2, RECV_BUDGET_MAX)
        while got < budget:
            try:
                data = d.sock.recv(size)
            except (BlockingIOError, InterruptedError):
                d.budget = RECV_BUDGET
                break
            except OSError as e:
                d.errors += 1           # e.g. a pending ICMP error on the socket: go on
                if d.errors == 1 or d.errors % 1000 == 0:
                    log.warning("sync: backup read error: %s (%d so far)", e.strerror or e,
                                d.errors)
                got += 1
                continue
            got += 1
            d.messages += 1
            d.bytes += len(data)
            d.last_ns = now
            try:
                self.director.sync_receive(data, now)
            except Exception as e:     # a decoder defect must not let a sender stop us
                self.receive_failures += 1
                if self.receive_failures == 1:
                    log.error("sync: a received message failed: %s: %s", type(e).__name__, e)
        return got

    # -- counters
    def stats(self, now_ns: int | None = None) -> dict[str, int]:
        """This layer's counters, since start (stopped daemons' included): messages and
        bytes sent and received, send/read errors, datagrams dropped for a full send
        buffer, receive failures; and per running daemon its lag in nanoseconds: the age of
        the oldest datagram waiting to be sent (master; 0 when none waits) and the time
        since the last message received, or since start (backup)."""
        now = self.clock() if now_ns is None else now_ns
        out = collections.Counter(self._total)
        for d in (self.master, self.backup):
            if d is not None:
                self._add(out, d)
        out["receive_failures"] = self.receive_failures
        out["master_running"] = int(self.master is not None)
        out["backup_running"] = int(self.backup is not None)
        if self.master is not None:
            m = self.master
            out["master_pending"] = len(m.pending)
            out["master_lag_ns"] = now - m.pending[0][0] if m.pending else 0
        if self.backup is not None:
            b = self.backup
            out["backup_lag_ns"] = now - (b.last_ns or b.started_ns)
        for key in ("sent_messages", "sent_bytes", "send_errors", "send_dropped",
                    "received_messages", "received_bytes", "receive_errors"):
            out.setdefault(key, 0)
        return dict(out)

    @staticmethod
    def _add(out, d: _Daemon) -> None:
        if d.cfg.state == MASTER:
            out["sent_messages"] += d.messages
            out["sent_bytes"] += d.bytes
            out["send_errors"] += d.errors
            out["send_dropped"] += d.dropped
        else:
            out["received_messages"] += d.messages
            out["received_bytes"] += d.bytes
            out["receive_errors"] += d.errors

    def _retire(self, d: _Daemon) -> None:
        self._add(self._total, d)
        try:
            d.close()
        except OSError:
            pass

    def close(self) -> None:
        """Stop both daemons (the director is told); safe to call twice."""
        for state in (MASTER, BACKUP):
            if getattr(self, state) is not None:
                try:
                    self.stop(state)
                except Exception as e:      # teardown goes on
                    log.warning("sync: stopping the %s daemon: %s", state, e)


__all__ = ["BACKUP", "Interface", "MASTER", "SyncConfig", "SyncDaemons", "SyncError",
           "config_of", "lookup_interface", "open_receive_socket", "open_send_socket"]
