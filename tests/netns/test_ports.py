"""The ring backends on veths in namespaces: XdpPort and PacketPort receive frames a raw
socket sent from the client namespace, a PassThrough rewrites their MACs and sends them out of
the other port, and they arrive in the sink namespace; the XDP program leaves ARP, ICMP and
non-service traffic to the kernel; close() leaves no XDP program and no nft table behind."""
import os
import struct
import sys
import time

import pytest

from tests.netns import netns_support
from tests.netns.netns_support import collect, drain, in_ns, raw_socket

core = pytest.importorskip("fastlvs.engine._core")
from fastlvs.system.ports import Steering, rx_queue_count, xdp_ports  # noqa: E402
testing = pytest.importorskip("fastlvs.engine._testing")
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

VIP, VPORT = "10.200.1.100", 9000
N = 40


def frames(topo, dport=VPORT, n=N, tag=b"fl"):
    return [bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                  / IP(src=topo.c0_ip, dst=VIP, ttl=9)
                  / UDP(sport=20000 + i, dport=dport)
                  / (tag + struct.pack("!I", i) + b"x" * 20)) for i in range(n)]


def is_ours(tag):
    def want(fr):
        return len(fr) > 42 and fr[12:14] == b"\x08\x00" and fr[42:42 + len(tag)] == tag
    return want


def forward_and_collect(topo, ports, fwd, sent, tag, timeout=3.0):
    tx = raw_socket(topo.client, "c0")
    rx = raw_socket(topo.sink, "s0")
    try:
        drain(rx)
        for fr in sent:
            tx.send(fr)
        got = collect(rx, is_ours(tag), timeout=timeout,
                      pump=lambda: core.poll(fwd, ports, timeout_ms=5))
        return got
    finally:
        tx.close()
        rx.close()


def check_forwarded(topo, got, sent):
    assert len(got) == len(sent), f"{len(got)} of {len(sent)} frames arrived"
    for fr in got:
        assert fr[0:6] == bytes.fromhex(topo.mac["s0"].replace(":", ""))
        assert fr[6:12] == bytes.fromhex(topo.mac["d1"].replace(":", ""))
    assert sorted(g[12:] for g in got) == sorted(s[12:] for s in sent)


def ping(topo, ip):
    return netns_support.ping(topo.client, ip)


def test_core_has_xdp():
    # the build machine has libxdp-dev/libbpf-dev/clang: the XDP backend must be in
    assert core.XDP_BUILT, core.XDP_MISSING
    assert os.path.exists(core._steer_obj_path())


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_xdp_port_forwards_service_traffic(topo, mode):
    with in_ns(topo.director):
        umem = core.XdpUmem(frames=4096)
        p0 = core.XdpPort("d0", mode=mode, ring_size=1024, umem=umem)
        p1 = core.XdpPort("d1", mode=mode, ring_size=1024, umem=umem)
    try:
        assert p0.backend == "xdp" and p0.mode.startswith(mode)
        assert topo.xdp_attached(topo.director, "d0")
        p0.add_service("udp", VIP, VPORT)
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        sent = frames(topo, tag=b"flx")
        got = forward_and_collect(topo, [p0, p1], fwd, sent, b"flx")
        check_forwarded(topo, got, sent)
        st0, st1 = p0.stats(), p1.stats()
        assert st0["rx"] == N and st1["tx"] == N and st1["tx_copies"] == 0   # by descriptor
        assert p0.steer_stats()["redirected"] >= N
        # not a service port: the program passes it to the kernel, nothing is forwarded
        other = frames(topo, dport=VPORT + 1, tag=b"fly")
        assert forward_and_collect(topo, [p0, p1], fwd, other, b"fly", timeout=0.5) == []
        assert p0.stats()["rx"] == N
        # ARP + ICMP to the director still answered by the kernel while attached
        assert ping(topo, topo.d0_ip)
    finally:
        p0.close()
        p1.close()
        p0.close()
        umem.close()
    assert not topo.xdp_attached(topo.director, "d0")
    assert not topo.xdp_attached(topo.director, "d1")
    assert ping(topo, topo.d0_ip)


