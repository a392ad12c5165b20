"""VIPs that come and go (a VRRP backup's), on each engine: while a VIP is absent its
services stay listed and its conns stay in the engine, but steering leaves it out and the
engine hands every frame to it to the kernel; back again, known conns carry on where they
were and new flows are scheduled. Also the daemon's side: which VIPs it finds on the host
and the one log line per VIP that comes or goes."""
from __future__ import annotations

import json
import logging

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC

VIP = "203.0.113.10"
OTHER = "203.0.113.20"
CLIENT = "198.51.100.7"
S = 1_000_000_000


def _frame(sport, flags, vip=VIP, dport=80):
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=CLIENT, dst=vip)
                 / TCP(sport=sport, dport=dport, flags=flags))


def _send(daemon, frames, t):
    with daemon.lock:
        before = daemon.engine.stats()["no_service"]
        out = daemon.engine.process(frames, t * S)
        return out, daemon.engine.stats()["no_service"] - before


def _service_keys(daemon):
    with daemon.lock:
        return {k for keys in daemon.director.steering(7).values() for k in keys
                if k[0] == "service"}


def _vips(daemon):
    return json.loads(daemon.ok("--counters"))["vips"]


def test_an_absent_vip_keeps_its_service_and_conns_and_serves_nothing(daemon):
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.12:80", "-g")
    daemon.ok("-A", "-t", f"{OTHER}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{OTHER}:80", "-r", "192.0.2.13:80", "-g")
    out, passed = _send(daemon, [_frame(40000, "S")], 1)
    assert len(out) == 1 and passed == 0
    first = Ether(out[0][2]).dst
    assert _vips(daemon) == {"served": [VIP, OTHER], "absent": []}

    with daemon.lock:
        assert daemon.director.set_vip_present(VIP, False) is True
        assert daemon.director.set_vip_present(VIP, False) is False     # no change
    assert _service_keys(daemon) == {("service", "tcp", OTHER, 80)}
    assert _vips(daemon) == {"served": [OTHER], "absent": [VIP]}
    # the established conn's next segment and a new flow: both the kernel's now
    out, passed = _send(daemon, [_frame(40000, "A"), _frame(40001, "S")], 2)
    assert out == [] and passed == 2
    # the other VIP is untouched, and the service stays in the table
    out, _ = _send(daemon, [_frame(40002, "S", vip=OTHER)], 2)
    assert [Ether(f).dst for _, _, f in out] == ["02:00:00:00:01:0d"]      # 192.0.2.13
    listing = daemon.ok("-Ln")
    assert f"TCP  {VIP}:80 rr" in listing and "192.0.2.11:80" in listing
    assert f"{VIP}:80" in daemon.ok("-Lnc")       # its conn stayed in the engine

    with daemon.lock:
        assert daemon.director.set_vip_present(VIP, True) is True
    assert ("service", "tcp", VIP, 80) in _service_keys(daemon)
    out, passed = _send(daemon, [_frame(40000, "A")], 3)
    assert passed == 0 and [Ether(f).dst for _, _, f in out] == [first]
    out, passed = _send(daemon, [_frame(40003, "S")], 3)
    assert len(out) == 1 and passed == 0


def test_a_service_added_on_an_absent_vip_starts_absent(daemon):
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g")
    with daemon.lock:
        daemon.director.set_vip_present(VIP, False)
    daemon.ok("-A", "-t", f"{VIP}:443", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:443", "-r", "192.0.2.11:443", "-g")
    assert _service_keys(daemon) == set()
    out, passed = _send(daemon, [_frame(41000, "S", dport=443)], 1)
    assert out == [] and passed == 1
    with daemon.lock:
        daemon.director.set_vip_present(VIP, True)
    out, passed = _send(daemon, [_frame(41001, "S", dport=443)], 2)
    assert len(out) == 1 and passed == 0


def test_a_service_deleted_while_absent_comes_back_served_on_a_present_vip(daemon):
    """The engine keeps a VIP's entry after its service goes: re-adding the service once
    the VIP is back must not find it still switched off."""
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g")
    with daemon.lock:
        daemon.director.set_vip_present(VIP, False)
    daemon.ok("-D", "-t", f"{VIP}:80")
    with daemon.lock:
        daemon.director.set_vip_present(VIP, True)
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g")
    out, passed = _send(daemon, [_frame(42000, "S")], 1)
    assert len(out) == 1 and passed == 0


class _FakeNetlink:
    """is_local as the kernel would answer it: the addresses and local routes of `here`."""

    def __init__(self):
        self.here: set[str] = set()
        self.asked: list[str] = []

    def is_local(self, ip):
        self.asked.append(ip)
        return ip in self.here


def test_the_daemon_follows_vips_with_one_line_each(daemon, caplog):
    from fastlvs.daemon import Daemon
    from fastlvs.settings import Options

    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-A", "-u", f"{VIP}:53", "-s", "rr")
    daemon.ok("-A", "-t", f"{OTHER}:80", "-s", "rr")
    d = Daemon(Options())
    d.director, d.nl = daemon.director, _FakeNetlink()
    d.nl.here = {OTHER}
    caplog.set_level(logging.INFO, logger="fastlvs")
    with daemon.lock:
        assert d._follow_vips() is True
    assert [r.getMessage() for r in caplog.records] == [
        f"VIP {VIP} not on this host: waiting for it (backup)"]
    assert sorted(d.nl.asked) == [VIP, OTHER]          # one look per address, not per service
    assert _vips(daemon) == {"served": [OTHER], "absent": [VIP]}
    caplog.clear()
    d.nl.asked.clear()
    with daemon.lock:
        assert d._follow_vips() is False            # nothing new: the kernel is not asked
    assert d.nl.asked == [] and caplog.records == []

    d.nl.here = {VIP}
    with daemon.lock:
        assert d._follow_vips(reread=True) is True
    assert [r.getMessage() for r in caplog.records] == [
        f"VIP {VIP} is on this host: serving it",
        f"VIP {OTHER} left this host: the kernel gets its traffic; its services and "
        "connections are kept"]
    assert _vips(daemon) == {"served": [VIP], "absent": [OTHER]}
    caplog.clear()
    with daemon.lock:
        assert d._follow_vips(reread=True) is False
    assert caplog.records == []
