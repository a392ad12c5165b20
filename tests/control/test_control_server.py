"""The control socket itself: file modes, stale and live sockets, malformed requests, the
non-command ops, peer credentials, and clean removal on close."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest

from tests.control.control_harness import Daemon
from fastlvs.control import ctl
from fastlvs.control.server import ControlServer


def _raw(path, payload: bytes, timeout=10.0) -> list[dict]:
    """Send raw bytes, shut down the sending side, return every answer line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    s.close()
    return [json.loads(l) for l in data.splitlines()]


def test_socket_and_directory_modes(tmp_path):
    d = Daemon(tmp_path / "newdir" / "fastlvs.sock")
    try:
        st = os.stat(d.path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "newdir").st_mode) == 0o700
    finally:
        d.stop()
    assert not os.path.exists(d.path)          # close() removes the socket file


def test_stale_socket_is_replaced_and_live_one_refused(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()                               # a file nobody listens on
    d = Daemon(path)
    try:
        assert ctl.call("ping", path)["ok"]
        with pytest.raises(OSError) as ei:
            ControlServer(d.director, path)
        assert ei.value.errno == errno.EADDRINUSE
        assert "another fastlvs daemon" in str(ei.value)
        assert ctl.call("ping", path)["ok"]     # the live one is untouched
    finally:
        d.stop()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        ControlServer(d.director, str(tmp_path / "file"))


def test_malformed_requests_get_answers_and_the_server_lives_on(daemon):
    answers = _raw(daemon.path, b"not json\n[1,2]\n{\"op\": 3}\n{\"op\": \"frob\"}\n"
                   b"{\"op\": \"command\", \"argv\": \"-Ln\"}\n"
                   b"{\"op\": \"command\", \"argv\": [\"-R\"], \"stdin\": 5}\n"
                   b"\xff\xfe\n\n{\"op\": \"ping\"}")   # last line without a newline
    assert [a["ok"] for a in answers] == [False] * 7 + [True]
    assert all(a["code"] == 2 for a in answers[:7])
    assert answers[0]["error"].startswith("not a JSON line")
    assert answers[1]["error"] == "not a JSON object: list"
    assert answers[2]["error"] == 'request has no "op" string'
    assert answers[3]["error"] == ("unknown op 'frob' (valid: command, counters, reload, "
                                   "ping, sysctl, health, bgp)")
    assert answers[4]["error"] == '"command" needs "argv": a list of strings'
    assert answers[6]["error"].startswith("not a JSON line")
    assert answers[7]["result"]["pid"] == os.getpid()
    assert ctl.call("command", daemon.path, argv=["-Ln"])["ok"]


def test_oversized_line_is_answered_skipped_and_the_stream_goes_on(daemon):
    for size in (ctl.MAX_LINE + 1, ctl.MAX_LINE + 10, 3 * ctl.MAX_LINE):
        answers = _raw(daemon.path, b"x" * size + b"\n{\"op\": \"ping\"}\n")
        assert answers[0] == {"ok": False, "code": 2,
                              "error": f"request longer than {ctl.MAX_LINE} bytes"}
        assert [a["ok"] for a in answers] == [False, True]
    # An over-long last line without a newline: one answer, nothing more.
    assert len(_raw(daemon.path, b"y" * (ctl.MAX_LINE + 5))) == 1
    # Exactly MAX_LINE bytes is still a request (and here a bad one, answered normally).
    answers = _raw(daemon.path, b"{" + b" " * (ctl.MAX_LINE - 2) + b"}\n")
    assert answers[0]["error"] == 'request has no "op" string'


def test_many_requests_on_one_connection_in_order(daemon):
    with ctl.Client(daemon.path) as c:
        assert c.call("command", argv=["-A", "-t", "203.0.113.1:80"])["ok"]
        for _ in range(20):
            assert c.call("command", argv=["-Ln"])["result"].count("\n") == 4
        assert c.call("command", argv=["-A", "-t", "203.0.113.1:80"])["code"] == 255


def test_counters_ping_reload(daemon):
    ctl.call("command", daemon.path, argv=["-A", "-t", "203.0.113.1:80"])
    c = ctl.call("counters", daemon.path)["result"]
    assert c["services"][0]["service"] == "-t 203.0.113.1:80" and "engine" in c
    assert ctl.call("reload", daemon.path) == {
        "ok": False, "code": 2, "error": "reload: this daemon has no configuration to reload"}
    daemon.server.reload = lambda final=True: "reloaded 3 services"
    assert ctl.call("reload", daemon.path) == {"ok": True, "result": "reloaded 3 services"}

    def bad(final=True):
        raise ValueError("fastlvs.toml:3: bad")
    daemon.server.reload = bad
    assert ctl.call("reload", daemon.path) == {
        "ok": False, "code": 1, "error": "reload: fastlvs.toml:3: bad"}


def test_internal_errors_do_not_kill_the_server(daemon):
    daemon.director.counters = lambda: 1 / 0
    a = ctl.call("counters", daemon.path)
    assert a == {"ok": False, "code": 1, "error": "internal error: ZeroDivisionError: "
                                                  "division by zero"}
    assert ctl.call("ping", daemon.path)["ok"]


def test_client_that_hangs_up_early(daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(daemon.path)
    s.sendall(b'{"op": "command", "argv": ["-Ln"]}\n' * 50)
    s.close()
    assert ctl.call("ping", daemon.path)["ok"]


def test_poll_once_without_thread(tmp_path, engine_kind):
    """The daemon's own use: poll_once/handle_ready from one loop, fileno() for its poller."""
    import select
    from tests.control.control_harness import engine_class, nexthop
    from fastlvs.control.director import Director

    director = Director(engine_class(engine_kind)(capacity=64), nexthop)
    path = str(tmp_path / "s")
    with ControlServer(director, path) as srv:
        assert srv.poll_once(0) == 0
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.sendall(b'{"op":"ping"}\n')
        answered = 0
        for _ in range(10):
            r, _, _ = select.select([srv], [], [], 1.0)
            if r:
                answered += srv.handle_ready()
            if answered:
                break
        assert answered == 1
        assert json.loads(c.recv(4096))["ok"]
        c.close()
    assert not os.path.exists(path)


_NOBODY_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
    try:
        s.sendall(b'{"op":"ping"}\\n')
    except BrokenPipeError:
        pass            # refused peers are answered and dropped at once: read the answer
    print(s.recv(4096).decode().strip())
except OSError as e:
    print("OSError", e.strerror)
"""


def _as_nobody(path: str) -> str:
    """What a client running as uid/gid 65534 sees (the answer line or the connect error).
    The system's python3 runs it: the venv's interpreter may not be readable by nobody."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run a client as nobody")
    r = subprocess.run([python, "-I", "-c", _NOBODY_CLIENT, path], capture_output=True,
                       text=True, timeout=30, user=65534, group=65534, cwd="/")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_other_uids_are_refused(engine_kind):
    # pytest's tmp_path lives under a 0700 directory nobody cannot traverse.
    top = tempfile.mkdtemp(prefix="fastlvs-ctl-")
    try:
        os.chmod(top, 0o755)
        daemon = Daemon(os.path.join(top, "run", "fastlvs.sock"), engine_kind)
        try:
            os.chmod(daemon.path, 0o666)       # get past the file mode to SO_PEERCRED
            os.chmod(os.path.dirname(daemon.path), 0o755)
            assert json.loads(_as_nobody(daemon.path)) == {
                "ok": False, "code": 2,
                "error": "permission denied: uid 65534 may not use the control socket"}
            os.chmod(daemon.path, 0o600)        # the file mode alone keeps others out
            assert _as_nobody(daemon.path) == "OSError Permission denied"
            assert ctl.call("ping", daemon.path)["ok"]
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(top)
