"""DNS_CHECK, as keepalived's check_dns.c does it: one query (type, name; recursion desired,
random id) over UDP to connect_ip:connect_port. The first datagram that is a response (QR)
with the query's id decides: rcode 0 is up, any other rcode is down; other datagrams are
ignored. No answer within connect_timeout, or an ICMP error, is down. Queries are built with
dpkt; only the header of a reply is needed, as keepalived reads nothing else.
"""
from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct

import dpkt

from fastlvs.health.checkers import Result, make_socket, oserror, secs
from fastlvs.health.spec import CheckSpec

# the types keepalived's `type` accepts
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28,
         "RRSIG": 46, "DNSKEY": 48}
RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def query(spec: CheckSpec, qid: int) -> bytes:
    """The query datagram; ValueError for a type keepalived does not know."""
    qtype = TYPES.get(spec.dns_type.upper())
    if qtype is None:
        raise ValueError(f"unknown DNS type {spec.dns_type!r}; valid: {', '.join(TYPES)}")
    name = spec.dns_name[:-1] if spec.dns_name.endswith(".") else spec.dns_name   # "." = root
    q = dpkt.dns.DNS(id=qid, op=dpkt.dns.DNS_RD, an=[], ns=[], ar=[],
                     qd=[dpkt.dns.DNS.Q(name=name, type=qtype, cls=dpkt.dns.DNS_IN)])
    return bytes(q)


def answer(data: bytes, qid: int) -> int | None:
    """The rcode of a response to query `qid`, None when the datagram is not one."""
    if len(data) < 12:
        return None
    rid, flags = struct.unpack_from("!HH", data)
    if rid != qid or not flags & 0x8000:
        return None
    return flags & 0xF


async def probe(spec: CheckSpec) -> Result:
    qid = random.getrandbits(16)
    try:
        msg = query(spec, qid)
    except ValueError as e:
        return Result(False, str(e))
    try:
        s = make_socket(spec, socket.SOCK_DGRAM)
    except OSError as e:
        return Result(False, oserror("bind", e))
    loop = asyncio.get_running_loop()
    t = spec.connect_timeout
    with s:
        try:
            s.connect((spec.connect_ip, spec.connect_port))
            s.send(msg)
            async with asyncio.timeout(t):
                while True:
                    rcode = answer(await loop.sock_recv(s, 4096), qid)
                    if rcode is not None:
                        break
        except TimeoutError:
            return Result(False, f"no reply in {secs(t)}")
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                return Result(False, "port unreachable")
            return Result(False, oserror("", e))
    if rcode:
        return Result(False, f"rcode {rcode} ({RCODES.get(rcode, 'error')})")
    return Result(True, "rcode 0")
