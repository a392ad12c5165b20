"""nftables netdev-ingress drops for the AF_PACKET backend.

An AF_PACKET socket sees a frame before the netdev ingress hook, so dropping virtual-service
traffic (and NAT replies from real servers) there leaves it to fastlvs alone: the kernel
neither answers it (RST, port unreachable) nor forwards it. A real server's frame addressed to
one of the director's own addresses (the `local` sets) answers the director's own connection
(a health check, SSH) and is not dropped. One table per instance, named
fastlvs_<pid>_<n> so that a later fastlvs can remove the tables of a process that died
(remove_stale). Every change set goes to the kernel as one transaction: one `nft -f -`
process with the whole script (commit()), not one process per set element.
"""
from __future__ import annotations

import atexit
import ctypes
import ipaddress
import itertools
import os
import re
import shutil
import subprocess
import weakref

_COUNTER = itertools.count(1)
_PROTOS = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", 6: "tcp", 17: "udp", 132: "sctp"}
TABLE_PREFIX = "fastlvs_"
_TABLE_RE = re.compile(rf"^table netdev ({TABLE_PREFIX}(\d+)_\d+)$", re.M)
_CLONE_NEWNET = 0x40000000
_OPEN: "weakref.WeakSet[NftIngressDrop]" = weakref.WeakSet()


def _enter_netns(fd: int):
    def enter():
        # in the child, before exec: run nft in the namespace the table lives in
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            os._exit(126)
    return enter


