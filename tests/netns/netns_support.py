"""Namespace topologies for the ring backends' tests (root only; skipped otherwise).

`topo` builds three namespaces with unique names: client <-veth-> director <-veth-> sink,
addresses in 10.200.1.0/24 (client side) and 10.200.2.0/24 (sink side) that exist only inside
them, and deletes everything in a finally, also when the test failed. Helpers enter a
namespace for one thread (setns), make raw sockets there, and bound every wait.
"""
from __future__ import annotations

import itertools
import json
import os
import select
import socket
import subprocess
import time

import pytest

from fastlvs.lab.testbed import in_ns   # setns for one thread, shared with the e2e testbed

_seq = itertools.count()
ETH_P_ALL = 0x0003

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, XDP)")


def run(*cmd, check=True, timeout=20):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def raw_socket(ns, ifname):
    """An AF_PACKET socket bound to ifname inside ns (usable from any namespace after)."""
    with in_ns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
    s.setblocking(False)
    return s


def drain(sock):
    """Throw away what a raw socket has queued so far."""
    for _ in range(100000):
        try:
            sock.recv(65536)
        except BlockingIOError:
            return


def collect(sock, want, timeout=3.0, pump=None):
    """Frames from sock for which want(frame) is true, until `timeout` seconds passed or
    want says "enough" by raising StopIteration. pump() is called between reads."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pump is not None:
            pump()
        r, _, _ = select.select([sock], [], [], 0.01)
        if not r:
            continue
        for _ in range(1024):
            try:
                fr = sock.recv(65536)
            except BlockingIOError:
                break
            try:
                if want(fr):
                    got.append(fr)
            except StopIteration:
                got.append(fr)
                return got
    return got


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(ns, ip, tries=3, timeout=1.0):
    """ICMP echo from namespace ns to ip (the kernel resolves ARP): True when answered."""
    with in_ns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        for seq in range(tries):
            hdr = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
            body = b"fastlvs-ping"
            c = _csum(hdr + body)
            s.sendto(hdr[:2] + c.to_bytes(2, "big") + hdr[4:] + body, (ip, 0))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
                if not r:
                    break
                pkt, addr = s.recvfrom(2048)
                ihl = (pkt[0] & 0x0F) * 4
                icmp = pkt[ihl:]
                if (addr[0] == ip and icmp[0] == 0
                        and int.from_bytes(icmp[4:6], "big") == ident):
                    return True
        return False
    finally:
        s.close()


class Topo:
    def __init__(self):
        tag = f"fl{os.getpid() % 100000}{next(_seq)}"
        self.tag = tag
        self.client, self.director, self.sink = f"{tag}c", f"{tag}d", f"{tag}s"
        self.c0, self.d0, self.d1, self.s0 = "c0", "d0", "d1", "s0"
        self.c0_ip, self.d0_ip = "10.200.1.1", "10.200.1.2"
        self.d1_ip, self.s0_ip = "10.200.2.2", "10.200.2.1"
        self.made: list[str] = []

    def build(self):
        for ns in (self.client, self.director, self.sink):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # one queue each way: the XSK sits on queue 0 (a veth gets one per CPU by default)
        q = ("numtxqueues", "1", "numrxqueues", "1")
        run("ip", "-n", self.client, "link", "add", self.c0, *q, "type", "veth", "peer",
            "name", self.d0, *q, "netns", self.director)
        run("ip", "-n", self.director, "link", "add", self.d1, *q, "type", "veth", "peer",
            "name", self.s0, *q, "netns", self.sink)
        for ns, dev, addr in ((self.client, self.c0, self.c0_ip), (self.director, self.d0, self.d0_ip),
                              (self.director, self.d1, self.d1_ip), (self.sink, self.s0, self.s0_ip)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        self.mac = {dev: self.link(ns, dev)["address"] for ns, dev in
                    ((self.client, self.c0), (self.director, self.d0),
                     (self.director, self.d1), (self.sink, self.s0))}
        return self

    def link(self, ns, dev):
        out = run("ip", "-n", ns, "-d", "-j", "link", "show", "dev", dev).stdout
        return json.loads(out)[0]

    def xdp_attached(self, ns, dev):
        text = run("ip", "-n", ns, "-d", "link", "show", "dev", dev).stdout
        return "xdp" in text.split("\n", 1)[0] or "prog/xdp" in text

    def nft_tables(self, ns):
        return run("ip", "netns", "exec", ns, "nft", "list", "tables").stdout

    def destroy(self):
        for ns in reversed(self.made):
            run("ip", "netns", "del", ns, check=False)
        self.made.clear()


@pytest.fixture
def topo():
    t = Topo()
    try:
        yield t.build()
    finally:
        t.destroy()
