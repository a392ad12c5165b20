"""Connection sync between two fastlvs directors on one LAN (root, namespaces): the testbed's
DR cluster (client, director d1 holding the VIP, real servers on bridge br0) plus a second
director d2 on the same bridge without the VIP, both running the `fastlvs` daemon with the
same service. Sync daemons are started and stopped with ipvsadm's commands (`fastlvs admin
--start-daemon/--stop-daemon`), over the LAN interface, default group and port.

- connections made through the master (d1) appear in the backup's (d2) `-Lnc` with their
  state, and their closing state follows;
- a director may run master and backup at once (d1 and d2 both do here): `-L --daemon` lists
  both, and a master does not hear its own messages;
- junk UDP datagrams to 8848 are counted by reason and ignored; the daemon keeps answering;
- `--stop-daemon backup` stops it: later connections do not reach d2;
- keepalived.conf's `lvs_sync_daemon lan0 VI_1` on both (no admin command): the holder of
  VI_1's address is master, the other backup; moving the address swaps them and a
  connection opened before goes on through the new holder.
"""
from __future__ import annotations

import json
import os
import socket
import time
import types

import pytest

from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT, Daemon, in_ns, run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

WAIT = 15.0                 # bound on a synced conn reaching the backup (2 s flush + turns)
D2_IP = f"{tbmod.LAN}.3"
SYNCID = "9"


def _second_director(tb) -> str:
    """d2's namespace, on br0 beside the testbed's director; deleted by tb.destroy()."""
    d2ns = f"{tb.tag}d2"
    run("ip", "netns", "add", d2ns)
    tb.made.append(d2ns)
    tbmod.sysctl(d2ns, ipv6__conf__all__disable_ipv6=1, ipv6__conf__default__disable_ipv6=1,
                 ipv4__conf__all__rp_filter=0, ipv4__conf__default__rp_filter=0,
                 ipv4__ip_forward=0)
    run("ip", "-n", d2ns, "link", "set", "lo", "up")
    tb._veth("pd2", d2ns, "lan0", "br0")
    tb._addr(d2ns, "lan0", f"{D2_IP}/24")
    return d2ns


def _start_d2(tb, d2ns, args) -> Daemon:
    # the testbed's Daemon runs in tb.director; d2 is the same process in d2ns
    shim = types.SimpleNamespace(director=d2ns, tmp=tb.tmp, daemons=tb.daemons)
    d2 = Daemon(shim, ["--mode", "dr", "-i", "lan0", "--backend", "packet", *args])
    tb.daemons.append(d2)
    d2.start()
    return d2


@pytest.fixture
def pair():
    """(testbed, d1 daemon, d2 daemon): d1 in the testbed's director namespace with the VIP,
    d2 in a namespace of its own on br0, without it."""
    tb = tbmod.Testbed("dr", n_rs=2).build()
    try:
        d2ns = _second_director(tb)
        service = ["--vip", f"{tb.vip}:{HTTP_PORT}", "-s", "rr",
                   *[a for rip in tb.rips for a in ("--rs", f"{rip}:{HTTP_PORT}")]]
        d1 = tb.start_daemon(*service, backend="packet")
        d2 = _start_d2(tb, d2ns, service)
        yield tb, d1, d2
    finally:
        tb.destroy()


def sync_counters(d) -> dict:
    return json.loads(d.admin("--counters").stdout)["sync"]


def wait_for(what, timeout=WAIT):
    """what()'s value once it is true, bounded; the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def conn_line(d, sport):
    """The -Lnc line of the client's connection from `sport`, or None."""
    for line in d.admin("-Lnc").stdout.splitlines():
        if f"{tbmod.CLIENT_IP}:{sport} " in line:
            return line
    return None


