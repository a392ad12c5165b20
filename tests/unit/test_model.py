"""The control-plane model: IPVS's operations on services and dests with the kernel's edge
rules, ipvsadm's error wording, and the scheduler library reading the same objects."""
import errno

import pytest

from fastlvs.control.model import (DEFAULT_PERSISTENT_TIMEOUT, RATE_FIELDS, STAT_FIELDS, ControlError,
                           Dest, FwdMethod, Proto, ServiceKey, ServiceTable)
from fastlvs.schedulers import Flow, RealServer, create

VIP = ("tcp", "10.0.0.1", 80)


@pytest.fixture
def table():
    t = ServiceTable()
    t.add_service(*VIP, sched="rr")
    return t


def refused(message):
    return pytest.raises(ControlError, match="^" + message.replace("(", r"\(")
                         .replace(")", r"\)"))


# -- types ---------------------------------------------------------------------------------
def test_dest_is_a_slotted_realserver():
    d = Dest("192.0.2.1", 80, "nat", weight=3)
    assert isinstance(d, RealServer)
    assert not hasattr(d, "__dict__")
    assert d.fwd is FwdMethod.NAT and d.weight == 3
    assert all(getattr(d, f) == 0 for f in STAT_FIELDS + RATE_FIELDS)
    assert d.activeconns == d.inactconns == d.persistconns == 0


def test_enums_carry_ipvsadm_spellings():
    assert [(m.value, m.option, m.label) for m in FwdMethod] == [
        ("dr", "-g", "Route"), ("nat", "-m", "Masq"), ("tun", "-i", "Tunnel")]
    assert FwdMethod.of("Masq") is FwdMethod.NAT and FwdMethod.of("-i") is FwdMethod.TUN
    assert [(p.number, p.option, p.label) for p in Proto] == [
        (6, "-t", "TCP"), (17, "-u", "UDP"), (132, "--sctp-service", "SCTP"), (0, "-f", "FWM")]
    assert Proto.of("TCP") is Proto.TCP and Proto.of(17) is Proto.UDP
    with refused("Protocol not available"):
        Proto.of("icmp")


# -- services ------------------------------------------------------------------------------
def test_add_service_defaults_and_normalized_key():
    t = ServiceTable()
    s = t.add_service("TCP", "2001:DB8::0001", 443)
    assert s.key == ServiceKey(Proto.TCP, "2001:db8::1", 443)
    assert (s.sched_name, s.timeout, s.persistent, s.netmask, s.flags, s.ops) == (
        "wlc", 0, False, 128, frozenset(), False)
    assert t.add_service("udp", "10.0.0.1", 53).netmask == "255.255.255.255"
    assert t.get(("tcp", "2001:db8::1", 443)) is s and ("tcp", "2001:db8::1", 443) in t
    assert len(t) == 2 and list(t)[0] is s


def test_duplicate_service_is_refused(table):
    with refused("Service already exists") as e:
        table.add_service(*VIP)
    assert e.value.errno == errno.EEXIST and e.value.message == "Service already exists"
    assert str(e.value) == "Service already exists (-t 10.0.0.1:80)"


def test_unknown_scheduler_is_refused():
    with refused("Scheduler or persistence engine not found") as e:
        ServiceTable().add_service(*VIP, sched="foo")
    assert e.value.errno == errno.ENOENT and "unknown scheduler 'foo'" in e.value.detail


def test_zero_port_needs_persistence():
    t = ServiceTable()
    with refused("Zero port specified for non-persistent service"):
        t.add_service("tcp", "10.0.0.1", 0)
    assert t.add_service("tcp", "10.0.0.1", 0, timeout=DEFAULT_PERSISTENT_TIMEOUT).persistent


def test_one_packet_scheduling_is_udp_only():
    t = ServiceTable()
    with refused("One-Packet Scheduling is only for UDP virtual services"):
        t.add_service("tcp", "10.0.0.1", 80, ops=True)
    assert t.add_service("udp", "10.0.0.1", 53, ops=True).ops


@pytest.mark.parametrize("kwargs,message", [
    (dict(timeout=-1), "invalid timeout value `-1' specified"),
    (dict(timeout=86400 * 31 + 1), "invalid timeout value `2678401' specified"),
    (dict(netmask="255.255.0"), "illegal virtual server persistent mask specified"),
    (dict(sched="sh", flags=["sh-port", "bogus"]), "invalid scheduler flag `bogus'"),
    (dict(flags=["sh-port"]), "incompatible scheduler flag `sh-port'"),
    (dict(sched="rr", flags=["flag-4"]), "invalid scheduler flag `flag-4'"),
    (dict(sched="sh", flags=["mh-port"]), "incompatible scheduler flag `mh-port'"),
])
def test_bad_service_settings_are_refused(kwargs, message):
    t = ServiceTable()
    with refused(message):
        t.add_service(*VIP, **kwargs)
    assert len(t) == 0


