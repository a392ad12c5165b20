"""`-Lnc` over the control socket in slices: 20,000 entries made through the engine, listed
while other clients are answered between slices, a client that stops reading holding the
listing (not the server, not more memory than the bound), and the text equal to
format_conns of every entry, in both the streaming and the old one-line answer."""
from __future__ import annotations

import json
import socket

import pytest

from fastlvs.control import ctl, server as server_mod
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.listing import ConnEntry, format_conns
from fastlvs.control.server import ControlServer
from tests.control.control_harness import LOCAL_IP, LOCAL_MAC, Daemon, nexthop
from tests.core import packets as P

NCONNS = 20_000
TURNS = 20_000          # bound on every loop below


def _syns(n: int, first: int = 0x0B000001) -> list[bytes]:
    """n SYNs to VIP:80 from n distinct sources (the template patched, IP checksum fixed)."""
    tmpl = P.tcp("S")
    return [P._fix_ip_csum(P._patch(tmpl, 26, (first + i).to_bytes(4, "big")))
            for i in range(n)]


def _fill(director, engine, n: int) -> None:
    for argv in (["-A", "-t", f"{P.VIP}:80", "-s", "rr"],
                 ["-a", "-t", f"{P.VIP}:80", "-r", "192.0.2.10:80", "-g"],
                 ["-a", "-t", f"{P.VIP}:80", "-r", "192.0.2.11:80", "-g"]):
        director.execute(parse_command(argv))
    frames = _syns(n)
    for i in range(0, n, 1024):
        engine.process(frames[i:i + 1024])
    assert engine.conn_count() == n


def _expected(engine) -> str:
    return format_conns([ConnEntry(c["proto"], c["caddr"], c["cport"], c["vaddr"], c["vport"],
                                   c["raddr"], c["rport"], c["state"], c["expires"])
                         for c in engine.conns()])


@pytest.fixture
def served(tmp_path):
    """(server, engine) with NCONNS entries; the test drives server.poll_once itself."""
    from fastlvs.engine._core import Engine

    engine = Engine(capacity=32768, batch=64, local_ip=LOCAL_IP, local_mac=LOCAL_MAC)
    director = Director(engine, nexthop)
    _fill(director, engine, NCONNS)
    srv = ControlServer(director, str(tmp_path / "fastlvs.sock"))
    try:
        yield srv, engine
    finally:
        srv.close()


