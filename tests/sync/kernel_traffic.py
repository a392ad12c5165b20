"""The services and the client traffic of the kernel master recording (tests/fixtures/kernel/
sync_master.json, made by scripts/sync_job.py), rebuilt for a fastlvs engine: the IPv4
services fastlvs serves (DR :80, NAT :8080, NAT udp :53, DR udp :54, persistent DR :443)
and the job's frames in its order and at its step times. The fwmark, sip and IPv6 steps
are left out (not served by this engine); `recorded_kind` says which of the recorded
entries they are."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

VIP, CL = "10.0.1.1", "10.0.1.2"
CL_MAC, LOCAL_MAC, GW_MAC = "02:00:00:00:00:aa", "02:00:00:00:00:01", "02:00:00:00:00:fe"
S = 1_000_000_000
# (svc id, proto, vport, persist, dest ip, dest port, fwd)
SERVICES = [(1, 6, 80, 0, "10.0.2.2", 80, "dr"), (2, 6, 8080, 0, "10.0.2.3", 8080, "nat"),
            (3, 17, 53, 0, "10.0.2.3", 53, "nat"), (4, 17, 54, 0, "10.0.2.2", 54, "dr"),
            (5, 6, 443, 300, "10.0.2.4", 443, "dr")]


def configure(e, served=True):
    """Services 1..5 with dest id = service id; the scheduler picks the one dest."""
    for sid, proto, vport, persist, rip, rport, fwd in SERVICES:
        e.set_service(sid, proto, VIP, vport, persist_timeout=persist)
        e.set_dest(sid, sid, rip, rport, fwd, "02:00:00:00:01:%02x" % sid, ifindex=10 + sid,
                   weight=1)
        if not served:
            e.set_vip_served(proto, VIP, vport, False)
    e.set_gateway_mac(GW_MAC, ifindex=2)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    return e


def c_tcp(cport, vport, flags, load=b""):
    return bytes(Ether(src=CL_MAC, dst=LOCAL_MAC) / IP(src=CL, dst=VIP)
                 / TCP(sport=cport, dport=vport, flags=flags, seq=1000, ack=5001) / load)


def r_tcp(rip, rport, cport, flags):
    return bytes(Ether(src="02:00:00:00:01:02", dst=LOCAL_MAC) / IP(src=rip, dst=CL)
                 / TCP(sport=rport, dport=cport, flags=flags, seq=5000, ack=1001))


def c_udp(cport, vport, load=b"q"):
    return bytes(Ether(src=CL_MAC, dst=LOCAL_MAC) / IP(src=CL, dst=VIP)
                 / UDP(sport=cport, dport=vport) / load)


def _open(cport, vport, nat_rs=None):
    out = [c_tcp(cport, vport, "S")]
    if nat_rs:
        out.append(r_tcp(nat_rs, vport, cport, "SA"))
    return out + [c_tcp(cport, vport, "A"), c_tcp(cport, vport, "PA", b"hello")]


def steps():
    """[(t in s, [frames])]: the job's steps at the times it recorded, IPv4 and served."""
    nat = "10.0.2.3"
    return [
        (0.828, _open(10001, 80)),
        (1.412, _open(10002, 80) + [c_tcp(10002, 80, "FA")]),
        (1.686, _open(10003, 80) + [c_tcp(10003, 80, "R")]),
        (2.017, _open(10011, 8080, nat)),
        (2.14, _open(10012, 8080, nat) + [c_tcp(10012, 8080, "FA")]),
        (2.288, _open(10013, 8080, nat) + [r_tcp(nat, 8080, 10013, "FA"),
                                           c_tcp(10013, 8080, "A")]),
        (2.507, _open(10014, 8080, nat) + [c_tcp(10014, 8080, "FA"),
                                           r_tcp(nat, 8080, 10014, "FA"),
                                           c_tcp(10014, 8080, "A")]),
        (2.895, [c_udp(10021, 53)] * 3),
        (3.064, [c_udp(10022, 54)] * 3),
        (3.357, _open(10031, 443) + _open(10032, 443)),
    ]


def bulk():
    """The job's last step: 45 UDP flows to :54, three datagrams each, back to back."""
    out = []
    for i in range(45):
        out += [c_udp(20000 + i, 54)] * 3
    return out


def run(e, frames, t0, gap=20_000_000):
    """Feed frames one at a time, `gap` ns apart (the job's pause: 20 ms), from t0 (ns)."""
    t = t0
    for f in frames:
        e.process([f], [t])
        t += gap
    return t


def recorded_kind(c) -> bool:
    """A recorded entry of a kind this engine serves (IPv4, no fwmark, no pe data)."""
    return not c.ipv6 and not c.fwmark and c.pe_data is None and c.vport != 5060