def test_ipv6_netmask_is_a_prefix_length():
    t = ServiceTable()
    with refused("illegal ipv6 netmask specified"):
        t.add_service("tcp", "2001:db8::1", 80, timeout=60, netmask=129)
    s = t.add_service("tcp", "2001:db8::1", 80, timeout=60, netmask=64)
    assert s.netmask_int == ((1 << 64) - 1) << 64
    s4 = t.add_service("tcp", "10.0.0.1", 80, timeout=60, netmask="255.255.255.0")
    assert s4.netmask_int == 0xFFFFFF00


def test_scheduler_flags_resolve_generic_names():
    t = ServiceTable()
    s = t.add_service(*VIP, sched="sh", flags="flag-1,sh-port")
    assert s.flags == {"sh-fallback", "sh-port"}


def test_edit_service_replaces_every_setting_and_keeps_dests(table):
    d = table.add_dest(VIP, "192.168.1.1", 80)
    table.edit_service(*VIP, sched="sh", timeout=600, netmask="255.255.0.0", flags=["sh-port"])
    s = table.get(VIP)
    assert (s.sched_name, s.timeout, s.netmask, s.flags) == (
        "sh", 600, "255.255.0.0", {"sh-port"})
    # an edit without settings is ipvsadm -E with its defaults: wlc, not persistent
    table.edit_service(*VIP)
    assert (s.sched_name, s.timeout, s.netmask, s.flags) == (
        "wlc", 0, "255.255.255.255", frozenset())
    assert s.dests == [d]
    with refused("No such service"):
        table.edit_service("tcp", "10.0.0.1", 81)


def test_failed_edit_changes_nothing(table):
    s = table.get(VIP)
    with refused("Scheduler or persistence engine not found"):
        table.edit_service(*VIP, sched="nope", timeout=60)
    assert (s.sched_name, s.timeout) == ("rr", 0)


def test_delete_service(table):
    table.add_dest(VIP, "192.168.1.1", 80)
    s = table.delete_service(*VIP)
    assert s.dests and len(table) == 0
    with refused("No such service") as e:
        table.delete_service(*VIP)
    assert e.value.errno == errno.ESRCH


def test_clear_keeps_timeouts(table):
    table.set_timeouts(60, 0, 0)
    table.clear()
    table.clear()
    assert len(table) == 0 and table.timeouts["tcp"] == 60


# -- dests ---------------------------------------------------------------------------------
def test_add_dest_inserts_at_the_head(table):
    a = table.add_dest(VIP, "192.168.1.1", 80)
    b = table.add_dest(VIP, "192.168.1.2", 80, "nat", weight=0)
    c = table.add_dest(table.get(VIP), "192.168.1.3", 8080, FwdMethod.NAT)
    assert table.get(VIP).dests == [c, b, a]
    assert (a.fwd, a.weight, b.weight, c.port) == (FwdMethod.DR, 1, 0, 8080)


def test_add_dest_refusals(table):
    table.add_dest(VIP, "192.168.1.1", 80)
    with refused("Destination already exists") as e:
        table.add_dest(VIP, "192.168.1.1", 80, "nat", weight=5)
    assert e.value.errno == errno.EEXIST
    with refused("Service not defined") as e:
        table.add_dest(("tcp", "10.0.0.9", 80), "192.168.1.1", 80)
    assert e.value.errno == errno.ESRCH
    with refused("Numerical result out of range"):
        table.add_dest(VIP, "192.168.1.2", 80, weight=-1)
    # 0 means "no upper limit", so a lower threshold alone is above it: the kernel refuses
    with refused("Numerical result out of range") as e:
        table.add_dest(VIP, "192.168.1.2", 80, l_threshold=5)
    assert e.value.errno == errno.ERANGE
    with refused("illegal real server address"):
        table.add_dest(VIP, "192.168.1.300", 80)
    assert len(table.get(VIP).dests) == 1


def test_other_address_family_only_for_tunnels(table):
    with refused("Different address family is allowed only for tunneling servers"):
        table.add_dest(VIP, "2001:db8::10", 80, "nat")
    d = table.add_dest(VIP, "2001:db8::10", 80, "tun")
    assert d.af == 6


def test_same_address_other_port_is_another_dest(table):
    table.add_dest(VIP, "192.168.1.1", 80, "nat")
    table.add_dest(VIP, "192.168.1.1", 8080, "nat")
    assert len(table.get(VIP).dests) == 2


