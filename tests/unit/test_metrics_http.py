"""The /metrics HTTP side alone (loopback sockets, no build, no root): what each request gets,
that abusive clients (slowloris, a huge request, garbage, a connection flood) never keep a
normal scrape from being answered, deadlines on an injected clock, the render cache, bind
errors, and the collector registry's isolation of a failing collector."""
from __future__ import annotations

import errno
import os
import socket
import threading

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from fastlvs.control import metrics as M
from fastlvs.control.metrics import Metrics, MetricsServer

BODY = b"# HELP x_total An x.\n# TYPE x_total counter\nx_total 3.0\n"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Renders:
    def __init__(self, body=BODY):
        self.body = body
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.body


@pytest.fixture
def served():
    """A server on 127.0.0.1 (any free port), serviced by a thread loop as the daemon's loop
    would (bounded: it stops with the test)."""
    render = Renders()
    server = MetricsServer(render, "127.0.0.1", 0, cache_seconds=0)
    stop = threading.Event()
    lock = threading.Lock()

    def loop():
        while not stop.is_set():
            with lock:
                server.handle_ready()
            stop.wait(0.002)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield server, render, lock
    finally:
        stop.set()
        t.join(5)
        server.close()


def connect(server, timeout=5.0):
    return socket.create_connection(server.address, timeout=timeout)


def exchange(server, request: bytes, timeout=5.0) -> bytes:
    """Send `request`, read until the server closes (bounded by `timeout` per read)."""
    s = connect(server, timeout)
    try:
        s.sendall(request)
        out = b""
        while len(out) < 1 << 24:
            data = s.recv(65536)
            if not data:
                return out
            out += data
        raise AssertionError("answer too long")
    finally:
        s.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def test_get_metrics_is_the_rendered_exposition_with_prometheus_content_type(served):
    server, render, _ = served
    answer = exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert f"Content-Length: {len(BODY)}".encode() in head and b"Connection: close" in head
    assert body == BODY
    (fam,) = text_string_to_metric_families(body.decode())
    assert (fam.name, fam.samples[0].value) == ("x", 3.0)


