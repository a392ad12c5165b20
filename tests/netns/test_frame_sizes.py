"""Frames larger than a ring slot: AF_XDP (one frame per UMEM chunk, no multi-buffer)
refuses at port creation an interface whose MTU it cannot carry, naming the largest it
can; AF_PACKET sizes its slots from the MTU and carries jumbo frames whole. Nothing is
dropped without a word."""
import struct

import pytest

from tests.netns.netns_support import collect, drain, in_ns, raw_socket, run

core = pytest.importorskip("fastlvs.engine._core")
from fastlvs.engine import contract  # noqa: E402
import fastlvs.engine._testing as testing  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

VIP, VPORT = "10.200.1.100", 9000


def set_mtu(topo, mtu):
    for ns, dev in ((topo.client, "c0"), (topo.director, "d0"), (topo.director, "d1"),
                    (topo.sink, "s0")):
        run("ip", "-n", ns, "link", "set", "dev", dev, "mtu", str(mtu))


def test_xdp_refuses_an_mtu_its_chunks_cannot_hold(topo):
    if not core.XDP_BUILT:
        pytest.skip(core.XDP_MISSING)
    set_mtu(topo, 9000)
    top = contract.max_mtu("xdp", 4096)
    with in_ns(topo.director):
        with pytest.raises(RuntimeError) as err:
            core.XdpPort("d0", ring_size=1024, umem=core.XdpUmem(frames=4096, frame_size=4096))
    msg = str(err.value)
    assert "\n" not in msg and "d0" in msg and "9000" in msg and str(top) in msg
    assert not topo.xdp_attached(topo.director, "d0")      # refused before attaching
    # at the limit it opens (the chunk holds the frame after the kernel's headroom)
    with in_ns(topo.director):
        umem = core.XdpUmem(frames=4096, frame_size=2048)
        run("ip", "-n", topo.director, "link", "set", "dev", "d0", "mtu",
            str(contract.max_mtu("xdp", 2048)))
        port = core.XdpPort("d0", ring_size=1024, umem=umem, mode="skb")
        port.close()


def test_packet_port_carries_jumbo_frames(topo):
    set_mtu(topo, 9000)
    with in_ns(topo.director):
        p0, p1 = core.PacketPort("d0"), core.PacketPort("d1")
    try:
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        sent = [bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                      / IP(src=topo.c0_ip, dst=VIP) / UDP(sport=20000 + i, dport=VPORT)
                      / (b"jb" + struct.pack("!I", i) + bytes([i]) * size))
                for i, size in enumerate((1500, 4000, 8900, 8900 - 28 - 6))]
        tx = raw_socket(topo.client, "c0")
        rx = raw_socket(topo.sink, "s0")
        try:
            drain(rx)
            for fr in sent:
                tx.send(fr)
            got = collect(rx, lambda fr: len(fr) > 44 and fr[42:44] == b"jb", timeout=3,
                          pump=lambda: core.poll(fwd, [p0, p1], timeout_ms=5))
        finally:
            tx.close()
            rx.close()
        assert sorted(g[12:] for g in got) == sorted(s[12:] for s in sent), \
            (len(got), p0.stats(), p1.stats())
        assert p1.stats()["tx_oversize"] == 0
    finally:
        p0.close()
        p1.close()
