"""fastlvs.system.netlink inside namespaces the fixture builds: interfaces, `ip route get`,
locality and the VIP rule, neighbour resolution of a live peer and of an absent one, the
next hop the Director uses, and the neighbour monitor."""
from __future__ import annotations

import time

import os

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
pytest.importorskip("pyroute2")

from tests.netns_netlink.netns_pair import ip  # noqa: E402
from fastlvs.control.model import NoRoute  # noqa: E402
from fastlvs.system.netlink import (AddressMonitor, NeighbourMonitor, Netlink,  # noqa: E402
                                    NetlinkError, dr_problem, vip_local, vip_problem)


def test_interface(pair):
    with Netlink(pair.a) as nl:
        i = nl.interface(pair.a_if)
        assert i.name == pair.a_if and i.index == pair.index(pair.a, pair.a_if)
        assert i.mac == pair.mac(pair.a, pair.a_if)
        assert i.mtu == 1500 and i.up
        assert i.addresses == (f"{pair.a_ip}/24",) and i.ips == (pair.a_ip,)
        assert nl.interface_by_index(i.index) == i
        with pytest.raises(NetlinkError, match="^nope0: no such interface$"):
            nl.interface("nope0")
        with pytest.raises(NetlinkError, match="^ifindex 9999: no such interface"):
            nl.interface_by_index(9999)


def test_route_get(pair):
    with Netlink(pair.a) as nl:
        idx = pair.index(pair.a, pair.a_if)
        r = nl.route_get(pair.b_ip)
        assert (r.oif, r.gateway, r.prefsrc, r.local) == (idx, None, pair.a_ip, False)
        assert r.nexthop == pair.b_ip
        r = nl.route_get("198.51.100.7")
        assert (r.oif, r.gateway, r.nexthop) == (idx, pair.b_ip, pair.b_ip)
        assert nl.route_get(pair.a_ip).local
        with pytest.raises(NetlinkError, match=r"^203\.0\.113\.1: Network is unreachable$"):
            nl.route_get("203.0.113.1")
        with pytest.raises(NetlinkError, match="not an IP address"):
            nl.route_get("example.org")


def test_locality_and_the_vip_rule(pair):
    ip("-n", pair.a, "route", "add", "local", "192.0.2.200/32", "dev", "lo")
    with Netlink(pair.a) as nl:
        assert nl.is_local(pair.a_ip) and nl.is_local("192.0.2.200")
        assert not nl.is_local(pair.b_ip) and not nl.is_local("203.0.113.1")
        assert vip_local(nl, pair.a_ip) and vip_local(nl, "192.0.2.200")
        # not here now is no problem (a backup waits for its VIP); never a VIP is
        assert not vip_local(nl, "203.0.113.10") and vip_problem("203.0.113.10") is None
        assert vip_problem("example.org") == "VIP 'example.org': not an IP address"
        assert vip_problem("224.0.0.18") == (
            "VIP 224.0.0.18 is a multicast address: a virtual service needs a unicast address")
        assert vip_problem("0.0.0.0").startswith("VIP 0.0.0.0 is the unspecified address")
        assert vip_problem("255.255.255.255").startswith("VIP 255.255.255.255 is the broadcast")
        assert dr_problem(nl, pair.b_ip) is None
        assert dr_problem(nl, "198.51.100.7") == (
            f"198.51.100.7 is reached through gateway {pair.b_ip}: direct routing needs the "
            f"real server on a network attached to this host")
        assert dr_problem(nl, "203.0.113.1") == "203.0.113.1: Network is unreachable"


def test_neighbour_resolution_of_the_peer(pair):
    peer_mac = pair.mac(pair.b, pair.b_if)
    with Netlink(pair.a) as nl:
        idx = pair.index(pair.a, pair.a_if)
        assert nl.neighbour(pair.b_ip, idx) is None          # reading never resolves
        t = time.monotonic()
        assert nl.resolve(pair.b_ip, idx, timeout=3) == peer_mac
        assert time.monotonic() - t < 1.0
        assert nl.neighbour(pair.b_ip, idx) == peer_mac
        assert "REACHABLE" in ip("-n", pair.a, "neigh", "show", pair.b_ip).stdout


def test_resolution_of_an_absent_neighbour_is_bounded(pair):
    with Netlink(pair.a) as nl:
        idx = pair.index(pair.a, pair.a_if)
        absent = pair.a_ip.rsplit(".", 1)[0] + ".99"
        t = time.monotonic()
        with pytest.raises(NetlinkError) as ei:
            nl.resolve(absent, idx, timeout=0.5)
        assert time.monotonic() - t < 1.5
        assert str(ei.value) == f"{absent}: no ARP/ND answer on {pair.a_if} within 0.5 s"


def test_nexthop_is_what_the_director_needs(pair):
    peer_mac = pair.mac(pair.b, pair.b_if)
    idx = pair.index(pair.a, pair.a_if)
    with Netlink(pair.a) as nl:
        assert nl.nexthop(pair.b_ip) == (peer_mac, idx)
        assert nl.nexthop("198.51.100.7") == (peer_mac, idx)   # via the gateway
        with pytest.raises(NetlinkError, match=f"^{pair.a_ip} is an address of this host$"):
            nl.nexthop(pair.a_ip)
        with pytest.raises(NetlinkError, match="Network is unreachable"):
            nl.nexthop("203.0.113.1")


