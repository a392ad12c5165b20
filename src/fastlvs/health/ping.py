"""PING_CHECK: one ICMP (ICMPv6) echo request to connect_ip; an echo reply with our id and
sequence within connect_timeout is up, an ICMP destination unreachable about it or silence
is down (keepalived's check_ping.c sends 8 + 128 bytes and waits connect_timeout).

All pings of a process share one raw socket per address family (root), so a thousand
checkers do not each receive every ICMP packet of the host; replies are matched to their
request by (sequence, address). Without root it falls back to Linux's ping socket
(SOCK_DGRAM, allowed by net.ipv4.ping_group_range), as keepalived uses.
"""
from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct

from fastlvs.health.checkers import Result, family, oserror, secs
from fastlvs.health.spec import CheckSpec

_FILL = b"keepalived check - "
PAYLOAD = (_FILL * 7)[:128]
# family -> (echo request, echo reply, destination unreachable) types
_TYPES = {socket.AF_INET: (8, 0, 3), socket.AF_INET6: (128, 129, 1)}
_UNREACH = {0: "network unreachable", 1: "host unreachable", 3: "port unreachable",
            13: "administratively prohibited"}
_UNREACH6 = {0: "no route", 1: "administratively prohibited", 3: "address unreachable",
             4: "port unreachable"}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Pinger:
    """One socket of one family for every ping of one event loop."""

    def __init__(self, fam: int):
        self.family = fam
        self.loop = asyncio.get_running_loop()
        proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
        try:
            self.sock = socket.socket(fam, socket.SOCK_RAW | socket.SOCK_NONBLOCK, proto)
            self.raw = True
        except PermissionError:
            self.sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, proto)
            self.raw = False          # the kernel sets the id; it filters replies for us
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0
        self.waiting: dict[tuple[int, str], asyncio.Future] = {}
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def ping(self, addr: str, timeout: float) -> Result:
        addr = ipaddress.ip_address(addr).compressed      # as recvfrom will spell it
        echo = _TYPES[self.family][0]
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        hdr = struct.pack("!BBHHH", echo, 0, 0, self.ident, seq)
        if self.family == socket.AF_INET:      # ICMPv6 checksums are the kernel's
            hdr = struct.pack("!BBHHH", echo, 0, checksum(hdr + PAYLOAD), self.ident, seq)
        key = (seq, addr)
        fut = self.waiting[key] = self.loop.create_future()
        try:
            try:
                self.sock.sendto(hdr + PAYLOAD, (addr, 0))
            except OSError as e:
                return Result(False, oserror("send", e))
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                return Result(False, f"no echo reply in {secs(timeout)}")
        finally:
            self.waiting.pop(key, None)

    def _readable(self) -> None:
        for _ in range(64):             # bounded per wake-up; the loop calls again
            try:
                data, src = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._packet(data, src[0])

    def _packet(self, data: bytes, src: str) -> None:
        if self.raw and self.family == socket.AF_INET:
            if len(data) < 20:
                return
            data = data[(data[0] & 0xF) * 4:]         # raw IPv4 sockets see the IP header
        if len(data) < 8:
            return
        typ, code, _, ident, seq = struct.unpack_from("!BBHHH", data)
        _, reply, unreach = _TYPES[self.family]
        if typ == reply and (ident == self.ident or not self.raw):
            self._resolve((seq, src), Result(True, "echo reply"))
        elif typ == unreach:
            # the error quotes our request: its destination and its id/sequence
            inner = data[8:]
            if self.family == socket.AF_INET:
                if len(inner) < 28:
                    return
                dst = socket.inet_ntop(socket.AF_INET, inner[16:20])
                inner = inner[(inner[0] & 0xF) * 4:]
            else:
                if len(inner) < 48:
                    return
                dst = socket.inet_ntop(socket.AF_INET6, inner[24:40])
                inner = inner[40:]
            if len(inner) < 8:
                return
            i_typ, _, _, i_ident, i_seq = struct.unpack_from("!BBHHH", inner)
            if i_typ == _TYPES[self.family][0] and (i_ident == self.ident or not self.raw):
                text = (_UNREACH if self.family == socket.AF_INET else _UNREACH6).get(
                    code, f"unreachable (code {code})")
                self._resolve((i_seq, dst), Result(False, text))

    def _resolve(self, key, result: Result) -> None:
        fut = self.waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_result(result)


_pingers: dict[int, Pinger] = {}


def pinger(fam: int) -> Pinger:
    """This event loop's pinger of `fam` (a pinger of a closed loop is replaced)."""
    p = _pingers.get(fam)
    if p is None or p.loop is not asyncio.get_running_loop():
        if p is not None:
            p.close()
        p = _pingers[fam] = Pinger(fam)
    return p


async def probe(spec: CheckSpec) -> Result:
    try:
        p = pinger(family(spec.connect_ip))
    except OSError as e:
        return Result(False, oserror("ICMP socket", e))
    return await p.ping(spec.connect_ip, spec.connect_timeout)
