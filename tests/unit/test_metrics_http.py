"""The /metrics HTTP side alone (loopback sockets, no build, no root): what each request gets,
that abusive clients (slowloris, a huge request, garbage, a connection flood) never keep a
normal scrape from being answered, deadlines on an injected clock, the render cache, bind
errors, and the collector registry's isolation of a failing collector."""
from __future__ import annotations

import contextlib
import errno
import gzip
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


class Source:
    """A metrics source: snapshot() must run in the loop's thread, render(snap) in another."""

    def __init__(self, body=BODY):
        self.body = body
        self.calls = 0
        self.snap_threads = set()
        self.render_threads = set()
        self.gate = threading.Event()
        self.gate.set()

    def snapshot(self):
        self.snap_threads.add(threading.get_ident())
        self.calls += 1
        return self.calls

    def render(self, snap):
        self.render_threads.add(threading.get_ident())
        assert self.gate.wait(10)
        if isinstance(self.body, Exception):
            raise self.body
        return self.body


@contextlib.contextmanager
def looping(server, lock=None):
    """Service `server` from a thread as the daemon's loop would, until the block ends."""
    stop = threading.Event()
    lock = lock or threading.Lock()

    def loop():
        while not stop.is_set():
            with lock:
                server.handle_ready()
            stop.wait(0.002)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


@pytest.fixture
def served():
    """A server on 127.0.0.1 (any free port), serviced by a thread loop (bounded: it stops
    with the test)."""
    source = Source()
    server = MetricsServer(source, "127.0.0.1", 0, cache_seconds=0)
    lock = threading.Lock()
    try:
        with looping(server, lock):
            yield server, source, lock
    finally:
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


@pytest.mark.parametrize("accept, packed", [
    (b"Accept-Encoding: gzip\r\n", True),              # what Prometheus sends
    (b"accept-encoding: br, gzip;q=0.5\r\n", True),
    (b"Accept-Encoding: gzip;q=0\r\n", False),
    (b"Accept-Encoding: br\r\n", False),
    (b"", False),
])
def test_gzip_only_for_clients_that_take_it(served, accept, packed):
    server, _, _ = served
    answer = exchange(server, b"GET /metrics HTTP/1.1\r\n" + accept + b"\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert status_of(answer) == 200
    assert (b"Content-Encoding: gzip" in head) == packed
    assert f"Content-Length: {len(body)}".encode() in head
    assert (gzip.decompress(body) if packed else body) == BODY


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
    with MetricsServer(Source(), "127.0.0.1", 0, clock=clock) as server:
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
    render = Source()
    with MetricsServer(render, "127.0.0.1", 0, cache_seconds=1.0, clock=clock) as server:
        with looping(server):
            for _ in range(5):
                assert body_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == BODY
            assert render.calls == 1
            clock.now += 1.0
            exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert render.calls == 2


def test_a_failing_render_is_a_500_and_the_next_scrape_is_served(served):
    server, render, lock = served
    with lock:
        render.body = RuntimeError("bug")
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 500
    with lock:
        render.body = BODY
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


def test_a_failing_snapshot_is_a_500(served):
    server, render, lock = served

    def boom():
        raise RuntimeError("bug")

    with lock:
        render.snapshot = boom
    assert status_of(exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")) == 500


def test_snapshot_in_the_loop_text_in_the_worker_and_a_slow_render_never_wedges_the_loop(
        served):
    """The render is held back: the loop keeps turning (the thread calling handle_ready
    answers other requests meanwhile), and the held scrape gets its text once released."""
    server, render, lock = served
    render.gate.clear()
    waiting = [connect(server) for _ in range(3)]
    try:
        for s in waiting:
            s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        for _ in range(5):
            assert status_of(exchange(server, b"GET / HTTP/1.1\r\n\r\n")) == 200
        render.gate.set()
        for s in waiting:
            answer = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
            assert status_of(answer) == 200 and body_of(answer) == BODY
    finally:
        for s in waiting:
            s.close()
    assert render.calls == 1                # the three waited for one snapshot
    assert len(render.snap_threads) == 1 and len(render.render_threads) == 1
    assert render.snap_threads.isdisjoint(render.render_threads)
    assert threading.get_ident() not in render.render_threads


def test_no_source_yet_is_503(served):
    server, _, lock = served
    with lock:
        server.source = None
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
        server = MetricsServer(Source(), "::1", 0, cache_seconds=0)
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with server, looping(server):
        answer = exchange(server, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert server.address[0] == "::1"
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


class Snapshotting(Fixed):
    def __init__(self, name, value):
        super().__init__(name, value)
        self.snapshots = 0

    def snapshot(self):
        self.snapshots += 1
        return self.value

    def families(self, copy):
        g = GaugeMetricFamily(self.name, "A test gauge.")
        g.add_metric([], copy)
        yield g


def test_render_uses_the_snapshot_and_never_snapshots_itself():
    m = Metrics()
    early = Snapshotting("early_value", 1)
    m.register("early", early)
    snap = m.snapshot()
    early.value = 99                        # changed after the snapshot: not in this text
    late = Snapshotting("late_value", 2)
    m.register("late", late)                # registered after it: waits for the next scrape
    fams = {f.name: f for f in text_string_to_metric_families(m.render(snap).decode())}
    assert fams["early_value"].samples[0].value == 1
    assert "late_value" not in fams and late.snapshots == 0 and early.snapshots == 1


def test_the_sliced_encoding_is_generate_latests_text():
    from prometheus_client import generate_latest
    from prometheus_client.core import CounterMetricFamily

    from fastlvs.control.metrics import ENCODE_SLICE, _Families, encode

    g = GaugeMetricFamily("many_values", "Many.", labels=["i"])
    for i in range(2 * ENCODE_SLICE + 7):
        g.add_metric([str(i)], i * 0.5)
    c = CounterMetricFamily("many_events_total", "Events, \"quoted\"\nand a newline.",
                            labels=["k"])
    for i in range(ENCODE_SLICE + 1):
        c.add_metric([f'a"b\\{i}'], i)
    empty = GaugeMetricFamily("nothing_yet", "No samples.", labels=["x"])
    one = GaugeMetricFamily("just_one", "One.")
    one.add_metric([], 1)
    fams = [g, c, empty, one]
    text = encode(fams)
    assert text == generate_latest(_Families(fams))
    assert text.count(b"# HELP many_values ") == 1