def _client(path, request: dict, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(path)
    s.sendall(ctl.encode(request))
    s.setblocking(False)
    return s


def _drain(s: socket.socket, buf: bytearray) -> None:
    while True:
        try:
            data = s.recv(1 << 16)
        except BlockingIOError:
            return
        if not data:
            return
        buf += data


def _lines(buf: bytearray) -> list[dict]:
    return [json.loads(line) for line in bytes(buf).splitlines()]


def test_listing_is_streamed_while_other_clients_are_answered(served):
    srv, engine = served
    lister = _client(srv.path, {"op": "command", "argv": ["-Lnc"], "stream": True})
    got = bytearray()
    pinger = None
    pong = bytearray()
    pong_before_done = None
    for _ in range(TURNS):
        srv.poll_once(0.05)
        _drain(lister, got)
        answers = _lines(got[:got.rfind(b"\n") + 1])
        finished = bool(answers) and "chunk" not in answers[-1]
        if pinger is None and answers:       # the listing has begun: now someone else asks
            pinger = _client(srv.path, {"op": "ping"})
        if pinger is not None and pong_before_done is None:
            _drain(pinger, pong)
            if pong.endswith(b"\n"):
                pong_before_done = srv.streaming    # the server has more of it to make
        if finished and pong_before_done is not None:
            break
    else:
        pytest.fail("the listing did not finish within the turn bound")
    assert pong_before_done, "the ping waited for the whole listing"
    assert _lines(pong)[0]["result"]["pid"] > 0
    answers = _lines(got)
    assert answers[-1] == {"ok": True, "done": True}
    chunks = answers[:-1]
    assert len(chunks) > 2 and all(a["ok"] and "chunk" in a for a in chunks)
    assert "".join(a["chunk"] for a in chunks) == _expected(engine)
    lister.close()
    pinger.close()


def test_old_clients_get_the_same_listing_in_one_line(served):
    srv, engine = served
    s = _client(srv.path, {"op": "command", "argv": ["-L", "-n", "-c"]})
    got = bytearray()
    for _ in range(TURNS):
        srv.poll_once(0.05)
        _drain(s, got)
        if got.endswith(b"\n"):
            break
    answers = _lines(got)
    assert len(answers) == 1 and answers[0]["ok"] is True
    assert answers[0]["result"] == _expected(engine)
    # the connection serves the next request as before
    s.sendall(ctl.encode({"op": "ping"}))
    got.clear()
    for _ in range(100):
        srv.poll_once(0.05)
        _drain(s, got)
        if got.endswith(b"\n"):
            break
    assert _lines(got)[0]["ok"] is True
    s.close()


def test_requests_behind_a_listing_wait_for_it_in_order(served):
    srv, engine = served
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(srv.path)
    s.sendall(ctl.encode({"op": "command", "argv": ["-Lnc"], "stream": True})
              + ctl.encode({"op": "command", "argv": ["-Ln", "--timeout"]}))
    s.setblocking(False)
    got = bytearray()
    answered = 0
    for _ in range(TURNS):
        answered += srv.poll_once(0.05)
        _drain(s, got)
        if b'"Timeout' in got and got.endswith(b"\n"):
            break
    assert answered == 2        # what the daemon's loop counts to resync after changes
    answers = _lines(got)
    assert answers[-2] == {"ok": True, "done": True}
    assert answers[-1]["result"].startswith("Timeout (tcp tcpfin udp): ")
    assert "".join(a.get("chunk", "") for a in answers[:-2]) == _expected(engine)
    s.close()


def test_a_client_that_stops_reading_holds_its_listing_not_the_server(served, monkeypatch):
    srv, engine = served
    monkeypatch.setattr(server_mod, "STREAM_LOW_WATER", 64 << 10)
    stuck = _client(srv.path, {"op": "command", "argv": ["-Lnc"], "stream": True},
                    rcvbuf=4096)
    worst = 0
    for _ in range(300):
        srv.poll_once(0.01)
        worst = max(worst, sum(len(c.wbuf) for c in srv._conns.values()))
    # produced only while less than the low-water mark waited: one turn's slice above it
    bound = (64 << 10) + server_mod.STREAM_TURN_SLOTS * 200
    assert worst <= bound < server_mod.MAX_PENDING_OUTPUT
    assert any(c.stream is not None for c in srv._conns.values()), \
        "the listing ran to its end although nobody read it"
    # the server still answers others
    pinger = _client(srv.path, {"op": "ping"})
    pong = bytearray()
    for _ in range(100):
        srv.poll_once(0.05)
        _drain(pinger, pong)
        if pong.endswith(b"\n"):
            break
    assert _lines(pong)[0]["ok"] is True
    # and the stuck client, reading again, gets all of it
    got = bytearray()
    for _ in range(TURNS):
        srv.poll_once(0.01)
        _drain(stuck, got)
        if got.endswith(b'"done":true}\n'):
            break
    answers = _lines(got)
    assert answers[-1] == {"ok": True, "done": True}
    assert "".join(a["chunk"] for a in answers[:-1]) == _expected(engine)
    stuck.close()
    pinger.close()


def test_a_client_that_hangs_up_mid_listing_is_dropped(served):
    srv, engine = served
    s = _client(srv.path, {"op": "command", "argv": ["-Lnc"], "stream": True}, rcvbuf=4096)
    for _ in range(5):
        srv.poll_once(0.01)
    s.close()
    for _ in range(100):
        srv.poll_once(0.01)
        if not srv._conns:
            break
    assert not srv._conns


def test_admin_prints_the_streamed_listing(tmp_path):
    d = Daemon(tmp_path / "run" / "fastlvs.sock", capacity=8192)
    try:
        with d.lock:
            _fill(d.director, d.engine, 5000)
            want = _expected(d.engine)
        assert d.ok("-Lnc") == want
        assert d.ok("-L", "-n", "-c", "--persistent-conn").splitlines()[2:] == \
            want.splitlines()[2:]
    finally:
        d.stop()


@pytest.mark.parametrize("chunked", [True, False])
def test_a_listing_that_fails_midway_ends_with_an_error_answer(chunked):
    from fastlvs.control.server import _ConnStream

    def pieces():
        yield "IPVS connection entries\n"
        yield 'a line with "quotes"\n'
        raise RuntimeError("engine gone")

    stream, out = _ConnStream(pieces(), chunked), b""
    for _ in range(10):
        data, finished = stream.advance(server_mod.STREAM_TURN_SLOTS, 1.0)
        out += data
        if finished:
            break
    answers = _lines(bytearray(out))
    assert answers[-1]["ok"] is False and "engine gone" in answers[-1]["error"]
    assert answers[-1]["code"] == ctl.EXIT_LIST
    text = "".join(a.get("chunk", "") for a in answers) if chunked else answers[0]["result"]
    assert text == 'IPVS connection entries\na line with "quotes"\n'
