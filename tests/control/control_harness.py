"""A ControlServer over a real Director + Engine (no rings) on a socket in a temp dir, served
by a thread that holds `lock` while it touches the director; tests hold the same lock when
they drive the engine themselves, so director and engine are never used concurrently.
The engine is the extension ("core") or the pure-Python reference ("reference")."""
from __future__ import annotations

import importlib.util
import io
import threading

import pytest

from fastlvs import admin
from fastlvs.control.server import ControlServer
from fastlvs.control.director import Director
from fastlvs.control.model import NoRoute

LOCAL_IP, LOCAL_MAC = "192.0.2.1", "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
NEIGHBORS = {f"192.0.2.{i}": bytes([2, 0, 0, 0, 1, i]) for i in range(10, 20)}


def nexthop(ip):
    mac = NEIGHBORS.get(ip)
    if mac is None:
        raise NoRoute(f"{ip} is not a neighbour")
    return mac, 1


ENGINE_KINDS = ("core", "reference")


def engine_class(kind: str):
    """The Engine class of `kind`; the test is skipped when the extension was never built
    (a built extension that fails to import is an error, not a skip)."""
    if kind == "reference":
        from fastlvs.engine.reference import Engine
        return Engine
    if importlib.util.find_spec("fastlvs.engine._core") is None:
        pytest.skip("the extension is not built")
    from fastlvs.engine._core import Engine
    return Engine


class Daemon:
    def __init__(self, path, engine_kind="core", capacity=4096):
        Engine = engine_class(engine_kind)
        self.engine = Engine(capacity=capacity, batch=64, local_ip=LOCAL_IP,
                             local_mac=LOCAL_MAC)
        self.director = Director(self.engine, nexthop)
        self.server = ControlServer(self.director, str(path))
        self.path = str(path)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            with self.lock:
                self.server.poll_once(0.02)

    def admin(self, *argv, stdin=""):
        """(exit status, stdout, stderr) of `fastlvs admin --socket PATH ARGV...`."""
        out, err = io.StringIO(), io.StringIO()
        rc = admin.main(["--socket", self.path, *argv], stdin=io.StringIO(stdin),
                        stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv, stdin=""):
        rc, out, err = self.admin(*argv, stdin=stdin)
        assert (rc, err) == (0, ""), (argv, rc, err)
        return out

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.server.close()
