"""Namespaces for the sync daemon's tests (root only): `sync_ns` makes one namespace with the
oracle's interfaces (s0 MTU 1500 10.0.9.1/24, s9 MTU 9000 10.0.8.1/24, s6 MTU 1280: veths,
as this kernel has no dummy devices, their peers p0 p9 p6 up beside them) and
`sync_pair` two namespaces on one veth (10.203.0.1/24, 10.203.0.2/24), both deleted in a
finally. `NsDaemon` is a ControlServer + SyncDaemons over a real Director, served by a thread
that lives inside the namespace (so the sync sockets and interface lookups are the
namespace's), with `admin()` as the harness of tests/control has it.
"""
from __future__ import annotations

import io
import itertools
import os
import select
import socket
import threading

import pytest

from fastlvs import admin
from fastlvs.control.server import ControlServer
from fastlvs.lab.testbed import in_ns, run
from fastlvs.sync.daemon import SyncDaemons
from tests.control.control_harness import LOCAL_IP, LOCAL_MAC, engine_class, nexthop

_seq = itertools.count()


def _name(tag: str) -> str:
    return f"fsy{tag}{os.getpid() % 100000}{next(_seq)}"


@pytest.fixture
def sync_ns():
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    ns = _name("c")
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        # link-local addresses usable at once: an IPv6 group's master connects from one
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        for dev, mtu, addr in (("s0", 1500, "10.0.9.1/24"), ("s9", 9000, "10.0.8.1/24"),
                               ("s6", 1280, None)):
            peer = "p" + dev[1:]
            run("ip", "-n", ns, "link", "add", dev, "mtu", str(mtu), "type", "veth", "peer",
                "name", peer, "mtu", str(mtu))
            run("ip", "-n", ns, "link", "set", "dev", peer, "up")
            run("ip", "-n", ns, "link", "set", "dev", dev, "up")
            if addr:
                run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        yield ns
    finally:
        run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def sync_pair():
    """(ns_a, ns_b): two namespaces joined by veth sy0 (a, 10.203.0.1) -- sy0 (b, .2)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    a, b = _name("a"), _name("b")
    made = []
    try:
        for ns in (a, b):
            run("ip", "netns", "add", ns)
            made.append(ns)
            run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
            run("ip", "netns", "exec", ns, "sysctl", "-qw",
                "net.ipv6.conf.default.accept_dad=0")
        run("ip", "-n", a, "link", "add", "sy0", "type", "veth", "peer", "name", "sy0",
            "netns", b)
        for ns, ip in ((a, "10.203.0.1/24"), (b, "10.203.0.2/24")):
            run("ip", "-n", ns, "addr", "add", ip, "dev", "sy0")
            run("ip", "-n", ns, "link", "set", "dev", "sy0", "up")
        # a fresh veth drops the first frames while its carrier comes up: wait until the
        # link carries (bounded), so a test's first datagram is not lost to it
        _warm(a, b)
        yield a, b
    finally:
        for ns in made:
            run("ip", "netns", "del", ns, check=False)


def _warm(a: str, b: str) -> None:
    with in_ns(b):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("10.203.0.2", 9))
    with in_ns(a):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(40):
            tx.sendto(b"warm", ("10.203.0.2", 9))
            if select.select([rx], [], [], 0.1)[0]:
                return
    finally:
        rx.close()
        tx.close()


class NsDaemon:
    """A control socket with sync daemons over a real Director (the extension), served
    from a thread inside `ns`."""

    def __init__(self, ns: str, path: str, engine_kind: str = "core"):
        from fastlvs.control.director import Director
        Engine = engine_class(engine_kind)
        self.engine = Engine(capacity=4096, batch=64, local_ip=LOCAL_IP, local_mac=LOCAL_MAC)
        self.director = Director(self.engine, nexthop)
        self.sync = SyncDaemons(self.director,
                                sock_size=lambda: self.director.sysctls()["sync_sock_size"])
        self.server = ControlServer(self.director, path, sync=self.sync)
        self.path = path
        self.ns = ns
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        with in_ns(self.ns):
            while not self._stop.is_set():
                with self.lock:
                    self.server.poll_once(0.01)
                    self.sync.poll()

    def admin(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        rc = admin.main(["--socket", self.path, *argv], stdin=io.StringIO(""), stdout=out,
                        stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        with self.lock:
            self.sync.close()
        self.server.close()
