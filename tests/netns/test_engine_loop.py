"""The engine driven by the ring loop: UDP flows to a virtual service arrive on d0 (XdpPort or
PacketPort), the engine picks the one real server behind d1 (Python scheduler callback, once
per batch), and the frames leave d1 rewritten by DR (MACs), NAT (destination address) or TUN
(an outer IPv4 header, built in the frame's headroom): checked byte-wise in the sink namespace.
"""
import ipaddress
import struct

import pytest

from tests.netns.netns_support import collect, drain, in_ns, raw_socket

core = pytest.importorskip("fastlvs.engine._core")
from fastlvs.system.ports import Steering  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

VIP, VPORT, RPORT = "10.200.1.100", 9000, 7000
N = 30


def mac_bytes(m):
    return bytes.fromhex(m.replace(":", ""))


def make_ports(topo, backend):
    with in_ns(topo.director):
        if backend == "xdp":
            umem = core.XdpUmem(frames=4096)
            ports = [core.XdpPort("d0", ring_size=1024, umem=umem),
                     core.XdpPort("d1", ring_size=1024, umem=umem)]
        else:
            umem = None
            ports = [core.PacketPort("d0"), core.PacketPort("d1")]
        return ports, umem, Steering(ports[0])


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
@pytest.mark.parametrize("backend", ["xdp", "packet"])
def test_engine_forwards_through_the_ring_loop(topo, backend, fwd):
    if backend == "xdp" and not core.XDP_BUILT:
        pytest.skip(core.XDP_MISSING)
    ports, umem, steer = make_ports(topo, backend)
    p0, p1 = ports
    try:
        eng = core.Engine(capacity=1024, local_ip=topo.d1_ip, local_mac=topo.mac["d1"])
        eng.set_service(1, "udp", VIP, VPORT)
        eng.set_dest(1, 1, topo.s0_ip, RPORT, fwd=fwd, mac=topo.mac["s0"], ifindex=p1.ifindex)
        calls = []

        def schedule(svc_ids, flows):
            calls.append(len(flows))
            return [1] * len(flows)

        eng.set_scheduler_callback(schedule)
        steer.add("service", "udp", VIP, VPORT)
        tx = raw_socket(topo.client, "c0")
        rx = raw_socket(topo.sink, "s0")
        try:
            drain(rx)
            for i in range(N):
                tx.send(bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                              / IP(src=topo.c0_ip, dst=VIP, ttl=9)
                              / UDP(sport=30000 + i, dport=VPORT)
                              / (b"fle" + struct.pack("!I", i))))
            s0 = mac_bytes(topo.mac["s0"])

            def want(fr):
                return fr[:6] == s0 and b"fle" in fr[-7:]
            got = collect(rx, want, timeout=3, pump=lambda: core.poll(eng, ports, timeout_ms=5))
        finally:
            tx.close()
            rx.close()
        assert len(got) == N, (len(got), eng.stats(), p0.stats(), p1.stats())
        assert sum(calls) == N
        for fr in got:
            e = Ether(fr)
            assert e.src == topo.mac["d1"]
            if fwd == "dr":
                assert e[IP].dst == VIP and e[UDP].dport == VPORT
            elif fwd == "nat":
                assert e[IP].dst == topo.s0_ip and e[UDP].dport == RPORT
                # the checksums scapy computes from scratch for the rewritten packet
                fresh = IP(bytes(e[IP]))
                del fresh.chksum
                del fresh[UDP].chksum
                fresh = IP(bytes(fresh))
                assert (fresh.chksum, fresh[UDP].chksum) == (e[IP].chksum, e[UDP].chksum)
            else:
                outer = e[IP]
                assert outer.proto == 4 and outer.dst == topo.s0_ip and outer.src == topo.d1_ip
                inner = IP(bytes(outer.payload))
                assert inner.dst == VIP and inner[UDP].dport == VPORT
        assert eng.stats()["tx"] == N
        assert eng.dest_stats(1)["conns"] == N
        assert p1.stats()["tx"] == N
        if backend == "xdp":
            assert p1.stats()["tx_copies"] == 0
    finally:
        steer.close()
        p0.close()
        p1.close()
        if umem is not None:
            umem.close()
    assert not topo.xdp_attached(topo.director, "d0")
    assert "fastlvs_" not in topo.nft_tables(topo.director)


def test_callback_error_is_raised_after_the_pass(topo):
    ports, umem, steer = make_ports(topo, "packet")
    try:
        eng = core.Engine(capacity=64, local_mac=topo.mac["d1"])
        eng.set_service(1, "udp", VIP, VPORT)
        eng.set_dest(1, 1, topo.s0_ip, RPORT, fwd="dr", mac=topo.mac["s0"],
                     ifindex=ports[1].ifindex)

        def boom(svc_ids, flows):
            raise KeyError("scheduler broke")

        eng.set_scheduler_callback(boom)
        steer.add("service", "udp", VIP, VPORT)
        tx = raw_socket(topo.client, "c0")
        try:
            tx.send(bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                          / IP(src=topo.c0_ip, dst=VIP) / UDP(sport=1, dport=VPORT) / b"x"))
        finally:
            tx.close()
        with pytest.raises(KeyError, match="scheduler broke"):
            for _ in range(200):
                core.poll(eng, ports, timeout_ms=10)
        assert eng.stats()["callback_error"] == 1
    finally:
        steer.close()
        for p in ports:
            p.close()
