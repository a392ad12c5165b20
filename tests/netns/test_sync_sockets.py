"""The sync daemon's sockets on a real LAN (two namespaces on one veth), as ip_vs_sync.c sets
them up: what a master's datagram looks like on the wire (source, group, port, TTL), loopback
off, a backup that reads only its group and port on its interface, and a backup that counts
and ignores whatever a sender on the LAN throws at it."""
from __future__ import annotations

import select
import socket
import struct
import time

import pytest

from fastlvs.control.metrics import SyncCollector
from fastlvs.lab.testbed import in_ns
from fastlvs.sync import protocol
from fastlvs.sync.daemon import (BACKUP, MASTER, SyncConfig, lookup_interface,
                                 open_receive_socket, open_send_socket)
from tests.netns.sync_support import NsDaemon, sync_pair  # noqa: F401  (fixture)

IP_RECVTTL = 12
IP_PKTINFO = socket.IP_PKTINFO if hasattr(socket, "IP_PKTINFO") else 8


def _recv(sock, timeout=3.0):
    """(data, source address, ttl, destination address) of one datagram, or None."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        return None
    data, anc, _, src = sock.recvmsg(65536, 256)
    ttl = dst = None
    for level, kind, value in anc:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
            ttl = struct.unpack("i", value[:4])[0]
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            dst = socket.inet_ntoa(value[8:12])
    return data, src, ttl, dst


def _one_conn(syncid: int) -> bytes:
    c = protocol.SyncConn(protocol.IPPROTO_TCP, "10.9.0.7", 40000, "10.9.0.100", 80,
                          "10.9.1.11", 80, protocol.IP_VS_CONN_F_DROUTE, 1, 900)
    return protocol.encode_message(syncid, [c])


def _listener(ns, cfg):
    with in_ns(ns):
        s = open_receive_socket(cfg, lookup_interface("sy0"))
    s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    return s


@pytest.mark.parametrize("ttl", [1, 7])
def test_master_datagram_on_the_wire(sync_pair, ttl):  # noqa: F811
    a, b = sync_pair
    cfg = SyncConfig(MASTER, "sy0", syncid=3, maxlen=1472, ttl=ttl)
    with in_ns(a):
        dev = lookup_interface("sy0")
        master = open_send_socket(cfg, dev)
        same_host = open_receive_socket(SyncConfig(BACKUP, "sy0", maxlen=1472), dev)
    backup = _listener(b, SyncConfig(BACKUP, "sy0", maxlen=1472))
    try:
        assert (dev.mtu, dev.ipv4) == (1500, "10.203.0.1")
        payload = _one_conn(3)
        master.send(payload)
        got = _recv(backup)
        assert got is not None
        data, src, got_ttl, dst = got
        assert data == payload
        assert src[0] == "10.203.0.1"                 # bound to the interface's address
        assert (dst, got_ttl) == (protocol.SYNC_GROUP, ttl)
        assert master.getpeername() == (protocol.SYNC_GROUP, protocol.SYNC_PORT)
        # loopback is off: a backup on the master's own host does not hear it
        assert _recv(same_host, timeout=0.3) is None
    finally:
        for s in (master, same_host, backup):
            s.close()


def test_ipv6_group_master_to_backup(sync_pair):  # noqa: F811
    a, b = sync_pair
    group = "ff02::1:3"
    with in_ns(a):
        master = open_send_socket(SyncConfig(MASTER, "sy0", maxlen=1452, group=group, ttl=2),
                                  lookup_interface("sy0"))
    with in_ns(b):
        backup = open_receive_socket(SyncConfig(BACKUP, "sy0", maxlen=1452, group=group),
                                     lookup_interface("sy0"))
    backup.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    try:
        payload = _one_conn(4)
        for _ in range(20):         # a fresh veth may lose the first datagrams
            master.send(payload)
            r, _, _ = select.select([backup], [], [], 0.25)
            if r:
                break
        assert r
        data, anc, _, src = backup.recvmsg(65536, 256)
        assert data == payload
        assert src[0].startswith("fe80::")             # from the master's link-local address
        hops = [struct.unpack("i", v[:4])[0] for lvl, kind, v in anc
                if lvl == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT]
        assert hops == [2]
    finally:
        master.close()
        backup.close()


def test_backup_hears_only_its_group_and_port(sync_pair):  # noqa: F811
    a, b = sync_pair
    backup = _listener(b, SyncConfig(BACKUP, "sy0", group="239.9.9.9", port=9000,
                                     maxlen=1472))
    with in_ns(a):
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.203.0.1"))
    try:
        out.sendto(b"other group", ("224.0.0.81", 9000))
        out.sendto(b"other port", ("239.9.9.9", 8848))
        out.sendto(b"unicast", ("10.203.0.2", 9000))
        out.sendto(b"mine", ("239.9.9.9", 9000))
        got = _recv(backup)
        assert got is not None and got[0] == b"mine"
        assert _recv(backup, timeout=0.3) is None
    finally:
        out.close()
        backup.close()


def test_unknown_interface_is_enodev():
    from fastlvs.sync.daemon import SyncError
    for name in ("nosuch0", "", "a" * 16, "a/b"):
        with pytest.raises(SyncError) as e:
            lookup_interface(name)
        assert str(e.value) == "No such device"


def _stats_after(d, key, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with d.lock:
            stats = d.director.sync_stats()
        if stats[key] >= want:
            return stats
        time.sleep(0.02)
    return stats


def test_junk_from_the_lan_is_counted_and_ignored(sync_pair, tmp_path):  # noqa: F811
    a, b = sync_pair
    d = NsDaemon(b, str(tmp_path / "fastlvs.sock"))
    with in_ns(a):
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.203.0.1"))
    try:
        assert d.admin("--start-daemon", "backup", "--mcast-interface", "sy0",
                       "--syncid", "5") == (0, "", "")
        group = (protocol.SYNC_GROUP, protocol.SYNC_PORT)
        good_header_wrong_size = protocol.HEADER.pack(0, 5, 100, 0, 1, 0)
        junk = [b"", b"\x00", good_header_wrong_size,
                _one_conn(9),                                   # another pair's syncid
                b"\x01\x05\x00\x08\x00\x00\x00\x00",            # a version 0 header
                bytes(range(256)) * 12]                         # 3072 bytes: cut at maxlen
        for j in junk:
            out.sendto(j, group)
        stats = _stats_after(d, "received", len(junk))
        assert stats["received"] == len(junk)
        assert stats["drop_foreign_syncid"] == 1
        assert stats["drop_not_v1"] == 1
        assert stats["drop_short"] >= 2
        assert stats["drop_size_mismatch"] >= 2
        assert stats["installed"] == 0
        with d.lock:
            layer = d.sync.stats()
        assert layer["received_messages"] == len(junk)
        assert layer["receive_failures"] == 0
        with d.lock:
            fams = {f.name: f for f in SyncCollector(d.sync).collect()}
        value = {(f.name, tuple(smp.labels.values())): smp.value for f in fams.values()
                 for smp in f.samples}
        assert value[("fastlvs_sync_messages", ("received",))] == len(junk)
        assert value[("fastlvs_sync_dropped", ("drop_foreign_syncid",))] == 1
        assert value[("fastlvs_sync_daemon_running", ("backup",))] == 1
        assert value[("fastlvs_sync_daemon_running", ("master",))] == 0
        assert value[("fastlvs_sync_lag_seconds", ("backup",))] >= 0
        assert ("fastlvs_sync_lag_seconds", ("master",)) not in value
        # a flood costs bounded work per turn and the daemon still answers
        for _ in range(2000):
            out.sendto(b"\xff" * 40, group)
        rc, text, err = d.admin("-L", "--daemon")
        assert (rc, err) == (0, "")
        assert text == ("backup sync daemon (mcast=sy0, syncid=5, maxlen=1472, "
                        "group=224.0.0.81, port=8848, ttl=1)\n")
        assert d.admin("--stop-daemon", "backup") == (0, "", "")
        assert d.admin("-L", "--daemon") == (0, "", "")
    finally:
        out.close()
        d.stop()


def test_backup_buffer_holds_a_burst_unless_sync_sock_size_says_otherwise(sync_pair):  # noqa: F811
    """sync_sock_size 0: the backup's buffer is BACKUP_RCVBUF (doubled by the kernel) past
    rmem_max, and holds a master's burst of 600 full datagrams unread; sync_sock_size N
    means what the kernel's does (SO_RCVBUF N: doubled, capped by rmem_max)."""
    from fastlvs.sync.daemon import BACKUP_RCVBUF
    a, b = sync_pair
    cfg = SyncConfig(BACKUP, "sy0", maxlen=1472)
    with in_ns(b):
        dev = lookup_interface("sy0")
        big = open_receive_socket(cfg, dev)
        small = open_receive_socket(cfg, dev, sock_size=4096)
    with in_ns(a):
        master = open_send_socket(SyncConfig(MASTER, "sy0", maxlen=1472), lookup_interface("sy0"),
                                  sock_size=4 << 20)
    try:
        assert big.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * BACKUP_RCVBUF
        assert small.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 4096
        payload = bytes(1472)
        sent = 0
        for _ in range(600):
            while True:
                try:
                    master.send(payload)
                    sent += 1
                    break
                except BlockingIOError:
                    select.select([], [master], [], 1.0)
        time.sleep(0.3)
        got = {"big": 0, "small": 0}
        for name, s in (("big", big), ("small", small)):
            s.setblocking(False)
            while True:
                try:
                    s.recv(2048)
                    got[name] += 1
                except BlockingIOError:
                    break
        assert sent == 600 and got["big"] == 600
        assert got["small"] < 10                   # the kernel's meaning: it drops the rest
    finally:
        for s in (big, small, master):
            s.close()