def test_xdp_port_reflects_on_same_port(topo):
    # one port, MACs swapped, back out where it came from (TX descriptor = RX frame)
    with in_ns(topo.director):
        p0 = core.XdpPort("d0", ring_size=256)
    try:
        p0.add_service(17, VIP, VPORT)
        fwd = testing.PassThrough().add(p0)
        tx = raw_socket(topo.client, "c0")
        try:
            drain(tx)
            sent = frames(topo, n=10, tag=b"flr")
            for fr in sent:
                tx.send(fr)
            mine = bytes.fromhex(topo.mac["c0"].replace(":", ""))
            got = collect(tx, lambda fr: is_ours(b"flr")(fr) and fr[:6] == mine,
                          timeout=3, pump=lambda: core.poll(fwd, [p0], timeout_ms=5))
        finally:
            tx.close()
        assert len(got) == 10
        p0.del_service(17, VIP, VPORT)
        p0.del_service(17, VIP, VPORT)        # absent: no-op
    finally:
        p0.close()
    assert not topo.xdp_attached(topo.director, "d0")


def test_packet_port_forwards_and_drops_at_ingress(topo):
    with in_ns(topo.director):
        p0 = core.PacketPort("d0")
        p1 = core.PacketPort("d1")
        steer = Steering(p0)
    try:
        assert p0.backend == "packet"
        steer.add("service", "udp", VIP, VPORT)
        table = steer.nft_table
        assert table in topo.nft_tables(topo.director)
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        sent = frames(topo, tag=b"flp")
        got = forward_and_collect(topo, [p0, p1], fwd, sent, b"flp")
        check_forwarded(topo, got, sent)
        assert p1.stats()["tx"] == N
        assert ping(topo, topo.d0_ip)
    finally:
        steer.close()
        p0.close()
        p1.close()
    assert "fastlvs_" not in topo.nft_tables(topo.director)


def test_closed_port_refuses(topo):
    with in_ns(topo.director):
        p = core.PacketPort("d0")
        x = core.XdpPort("d1", ring_size=64)
    p.close()
    x.close()
    with pytest.raises(ValueError):
        core.poll(testing.PassThrough(), [p])
    with pytest.raises(ValueError):
        x.add_service("udp", VIP, VPORT)


def test_unknown_interface(topo):
    with in_ns(topo.director):
        with pytest.raises(OSError, match="no interface"):
            core.XdpPort("nosuch0")
        with pytest.raises(OSError, match="no interface"):
            core.PacketPort("nosuch0")


@pytest.mark.parametrize("backend", ["xdp", "packet"])
def test_transmit_reaches_the_peer(topo, backend):
    # transmit(): frames injected from Python leave the port and arrive at the veth peer
    with in_ns(topo.director):
        p = core.XdpPort("d1", ring_size=256) if backend == "xdp" else core.PacketPort("d1")
    rx = raw_socket(topo.sink, "s0")
    try:
        drain(rx)
        fr = bytes(Ether(src=topo.mac["d1"], dst=topo.mac["s0"]) / IP(src=topo.d1_ip,
                   dst=topo.s0_ip) / UDP(sport=5, dport=6) / b"fltransmit")
        assert testing.transmit(p, [fr], 25) == 25
        s0 = bytes.fromhex(topo.mac["s0"].replace(":", ""))
        # (the sink's own ICMP port-unreachable quotes the payload too: incoming only)
        got = collect(rx, lambda f: f[:6] == s0 and f.endswith(b"fltransmit"), timeout=2)
        assert len(got) == 25
    finally:
        rx.close()
        p.close()


