"""HTTP_GET and SSL_GET, as keepalived's check_http.c and check_ssl.c do them: for each url,
connect (TCP, then TLS for SSL_GET, certificates not verified), send keepalived's HTTP/1.0
GET, read to the end of the stream, then require the status code to be in the url's set
(default 200-299) and, when the url has a digest, the MD5 of the body (the bytes after the
header) to match it. connect_timeout bounds the connect, the TLS handshake and each read.

One probe checks every url in turn (keepalived spreads them one per delay_loop); the first
url that fails is the reason.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl

from fastlvs.health.checkers import Result, oserror, secs
from fastlvs.health.spec import CheckSpec, Url
from fastlvs.health.tcp import connect

DEFAULT_CODES = range(200, 300)
READ_CHUNK = 65536
_ssl_context: ssl.SSLContext | None = None


def _context() -> ssl.SSLContext:
    # keepalived's default SSL context: any TLS version, no peer verification
    global _ssl_context
    if _ssl_context is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _ssl_context = ctx
    return _ssl_context


def request(spec: CheckSpec, url: Url) -> bytes:
    """keepalived's request: the url's virtualhost, else the checker's, as Host; without
    one, the address and port (IPv6 in brackets)."""
    vhost = url.virtualhost or spec.virtualhost
    if vhost:
        host = vhost
    elif ipaddress.ip_address(spec.connect_ip).version == 6:
        host = f"[{spec.connect_ip}]:{spec.connect_port}"
    else:
        host = f"{spec.connect_ip}:{spec.connect_port}"
    return (f"GET {url.path} HTTP/1.0\r\nUser-Agent: KeepAliveClient\r\n"
            f"Host: {host}\r\n\r\n").encode()


def status_code(head: bytes) -> int | None:
    """The code of an `HTTP/1.x NNN reason` status line, None when it is not one."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(None, 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() \
            and len(parts[1]) == 3:
        return int(parts[1])
    return None


def codes_text(codes) -> str:
    """(200, 201, 202, 204) -> '200-202,204'."""
    out, run = [], []
    for c in sorted(set(codes)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


async def get(spec: CheckSpec, url: Url) -> Result:
    """One GET of one url; a Result saying why it failed, or ok."""
    sock = await connect(spec)
    if isinstance(sock, Result):
        return sock
    t = spec.connect_timeout
    tls = spec.kind == "SSL_GET"
    writer = None
    try:
        try:
            if tls:
                # SNI only when enable_sni; "" turns it off (and hostname matching)
                sni = (url.virtualhost or spec.virtualhost or "") if spec.sni else ""
                async with asyncio.timeout(t):     # asyncio's own handshake timeout is later
                    reader, writer = await asyncio.open_connection(
                        sock=sock, ssl=_context(), server_hostname=sni,
                        ssl_handshake_timeout=t + 5)
            else:
                reader, writer = await asyncio.open_connection(sock=sock)
        except TimeoutError:
            return Result(False, f"TLS handshake timeout after {secs(t)}")
        except ssl.SSLError as e:
            return Result(False, f"TLS handshake failed: {e.reason or e}")
        except OSError as e:
            return Result(False, oserror("TLS handshake" if tls else "connect", e))
        try:
            writer.write(request(spec, url))
            async with asyncio.timeout(t):
                await writer.drain()
        except TimeoutError:
            return Result(False, f"send timeout after {secs(t)}")
        except OSError as e:
            return Result(False, oserror("send", e))
        return await _read(reader, url, t)
    finally:
        if writer is not None:
            writer.transport.abort()      # keepalived closes without a TLS close_notify
        else:
            sock.close()


async def _read(reader: asyncio.StreamReader, url: Url, t: float) -> Result:
    head = b""
    body_md5 = hashlib.md5()
    in_body = False
    got = 0
    while True:
        try:
            async with asyncio.timeout(t):
                chunk = await reader.read(READ_CHUNK)
        except TimeoutError:
            return Result(False, f"read timeout after {secs(t)}")
        except OSError as e:            # ssl.SSLError included
            if got:
                break          # as keepalived: a read error after data ends the stream
            if isinstance(e, ssl.SSLError):
                return Result(False, f"TLS read failed: {e.reason or e}")
            return Result(False, oserror("read", e))
        if not chunk:
            break
        got += len(chunk)
        if in_body:
            body_md5.update(chunk)
            continue
        head += chunk
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            in_body = True
            body_md5.update(head[end + 4:])
            head = head[:end]
    if not got:
        return Result(False, "no data received")
    code = status_code(head)
    codes = url.status_codes or DEFAULT_CODES
    if code not in codes:
        return Result(False, f"HTTP status {code if code is not None else 'missing'} not in "
                             f"{codes_text(codes)}")
    if url.digest is not None and body_md5.hexdigest() != url.digest.lower():
        return Result(False, "digest mismatch")
    return Result(True, f"HTTP {code}")


async def probe(spec: CheckSpec) -> Result:
    if not spec.urls:
        return Result(False, "no url to check")
    for url in spec.urls:
        r = await get(spec, url)
        if not r.ok:
            return r if len(spec.urls) == 1 else Result(False, f"{url.path}: {r.reason}")
    return r if len(spec.urls) == 1 else Result(True, f"{len(spec.urls)} urls ok")
