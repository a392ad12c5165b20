"""The scheduler library's shared types and registry: input checks, list-change hooks, and
the guarantee that it imports without the compiled engine."""
import subprocess
import sys
import textwrap

import pytest

from fastlvs.schedulers import Flow, RealServer, create, get, names
from fastlvs.schedulers.base import Scheduler

ALL = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"]


def test_names_are_the_fourteen_ipvs_schedulers():
    assert sorted(names()) == sorted(ALL)


def test_unknown_scheduler_names_the_valid_ones():
    with pytest.raises(ValueError) as e:
        create("rrr", [])
    assert "'rrr'" in str(e.value) and "wlc" in str(e.value) and "mh" in str(e.value)


@pytest.mark.parametrize("name", ALL)
def test_every_scheduler_returns_none_on_an_empty_list(name):
    assert create(name, []).schedule(Flow("198.51.100.7", 1, "203.0.113.10", 80)) is None


@pytest.mark.parametrize("name", ALL)
def test_every_scheduler_returns_none_when_all_servers_are_quiesced(name):
    servers = [RealServer("192.0.2.1", 80, weight=0), RealServer("192.0.2.2", 80, weight=0)]
    assert create(name, servers).schedule(Flow("198.51.100.7", 1, "203.0.113.10", 80)) is None


@pytest.mark.parametrize("name", ALL)
def test_every_scheduler_returns_one_of_its_servers(name):
    servers = [RealServer(f"192.0.2.{i}", 80, weight=i) for i in range(1, 5)]
    sched = create(name, servers)
    assert sched.name == name and get(name) is type(sched)
    for port in range(1000, 1100):
        assert sched.schedule(Flow("198.51.100.7", port, "203.0.113.10", 80)) in servers


@pytest.mark.parametrize("name", ALL)
def test_every_scheduler_serves_ipv6(name):
    servers = [RealServer("2001:db8::1", 80, weight=1), RealServer("2001:db8::2", 80, weight=2)]
    sched = create(name, servers)
    assert sched.schedule(Flow("2001:db8:1::7", 40000, "2001:db8:2::10", 80, "udp")) in servers


@pytest.mark.parametrize("name", ["rr", "wlc", "lblc"])
def test_flags_of_another_scheduler_are_refused(name):
    with pytest.raises(ValueError, match="unknown flag 'sh-port'"):
        create(name, [], flags={"sh-port"})


@pytest.mark.parametrize("kwargs,field", [
    (dict(addr="192.0.2.300", port=80), "addr"),
    (dict(addr="not-an-ip", port=80), "addr"),
    (dict(addr="192.0.2.1", port=65536), "port"),
    (dict(addr="192.0.2.1", port=-1), "port"),
    (dict(addr="192.0.2.1", port=80, weight=-1), "weight"),
    (dict(addr="192.0.2.1", port=80, weight=1.5), "weight"),
    (dict(addr="192.0.2.1", port=80, u_threshold=-3), "u_threshold"),
    (dict(addr="192.0.2.1", port=80, l_threshold="x"), "l_threshold"),
])
def test_bad_real_server_fields_are_named(kwargs, field):
    with pytest.raises(ValueError) as e:
        RealServer(**kwargs)
    assert str(e.value).startswith(field + ":")


@pytest.mark.parametrize("args,field", [
    (("198.51.100.7", 70000, "203.0.113.10", 80), "sport"),
    (("198.51.100.7", 1, "203.0.113.10", -80), "dport"),
    (("198.51.100.x", 1, "203.0.113.10", 80), "saddr"),
    (("198.51.100.7", 1, "2001:db8::1", 80), "saddr/daddr"),
    (("198.51.100.7", 1, "203.0.113.10", 80, "icmp"), "protocol"),
])
def test_bad_flow_fields_are_named(args, field):
    with pytest.raises(ValueError) as e:
        Flow(*args)
    assert str(e.value).startswith(field + ":")


def test_ipv6_fold_is_the_xor_of_the_four_words():
    """sh/dh/mh fold an IPv6 address as ip6[0]^ip6[1]^ip6[2]^ip6[3], then ntohl()."""
    f = Flow("2001:db8:0:1::5", 1, "2001:db8::1", 80)
    assert f.saddr_fold == 0x20010DB8 ^ 0x00000001 ^ 0x00000000 ^ 0x00000005
    g = Flow.from_ints(6, f.saddr_int, 1, f.daddr_int, 80, "tcp")
    assert (g.saddr_fold, g.daddr_fold, g.saddr) == (f.saddr_fold, f.daddr_fold, "2001:db8:0:1::5")


class _Recorder(Scheduler):
    name = "recorder"

    def init_service(self):
        self.calls = [("init", [s.port for s in self.servers])]

    def add_dest(self, dest):
        self.calls.append(("add", dest.port, [s.port for s in self.servers]))

    def del_dest(self, dest):
        self.calls.append(("del", dest.port, [s.port for s in self.servers]))

    def upd_dest(self, dest):
        self.calls.append(("upd", dest.port if dest else None))


def test_update_replays_the_kernels_hooks_in_order():
    """ip_vs_ctl.c: a new dest is linked at the head, then add_dest runs; a deleted dest is
    unlinked, then del_dest runs; an edit calls upd_dest for the edited dest."""
    a, b, c, d = (RealServer("192.0.2.1", p) for p in (1, 2, 3, 4))
    s = _Recorder([b, a])
    s.update([d, c, b, a])   # c added first, then d, each at the head
    s.update([d, c, a])      # b removed
    b_is_gone = s.calls[-1]
    c.weight = 5
    s.update([d, c, a])      # c edited
    s.update([d, c, a])      # an edit with unchanged values
    assert s.calls == [
        ("init", [2, 1]),
        ("add", 3, [3, 2, 1]),
        ("add", 4, [4, 3, 2, 1]),
        ("del", 2, [4, 3, 1]),
        ("upd", 3),
        ("upd", None),
    ]
    assert b_is_gone == ("del", 2, [4, 3, 1])


def test_last_weight_keeps_the_last_nonzero_weight():
    """ip_vs_ctl.c keeps dest->last_weight at the last weight > 0 (mh builds from it)."""
    a = RealServer("192.0.2.1", 80, weight=3)
    s = _Recorder([a])
    a.weight = 0
    s.update([a])
    assert a.last_weight == 3
    a.weight = 7
    s.update([a])
    assert a.last_weight == 7


def test_the_scheduler_library_imports_without_the_engine():
    """`import fastlvs.schedulers` must work where _core was never built, and import no part
    of the fast path."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fastlvs.engine._core":
                    raise ImportError("blocked: no compiled engine here")
        sys.meta_path.insert(0, Block())
        import fastlvs.schedulers as s
        for n in s.names():
            s.get(n)
        assert "fastlvs.engine._core" not in sys.modules, sorted(m for m in sys.modules if "fastlvs" in m)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