def test_exit_without_close_leaves_nothing(topo):
    # a process that forgets close() still detaches its program and removes its table
    code = ("import fastlvs.engine._core as c\n"
            "x = c.XdpPort('d0', ring_size=64)\n"
            "from fastlvs.system.ports import Steering\n"
            "q = c.PacketPort('d1'); s = Steering(q); s.add('service', 'tcp', '10.200.2.50', 80)\n"
            "import subprocess; print('nft' if 'fastlvs_' in subprocess.run(['nft', 'list', "
            "'tables'], capture_output=True, text=True).stdout else 'none')\n")
    r = netns_support.run("ip", "netns", "exec", topo.director, sys.executable, "-c", code)
    assert r.stdout.strip() == "nft"
    assert not topo.xdp_attached(topo.director, "d0")
    assert "fastlvs_" not in topo.nft_tables(topo.director)


def test_xdp_ports_on_every_queue(topo):
    # a veth with two RX queues gets a socket on each, all on one UMEM; all detach on close
    netns_support.run("ip", "-n", topo.director, "link", "add", "m0", "numrxqueues", "2",
                 "numtxqueues", "2", "type", "veth", "peer", "name", "m1")
    netns_support.run("ip", "-n", topo.director, "link", "set", "m0", "up")
    netns_support.run("ip", "-n", topo.director, "link", "set", "m1", "up")
    with in_ns(topo.director):
        assert rx_queue_count("m0") == 2
        ports = xdp_ports("m0", ring_size=128)
    try:
        assert [p.queue for p in ports] == [0, 1]
        assert ports[0].umem is ports[1].umem
        assert all(v == 0 for v in ports[0].xsk_stats().values())
    finally:
        for p in ports:
            p.close()
    assert not topo.xdp_attached(topo.director, "m0")


@pytest.mark.parametrize("others", [0, 20], ids=["in-place", "hash-map"])
def test_xdp_leaves_replies_to_local_addresses_to_the_kernel(topo, others):
    # A NAT real server's frame is redirected when it goes to a client and passed when it
    # goes to one of the director's own addresses (its own connection's reply); with more
    # than 8 local addresses the program looks them up in fl_locals instead of in place.
    rip, rport, client = topo.c0_ip, 8080, "10.200.1.77"

    def from_rs(dst, tag):
        return [bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                      / IP(src=rip, dst=dst) / UDP(sport=rport, dport=30000 + i)
                      / (tag + b"x" * 20)) for i in range(10)]

    with in_ns(topo.director):
        umem = core.XdpUmem(frames=1024)
        p0 = core.XdpPort("d0", ring_size=128, umem=umem)
        p1 = core.XdpPort("d1", ring_size=128, umem=umem)
    try:
        p0.add_rserver("udp", rip, rport)
        for i in range(others):
            p0.add_local(f"10.99.0.{i + 1}")
        p0.add_local(topo.d0_ip)
        p0.add_local(topo.d0_ip)                           # twice: a no-op
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        to_client = from_rs(client, b"flc")
        got = forward_and_collect(topo, [p0, p1], fwd, to_client, b"flc")
        assert len(got) == 10 and p0.stats()["rx"] == 10
        passed = p0.steer_stats()["passed"]
        to_me = from_rs(topo.d0_ip, b"flm")
        assert forward_and_collect(topo, [p0, p1], fwd, to_me, b"flm", timeout=0.5) == []
        assert p0.stats()["rx"] == 10
        assert p0.steer_stats()["passed"] - passed >= 10
        # no longer local: taken again
        p0.del_local(topo.d0_ip)
        p0.del_local(topo.d0_ip)                           # absent: a no-op
        assert len(forward_and_collect(topo, [p0, p1], fwd, to_me, b"flm")) == 10
    finally:
        p0.close()
        p1.close()
        umem.close()


