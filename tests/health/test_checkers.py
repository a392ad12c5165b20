"""Each checker against real servers the test starts on loopback (and, for the answers
loopback cannot give — silence, an unreachable route — in a network namespace of its own):
the success, and every failure reason, with what the server received checked too.
Needs root for PING_CHECK's raw socket and the namespaces."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest

from fastlvs.health import checkers
from fastlvs.health.checkers import Result
from fastlvs.health.spec import CheckSpec, Url
from fastlvs.health.udp import DEFAULT_PAYLOAD
from tests.health.servers import (SILENT_ADDR, UNREACHABLE_ADDR, DnsServer, HttpServer,
                                  TcpListener, UdpServer, free_port, make_cert, probe_in_netns)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (raw ICMP, netns)")


def run(spec: CheckSpec) -> Result:
    return asyncio.run(asyncio.wait_for(checkers.probe(spec), 60))


@pytest.fixture
def closing():
    things = []
    yield things.append
    for t in things:
        t.close()


# -- TCP_CHECK ------------------------------------------------------------------------------------

def test_tcp_up_when_the_connection_completes(closing):
    ls = TcpListener()
    closing(ls)
    assert run(CheckSpec("TCP_CHECK", "127.0.0.1", ls.port)) == Result(True, "connected")
    ls.sock.settimeout(5)
    conn, _ = ls.sock.accept()          # the check really connected
    conn.close()


def test_tcp_ipv6(closing):
    ls = TcpListener("::1")
    closing(ls)
    assert run(CheckSpec("TCP_CHECK", "::1", ls.port)).ok


def test_tcp_refused():
    assert run(CheckSpec("TCP_CHECK", "127.0.0.1", free_port())) == \
        Result(False, "connect refused")


def test_tcp_binds_to_bindto_and_bind_port(closing):
    ls = TcpListener()
    closing(ls)
    bport = free_port(host="127.0.0.2")
    assert run(CheckSpec("TCP_CHECK", "127.0.0.1", ls.port, bindto="127.0.0.2",
                         bind_port=bport)).ok
    ls.sock.settimeout(5)
    conn, peer = ls.sock.accept()
    conn.close()
    assert peer == ("127.0.0.2", bport)


def test_tcp_bind_failure_is_its_own_reason():
    r = run(CheckSpec("TCP_CHECK", "127.0.0.1", 80, bindto="192.0.2.200"))
    assert r == Result(False, "bind address not available")


def test_tcp_timeout_when_nothing_answers():
    assert probe_in_netns(CheckSpec("TCP_CHECK", SILENT_ADDR, 80, connect_timeout=0.5)) == \
        (False, "connect timeout after 0.5s", None)


def test_tcp_unreachable_route():
    ok, reason, _ = probe_in_netns(CheckSpec("TCP_CHECK", UNREACHABLE_ADDR, 80))
    assert not ok and reason in ("connect host unreachable", "connect network unreachable")


# -- HTTP_GET / SSL_GET ---------------------------------------------------------------------------

def http(port, *urls, kind="HTTP_GET", **kw):
    return CheckSpec(kind, "127.0.0.1", port, connect_timeout=kw.pop("connect_timeout", 3),
                     urls=urls or (Url("/"),), **kw)


def test_http_up_on_2xx_and_sends_keepalived_request(closing):
    srv = HttpServer(status=204, body=b"")
    closing(srv)
    assert run(http(srv.port, Url("/health?x=1"))) == Result(True, "HTTP 204")
    path, host, head = srv.requests[0]
    assert path == "/health?x=1" and host == f"127.0.0.1:{srv.port}"
    assert head.startswith(b"GET /health?x=1 HTTP/1.0\r\n") and b"User-Agent: KeepAliveClient" in head


@pytest.mark.parametrize("status,codes,ok,reason", [
    (500, (), False, "HTTP status 500 not in 200-299"),
    (301, (), False, "HTTP status 301 not in 200-299"),
    (500, (500,), True, "HTTP 500"),
    (200, (301, 302, 400, 401, 402), False, "HTTP status 200 not in 301-302,400-402"),
])
def test_http_status_codes(closing, status, codes, ok, reason):
    srv = HttpServer(status=status)
    closing(srv)
    assert run(http(srv.port, Url("/", status_codes=codes))) == Result(ok, reason)


def test_http_digest_is_md5_of_the_body(closing):
    body = b"<html>fine</html>\n" * 5000         # several reads
    srv = HttpServer(body=body)
    closing(srv)
    good = hashlib.md5(body).hexdigest()
    assert run(http(srv.port, Url("/", digest=good))).ok
    assert run(http(srv.port, Url("/", digest=good.upper()))).ok
    assert run(http(srv.port, Url("/", digest="0" * 32))) == Result(False, "digest mismatch")


def test_http_virtualhost_url_over_checker(closing):
    srv = HttpServer()
    closing(srv)
    assert run(http(srv.port, Url("/a"), virtualhost="www.example.test")).ok
    assert run(http(srv.port, Url("/b", virtualhost="api.example.test"),
                    virtualhost="www.example.test")).ok
    assert [(p, h) for p, h, _ in srv.requests] == [("/a", "www.example.test"),
                                                     ("/b", "api.example.test")]


def test_http_every_url_must_pass_and_the_failing_one_is_named(closing):
    good, bad = HttpServer(body=b"a"), HttpServer(body=b"b")
    closing(good)
    closing(bad)
    spec = http(good.port, Url("/one", digest=hashlib.md5(b"a").hexdigest()),
                Url("/two", digest=hashlib.md5(b"zz").hexdigest()))
    assert run(spec) == Result(False, "/two: digest mismatch")
    spec = http(good.port, Url("/one"), Url("/two", digest=hashlib.md5(b"a").hexdigest()))
    assert run(spec) == Result(True, "2 urls ok")


def test_http_refused_and_read_timeout(closing):
    assert run(http(free_port())) == Result(False, "connect refused")
    slow = HttpServer(delay=3)
    closing(slow)
    assert run(http(slow.port, connect_timeout=0.5)) == Result(False, "read timeout after 0.5s")


def test_http_no_data_when_the_server_closes(closing):
    ls = TcpListener()
    closing(ls)

    def serve():            # read the request, close without a byte
        ls.sock.settimeout(10)
        try:
            conn, _ = ls.sock.accept()
        except OSError:
            return
        conn.settimeout(5)
        try:
            conn.recv(4096)
        finally:
            conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert run(http(ls.port)) == Result(False, "no data received")
    t.join(10)


def test_http_not_http(closing):
    ls = TcpListener()
    closing(ls)

    def serve():
        ls.sock.settimeout(10)
        conn, _ = ls.sock.accept()
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert run(http(ls.port)) == Result(False, "HTTP status missing not in 200-299")
    t.join(10)


def test_ssl_get_with_and_without_sni(closing, tmp_path):
    cert = make_cert(tmp_path)
    srv = HttpServer(status=200, body=b"secure", cert=cert)
    closing(srv)
    digest = hashlib.md5(b"secure").hexdigest()
    assert run(http(srv.port, Url("/", digest=digest), kind="SSL_GET")) == Result(True, "HTTP 200")
    assert run(http(srv.port, kind="SSL_GET", sni=True, virtualhost="rs.test")).ok
    assert run(http(srv.port, kind="SSL_GET", virtualhost="rs.test")).ok     # enable_sni off
    assert srv.sni == [None, "rs.test", None]
    assert run(http(srv.port, Url("/", digest="1" * 32), kind="SSL_GET")) == \
        Result(False, "digest mismatch")
    srv.status = 503
    assert run(http(srv.port, kind="SSL_GET")) == Result(False, "HTTP status 503 not in 200-299")


def test_ssl_get_against_plain_http_fails_the_handshake(closing):
    srv = HttpServer()
    closing(srv)
    r = run(http(srv.port, kind="SSL_GET"))
    assert not r.ok and r.reason.startswith("TLS handshake failed"), r


# -- MISC_CHECK -------------------------------------------------------------------------------------

def misc(path, **kw):
    return CheckSpec("MISC_CHECK", "127.0.0.1", misc_path=path, **kw)


@pytest.mark.parametrize("status,dynamic,expect", [
    (0, False, Result(True, "exit 0")),
    (1, False, Result(False, "exit 1")),
    (3, False, Result(False, "exit 3")),
    (0, True, Result(True, "exit 0")),                 # the configured weight
    (1, True, Result(False, "exit 1")),
    (2, True, Result(True, "exit 2", weight=0)),
    (12, True, Result(True, "exit 12", weight=10)),
    (255, True, Result(True, "exit 255", weight=253)),
])
def test_misc_exit_status(status, dynamic, expect):
    assert run(misc(f"sh -c 'exit {status}'", misc_dynamic=dynamic)) == expect


def test_misc_words_are_split_with_quotes_and_run_without_a_shell(tmp_path):
    script = tmp_path / "check it.sh"
    out = tmp_path / "args"
    script.write_text(f'#!/bin/sh\nprintf "%s|" "$@" > "{out}"\nexit 0\n')
    script.chmod(0o755)
    assert run(misc(f'"{script}" "a b" c\\ d \'$HOME\'')).ok
    assert out.read_text() == "a b|c d|$HOME|"       # no shell expanded $HOME


def test_misc_missing_program():
    assert run(misc("no-such-checker-program --x")) == \
        Result(False, "misc_path not executable: no-such-checker-program")


def test_misc_readable_file_form_goes_through_the_shell(tmp_path):
    f = tmp_path / "flag"
    assert not run(misc(f"<{f}")).ok
    f.write_text("x")
    assert run(misc(f"<{f}")).ok


def _gone(pid, within=10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_misc_timeout_kills_the_process_group(tmp_path):
    pids = tmp_path / "pids"
    # a child in the background and the script itself, both must die
    r = run(misc(f"sh -c 'sleep 30 & echo $! > {pids}; echo $$ >> {pids}; wait'",
                 misc_timeout=0.5))
    assert r == Result(False, "timeout after 0.5s")
    for pid in map(int, pids.read_text().split()):
        assert _gone(pid), f"pid {pid} survived the timeout"


def test_misc_timeout_sigkills_what_ignores_sigterm(tmp_path):
    pids = tmp_path / "pids"
    r = run(misc(f"sh -c 'trap \"\" TERM; echo $$ > {pids}; sleep 30; sleep 30'",
                 misc_timeout=0.3))
    assert r == Result(False, "timeout after 0.3s")
    assert _gone(int(pids.read_text()))


def test_misc_timeout_defaults_to_delay_loop():
    assert run(misc("sleep 5", delay_loop=0.3)) == Result(False, "timeout after 0.3s")


def test_misc_killed_by_a_signal():
    assert run(misc("sh -c 'kill -9 $$'")) == Result(False, "killed by signal 9")


# -- UDP_CHECK ------------------------------------------------------------------------------------

def udp(port, **kw):
    return CheckSpec("UDP_CHECK", "127.0.0.1", port, connect_timeout=kw.pop("connect_timeout", 2),
                     **kw)


def test_udp_echo_default_payload(closing):
    srv = UdpServer()
    closing(srv)
    assert run(udp(srv.port)) == Result(True, "reply of 32 bytes")
    assert srv.received == [DEFAULT_PAYLOAD] and DEFAULT_PAYLOAD.startswith(b"keepalived check - ")


def test_udp_silence_is_up_unless_a_reply_is_required(closing):
    srv = UdpServer(reply=lambda d: None)
    closing(srv)
    assert run(udp(srv.port, payload=b"\x01\x02", connect_timeout=0.3)) == \
        Result(True, "no ICMP error in 0.3s")
    assert srv.received == [b"\x01\x02"]
    assert run(udp(srv.port, require_reply=b"", connect_timeout=0.3)) == \
        Result(False, "no reply in 0.3s")


def test_udp_port_unreachable():
    assert run(udp(free_port(socket.SOCK_DGRAM))) == Result(False, "port unreachable")


@pytest.mark.parametrize("reply,kw,ok", [
    (b"\x01\x02\x03", dict(require_reply=b"\x01\x02"), True),            # a prefix
    (b"\x01", dict(require_reply=b"\x01\x02"), True),                   # min(len) compared
    (b"\x09\x02\x03", dict(require_reply=b"\x01\x02"), False),
    (b"\x31", dict(require_reply=b"\x01"), False),
    (b"\x31", dict(require_reply=b"\x01", reply_mask=b"\xf0"), True),   # keepalived's X1
    (b"\x01\x02\x03", dict(require_reply=b"", max_reply_length=2), False),
    (b"\x01\x02\x03", dict(require_reply=b"", min_reply_length=4), False),
    (b"\x01\x02\x03", dict(require_reply=b"", min_reply_length=3, max_reply_length=3), True),
])
def test_udp_require_reply(closing, reply, kw, ok):
    srv = UdpServer(reply=lambda d: reply)
    closing(srv)
    r = run(udp(srv.port, **kw))
    assert r.ok is ok and (ok or r.reason == f"reply mismatch ({min(len(reply), kw.get('max_reply_length', 255) + 1)} bytes)"), r


def test_udp_binds_to_bind_port(closing):
    srv = UdpServer()
    closing(srv)
    bport = free_port(socket.SOCK_DGRAM)
    assert run(udp(srv.port, bindto="127.0.0.1", bind_port=bport)).ok
    assert srv.peers == [("127.0.0.1", bport)]


def test_udp_unreachable_route():
    ok, reason, _ = probe_in_netns(CheckSpec("UDP_CHECK", UNREACHABLE_ADDR, 53))
    assert not ok and reason in ("host unreachable", "network unreachable")


# -- DNS_CHECK ------------------------------------------------------------------------------------

def dns(port, **kw):
    return CheckSpec("DNS_CHECK", "127.0.0.1", port, connect_timeout=kw.pop("connect_timeout", 2),
                     **kw)


def test_dns_default_soa_of_the_root(closing):
    srv = DnsServer()
    closing(srv)
    assert run(dns(srv.port)) == Result(True, "rcode 0")
    q = srv.queries[0]
    assert (q.qd[0].name, q.qd[0].type, q.qd[0].cls) == ("", 6, 1)
    assert q.rd == 1 and q.qr == 0 and len(q.qd) == 1


def test_dns_type_and_name(closing):
    srv = DnsServer()
    closing(srv)
    assert run(dns(srv.port, dns_type="a", dns_name="www.example.com")).ok
    assert run(dns(srv.port, dns_type="AAAA", dns_name="example.com.")).ok
    assert [(q.qd[0].name, q.qd[0].type) for q in srv.queries] == \
        [("www.example.com", 1), ("example.com", 28)]


@pytest.mark.parametrize("rcode,reason", [(2, "rcode 2 (SERVFAIL)"), (3, "rcode 3 (NXDOMAIN)"),
                                          (5, "rcode 5 (REFUSED)")])
def test_dns_rcode_is_down(closing, rcode, reason):
    srv = DnsServer(rcode=rcode)
    closing(srv)
    assert run(dns(srv.port)) == Result(False, reason)


def test_dns_skips_stray_datagrams(closing):
    srv = DnsServer(stray_first=True)
    closing(srv)
    assert run(dns(srv.port)) == Result(True, "rcode 0")


def test_dns_silence_and_closed_port(closing):
    srv = DnsServer(silent=True)
    closing(srv)
    assert run(dns(srv.port, connect_timeout=0.3)) == Result(False, "no reply in 0.3s")
    assert len(srv.queries) == 1
    assert run(dns(free_port(socket.SOCK_DGRAM))) == Result(False, "port unreachable")


def test_dns_unknown_type():
    r = run(dns(53, dns_type="BOGUS"))
    assert not r.ok and r.reason.startswith("unknown DNS type 'BOGUS'")


# -- PING_CHECK -----------------------------------------------------------------------------------

@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
def test_ping_loopback(addr):
    assert run(CheckSpec("PING_CHECK", addr, connect_timeout=2)) == Result(True, "echo reply")


def test_ping_many_at_once_share_one_socket():
    async def many():
        return await asyncio.gather(*(checkers.probe(CheckSpec("PING_CHECK", "127.0.0.1",
                                                               connect_timeout=3))
                                      for _ in range(50)))
    assert all(r.ok for r in asyncio.run(many()))


def test_ping_silence_and_unreachable():
    assert probe_in_netns(CheckSpec("PING_CHECK", SILENT_ADDR, connect_timeout=0.5)) == \
        (False, "no echo reply in 0.5s", None)
    ok, reason, _ = probe_in_netns(CheckSpec("PING_CHECK", UNREACHABLE_ADDR))
    assert not ok and reason in ("send host unreachable", "send network unreachable")


# -- the registry -----------------------------------------------------------------------------------

def test_unknown_kind_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown checker 'SMTP_CHECK'; valid: TCP_CHECK"):
        checkers.get("SMTP_CHECK")
    assert run(CheckSpec("SMTP_CHECK", "127.0.0.1")) == \
        Result(False, "checker error: ValueError: unknown checker 'SMTP_CHECK'; valid: "
                      "TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK, UDP_CHECK, DNS_CHECK, PING_CHECK")
