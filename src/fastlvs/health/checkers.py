"""The checker registry: keepalived's checker kind -> the module that probes it, and the
Result every probe returns. One module per kind (tcp.py, http.py, ...), each with
`async def probe(spec) -> Result`; modules load on first use, as the scheduler registry does.
Also the few helpers the probes share: the short reason for a socket error, and binding.
"""
from __future__ import annotations

import errno
import importlib
import ipaddress
import socket
from dataclasses import dataclass

from fastlvs.health.spec import KINDS, CheckSpec

# kind -> module under fastlvs.health (HTTP_GET and SSL_GET share http.py)
MODULES = {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "http", "MISC_CHECK": "misc",
           "UDP_CHECK": "udp", "DNS_CHECK": "dns", "PING_CHECK": "ping"}
assert set(MODULES) == set(KINDS)
_probes: dict = {}


@dataclass(frozen=True)
class Result:
    """One probe's outcome. `reason` is short and human ("connect refused", "exit 1");
    `weight` is MISC_CHECK misc_dynamic's weight (exit status - 2), None otherwise."""

    ok: bool
    reason: str = "ok"
    weight: int | None = None


def get(kind: str):
    """The probe coroutine function for a checker kind; ValueError naming the valid ones."""
    fn = _probes.get(kind)
    if fn is None:
        if kind not in MODULES:
            raise ValueError(f"unknown checker {kind!r}; valid: {', '.join(KINDS)}")
        fn = _probes[kind] = importlib.import_module(f"fastlvs.health.{MODULES[kind]}").probe
    return fn


async def probe(spec: CheckSpec) -> Result:
    """Run one check of `spec` (every failure is a Result, never an exception)."""
    try:
        return await get(spec.kind)(spec)
    except Exception as e:       # a checker's own bug must not stop the others
        return Result(False, f"checker error: {type(e).__name__}: {e}")


def secs(t: float) -> str:
    """3 -> '3.0s', 0.25 -> '0.25s': the timeout as the reason shows it."""
    return f"{float(t):g}s" if float(t) != int(t) else f"{float(t):.1f}s"


# errno -> reason; what an operator reads in the transition log
_ERRNO = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "host unreachable",
          errno.ENETUNREACH: "network unreachable", errno.ECONNRESET: "reset",
          errno.ETIMEDOUT: "timed out", errno.EADDRNOTAVAIL: "address not available",
          errno.EADDRINUSE: "address in use", errno.EPIPE: "broken pipe",
          errno.EACCES: "permission denied", errno.EPERM: "not permitted"}


def oserror(what: str, e: OSError) -> str:
    """'connect refused', 'connect host unreachable', 'bind address in use', ..."""
    text = _ERRNO.get(e.errno) or (e.strerror or str(e)).lower()
    return f"{what} {text}" if what else text


def family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def make_socket(spec: CheckSpec, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket of the connect address's family, bound to bindto/bind_port when
    the checker says so (keepalived binds before it connects). OSError from bind propagates."""
    s = socket.socket(family(spec.connect_ip), kind | socket.SOCK_NONBLOCK, proto)
    try:
        if spec.bindto or spec.bind_port:
            if spec.bind_port:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            any_addr = "::" if s.family == socket.AF_INET6 else "0.0.0.0"
            s.bind((spec.bindto or any_addr, spec.bind_port))
    except BaseException:
        s.close()
        raise
    return s