@pytest.mark.parametrize("backend", ["xdp", "packet"])
def test_vlan_tagged_service_traffic(topo, backend):
    # one 802.1Q tag: the program looks past it (XDP); AF_PACKET gets the tag back into the
    # frame from the ring header (the kernel strips it); the frame is forwarded with its tag
    from scapy.layers.l2 import Dot1Q
    with in_ns(topo.director):
        if backend == "xdp":
            umem = core.XdpUmem(frames=1024)
            ports = [core.XdpPort("d0", ring_size=128, umem=umem),
                     core.XdpPort("d1", ring_size=128, umem=umem)]
        else:
            ports = [core.PacketPort("d0"), core.PacketPort("d1")]
    p0, p1 = ports
    captured = []
    with in_ns(topo.director):
        steer = Steering(p0)
    try:
        steer.add("service", "udp", VIP, VPORT)
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        sent = [bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"]) / Dot1Q(vlan=42)
                      / IP(src=topo.c0_ip, dst=VIP) / UDP(sport=4000 + i, dport=VPORT)
                      / (b"flv" + bytes([i]))) for i in range(5)]
        tx = raw_socket(topo.client, "c0")
        # on d1's side the kernel of the sink strips the tag again: watch with auxdata
        rx = raw_socket(topo.sink, "s0")
        rx.setsockopt(263, 8, 1)          # SOL_PACKET, PACKET_AUXDATA
        try:
            drain(rx)
            for fr in sent:
                tx.send(fr)
            import select
            import time
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(captured) < 5:
                core.poll(fwd, ports, timeout_ms=5)
                if not select.select([rx], [], [], 0.01)[0]:
                    continue
                data, anc, _, _ = rx.recvmsg(2048, 1024)
                if data[:6] == bytes.fromhex(topo.mac["s0"].replace(":", "")) and b"flv" in data:
                    tci = None
                    for level, typ, val in anc:
                        if level == 263 and typ == 8:
                            # struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci
                            st, _l, _s, _m, _n, tci = struct.unpack("IIIHHH", val[:18])
                            tci = tci if st & 0x10 else None          # TP_STATUS_VLAN_VALID
                    if tci is None and data[12:14] == b"\x81\x00":
                        tci = int.from_bytes(data[14:16], "big")
                    captured.append(tci)
        finally:
            tx.close()
            rx.close()
        assert len(captured) == 5
        assert all(t is not None and t & 0xFFF == 42 for t in captured), captured
        if backend == "xdp":
            assert p0.steer_stats()["redirected"] >= 5
    finally:
        steer.close()
        for p in ports:
            p.close()


def test_steering_past_the_in_place_set(topo):
    # The program compares up to 8 keys of a kind in place and asks its hash map beyond
    # that: the same traffic is steered with 1, 12 and (after deletions) 3 services, and
    # none once the service itself is gone.
    with in_ns(topo.director):
        umem = core.XdpUmem(frames=4096)
        p0 = core.XdpPort("d0", ring_size=1024, umem=umem)
        p1 = core.XdpPort("d1", ring_size=1024, umem=umem)
    try:
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])

        def steered(tag):
            sent = frames(topo, tag=tag)
            got = forward_and_collect(topo, [p0, p1], fwd, sent, tag, timeout=1.0)
            return len(got) == len(sent)

        p0.add_service("udp", VIP, VPORT)
        assert steered(b"fa1")
        others = [("tcp", VIP, VPORT)] + [("udp", f"10.99.0.{i}", 53) for i in range(10)]
        for o in others:
            p0.add_service(*o)
            p0.add_rserver(*o)          # the other kind passes 8 too
        assert steered(b"fa2")
        p0.add_service("udp", VIP, VPORT)        # twice: still one key
        for o in others[3:]:
            p0.del_service(*o)
        assert steered(b"fa3")
        p0.del_service("udp", VIP, VPORT)
        assert not steered(b"fa4")
        assert p0.stats()["rx"] == 3 * N
    finally:
        p0.close()
        p1.close()
        umem.close()


