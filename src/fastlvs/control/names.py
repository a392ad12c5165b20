"""Host and service names in plain `-L`, `-Lc` and `-S` (without -n), as ipvsadm prints them.

ipvsadm looks up every address (gethostbyaddr: the canonical name) and port (getservbyport
with the service's protocol) and prints the number where there is no name. A look-up can
wait seconds on a DNS server, so fastlvs never does it in the daemon: the daemon answers in
numbers and the admin client puts the names in here, keeping ipvsadm's columns. What the
real ipvsadm prints is recorded in tests/fixtures/kernel/names.json.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Callable

# The column widths of listing.py's formats (ipvsadm's): a service's "PROT ADDR:PORT" field
# in the padded listings, a real server's field, a connection's addresses.
SERVICE_FIELD = 33
DEST_FIELD = 28
CONN_FIELD = 18

_PROTOS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


class Resolver:
    """Names for addresses and ports, each looked up once. `host` and `service` replace the
    system's look-ups (tests); they return None where there is no name."""

    def __init__(self, host: Callable[[str], str | None] | None = None,
                 service: Callable[[int, str | None], str | None] | None = None):
        self._host = host or _system_host
        self._service = service or _system_service
        self._hosts: dict[str, str] = {}
        self._ports: dict[tuple, str] = {}

    def host(self, addr: str) -> str:
        """The name of `addr`, or `addr` itself."""
        if addr not in self._hosts:
            self._hosts[addr] = self._host(addr) or addr
        return self._hosts[addr]

    def port(self, port: int, proto: str | None) -> str:
        """The service name of `port` for `proto` ("tcp", "udp", "sctp"; None: any), or the
        number. Port 0 is always the number."""
        key = (port, proto)
        if key not in self._ports:
            self._ports[key] = (self._service(port, proto) if port else None) or str(port)
        return self._ports[key]

    def addrport(self, text: str, proto: str | None) -> str:
        """`A.B.C.D:PORT` or `[V6]:PORT` with names, as ipvsadm joins them (a v6 name is not
        bracketed, a v6 number is)."""
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            return text
        bare = host[1:-1] if host.startswith("[") else host
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            return text
        name = self.host(bare)
        if name == bare:
            name = host
        return f"{name}:{self.port(int(port), proto)}"


def _system_host(addr: str) -> str | None:
    try:
        return socket.gethostbyaddr(addr)[0]
    except (OSError, UnicodeError):
        return None


def _system_service(port: int, proto: str | None) -> str | None:
    try:
        return socket.getservbyport(port, proto) if proto else socket.getservbyport(port)
    except (OSError, OverflowError):
        return None


def _field(name: str, width: int) -> str:
    return f"{name:<{width}}"


def named_listing(text: str, padded: bool = False, resolver: Resolver | None = None) -> str:
    """The service listing (`-L`) with names; `padded` for --stats and --rate, whose service
    field is SERVICE_FIELD wide. A name too long for its column is cut as ipvsadm cuts IPv4
    names (listing._svc_name, _dest_name); a v6 one pushes the line, as it does there."""
    r = resolver or Resolver()
    out = []
    proto = None
    for line in text.splitlines(keepends=True):
        m = re.match(r"(TCP |UDP |SCTP|FWM ) (\S+)", line)
        if m:
            label = m.group(1).strip()
            proto = _PROTOS.get(label)
            if label == "FWM":
                out.append(line)
                continue
            old = m.group(0)
            name = f"{m.group(1)} {r.addrport(m.group(2), proto)}"
            if _is_v4(m.group(2)):
                name = name[:SERVICE_FIELD]
            if padded:
                rest = line[max(SERVICE_FIELD, len(old)):]
                name = _field(name, SERVICE_FIELD)
            else:
                rest = line[len(old):]
            out.append(name + rest)
            continue
        m = re.match(r"  -> (\S+)", line)
        if m and m.group(1) != "RemoteAddress:Port":
            old = m.group(1)
            rest = line[5 + max(DEST_FIELD, len(old)):]
            name = r.addrport(old, proto)
            if _is_v4(old):
                name = name[:DEST_FIELD]
            out.append("  -> " + _field(name, DEST_FIELD) + rest)
            continue
        out.append(line)
    return "".join(out)


def _is_v4(addrport: str) -> bool:
    return not addrport.startswith("[") and addrport.count(":") == 1


def named_conns(text: str, resolver: Resolver | None = None) -> str:
    """Connection lines (`-Lc`, with or without its title) with names, in listing.conn_lines'
    columns."""
    r = resolver or Resolver()
    out = []
    for line in text.splitlines(keepends=True):
        parts = line.split()
        if len(parts) < 6 or parts[0] in ("IPVS", "pro") or not re.match(r"\d+:\d\d$", parts[1]):
            out.append(line)
            continue
        proto = _PROTOS.get(parts[0])
        src, virt, dst = (r.addrport(p, proto) for p in parts[3:6])
        head = f"{parts[0]:<3} {parts[1]:<6} {parts[2]:<11} {src:<18} {virt:<18} "
        if len(parts) > 6:               # --persistent-conn: pe name and data follow
            out.append(head + f"{dst:<16} " + f"{parts[6]:<18} " + " ".join(parts[7:]) + "\n")
        else:
            out.append(head + dst + "\n")
    return "".join(out)


def named_save(text: str, resolver: Resolver | None = None) -> str:
    """ipvsadm-save text (`-S`) with names for -t/-u/--sctp-service and -r."""
    r = resolver or Resolver()
    out = []
    for line in text.splitlines(keepends=True):
        words = line.rstrip("\n").split(" ")
        proto = None
        for i, w in enumerate(words[:-1]):
            if w in ("-t", "-u", "--sctp-service"):
                proto = {"-t": "tcp", "-u": "udp", "--sctp-service": "sctp"}[w]
                words[i + 1] = r.addrport(words[i + 1], proto)
            elif w == "-f":
                proto = None
            elif w == "-r":
                words[i + 1] = r.addrport(words[i + 1], proto)
        out.append(" ".join(words) + ("\n" if line.endswith("\n") else ""))
    return "".join(out)


__all__ = ["Resolver", "named_conns", "named_listing", "named_save"]
