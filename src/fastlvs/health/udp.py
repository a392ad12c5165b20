"""UDP_CHECK, as keepalived's check_udp.c and layer4.c do it: send one datagram (payload, or
keepalived's 32-byte filler) from a connected UDP socket and wait connect_timeout. An ICMP
destination unreachable (port, host, network) is a failure. Silence is a success unless
require_reply is set; with it a reply must come, its length within
min_reply_length..max_reply_length, and its first min(len, len(require_reply)) bytes must
equal require_reply's except the bits set in reply_mask (keepalived's `X` nibbles).
"""
from __future__ import annotations

import asyncio
import errno
import socket

from fastlvs.health.checkers import Result, make_socket, oserror, secs
from fastlvs.health.spec import CheckSpec

# keepalived's payload when none is configured: its marker repeated over 32 bytes
_FILL = b"keepalived check - "
DEFAULT_PAYLOAD = (_FILL * 2)[:32]


def reply_matches(spec: CheckSpec, data: bytes) -> bool:
    """keepalived's check_udp_reply."""
    if not spec.min_reply_length <= len(data) <= spec.max_reply_length:
        return False
    want = spec.require_reply or b""
    mask = spec.reply_mask or bytes(len(want))
    return all((d ^ w) & ~m & 0xFF == 0 for d, w, m in zip(data, want, mask))


async def probe(spec: CheckSpec) -> Result:
    try:
        s = make_socket(spec, socket.SOCK_DGRAM)
    except OSError as e:
        return Result(False, oserror("bind", e))
    t = spec.connect_timeout
    with s:
        try:
            s.connect((spec.connect_ip, spec.connect_port))
            s.send(spec.payload or DEFAULT_PAYLOAD)
            async with asyncio.timeout(t):
                # one byte more than allowed tells a too-long reply apart
                data = await asyncio.get_running_loop().sock_recv(s, spec.max_reply_length + 1)
        except TimeoutError:
            if spec.require_reply is None:
                return Result(True, f"no ICMP error in {secs(t)}")
            return Result(False, f"no reply in {secs(t)}")
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:       # ICMP port unreachable on a UDP socket
                return Result(False, "port unreachable")
            return Result(False, oserror("", e))
    if spec.require_reply is not None and not reply_matches(spec, data):
        return Result(False, f"reply mismatch ({len(data)} bytes)")
    return Result(True, f"reply of {len(data)} bytes")