def test_director_over_netlink_next_hops(pair):
    """The Director over Netlink.nexthop (NetlinkError read as NoRoute, as the daemon does):
    a dest it cannot reach is refused whole."""
    core = pytest.importorskip("fastlvs.engine._core")
    from fastlvs.control.director import Director
    from fastlvs.control.ipvsadm import parse_command

    with Netlink(pair.a) as nl:
        def nexthop(ip):
            try:
                return nl.nexthop(ip)
            except NetlinkError as e:
                raise NoRoute(str(e)) from None

        d = Director(core.Engine(capacity=64), nexthop)
        d.execute(parse_command(["-A", "-t", f"{pair.a_ip}:80"]))
        d.execute(parse_command(["-a", "-t", f"{pair.a_ip}:80", "-r", pair.b_ip]))
        with pytest.raises(NoRoute):
            d.execute(parse_command(["-a", "-t", f"{pair.a_ip}:80", "-r", "203.0.113.1"]))
        assert [x.addr for x in d.table.get(("tcp", pair.a_ip, 80)).dests] == [pair.b_ip]


def test_neighbour_monitor(pair):
    peer_mac = pair.mac(pair.b, pair.b_if)
    idx = pair.index(pair.a, pair.a_if)
    with NeighbourMonitor(pair.a) as mon, Netlink(pair.a) as nl:
        assert mon.changes() == []
        nl.resolve(pair.b_ip, idx)
        seen = []
        deadline = time.monotonic() + 3
        while (pair.b_ip, peer_mac, idx) not in seen and time.monotonic() < deadline:
            seen += mon.changes()
            time.sleep(0.02)
        assert (pair.b_ip, peer_mac, idx) in seen
        ip("-n", pair.a, "neigh", "del", pair.b_ip, "dev", pair.a_if)
        seen = []
        deadline = time.monotonic() + 3
        while (pair.b_ip, None, idx) not in seen and time.monotonic() < deadline:
            seen += mon.changes()
            time.sleep(0.02)
        assert (pair.b_ip, None, idx) in seen


def _news_within(mon, seconds=3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mon.changed():
            return True
        time.sleep(0.02)
    return False


def test_address_monitor_sees_local_routes_only_when_asked(pair):
    """routes=True: a local route added or removed is news (a VIP owned that way comes or
    goes); a unicast route is not. Without it, only addresses are."""
    with AddressMonitor(pair.a, routes=True) as mon, AddressMonitor(pair.a) as plain:
        assert not mon.changed() and not plain.changed()
        ip("-n", pair.a, "route", "add", "local", "192.0.2.208/30", "dev", "lo")
        assert _news_within(mon)
        ip("-n", pair.a, "route", "del", "local", "192.0.2.208/30", "dev", "lo", "table",
           "local")
        assert _news_within(mon)
        ip("-n", pair.a, "route", "add", "198.51.100.128/25", "via", pair.b_ip)
        assert not _news_within(mon, 0.5)
        assert not plain.changed()
        ip("-n", pair.a, "addr", "add", "192.0.2.201/32", "dev", pair.a_if)
        assert _news_within(mon) and _news_within(plain)
        ip("-n", pair.a, "addr", "del", "192.0.2.201/32", "dev", pair.a_if)
        assert _news_within(mon) and _news_within(plain)


def test_monitors_survive_an_overrun(pair):
    """A flood of news past a tiny receive buffer: the address monitor says "changed" (re-read
    everything), the neighbour monitor raises NetlinkError once; both then go on reporting
    (pyroute2 keeps ENOBUFS on its socket, so the monitor must open a new one)."""
    import socket as _socket
    import subprocess

    with AddressMonitor(pair.a, routes=True) as mon, NeighbourMonitor(pair.a) as neigh:
        for m in (mon, neigh):
            m._ipr.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1024)
        batch = "".join(f"addr add 192.0.2.{i}/32 dev lo\n"
                        f"neigh add 10.99.0.{i} lladdr 02:00:00:00:00:{i:02x} dev {pair.a_if} "
                        "nud permanent\n" for i in range(1, 200))
        subprocess.run(["ip", "-n", pair.a, "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True, timeout=30)
        assert mon.changed() is True
        with pytest.raises(NetlinkError, match="overrun"):
            neigh.changes()
        assert not mon.changed() and neigh.changes() == []
        ip("-n", pair.a, "addr", "add", "192.0.2.250/32", "dev", "lo")
        assert _news_within(mon)
        ip("-n", pair.a, "neigh", "add", "10.99.1.1", "lladdr", "02:00:00:00:01:01", "dev",
           pair.a_if, "nud", "permanent")
        seen = []
        deadline = time.monotonic() + 3
        while not seen and time.monotonic() < deadline:
            seen += neigh.changes()
            time.sleep(0.02)
        assert [s[0] for s in seen] == ["10.99.1.1"]