def test_edit_dest_in_place_replaces_every_setting(table):
    a = table.add_dest(VIP, "192.168.1.1", 80, "nat", weight=5, u_threshold=100, l_threshold=10)
    b = table.add_dest(VIP, "192.168.1.2", 80)
    a.activeconns, a.conns = 7, 99
    got = table.edit_dest(VIP, "192.168.1.1", 80, "tun")
    assert got is a and table.get(VIP).dests == [b, a]
    assert (a.fwd, a.weight, a.u_threshold, a.l_threshold) == (FwdMethod.TUN, 1, 0, 0)
    assert (a.activeconns, a.conns) == (7, 99)
    with refused("No such destination") as e:
        table.edit_dest(VIP, "192.168.1.9", 80)
    assert e.value.errno == errno.ENOENT
    with refused("Service not defined"):
        table.edit_dest(("udp", "10.0.0.1", 80), "192.168.1.1", 80)


def test_edit_dest_clears_overload_as_the_kernel_does(table):
    d = table.add_dest(VIP, "192.168.1.1", 80, u_threshold=100)
    d.overloaded = True
    table.edit_dest(VIP, "192.168.1.1", 80, u_threshold=50)       # lower: stays overloaded
    assert d.overloaded
    table.edit_dest(VIP, "192.168.1.1", 80, u_threshold=200)      # higher: cleared
    assert not d.overloaded
    d.overloaded = True
    table.edit_dest(VIP, "192.168.1.1", 80, u_threshold=0)        # no limit: cleared
    assert not d.overloaded


def test_delete_dest(table):
    a = table.add_dest(VIP, "192.168.1.1", 80)
    b = table.add_dest(VIP, "192.168.1.2", 80)
    c = table.add_dest(VIP, "192.168.1.3", 80)
    assert table.delete_dest(VIP, "192.168.1.2", 80) is b
    assert table.get(VIP).dests == [c, a]
    with refused("No such destination"):
        table.delete_dest(VIP, "192.168.1.2", 80)
    with refused("Service not defined"):
        table.delete_dest(("tcp", "10.0.0.2", 80), "192.168.1.1", 80)


# -- counters and timeouts -----------------------------------------------------------------
def test_zero_clears_stats_but_not_live_connection_counts(table):
    other = table.add_service("udp", "10.0.0.1", 53)
    d = table.add_dest(VIP, "192.168.1.1", 80)
    s = table.get(VIP)
    for obj in (s, d, other):
        for f in STAT_FIELDS + RATE_FIELDS:
            setattr(obj, f, 5)
    d.activeconns, d.inactconns = 3, 4
    table.zero(VIP)
    assert all(getattr(o, f) == 0 for o in (s, d) for f in STAT_FIELDS + RATE_FIELDS)
    assert (d.activeconns, d.inactconns) == (3, 4)
    assert other.conns == 5
    table.zero()
    assert other.conns == 0
    with refused("No such service"):
        table.zero(("tcp", "10.0.0.1", 81))


def test_set_timeouts_zero_keeps_the_current_value():
    t = ServiceTable()
    assert t.timeouts == {"tcp": 900, "tcpfin": 120, "udp": 300}
    assert t.set_timeouts(7200, 0, 30) == {"tcp": 7200, "tcpfin": 120, "udp": 30}
    with refused("invalid timeout value `-5' specified"):
        t.set_timeouts(10, 10, -5)
    assert t.timeouts == {"tcp": 7200, "tcpfin": 120, "udp": 30}


# -- the scheduler library reads the same objects ------------------------------------------
def test_a_scheduler_over_service_dests_sees_table_edits(table):
    for i in (1, 2, 3):
        table.add_dest(VIP, f"192.168.1.{i}", 80)
    svc = table.get(VIP)
    sched = create(svc.sched_name, svc.dests)
    flow = Flow("198.51.100.7", 40000, "10.0.0.1", 80)
    picks = {sched.schedule(flow) for _ in range(6)}
    assert picks == set(svc.dests)
    table.edit_dest(VIP, "192.168.1.2", 80, weight=0)        # quiesce one
    table.delete_dest(VIP, "192.168.1.3", 80)
    table.add_dest(VIP, "192.168.1.4", 80)
    sched.update(svc.dests)
    picks = {sched.schedule(flow) for _ in range(6)}
    assert {(d.addr, d.weight) for d in picks} == {("192.168.1.1", 1), ("192.168.1.4", 1)}
    assert all(any(p is d for d in svc.dests) for p in picks)
