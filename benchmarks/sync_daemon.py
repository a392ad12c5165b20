"""The sync daemon's backup path over a real link, against the engine alone, in one run (root):

    .venv/bin/python -m benchmarks.sync_daemon [--conns 50000] [--repeat 5]

Two namespaces joined by a veth; the backup's SyncDaemons (sync/daemon.py) reads on one end
and installs into the built engine what a sender on the other end multicasts: 1472-byte sync
messages of --conns distinct DR conns (SyncPacker), sent 40 at a time (what the default
socket buffer holds without loss), each batch read and installed by SyncDaemons.poll()
before the next. Against it, the same messages handed to Engine.sync_receive directly.
Reported: conns/s and messages/s of each (median of --repeat runs), their ratio, and the
sync bandwidth the daemon path would carry at its rate.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import time

from fastlvs.engine._core import Engine
from fastlvs.lab.testbed import in_ns
from fastlvs.sync import protocol as P
from fastlvs.sync.daemon import BACKUP, SyncConfig, SyncDaemons, _Daemon, lookup_interface
from fastlvs.sync.daemon import open_receive_socket

VIP, RIP = "10.9.0.100", "10.9.1.11"
BATCH = 40


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


def messages(n: int) -> list[bytes]:
    packer = P.SyncPacker(1, 1472)
    out = []
    for i in range(n):
        c = P.SyncConn(P.IPPROTO_TCP, f"10.{8 + i // 65000 % 2}.{i // 250 % 250}.{i % 250 + 1}",
                       1024 + i % 60000, VIP, 80, RIP, 80, P.IP_VS_CONN_F_DROUTE, 1, 900)
        out += packer.add(c)
    return out + packer.flush()


def engine(capacity: int) -> Engine:
    e = Engine(capacity=capacity, batch=64, local_ip="10.9.0.1", local_mac="02:00:00:00:00:01")
    e.set_service(1, 6, VIP, 80)
    e.set_dest(1, 1, RIP, 80, "dr", "02:00:00:00:01:01", ifindex=2, weight=1)
    return e


def direct(msgs, capacity) -> tuple[float, int]:
    e = engine(capacity)
    e.sync_start_backup(1)
    t0 = time.perf_counter()
    for i, m in enumerate(msgs):
        e.sync_receive(m, 1_000_000_000 + i)
    dt = time.perf_counter() - t0
    return dt, e.sync_stats()["installed"]


def through_daemon(msgs, capacity, a, b) -> tuple[float, int, int]:
    e = engine(capacity)
    sd = SyncDaemons(e)
    cfg = SyncConfig(BACKUP, "sy0", 1, 1472)
    with in_ns(b):
        rx = open_receive_socket(cfg, lookup_interface("sy0"))
    e.sync_start_backup(1)
    sd.backup = _Daemon(cfg, rx, 0)
    with in_ns(a):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.203.0.1"))
    dest = (P.SYNC_GROUP, P.SYNC_PORT)
    got = 0
    t0 = time.perf_counter()
    for i in range(0, len(msgs), BATCH):
        chunk = msgs[i:i + BATCH]
        for m in chunk:
            tx.sendto(m, dest)
        want = got + len(chunk)
        deadline = time.monotonic() + 2.0
        while got < want and time.monotonic() < deadline:
            got += sd.poll()
    dt = time.perf_counter() - t0
    tx.close()
    sd.close()
    return dt, e.sync_stats()["installed"], len(msgs) - got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=50000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces)")
    msgs = messages(args.conns)
    cap = 1 << (args.conns * 2).bit_length()
    tag = f"fsb{os.getpid() % 100000}"
    a, b = tag + "a", tag + "b"
    try:
        for ns in (a, b):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        _run("ip", "-n", a, "link", "add", "sy0", "type", "veth", "peer", "name", "sy0",
             "netns", b)
        for ns, ip in ((a, "10.203.0.1/24"), (b, "10.203.0.2/24")):
            _run("ip", "-n", ns, "addr", "add", ip, "dev", "sy0")
            _run("ip", "-n", ns, "link", "set", "dev", "sy0", "up")
        through_daemon(msgs[:BATCH], cap, a, b)            # warm the link
        d_rates, s_rates, lost = [], [], 0
        for _ in range(args.repeat):
            dt, inst = direct(msgs, cap)
            d_rates.append(inst / dt)
            dt, inst2, miss = through_daemon(msgs, cap, a, b)
            s_rates.append(inst2 / dt)
            lost += miss
        d, s = statistics.median(d_rates), statistics.median(s_rates)
        per_msg = args.conns / len(msgs)
        print(f"{args.conns} conns in {len(msgs)} messages ({per_msg:.1f} conns each)")
        print(f"engine alone (sync_receive): {d:,.0f} conns/s ({d / per_msg:,.0f} msgs/s)")
        print(f"through the daemon (send, read, install): {s:,.0f} conns/s "
              f"({s / per_msg:,.0f} msgs/s); ratio {s / d:.2f}; datagrams lost: {lost}")
        print(f"bandwidth at that rate: {s / per_msg * (1472 + 28) * 8 / 1e6:,.1f} Mbit/s")
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main()
