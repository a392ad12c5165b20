"""TCP_CHECK: the server is up when a TCP connection to connect_ip:connect_port completes
within connect_timeout (keepalived's check_tcp.c: connect, then close at once; nothing is
sent). A refused connection, an ICMP error or the timeout is a failure.
"""
from __future__ import annotations

import asyncio
import socket

from fastlvs.health.checkers import Result, make_socket, oserror, secs
from fastlvs.health.spec import CheckSpec


async def connect(spec: CheckSpec) -> socket.socket | Result:
    """A connected non-blocking TCP socket (bound as the checker says), or the failed Result.
    Shared with HTTP_GET/SSL_GET, whose first step is the same."""
    try:
        s = make_socket(spec, socket.SOCK_STREAM)
    except OSError as e:
        return Result(False, oserror("bind", e))
    try:
        async with asyncio.timeout(spec.connect_timeout):
            await asyncio.get_running_loop().sock_connect(s, (spec.connect_ip, spec.connect_port))
    except TimeoutError:
        s.close()
        return Result(False, f"connect timeout after {secs(spec.connect_timeout)}")
    except OSError as e:
        s.close()
        return Result(False, oserror("connect", e))
    except BaseException:
        s.close()
        raise
    return s


async def probe(spec: CheckSpec) -> Result:
    s = await connect(spec)
    if isinstance(s, Result):
        return s
    s.close()
    return Result(True, "connected")