def start(d, state, *more):
    r = d.admin("--start-daemon", state, "--mcast-interface", "lan0", "--syncid", SYNCID,
                *more, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r


def test_connections_reach_the_backup_with_their_state(pair):
    tb, d1, d2 = pair
    start(d1, "master")
    start(d1, "backup")                     # d1 runs both
    start(d2, "backup")
    start(d2, "master")                     # and so does d2
    line = "sync daemon (mcast=lan0, syncid=9, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"
    for d in (d1, d2):
        assert d.admin("-L", "--daemon").stdout == f"master {line}\nbackup {line}\n"

    conn = tb.keepalive(timeout=3.0)
    try:
        rs = conn.ask()
        for _ in range(4):                  # past sync_threshold (3 packets)
            assert conn.ask() == rs
        sport = conn.sock.getsockname()[1]
        on_d1 = conn_line(d1, sport)
        assert on_d1 is not None and " ESTABLISHED " in on_d1
        on_d2 = wait_for(lambda: conn_line(d2, sport))
        assert on_d2 is not None, d2.admin("-Lnc").stdout
        # the same conn, in the same state, bound to the same real server
        assert on_d2.split()[2:] == on_d1.split()[2:]
        assert f" {tb.rip_of(rs)}:{HTTP_PORT}" in on_d2
        # counted on the backup as the kernel counts a synced conn: an active one of its RS
        listed = d2.table()
        dests = listed[("TCP", f"{tb.vip}:{HTTP_PORT}")]["dests"]
        assert dests[f"{tb.rip_of(rs)}:{HTTP_PORT}"]["active"] == 1
    finally:
        conn.close()
    # the close is synced too (a state change forces a message): d2 leaves ESTABLISHED
    closing = wait_for(lambda: (ln := conn_line(d2, sport)) and " ESTABLISHED " not in ln
                       and ln)
    assert closing, conn_line(d2, sport)
    assert closing.split()[2] in ("FIN_WAIT", "CLOSE_WAIT", "TIME_WAIT", "CLOSE", "LAST_ACK")

    c1, c2 = sync_counters(d1), sync_counters(d2)
    assert c1["sent"] >= 1 and c1["daemons"]["sent_messages"] >= 1
    assert c2["installed"] >= 1 and c2["daemons"]["received_messages"] >= 1
    # loopback is off and d2's master had nothing to send: d1's backup heard nothing
    assert c1["daemons"]["received_messages"] == 0
    assert c2["daemons"]["sent_messages"] == 0


def test_junk_is_counted_and_stop_daemon_stops(pair):
    tb, d1, d2 = pair
    start(d1, "master")
    start(d2, "backup")
    with in_ns(tb.client):
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        socket.inet_aton(tbmod.CLIENT_IP))
    try:
        before = sync_counters(d2)
        sent = [b"\x00", b"\x00\x09\x00\x40\x00\x01\x00\x00", os.urandom(600)]
        for data in sent:
            junk.sendto(data, ("224.0.0.81", 8848))
        after = wait_for(lambda: (c := sync_counters(d2))["received"]
                         >= before["received"] + len(sent) and c)
        assert after, sync_counters(d2)
        assert after["installed"] == before["installed"]
        assert after["dropped"] >= before["dropped"] + len(sent)
        assert after["drop_short"] >= before["drop_short"] + 1
        assert after["drop_size_mismatch"] >= before["drop_size_mismatch"] + 1
    finally:
        junk.close()
    assert d2.admin("-L", "--daemon").stdout.startswith("backup sync daemon (mcast=lan0")

    r = d2.admin("--stop-daemon", "backup", check=False)
    assert (r.returncode, r.stderr) == (0, "")
    assert d2.admin("-L", "--daemon").stdout == ""
    r = d2.admin("--stop-daemon", "backup", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (255, "", "No daemon is running\n")

    received = sync_counters(d2)["daemons"]["received_messages"]
    sent_before = sync_counters(d1)["sent"]
    conn = tb.keepalive(timeout=3.0)
    try:
        for _ in range(5):
            conn.ask()
        sport = conn.sock.getsockname()[1]
        assert wait_for(lambda: sync_counters(d1)["sent"] > sent_before)
        assert conn_line(d1, sport) is not None
        assert conn_line(d2, sport) is None
        assert sync_counters(d2)["daemons"]["received_messages"] == received
    finally:
        conn.close()


KEEPALIVED_CONF = """global_defs {{
    lvs_sync_daemon lan0 VI_1
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface lan0
    virtual_router_id 42
    priority 100
    virtual_ipaddress {{
        {vip}/32 dev lan0
    }}
}}
virtual_server {vip} {port} {{
    lb_algo rr
    lb_kind DR
    protocol TCP
{reals}}}
"""


def test_lvs_sync_daemon_follows_the_vrrp_instance_and_the_conn_survives(pair_keepalived):
    """keepalived.conf's `lvs_sync_daemon lan0 VI_1`: the director holding VI_1's address
    runs the master (syncid 42, the instance's virtual_router_id), the other the backup;
    moving the address (what keepalived's VRRP does at failover) swaps them, and a
    connection opened through the first director goes on through the second."""
    tb, d1, d2, d2ns = pair_keepalived
    line = "sync daemon (mcast=lan0, syncid=42, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)"
    assert d1.admin("-L", "--daemon").stdout == f"master {line}\n"
    assert d2.admin("-L", "--daemon").stdout == f"backup {line}\n"
    conn = tb.keepalive(timeout=3.0)
    try:
        rs = conn.ask()
        for _ in range(4):
            assert conn.ask() == rs
        sport = conn.sock.getsockname()[1]
        assert wait_for(lambda: conn_line(d2, sport)), d2.admin("-Lnc").stdout

        # failover: the VIP leaves d1 and arrives on d2 (and the client learns d2's MAC,
        # as keepalived's gratuitous ARP would teach it)
        run("ip", "-n", tb.director, "addr", "del", f"{tb.vip}/32", "dev", tb.lan_if)
        run("ip", "-n", d2ns, "addr", "add", f"{tb.vip}/32", "dev", "lan0")
        mac = json.loads(run("ip", "-n", d2ns, "-j", "link", "show", "dev",
                             "lan0").stdout)[0]["address"]
        run("ip", "-n", tb.client, "neigh", "replace", tb.vip, "lladdr", mac, "dev", "eth0")
        assert wait_for(lambda: d2.admin("-L", "--daemon").stdout == f"master {line}\n")
        assert wait_for(lambda: d1.admin("-L", "--daemon").stdout == f"backup {line}\n")
        # the synced conn carries on through d2, to the same real server
        assert conn.ask() == rs
        assert " ESTABLISHED " in conn_line(d2, sport)
    finally:
        conn.close()
    for d in (d1, d2):
        assert any("lvs_sync_daemon" in ln and "sync daemon (mcast=lan0" in ln
                   for ln in d.lines), d.stderr


@pytest.fixture
def pair_keepalived():
    tb = tbmod.Testbed("dr", n_rs=2).build()
    try:
        d2ns = _second_director(tb)
        reals = "".join(f"    real_server {rip} {HTTP_PORT} {{\n        weight 1\n    }}\n"
                        for rip in tb.rips)
        path = tb.write_rules(KEEPALIVED_CONF.format(vip=tb.vip, port=HTTP_PORT, reals=reals),
                              "keepalived.conf")
        d1 = tb.start_daemon("--keepalived-conf", path, backend="packet")
        d2 = _start_d2(tb, d2ns, ["--keepalived-conf", path])
        yield tb, d1, d2, d2ns
    finally:
        tb.destroy()