@pytest.mark.parametrize("request_, status", [
    (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", 200),
    (b"GET / HTTP/1.1\r\n\r\n", 200),
    (b"GET /other HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /metrics\r\n\r\n", 400),                          # HTTP/0.9 form
    (b"GET /metrics SPDY/3\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 400),  # a TLS hello, then a blank line
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
])
def test_each_request_gets_its_status_and_the_connection_closes(served, request_, status):
    server, _, _ = served
    assert status_of(exchange(server, request_)) == status


def test_head_is_the_headers_without_the_body(served):
    server, _, _ = served
    answer = exchange(server, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status_of(answer) == 200 and body_of(answer) == b""
    assert f"Content-Length: {len(BODY)}".encode() in answer


def test_a_request_larger_than_the_limit_is_refused_without_waiting_for_its_end(served):
    server, _, _ = served
    s = connect(server)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (M.MAX_REQUEST + 10))
        answer = s.recv(65536)
        assert status_of(answer) == 431
    finally:
        s.close()


def test_abusive_clients_do_not_keep_a_normal_scrape_from_its_answer(served):
    """A flood of slowloris connections (more than the server holds), a client sending
    megabytes of header, garbage: a normal scrape made among them is answered in full."""
    server, render, _ = served
    slow = []
    huge = connect(server)
    try:
        for _ in range(M.MAX_CLIENTS + 20):
            s = connect(server)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")        # never finished
            slow.append(s)
        huge.setblocking(False)
        sent = 0
        try:
            while sent < 4 << 20:
                sent += huge.send(b"X-Filler: " + b"b" * 4000 + b"\r\n")
        except (BlockingIOError, ConnectionError):
            pass                         # the server answered 431 and stopped reading
        assert status_of(exchange(server, os.urandom(3000) + b"\r\n\r\n")) == 400
        answer = exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status_of(answer) == 200 and body_of(answer) == BODY
        assert server.clients <= M.MAX_CLIENTS
    finally:
        huge.close()
        for s in slow:
            s.close()


def test_slow_clients_are_dropped_at_their_deadline():
    clock = Clock()
    with MetricsServer(Renders(), "127.0.0.1", 0, clock=clock) as server:
        s = connect(server)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        for _ in range(200):             # until the server has taken the connection
            server.handle_ready()
            if server.clients:
                break
            threading.Event().wait(0.005)
        assert server.clients == 1
        clock.now += M.REQUEST_SECONDS - 0.5
        server.handle_ready()
        assert server.clients == 1
        clock.now += 1.0
        server.handle_ready()
        assert server.clients == 0
        s.settimeout(5)
        assert s.recv(100) == b""        # closed without an answer
        s.close()


def test_renders_at_most_once_per_cache_period():
    clock = Clock()
    render = Renders()
    with MetricsServer(render, "127.0.0.1", 0, cache_seconds=1.0, clock=clock) as server:
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                server.handle_ready()
                stop.wait(0.002)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            for _ in range(5):
                assert body_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == BODY
            assert render.calls == 1
            clock.now += 1.0
            exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert render.calls == 2
        finally:
            stop.set()
            t.join(5)


def test_a_failing_render_is_a_500_and_the_next_scrape_is_served(served):
    server, render, lock = served
    good = server.render

    def boom():
        raise RuntimeError("bug")

    with lock:
        server.render = boom
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 500
    with lock:
        server.render = good
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


def test_no_render_yet_is_503(served):
    server, _, lock = served
    with lock:
        server.render = None
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 503


def test_a_port_in_use_is_an_oserror_naming_the_address():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(OSError) as e:
            MetricsServer(None, "127.0.0.1", port)
        assert e.value.errno == errno.EADDRINUSE
        assert str(e.value).endswith(f"127.0.0.1:{port}: Address already in use")
    finally:
        holder.close()


def test_an_address_not_of_this_host_is_an_oserror():
    with pytest.raises(OSError) as e:
        MetricsServer(None, "192.0.2.1", 9100)       # TEST-NET-1: nobody's address here
    assert e.value.errno == errno.EADDRNOTAVAIL


def test_ipv6_loopback_is_served():
    try:
        server = MetricsServer(Renders(), "::1", 0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with server:
        s = socket.create_connection(("::1", server.address[1]), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        for _ in range(200):
            server.handle_ready()
            if not server.clients and _ > 0:
                break
            threading.Event().wait(0.005)
        answer = b""
        while True:
            server.handle_ready()
            data = s.recv(65536)
            if not data:
                break
            answer += data
        s.close()
        assert status_of(answer) == 200 and body_of(answer) == BODY


class Fixed:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def collect(self):
        g = GaugeMetricFamily(self.name, "A test gauge.")
        g.add_metric([], self.value)
        yield g


class Broken:
    def collect(self):
        yield GaugeMetricFamily("half_done", "Never seen: the collector fails after it.")
        raise RuntimeError("collector bug")


def test_a_failing_collector_costs_only_its_own_metrics():
    m = Metrics()
    m.register("a", Fixed("a_value", 1))
    m.register("broken", Broken())
    m.register("b", Fixed("b_value", 2))
    fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert fams["a_value"].samples[0].value == 1 and fams["b_value"].samples[0].value == 2
    assert "half_done" not in fams
    ok = {s.labels["collector"]: s.value for s in fams["fastlvs_scrape_collector_success"].samples}
    assert ok == {"a": 1, "broken": 0, "b": 1}
    took = fams["fastlvs_scrape_collector_duration_seconds"].samples
    assert {s.labels["collector"] for s in took} == {"a", "broken", "b"}


def test_registry_names_are_unique_and_removable():
    m = Metrics()
    m.register("health", Fixed("fastlvs_health_x", 1))
    with pytest.raises(ValueError, match="health"):
        m.register("health", Fixed("y", 1))
    m.unregister("health")
    m.unregister("health")                  # absent: a no-op
    assert m.names() == []
