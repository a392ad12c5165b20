"""fastlvs.system.nft inside a namespace the fixture builds: a change set of several tables
goes to the kernel as one `nft -f -` transaction, the elements land in their sets, and the
tables of a dead fastlvs are recognised by name and removed (a live one's are kept)."""
from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

from tests.netns_netlink.netns_pair import ip  # noqa: E402
from fastlvs.lab.testbed import in_ns  # noqa: E402
from fastlvs.system import nft  # noqa: E402


def tables(ns):
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables", "netdev"],
                          capture_output=True, text=True, timeout=10).stdout


def test_a_change_set_is_one_transaction(pair, monkeypatch):
    calls = []
    real = nft._nft

    def spy(script=None, *args, **kw):
        calls.append((script, args))
        return real(script, *args, **kw)

    monkeypatch.setattr(nft, "_nft", spy)
    with in_ns(pair.a):
        drops = [nft.NftIngressDrop([pair.a_if]), nft.NftIngressDrop([pair.a_if])]
    try:
        keys = [("service", "udp", f"10.9.0.{i}", 53) for i in range(20)]
        nft.commit([(drops[0], keys, ()), (drops[1], [("rserver", "tcp", "10.9.1.1", 80)], ())])
        assert len(calls) == 1 and calls[0][0].count("add element") == 21
        listing = subprocess.run(["ip", "netns", "exec", pair.a, "nft", "list", "table",
                                  "netdev", drops[0].table], capture_output=True, text=True,
                                 timeout=10).stdout
        assert all(f"udp . 10.9.0.{i} . 53" in listing for i in range(20))
        calls.clear()
        # present keys again and absent keys removed: nothing to say, no process at all
        nft.commit([(drops[0], keys[:3], [("service", "udp", "10.9.9.9", 1)])])
        assert calls == []
        nft.commit([(drops[0], (), keys[10:])])
        assert len(calls) == 1 and drops[0].keys == {k for k in keys[:10]}
        assert {d.table for d in drops} <= set(tables(pair.a).split())
        # a refused script changes nothing and names nft's reason
        with in_ns(pair.a):
            bad = nft.NftIngressDrop([pair.a_if], table="fastlvs bad name")
        with pytest.raises(RuntimeError, match="nft failed"):
            nft.commit([(drops[1], [("service", "tcp", "10.9.2.2", 80)], ()),
                        (bad, [("service", "tcp", "10.9.3.3", 1)], ())])
        bad.close()
        assert ("service", "tcp", "10.9.2.2", 80) not in drops[1].keys
        assert "10.9.2.2" not in subprocess.run(
            ["ip", "netns", "exec", pair.a, "nft", "list", "table", "netdev", drops[1].table],
            capture_output=True, text=True, timeout=10).stdout
    finally:
        for d in drops:
            d.close()
    assert "fastlvs_" not in tables(pair.a)


def test_tables_of_a_dead_fastlvs_are_removed(pair):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"fastlvs_{dead.pid}_1"
    live = f"fastlvs_{os.getpid()}_999"
    other = "somebody_else"
    for name in (stale, live, other):
        ip("netns", "exec", pair.a, "nft", "add", "table", "netdev", name)
    with in_ns(pair.a):
        removed = nft.remove_stale()
    listing = tables(pair.a)
    assert removed == [stale]
    assert stale not in listing and live in listing and other in listing


def test_a_port0_key_drops_every_port_of_its_address(pair):
    """A port-0 service key goes to a set of addresses without ports, whose rule is added
    with the first such key: the kernel in namespace a no longer gets any UDP port of the
    address, and gets it again once the key is gone; an exact key still drops its port."""
    import socket

    with in_ns(pair.a):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        drop = nft.NftIngressDrop([pair.a_if])
    with in_ns(pair.b):
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((pair.a_ip, 4242))
    rx.settimeout(0.5)

    def arrives(tag):
        for _ in range(3):                   # the first may wait for ARP
            tx.sendto(tag, (pair.a_ip, 4242))
            try:
                while True:
                    if rx.recv(64) == tag:
                        return True
            except socket.timeout:
                pass
        return False

    try:
        nft.commit([(drop, [("service", "udp", pair.a_ip, 9)], ())])
        assert arrives(b"p1")
        nft.commit([(drop, [("service", "udp", pair.a_ip, 0),
                            ("rserver", "tcp", "10.9.1.1", 0)], ())])
        listing = subprocess.run(["ip", "netns", "exec", pair.a, "nft", "list", "table",
                                  "netdev", drop.table], capture_output=True, text=True,
                                 timeout=10).stdout
        assert f"udp . {pair.a_ip}" in listing and "tcp . 10.9.1.1" in listing
        assert listing.count("@serviceany4 drop") == 1
        assert not arrives(b"p2")
        nft.commit([(drop, [("service", "udp", pair.a_ip, 4242)],
                     [("service", "udp", pair.a_ip, 0)])])
        assert not arrives(b"p3")            # its own port's key
        nft.commit([(drop, [("service", "udp", pair.a_ip, 0)],
                     [("service", "udp", pair.a_ip, 4242)])])
        nft.commit([(drop, (), [("service", "udp", pair.a_ip, 0)])])
        assert arrives(b"p4")
    finally:
        drop.close()
        rx.close()
        tx.close()
