"""The control socket's wire schema (fastlvs.control.ctl): framing, validation, the socket path and
the client's failure modes. No daemon, no build."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from fastlvs.control import ctl


def test_encode_is_one_line_and_decodes_back():
    msg = {"op": "command", "argv": ["-R"], "stdin": "-A -t 1.2.3.4:80\n-C\n", "x": "é"}
    line = ctl.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert ctl.decode(line) == msg
    assert ctl.decode(line.rstrip(b"\n")) == msg


@pytest.mark.parametrize("line, reason", [
    (b"nope", "not a JSON line"),
    (b"\xff\xfe", "not a JSON line"),
    (b"[1]", "not a JSON object: list"),
    (b'"s"', "not a JSON object: str"),
    (b" " * (ctl.MAX_LINE + 1), f"request longer than {ctl.MAX_LINE} bytes"),
])
def test_decode_refuses(line, reason):
    with pytest.raises(ctl.ProtocolError) as ei:
        ctl.decode(line)
    assert str(ei.value).startswith(reason)


@pytest.mark.parametrize("obj, reason", [
    ({}, 'request has no "op" string'),
    ({"op": 1}, 'request has no "op" string'),
    ({"op": "x"}, "unknown op 'x' (valid: command, counters, reload, ping, sysctl, health, bgp)"),
    ({"op": "command"}, '"command" needs "argv": a list of strings'),
    ({"op": "command", "argv": ["-L", 1]}, '"command" needs "argv": a list of strings'),
    ({"op": "command", "argv": [], "stdin": 1}, '"stdin" must be a string'),
])
def test_check_request_refuses(obj, reason):
    with pytest.raises(ctl.ProtocolError, match="^" + reason.replace("(", r"\(")
                       .replace(")", r"\)") + "$"):
        ctl.check_request(obj)


def test_check_request_accepts():
    assert ctl.check_request({"op": "command", "argv": ["-Ln"]}) == ("command",
                                                                     {"argv": ["-Ln"]})
    assert ctl.check_request({"op": "ping"}) == ("ping", {})


def test_answers():
    assert ctl.ok([1]) == {"ok": True, "result": [1]}
    assert ctl.error("a\nb", 255) == {"ok": False, "error": "a b", "code": 255}
    assert ctl.error("x", 2, ["x", "y\nz"])["errors"] == ["x", "y z"]


def test_socket_path_precedence(monkeypatch):
    monkeypatch.delenv(ctl.SOCKET_ENV, raising=False)
    assert ctl.socket_path() == "/run/fastlvs/fastlvs.sock"
    monkeypatch.setenv(ctl.SOCKET_ENV, "")
    assert ctl.socket_path() == ctl.DEFAULT_SOCKET
    monkeypatch.setenv(ctl.SOCKET_ENV, "/tmp/env.sock")
    assert ctl.socket_path() == "/tmp/env.sock"
    assert ctl.socket_path("/tmp/opt.sock") == "/tmp/opt.sock"


def test_unreachable(tmp_path):
    with pytest.raises(ctl.Unreachable) as ei:
        ctl.call("ping", str(tmp_path / "none"))
    assert str(ei.value) == (f"cannot reach the daemon at {tmp_path}/none: "
                             "No such file or directory")
    dead = tmp_path / "dead"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(dead))
    s.close()
    with pytest.raises(ctl.Unreachable, match="Connection refused"):
        ctl.call("ping", str(dead))


def _one_shot_server(path, reply: bytes):
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def run():
        c, _ = srv.accept()
        c.recv(65536)
        c.sendall(reply)
        c.close()
        srv.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("reply, reason", [
    (b"", "the daemon closed the connection"),
    (b"garbage\n", "bad answer: not a JSON line"),
    (b'{"result": 1}\n', 'bad answer: no "ok" field'),
])
def test_bad_daemon_answers_are_unreachable(tmp_path, reply, reason):
    path = str(tmp_path / "s")
    t = _one_shot_server(path, reply)
    with pytest.raises(ctl.Unreachable, match=reason):
        ctl.call("ping", path, timeout=5)
    t.join()


def test_call_round_trip(tmp_path):
    path = str(tmp_path / "s")
    t = _one_shot_server(path, json.dumps({"ok": True, "result": "x"}).encode() + b"\n")
    assert ctl.call("ping", path) == {"ok": True, "result": "x"}
    t.join()
