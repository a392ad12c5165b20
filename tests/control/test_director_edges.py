"""The director's edges (issue: nothing ends the daemon, nothing is half applied): what the
engine cannot forward is refused before the table changes, a reload that cannot resolve a
real server leaves the running state as it was, a full neighbour table is not an error, the
daemon-facing methods do what their docstrings say, and deep JSON is one error answer."""
from __future__ import annotations

import json

import pytest

from tests.control.control_harness import NEIGHBORS, nexthop
from fastlvs.control import ctl
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.model import ControlError, NoRoute
from fastlvs.control.rules import parse_rules, dump_rules
from fastlvs.control.factory import build_director
from fastlvs.control.server import ControlServer

core = pytest.importorskip("fastlvs.engine._core")
VIP = "203.0.113.10"
RS1, RS2 = "192.0.2.11", "192.0.2.12"


def director():
    return build_director(nexthop, capacity=4096, batch=64, local_ip="192.0.2.1",
                          local_mac="02:00:00:00:00:01")


@pytest.mark.parametrize("argv", [
    ["-A", "-t", "[::1]:80"],                      # ::/96: no v6 address for the engine
    ["-A", "-u", "[::10.0.0.1]:53", "-s", "rr"],
])
def test_admin_refuses_what_the_engine_cannot_forward_with_exit_255(daemon, argv):
    rc, out, err = daemon.admin(*argv)
    assert rc == 255 and out == "" and err.count("\n") == 1, (rc, err)
    assert "not supported" in err and "internal error" not in err
    assert daemon.ok("-Ln").splitlines()[3:] == []          # no phantom service listed
    assert daemon.admin("-Ln", "-t" if "-t" in argv else "-u", argv[2])[0] != 0


def test_a_real_server_of_the_other_family_is_refused_and_leaves_the_service_as_it_was(daemon):
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", f"{RS1}:80", "-m")
    before = daemon.ok("-Sn")
    rc, _, err = daemon.admin("-a", "-t", f"{VIP}:80", "-r", "[2001:db8::5]:80", "-i")
    assert rc == 255 and "not supported" in err, err
    assert daemon.ok("-Sn") == before


def test_load_is_all_or_nothing_when_a_real_server_does_not_resolve():
    d = director()
    d.load(parse_rules(f"-A -t {VIP}:80 -s wrr\n-a -t {VIP}:80 -r {RS1}:80 -g -w 2\n"
                       f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS2}:53 -g\n"))
    before = dump_rules(d.table)
    svcs_before = d.engine.stats()
    bad = parse_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -g -w 5\n"
                      f"-A -t {VIP}:443 -s rr\n-a -t {VIP}:443 -r 198.51.100.99:443 -g\n")
    with pytest.raises(NoRoute):
        d.load(bad)
    assert dump_rules(d.table) == before
    assert d.engine.stats() == svcs_before
    # the old services are still bound, with their schedulers: a SYN to :53 and :80 finds one
    for sid, svc in ((1, ("tcp", VIP, 80)), (2, ("udp", VIP, 53))):
        assert d._live[sid][0].key == d.table.get(svc).key
        assert d._live[sid][1].schedule is not None
    assert d.list().count("->") == 1 + 2       # the header's arrow, one dest per service


def test_load_refuses_an_unforwardable_service_before_changing_anything():
    d = director()
    d.load(parse_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -g\n"))
    before = dump_rules(d.table)
    with pytest.raises(ControlError, match="::1"):    # ::/96 is no v6 address for the engine
        d.load(parse_rules("-A -t [::1]:80 -s rr\n"))
    assert dump_rules(d.table) == before


class FullNeighbours:
    """An engine stand-in whose neighbour table is full, as the extension's raises."""

    def __init__(self):
        self.gateway = None
        self.learn = None

    def set_scheduler_callback(self, cb):
        pass

    def set_neighbor(self, ip, mac, ifindex):
        raise ValueError("neighbour table full")

    def set_gateway_mac(self, mac, ifindex):
        self.gateway = (mac, ifindex)

    def set_learn_ifindex(self, ifindex):
        self.learn = ifindex

    def run_timers(self, now_ns, budget):
        return (now_ns, budget)


def test_a_full_neighbour_table_is_not_an_error():
    d = Director(FullNeighbours(), nexthop)
    assert d.set_neighbor("198.51.100.7", b"\x02" * 6, 3) is False
    assert d.set_neighbor("2001:db8::7", b"\x02" * 6, 3) is False     # IPv6 alike
    with pytest.raises(ValueError):
        d.set_neighbor("not-an-ip", b"\x02" * 6, 3)


def test_daemon_facing_methods_reach_the_engine():
    fake = FullNeighbours()
    d = Director(fake, nexthop)
    d.set_gateway(b"\x02\x00\x00\x00\x00\xfe", 4)
    d.learn_clients(4)
    assert fake.gateway == (b"\x02\x00\x00\x00\x00\xfe", 4) and fake.learn == 4
    assert d.expire(123, 7) == (123, 7)
    with pytest.raises(RuntimeError, match="no ring loop"):
        d.poll([], stay_ms=1)
    real = director()
    assert real.set_neighbor("198.51.100.7", b"\x02" * 6, 3) is True


def test_steering_names_every_interface_and_nat_replies():
    hops = {RS1: (NEIGHBORS[RS1], 5), RS2: (NEIGHBORS[RS2], 6)}
    d = build_director(lambda ip: hops[ip], capacity=4096, batch=64)
    d.load(parse_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:8080 -m\n"
                       f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS2}:53 -g\n"))
    assert d.interfaces() == {5, 6}
    assert d.steering(2) == {
        2: {("service", "tcp", VIP, 80), ("service", "udp", VIP, 53)},
        5: {("rserver", "tcp", RS1, 8080)},
        6: set(),                        # DR: frames only leave there
    }


def test_refresh_uses_the_resolver_it_is_given_and_keeps_a_hop_it_cannot_resolve():
    d = director()
    d.load(parse_rules(f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -g\n"))
    asked = []

    def not_yet(ip):
        asked.append(ip)
        raise NoRoute(f"{ip}: no ARP/ND answer on x within 0 s")

    assert d.refresh_nexthops(not_yet) == 0
    assert asked == [RS1]
    assert d.interfaces() == {1}
    assert d.refresh_nexthops(lambda ip: (b"\x02\x00\x00\x00\x09\x09", 7)) == 1
    assert d.interfaces() == {7}


def test_deeply_nested_json_is_one_error_answer(tmp_path):
    d = director()
    with ControlServer(d, str(tmp_path / "s")) as srv:
        answer = srv.handle_request(b'{"op": ' + b"[" * 100000 + b"]" * 100000 + b"}\n")
        assert answer["ok"] is False and answer["code"] == ctl.EXIT_SYNTAX
        assert "nested too deeply" in answer["error"]
        assert srv.handle_request(json.dumps({"op": "ping"}).encode() + b"\n")["ok"]


@pytest.mark.parametrize("argv,stdin", [
    (["-A", "-t", "203.0.113.10:80", "-s", "\udcff"], ""),       # non-UTF-8 argv byte
    (["-A\udcff"], ""),
    (["-R"], "-A -t 203.0.113.10:80 -s r\0r\n"),                 # a NUL byte in rules
])
def test_bad_bytes_from_admin_are_one_line_and_the_daemon_serves_on(daemon, argv, stdin):
    rc, out, err = daemon.admin(*argv, stdin=stdin)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert daemon.ok("-Ln").startswith("IP Virtual Server")
