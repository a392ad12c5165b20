"""The load generator across two namespaces (root only): the client's long-lived connections
to the echo server (`python -m fastlvs.lab.load --serve`, SIGKILLed halfway) are all counted
lost, with the reason the kernel gave (its sockets close: FIN, or RST for what is sent
after), and new connections fail from the kill on (refused), which the outage window shows.
Unique namespace names, deleted in a finally."""
from __future__ import annotations

import itertools
import os
import time

import pytest

from fastlvs.lab import load
from tests.netns.netns_support import run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)")
_seq = itertools.count()


@pytest.fixture
def pair():
    tag = f"ld{os.getpid() % 100000}x{next(_seq)}"
    cns, sns = f"{tag}c", f"{tag}s"
    made = []
    try:
        for ns in (cns, sns):
            run("ip", "netns", "add", ns)
            made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", cns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", sns)
        for ns, addr in ((cns, "10.203.0.1/24"), (sns, "10.203.0.2/24")):
            run("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        yield cns, sns
    finally:
        for ns in reversed(made):
            run("ip", "netns", "del", ns, check=False)


def test_a_killed_server_loses_every_long_lived_connection(pair):
    cns, sns = pair
    server = load.start_server(sns)
    client = None
    try:
        client = load.LoadRun(cns, "10.203.0.2", long=20, interval=0.05, rate=20,
                              duration=3.0, echo_timeout=2.0, attempt_timeout=0.5).start()
        assert client.opened == 20
        time.sleep(1.0)
        killed_at = time.time()
        server.kill()
        server.wait(5)
        s = client.wait()
    finally:
        if client is not None:
            client.kill()
        if server.poll() is None:
            server.kill()
            server.wait(5)
    lg = s["long"]
    assert lg["opened"] == 20 and lg["lost"] == 20, lg
    assert set(r for r, n in lg["lost_by_reason"].items() if n) <= {"closed", "reset"}, lg
    assert lg["echoes"] >= 20 * 10          # a second of echoes before the kill
    new = s["new"]
    assert new["ok"] >= 10 and new["failed"] >= 10, new
    # from the kill on: refused; an attempt in flight at the kill may see its reset or close
    others = {r: n for r, n in new["failed_by_reason"].items() if n and r != "refused"}
    assert set(others) <= {"reset", "closed"} and sum(others.values()) <= 2, new
    assert new["failed_by_reason"]["refused"] >= 10, new
    # the first failed attempt started at the kill at the earliest (or was in flight then)
    first_fail = s["start_unix"] + s["outage"]["first_failure_ms"] / 1000
    assert first_fail >= killed_at - 0.5 - 0.05
    assert s["outage"]["longest_gap_ms"] >= s["outage"]["window_ms"]
