"""The director's sync methods (what the sync daemon calls) on both engines: a master
director's datagrams installed by a backup director give the same connection listing and
counts; the sync sysctls go through the director with the kernel's pair rule for
sync_threshold/sync_period, as `sysctl -w` refuses "50 50"."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from fastlvs.control import sysctl as SC
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.model import NoRoute
from fastlvs.engine import reference
from fastlvs.sync import protocol as P

VIP, CLIENT = "203.0.113.10", "198.51.100.7"
LOCAL_MAC, CLIENT_MAC = "02:00:00:00:00:01", "02:00:00:00:00:aa"
RS = {f"192.0.2.{i}": bytes([2, 0, 0, 0, 1, i]) for i in (11, 12)}
S = 1_000_000_000


def nexthop(ip):
    if ip not in RS:
        raise NoRoute(f"{ip} is not a neighbour")
    return RS[ip], 10 + int(ip.rsplit(".", 1)[1])


@pytest.fixture(params=["core", "reference"])
def director(request):
    cls = core.Engine if request.param == "core" else reference.Engine

    def make():
        e = cls(capacity=256, batch=64, local_ip="192.0.2.1", local_mac=LOCAL_MAC)
        d = Director(e, nexthop)
        e.set_gateway_mac("02:00:00:00:00:fe", 2)
        for argv in (["-A", "-t", f"{VIP}:80", "-s", "rr"],
                     ["-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g"],
                     ["-a", "-t", f"{VIP}:80", "-r", "192.0.2.12:80", "-g"]):
            d.execute(parse_command(argv))
        return d
    return make


def frame(cport, flags, load=b""):
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=CLIENT, dst=VIP)
                 / TCP(sport=cport, dport=80, flags=flags) / load)


def test_master_datagrams_install_on_a_backup_director(director):
    a, b = director(), director()
    a.sync_start_master(3, P.sync_maxlen())
    b.sync_start_backup(3)
    t = S
    for cport in range(40000, 40010):
        for flags, load in (("S", b""), ("A", b""), ("PA", b"x")):
            a.process([frame(cport, flags, load)], [t])
            t += 1000
    a.process([frame(40000, "FA")], [t])
    msgs = a.sync_take(t + 3 * S)
    assert msgs and a.sync_stats()["sent_conns"] == 11
    for m in msgs:
        b.sync_receive(m, t + 3 * S)
    ours = sorted((c["cport"], c["state"], c["raddr"]) for c in a.engine.conns(t + 3 * S))
    theirs = sorted((c["cport"], c["state"], c["raddr"]) for c in b.engine.conns(t + 3 * S))
    assert ours == theirs
    assert "FIN_WAIT" in b.list_conns()
    st = b.sync_stats()
    assert (st["installed"], st["updated"], st["dropped"]) == (10, 1, 0)
    assert a.sync_take(t + 10 * S) == []
    a.sync_stop_master()
    b.sync_stop_backup()
    with pytest.raises(RuntimeError):
        b.sync_receive(msgs[0], t)


def test_sync_sysctls_through_the_director(director):
    d = director()
    assert {k: d.sysctls()[k] for k in ("sync_threshold", "sync_period", "sync_retries",
                                        "sync_refresh_period", "sync_persist_mode")} == {
        "sync_threshold": 3, "sync_period": 50, "sync_retries": 0,
        "sync_refresh_period": 0, "sync_persist_mode": 0}
    with pytest.raises(SC.SysctlError, match="below sync_period"):
        d.set_sysctl("sync_threshold", 50)
    with pytest.raises(SC.SysctlError, match="outside"):
        d.set_sysctl("sync_retries", 4)
    assert d.sysctls()["sync_threshold"] == 3
    # the pair moved up together: checked as a pair, applied in an order that holds
    d.apply_sysctls({"sync_threshold": 60, "sync_period": 100})
    assert (d.sysctls()["sync_threshold"], d.sysctls()["sync_period"]) == (60, 100)
    assert d.engine.sysctls()["sync_threshold"] == 60
    with pytest.raises(SC.SysctlError):
        d.apply_sysctls({"sync_threshold": 5, "sync_period": 5})
    assert d.sysctls()["sync_period"] == 100
    assert SC.parse_assignment("net.ipv4.vs.sync_qlen_max=10") == ("sync_qlen_max", 10)


VIP6, CLIENT6, RS6 = "2001:db8:10::10", "2001:db8:20::7", "2001:db8:30::11"


def nexthop_any(ip):
    if ip == RS6:
        return bytes([2, 0, 0, 0, 1, 0x66]), 30
    return nexthop(ip)


def test_v6_and_sctp_conns_of_a_master_director_install_on_a_backup_director(director):
    """Through the control plane: an IPv6 DR service and an SCTP DR service made with
    ipvsadm's words on both directors; the master's conns reach the backup's listing."""
    from scapy.layers.inet6 import IPv6
    from scapy.layers.sctp import SCTP, SCTPChunkCookieEcho, SCTPChunkData, SCTPChunkInit

    def make():
        d = director()
        d.nexthop = nexthop_any
        for argv in (["-A", "-t", f"[{VIP6}]:80", "-s", "rr"],
                     ["-a", "-t", f"[{VIP6}]:80", "-r", f"[{RS6}]:80", "-g"],
                     ["-A", "--sctp-service", f"{VIP}:7000", "-s", "rr"],
                     ["-a", "--sctp-service", f"{VIP}:7000", "-r", "192.0.2.11:7000", "-g"]):
            d.execute(parse_command(argv))
        return d
    a, b = make(), make()
    a.sync_start_master(3, P.sync_maxlen())
    b.sync_start_backup(3)
    t = S
    for flags, load in (("S", b""), ("A", b""), ("PA", b"x")):
        a.process([bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IPv6(src=CLIENT6, dst=VIP6)
                         / TCP(sport=40001, dport=80, flags=flags) / load)], [t])
        t += 1000
    for chunk in (SCTPChunkInit(init_tag=1, a_rwnd=65535, n_out_streams=1, n_in_streams=1,
                                init_tsn=1), SCTPChunkCookieEcho(cookie=b"c" * 8),
                  SCTPChunkData(tsn=1, data=b"x")):
        a.process([bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=CLIENT, dst=VIP)
                         / SCTP(sport=40002, dport=7000) / chunk)], [t])
        t += 1000
    msgs = a.sync_take(t + 3 * S)
    for m in msgs:
        b.sync_receive(m, t + 3 * S)
    rows = sorted((c["proto"], c["caddr"], c["cport"], c["raddr"], c["rport"])
                  for c in b.engine.conns(t + 3 * S))
    assert rows == sorted((c["proto"], c["caddr"], c["cport"], c["raddr"], c["rport"])
                          for c in a.engine.conns(t + 3 * S))
    assert ("TCP", CLIENT6, 40001, RS6, 80) in rows
    assert [r[0] for r in rows].count("SCTP") == 1
    assert b.sync_stats()["installed"] == len(rows) == 2
