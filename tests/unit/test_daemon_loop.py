"""The daemon's loop without a network: one error boundary (an unexpected exception is
logged with its traceback and the loop goes on), next-hop refreshes that never wait for
ARP, and systemd's notify protocol on a fake $NOTIFY_SOCKET."""
import logging
import socket

import pytest

from fastlvs.daemon import RESOLVE_TIMEOUT, Daemon, Options
from fastlvs.system import sdnotify


class FakeDirector:
    def __init__(self, daemon):
        self.daemon = daemon
        self.table = []
        self.polls = 0
        self.refreshes = []
        self.neighbours = []
        self.gateways = []

    def poll(self, ports, stay_ms=0):
        self.polls += 1
        if self.polls >= 3:
            self.daemon._stop = True
        return 0

    def tick(self, now):
        return False

    def expire(self, now_ns, budget=None):
        return 0

    def set_neighbor(self, ip, mac, ifindex):
        self.neighbours.append((ip, mac, ifindex))
        return True

    def set_gateway(self, mac, ifindex=0):
        self.gateways.append((mac, ifindex))

    def refresh_nexthops(self, nexthop=None):
        # as the real director: the resolver given, else the one it was built with
        resolve = nexthop or self.daemon._nexthop
        try:
            resolve("192.0.2.11")
        except Exception:
            pass
        return 0


class FakeNetlink:
    def __init__(self):
        self.timeouts = []
        self.gateway = "192.0.2.11"

    def route_get(self, ip):
        from fastlvs.system.netlink import Route
        return Route(dst=ip, oif=3, gateway=self.gateway, prefsrc=None, type=1)

    def nexthop(self, ip, timeout=3.0):
        from fastlvs.system.netlink import NetlinkError
        self.timeouts.append(timeout)
        raise NetlinkError(f"{ip}: no ARP/ND answer on d0 within {timeout:g} s")


class FakeNeigh:
    def __init__(self, news):
        self.news = news

    def changes(self):
        news, self.news = self.news, []
        return news


class Boom:
    streaming = waiting = False

    def __init__(self):
        self.calls = 0

    def handle_ready(self):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a defect somewhere")
        return 0


class NoPorts:
    def list(self):
        return []

    def follow(self):
        pass


class NoAddressNews:
    def changed(self):
        return False


def daemon_with_fakes(news=()):
    d = Daemon(Options(mode="dr", interface="d0", vip="203.0.113.10:80",
                       rs=["192.0.2.11:80"]))
    d.director = FakeDirector(d)
    d.nl = FakeNetlink()
    d.neigh = FakeNeigh(list(news))
    d.control = Boom()
    d.ports = NoPorts()
    d.vip_events = NoAddressNews()
    d._hop_ips = {"192.0.2.11"}
    return d


def test_an_unexpected_error_is_logged_with_traceback_and_the_loop_goes_on(caplog):
    d = daemon_with_fakes()
    with caplog.at_level(logging.ERROR, logger="fastlvs"):
        d.run()
    assert d.director.polls == 3                 # passes after the failing one ran
    (rec,) = [r for r in caplog.records if r.exc_info]
    assert "a defect somewhere" in str(rec.exc_info[1])


def test_a_neighbour_event_refreshes_next_hops_without_waiting():
    d = daemon_with_fakes([("192.0.2.11", b"\x02\x00\x00\x00\x00\x11", 3)])
    d.nl.gateway = "192.0.2.254"                 # the route moved to another gateway
    d._neighbour_changes()
    assert d.nl.timeouts == [0]
    assert RESOLVE_TIMEOUT > 0
    # the new gateway's answer (a neighbour event) brings the refresh back
    d.neigh.news = [("192.0.2.254", b"\x02\x00\x00\x00\x00\xfe", 3)]
    d._neighbour_changes()
    assert d.nl.timeouts == [0, 0]


def test_a_new_gateway_mac_is_followed_and_gone_neighbours_are_forgotten():
    gw_mac = b"\x02\x00\x00\x00\x00\xfe"
    d = daemon_with_fakes([("198.51.100.1", gw_mac, 3), ("192.0.2.50", None, 3),
                           ("192.0.2.51", b"\x02\x00\x00\x00\x00\x51", 3)])
    d._gateway = "198.51.100.1"
    d._neighbour_changes()
    # the router was replaced: NAT replies to off-link clients follow its new MAC
    assert d.director.gateways == [(gw_mac, 3)]
    # a client whose entry went away is forgotten, not kept at its old MAC
    assert ("192.0.2.50", None, 3) in d.director.neighbours
    assert ("192.0.2.51", b"\x02\x00\x00\x00\x00\x51", 3) in d.director.neighbours


def test_client_subnets_leave_out_vips_held_as_host_addresses():
    from fastlvs.system.netlink import Interface
    cif = Interface("d0", 3, b"\x02" * 6, 1500,
                    ("192.0.2.2/24", "203.0.113.10/32", "198.51.100.2/25"), True)
    assert Daemon._client_subnets(cif) == ["192.0.2.2/24", "198.51.100.2/25"]


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield s
    finally:
        s.close()


def test_notify_sends_one_datagram(notify_socket):
    assert sdnotify.notify("READY=1\nSTATUS=x")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=x"


def test_without_a_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_the_watchdog_is_fed_at_half_the_interval(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    w = sdnotify.Watchdog()
    assert w.interval == 1.0
    assert w.feed(10.0) and not w.feed(10.5) and w.feed(11.0)
    assert [notify_socket.recv(100) for _ in range(2)] == [b"WATCHDOG=1"] * 2
    monkeypatch.setenv("WATCHDOG_PID", "1")           # for another process: not ours
    assert sdnotify.Watchdog().interval is None


def test_the_loop_feeds_the_watchdog(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1")
    d = daemon_with_fakes()
    d._watchdog = sdnotify.Watchdog()
    d.run()
    got = []
    notify_socket.settimeout(0.5)
    try:
        while True:
            got.append(notify_socket.recv(100))
    except socket.timeout:
        pass
    assert got.count(b"WATCHDOG=1") == 3