def test_xdp_steers_icmp_errors_by_the_packet_they_quote(topo):
    # An ICMP error is redirected when what it quotes is a service's packet to a client
    # (VIP:vport -> client) or a request a NAT real server got from a client (client ->
    # RIP:rport); other ICMP (an echo, an error about anything else, or about the director's
    # own connection to the server) stays the kernel's.
    from scapy.layers.inet import ICMP
    rip, rport, client = "10.200.1.50", 8080, topo.c0_ip

    def error(quoted, tag, dst=VIP, typ=3, code=4):
        return bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"])
                     / IP(src=topo.c0_ip, dst=dst) / ICMP(type=typ, code=code)
                     / bytes(quoted / tag))

    def steered(sent, tag, timeout=1.0):
        tx = raw_socket(topo.client, "c0")
        rx = raw_socket(topo.sink, "s0")
        try:
            drain(rx)
            for fr in sent:
                tx.send(fr)
            return collect(rx, lambda fr: fr[12:14] == b"\x08\x00" and tag in fr,
                           timeout=timeout, pump=lambda: core.poll(fwd, [p0, p1], timeout_ms=5))
        finally:
            tx.close()
            rx.close()

    with in_ns(topo.director):
        umem = core.XdpUmem(frames=1024)
        p0 = core.XdpPort("d0", ring_size=128, umem=umem)
        p1 = core.XdpPort("d1", ring_size=128, umem=umem)
    try:
        p0.add_service("udp", VIP, VPORT)
        p0.add_rserver("udp", rip, rport)
        p0.add_local(topo.d0_ip)
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])
        about_reply = [error(IP(src=VIP, dst=client) / UDP(sport=VPORT, dport=20000 + i),
                             b"fle%d" % i, typ=t) for i, t in enumerate((3, 4, 11))]
        assert len(steered(about_reply, b"fle")) == 3
        about_request = [error(IP(src=client, dst=rip) / UDP(sport=20000, dport=rport), b"flq",
                               dst=client)]
        assert len(steered(about_request, b"flq")) == 1
        redirected = p0.steer_stats()["redirected"]
        not_ours = [
            error(IP(src=VIP, dst=client) / UDP(sport=VPORT + 1, dport=20000), b"fln"),
            error(IP(src=VIP, dst=client) / UDP(sport=VPORT, dport=20000), b"fln", typ=12),
            error(IP(src=topo.d0_ip, dst=rip) / UDP(sport=20000, dport=rport), b"fln",
                  dst=topo.d0_ip),
            bytes(Ether(src=topo.mac["c0"], dst=topo.mac["d0"]) / IP(src=topo.c0_ip, dst=VIP)
                  / ICMP() / b"fln"),
        ]
        assert steered(not_ours, b"fln", timeout=0.5) == []
        assert p0.steer_stats()["redirected"] == redirected
        assert p0.stats()["rx"] == 4
    finally:
        p0.close()
        p1.close()
        umem.close()


def test_xdp_steers_every_port_of_a_port0_service(topo):
    # A port-0 key takes every port of its address, looked for after the exact key missed:
    # in the in-place set and past it (the hash map, where the address's fragment key with
    # port 0 must not pass for it), and no longer once it is deleted.
    with in_ns(topo.director):
        umem = core.XdpUmem(frames=4096)
        p0 = core.XdpPort("d0", ring_size=1024, umem=umem)
        p1 = core.XdpPort("d1", ring_size=1024, umem=umem)
    try:
        fwd = testing.PassThrough().add(p0, p1, src_mac=topo.mac["d1"], dst_mac=topo.mac["s0"])

        def steered(tag, dport):
            sent = frames(topo, dport=dport, n=8, tag=tag)
            got = forward_and_collect(topo, [p0, p1], fwd, sent, tag, timeout=1.0)
            return len(got) == len(sent)

        p0.add_service("udp", VIP, VPORT)
        assert steered(b"fq1", VPORT) and not steered(b"fq2", 7)
        p0.add_service("udp", VIP, 0)
        assert steered(b"fq3", 7) and steered(b"fq4", VPORT)
        for i in range(10):
            p0.add_service("udp", f"10.99.0.{i}", 53)
        assert steered(b"fq5", 7) and steered(b"fq6", 4242)
        p0.del_service("udp", VIP, 0)
        assert not steered(b"fq7", 7) and steered(b"fq8", VPORT)
        for i in range(10):
            p0.del_service("udp", f"10.99.0.{i}", 53)
        assert not steered(b"fq9", 7) and steered(b"fqa", VPORT)
    finally:
        p0.close()
        p1.close()
        umem.close()
