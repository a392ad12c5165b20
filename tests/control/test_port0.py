"""Port-0 services (ipvsadm -A -t VIP:0 -p T): every port of the VIP, persistence required,
a service on the very port first; conns keep the client's port, which a dest on port 0
takes. Driven through `fastlvs admin` over each engine, outputs parsed with scapy."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC
from tests.core.helpers import checksums_ok

VIP = "203.0.113.10"
CLIENT = "198.51.100.7"
S = 1_000_000_000


def _tcp(dport, sport=5000, flags="S", src=CLIENT):
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=src, dst=VIP)
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000))


def _udp(dport, sport=5000):
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=CLIENT, dst=VIP)
                 / UDP(sport=sport, dport=dport) / (b"q" * 20))


def test_port0_without_persistence_is_refused_as_ipvsadm_does(daemon):
    for argv in (("-A", "-t", f"{VIP}:0", "-s", "rr"), ("-A", "-u", VIP, "-s", "wlc")):
        assert daemon.admin(*argv) == (2, "", "Zero port specified for non-persistent service\n")
    daemon.ok("-A", "-t", f"{VIP}:0", "-s", "rr", "-p", "300")
    # an edit replaces every setting: without -p it would make the service non-persistent
    assert daemon.admin("-E", "-t", f"{VIP}:0", "-s", "rr")[0] == 2
    assert "TCP  203.0.113.10:0 rr persistent 300" in daemon.ok("-Ln")


def test_port0_dr_every_port_and_the_specific_service_first(daemon):
    daemon.ok("-A", "-t", f"{VIP}:0", "-s", "rr", "-p", "300")
    daemon.ok("-a", "-t", f"{VIP}:0", "-r", "192.0.2.11", "-g")
    daemon.ok("-a", "-t", f"{VIP}:0", "-r", "192.0.2.12", "-g")
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.13:80", "-g")
    daemon.ok("-A", "-u", f"{VIP}:0", "-s", "rr", "-p", "300")
    daemon.ok("-a", "-u", f"{VIP}:0", "-r", "192.0.2.12", "-g")
    listing = daemon.ok("-Ln")
    assert "TCP  203.0.113.10:0 rr persistent 300" in listing
    assert "  -> 192.0.2.11:0" in listing and "UDP  203.0.113.10:0 rr persistent 300" in listing
    with daemon.lock:
        out = daemon.engine.process([_tcp(22), _tcp(443), _tcp(80), _tcp(8080, sport=5001),
                                     _udp(53)], 1 * S)
    assert len(out) == 5
    pkts = [Ether(f) for _, _, f in out]
    for p in pkts:
        assert checksums_ok(bytes(p))
        assert p[IP].dst == VIP                      # DR: the frame is unchanged but for MACs
    # one template for the client: 22, 443 and 8080 go to the same server; 80 to its own
    ports = [p.dport for p in pkts]
    assert ports == [22, 443, 80, 8080, 53]
    assert pkts[0].dst == pkts[1].dst == pkts[3].dst
    assert pkts[2].dst != pkts[0].dst
    rip = {f"02:00:00:00:01:{i:02x}": f"192.0.2.{i}" for i in (11, 12)}[pkts[0].dst]
    rows = {tuple(line.split()[3:]) for line in daemon.ok("-Lnc").splitlines()[2:]}
    # the conns keep their ports; the template is <client:0, VIP:0, RIP:0> as in IPVS
    assert {(f"{CLIENT}:5000", f"{VIP}:22", f"{rip}:22"),
            (f"{CLIENT}:5000", f"{VIP}:443", f"{rip}:443"),
            (f"{CLIENT}:5001", f"{VIP}:8080", f"{rip}:8080"),
            (f"{CLIENT}:0", f"{VIP}:0", f"{rip}:0")} <= rows
    assert (f"{CLIENT}:5000", f"{VIP}:80", "192.0.2.13:80") in rows


def test_port0_nat_keeps_the_clients_port_whatever_the_dest_port(daemon):
    daemon.ok("-A", "-t", f"{VIP}:0", "-s", "rr", "-p", "300")
    daemon.ok("-a", "-t", f"{VIP}:0", "-r", "192.0.2.11:0", "-m")
    c2 = "198.51.100.9"
    with daemon.lock:
        daemon.engine.set_neighbor(CLIENT, CLIENT_MAC, 3)
        daemon.engine.set_neighbor(c2, CLIENT_MAC, 3)
        out = daemon.engine.process([_tcp(22), _tcp(443)], 1 * S)
    pkts = [Ether(f) for _, _, f in out]
    assert [(p[IP].dst, p[TCP].dport, p[TCP].sport) for p in pkts] == [
        ("192.0.2.11", 22, 5000), ("192.0.2.11", 443, 5000)]
    assert all(checksums_ok(bytes(p)) for p in pkts)
    # the server's replies from each port go back from VIP:that port
    replies = [bytes(Ether(dst=LOCAL_MAC) / IP(src="192.0.2.11", dst=CLIENT)
                     / TCP(sport=sp, dport=5000, flags="SA")) for sp in (443, 22, 9999)]
    with daemon.lock:
        back = daemon.engine.process_verdicts(replies, 2 * S)
    assert [v[0] for v in back] == ["tx", "tx", "pass"]
    for v, sp in zip(back[:2], (443, 22)):
        p = Ether(v[3])
        assert (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport) == (VIP, sp, CLIENT, 5000)
        assert checksums_ok(v[3])
    conns = daemon.ok("-Lnc")
    assert f"{VIP}:22" in conns and "192.0.2.11:22" in conns
    assert f"{VIP}:443" in conns and "192.0.2.11:443" in conns
    # a dest with a port of its own: the conns still keep the client's port, as 6.1 does
    # (tests/fixtures/kernel/port0.json); its replies are steered from every port
    daemon.ok("-d", "-t", f"{VIP}:0", "-r", "192.0.2.11:0")
    daemon.ok("-a", "-t", f"{VIP}:0", "-r", "192.0.2.12:8443", "-m")
    with daemon.lock:
        out = daemon.engine.process([_tcp(25, src=c2), _tcp(26, src=c2)], 3 * S)
    pkts = [Ether(f) for _, _, f in out]
    assert [(p[IP].dst, p[TCP].dport) for p in pkts] == [("192.0.2.12", 25), ("192.0.2.12", 26)]
    assert all(checksums_ok(bytes(p)) for p in pkts)
    replies = [bytes(Ether(dst=LOCAL_MAC) / IP(src="192.0.2.12", dst=c2)
                     / TCP(sport=sp, dport=5000, flags="SA")) for sp in (26, 8443)]
    with daemon.lock:
        back = daemon.engine.process_verdicts(replies, 4 * S)
    assert [v[0] for v in back] == ["tx", "pass"]
    p = Ether(back[0][3])
    assert (p[IP].src, p[TCP].sport) == (VIP, 26) and checksums_ok(back[0][3])
    rows = {tuple(line.split()[3:]) for line in daemon.ok("-Lnc").splitlines()[2:]}
    assert {(f"{c2}:5000", f"{VIP}:25", "192.0.2.12:25"),
            (f"{c2}:5000", f"{VIP}:26", "192.0.2.12:26"),
            (f"{c2}:0", f"{VIP}:0", "192.0.2.12:0")} <= rows
    steer = daemon.director.steering(1)
    assert ("rserver", "tcp", "192.0.2.12", 0) in steer[1]
    assert ("service", "tcp", VIP, 0) in steer[1]
