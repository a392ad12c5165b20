"""nftables netdev-ingress drops for the AF_PACKET backend.

An AF_PACKET socket sees a frame before the netdev ingress hook, so dropping virtual-service
traffic (and NAT replies from real servers) there leaves it to fastlvs alone: the kernel
neither answers it (RST, port unreachable) nor forwards it. One table per instance, named
fastlvs_<pid>_<n>, created on first use and deleted by close(); uses the `nft` command.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import subprocess

_COUNTER = itertools.count(1)
_PROTOS = {"tcp": "tcp", "udp": "udp", 6: "tcp", 17: "udp"}


def _nft(script: str | None = None, *args: str) -> str:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    cmd = [nft, *args] if script is None else [nft, "-f", "-"]
    r = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"nft failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


class NftIngressDrop:
    """NftIngressDrop(devices): a netdev table with one ingress chain per device that drops
    frames whose (proto, daddr, dport) is a service or whose (proto, saddr, sport) is a NAT
    real server. add()/discard() change set elements at run time; adding a present key or
    discarding an absent one is a no-op. close() deletes the table and is idempotent. Runs
    `nft` in the caller's network namespace (the calling thread's)."""

    def __init__(self, devices, table: str | None = None):
        self.devices = list(devices)
        self.table = table or f"fastlvs_{os.getpid()}_{next(_COUNTER)}"
        self.keys: set[tuple[str, str, str, int]] = set()
        lines = [f"table netdev {self.table} {{"]
        # The protocol is part of each set's key, so that an IPv4 service frame costs one
        # rule and one lookup: every frame the ring forwards passes this chain first, and a
        # rule per protocol (each failing its own protocol test) cost ~45 ns a frame.
        for kind in ("service", "rserver"):
            for fam, typ in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
                lines.append(f"  set {kind}{fam} {{ type inet_proto . {typ} . inet_service; }}")
        for i, dev in enumerate(self.devices):
            lines.append(f"  chain in{i} {{")
            lines.append(f'    type filter hook ingress device "{dev}" priority -500; '
                         "policy accept;")
            lines.append("    meta l4proto . ip daddr . th dport @service4 drop")
            lines.append("    meta l4proto . ip saddr . th sport @rserver4 drop")
            lines.append("    meta l4proto . ip6 daddr . th dport @service6 drop")
            lines.append("    meta l4proto . ip6 saddr . th sport @rserver6 drop")
            lines.append("  }")
        lines.append("}")
        _nft("\n".join(lines) + "\n")
        self.closed = False

    @staticmethod
    def _elem(kind, proto, addr, port):
        if kind not in ("service", "rserver"):
            raise ValueError(f"kind must be service or rserver, got {kind!r}")
        p = _PROTOS.get(proto.lower() if isinstance(proto, str) else proto)
        if p is None:
            raise ValueError(f"protocol must be tcp or udp, got {proto!r}")
        a = ipaddress.ip_address(addr)
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port out of range: {port}")
        return (kind, p, str(a), int(port), a.version)

    def add(self, kind, proto, addr, port):
        """Drop (proto, addr, port): kind "service" matches destinations, "rserver" sources."""
        kind, p, a, port, ver = self._elem(kind, proto, addr, port)
        if (kind, p, a, port) in self.keys:
            return
        _nft(None, "add", "element", "netdev", self.table, f"{kind}{ver}",
             f"{{ {p} . {a} . {port} }}")
        self.keys.add((kind, p, a, port))

    def discard(self, kind, proto, addr, port):
        kind, p, a, port, ver = self._elem(kind, proto, addr, port)
        if (kind, p, a, port) not in self.keys:
            return
        _nft(None, "delete", "element", "netdev", self.table, f"{kind}{ver}",
             f"{{ {p} . {a} . {port} }}")
        self.keys.discard((kind, p, a, port))

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            _nft(None, "delete", "table", "netdev", self.table)
        except RuntimeError as exc:
            if "No such file" not in str(exc):
                raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