def _nft(script: str | None = None, *args: str, netns_fd: int | None = None) -> str:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    cmd = [nft, *args] if script is None else [nft, "-f", "-"]
    extra = {}
    if netns_fd is not None:
        extra = {"preexec_fn": _enter_netns(netns_fd), "pass_fds": (netns_fd,)}
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10, **extra)
    if r.returncode != 0:
        raise RuntimeError(f"nft failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _this_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


class NftIngressDrop:
    """NftIngressDrop(devices): a netdev table with one ingress chain per device that drops
    frames whose (proto, daddr, dport) is a service or whose (proto, saddr, sport) is a NAT
    real server and whose daddr is not a "local" key (kind "local", proto "", port 0: one of
    the director's own addresses), in the network namespace of the calling thread at
    construction (kept for every later change, as a ring keeps its namespace). The table is
    created by the first commit. add()/discard() change set elements now (one transaction
    each); commit() applies the changes of several tables in one. Adding a present key or
    discarding an absent one is a no-op. close() deletes the table and is idempotent; so
    does interpreter exit."""

    def __init__(self, devices, table: str | None = None):
        self.devices = list(devices)
        self.table = table or f"{TABLE_PREFIX}{os.getpid()}_{next(_COUNTER)}"
        self.keys: set[tuple[str, str, str, int]] = set()
        self.created = False
        self.closed = False
        self.any_rules = False      # the rules of the port-0 sets, added with their first key
        self._nsfd = _this_netns_fd()
        _OPEN.add(self)

    def _create_script(self) -> list[str]:
        lines = [f"table netdev {self.table} {{"]
        # The protocol is part of each set's key, so that an IPv4 service frame costs one
        # rule and one lookup: every frame the ring forwards passes this chain first, and a
        # rule per protocol (each failing its own protocol test) cost ~45 ns a frame.
        for kind in ("service", "rserver"):
            for fam, typ in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
                lines.append(f"  set {kind}{fam} {{ type inet_proto . {typ} . inet_service; }}")
                # port-0 services and real servers: every port of the address
                lines.append(f"  set {kind}any{fam} {{ type inet_proto . {typ}; }}")
        lines.append("  set local4 { type ipv4_addr; }")
        lines.append("  set local6 { type ipv6_addr; }")
        for i, dev in enumerate(self.devices):
            lines.append(f"  chain in{i} {{")
            lines.append(f'    type filter hook ingress device "{dev}" priority -500; '
                         "policy accept;")
            lines.append("    meta l4proto . ip daddr . th dport @service4 drop")
            # the director's own connections to a real server are answered to its own
            # address: those replies are the kernel's (tested only after the set matched)
            lines.append("    meta l4proto . ip saddr . th sport @rserver4 ip daddr != @local4 "
                         "drop")
            lines.append("    meta l4proto . ip6 daddr . th dport @service6 drop")
            lines.append("    meta l4proto . ip6 saddr . th sport @rserver6 ip6 daddr != "
                         "@local6 drop")
            lines.append("  }")
        lines.append("}")
        return lines

    def _any_rules_script(self) -> list[str]:
        # Only a table with a port-0 key pays for these rules (every frame that missed the
        # exact sets passes them); they stay once added, their sets emptied when unused.
        lines = []
        for i in range(len(self.devices)):
            chain = f"add rule netdev {self.table} in{i} "
            lines.append(chain + "meta l4proto . ip daddr @serviceany4 drop")
            lines.append(chain + "meta l4proto . ip saddr @rserverany4 ip daddr != @local4 drop")
            lines.append(chain + "meta l4proto . ip6 daddr @serviceany6 drop")
            lines.append(chain + "meta l4proto . ip6 saddr @rserverany6 ip6 daddr != @local6 "
                         "drop")
        return lines

    @staticmethod
    def _elem(kind, proto, addr, port):
        if kind == "local":
            a = ipaddress.ip_address(addr)
            return (kind, "", str(a), 0, a.version)
        if kind not in ("service", "rserver"):
            raise ValueError(f"kind must be service, rserver or local, got {kind!r}")
        p = _PROTOS.get(proto.lower() if isinstance(proto, str) else proto)
        if p is None:
            raise ValueError(f"protocol must be tcp, udp or sctp, got {proto!r}")
        a = ipaddress.ip_address(addr)
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port out of range: {port}")
        return (kind, p, str(a), int(port), a.version)

    def script(self, add=(), discard=()) -> tuple[list[str], set, set]:
        """The nft lines that create the table (when not yet made) and add/delete the given
        (kind, proto, addr, port) keys, with the keys they really add and remove."""
        lines = [] if self.created else self._create_script()
        added, removed = set(), set()
        for key in add:
            kind, p, a, port, ver = self._elem(*key)
            if (kind, p, a, port) in self.keys or (kind, p, a, port) in added:
                continue
            if kind != "local" and port == 0:
                if not self.any_rules and not any(k[0] != "local" and k[3] == 0 for k in added):
                    lines += self._any_rules_script()
                lines.append(f"add element netdev {self.table} {kind}any{ver} {{ {p} . {a} }}")
            else:
                lines.append(f"add element netdev {self.table} {kind}{ver} "
                             f"{{ {_value(p, a, port)} }}")
            added.add((kind, p, a, port))
        for key in discard:
            kind, p, a, port, ver = self._elem(*key)
            if (kind, p, a, port) not in self.keys or (kind, p, a, port) in removed:
                continue
            if kind != "local" and port == 0:
                lines.append(f"delete element netdev {self.table} {kind}any{ver} "
                             f"{{ {p} . {a} }}")
            else:
                lines.append(f"delete element netdev {self.table} {kind}{ver} "
                             f"{{ {_value(p, a, port)} }}")
            removed.add((kind, p, a, port))
        return lines, added, removed

    def add(self, kind, proto, addr, port):
        """Drop (proto, addr, port): kind "service" matches destinations, "rserver" sources."""
        commit([(self, [(kind, proto, addr, port)], ())])

    def discard(self, kind, proto, addr, port):
        commit([(self, (), [(kind, proto, addr, port)])])

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            if self.created:
                _nft(None, "delete", "table", "netdev", self.table, netns_fd=self._nsfd)
        except RuntimeError as exc:
            if "No such file" not in str(exc):
                raise
        finally:
            os.close(self._nsfd)
            self._nsfd = -1
            _OPEN.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _value(proto: str, addr: str, port: int) -> str:
    # a local address is the address alone; the other sets are proto . addr . port
    return f"{proto} . {addr} . {port}" if proto else addr


def commit(changes) -> None:
    """Apply [(NftIngressDrop, add keys, discard keys), ...] as one nft transaction per
    network namespace (in practice: one `nft -f -` process for the whole change set). All or
    nothing: when nft refuses the script, no table changes and RuntimeError says why."""
    by_ns: dict[int, list] = {}
    for drop, add, discard in changes:
        if drop.closed:
            raise ValueError(f"{drop.table}: closed")
        lines, added, removed = drop.script(add, discard)
        if lines:
            ino = os.fstat(drop._nsfd).st_ino
            by_ns.setdefault(ino, []).append((drop, lines, added, removed))
    for items in by_ns.values():
        script = "\n".join(line for _, lines, _, _ in items for line in lines) + "\n"
        _nft(script, netns_fd=items[0][0]._nsfd)
        for drop, _, added, removed in items:
            drop.created = True
            drop.any_rules = drop.any_rules or any(k[0] != "local" and k[3] == 0
                                                   for k in added)
            drop.keys |= added
            drop.keys -= removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete this namespace's fastlvs_<pid>_<n> tables whose process is gone (a fastlvs
    killed with SIGKILL leaves its table behind). Returns the names removed; a namespace
    without nft or tables gives []."""
    try:
        listing = _nft(None, "list", "tables", "netdev")
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return []
    stale = [name for name, pid in _TABLE_RE.findall(listing)
             if int(pid) != os.getpid() and not _pid_alive(int(pid))]
    if stale:
        _nft("".join(f"delete table netdev {name}\n" for name in stale))
    return stale


def _close_all():
    # at exit (also after SIGTERM handled by Python): no table may outlive the process
    for drop in list(_OPEN):
        try:
            drop.close()
        except Exception:
            pass


atexit.register(_close_all)

__all__ = ["NftIngressDrop", "TABLE_PREFIX", "commit", "remove_stale"]
