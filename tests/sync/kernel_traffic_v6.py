"""The services and client traffic of the kernel recording of IPv6, firewall-mark and SCTP
sync (tests/fixtures/kernel/sync_v6_master.json, made by scripts/sync_v6_job.py), rebuilt for
a fastlvs engine: the same services (dest id = service id; SCTP over IPv6 and the v6 mark
service aside), mark rules for the v4 marks, and
the job's frames in its order at its step times. The v6 firewall-mark service (mark 8) is left
out where the engine has no v6 mark services, and SCTP over IPv6 always (the engine forwards
SCTP over IPv4 only); `served_entry` says which recorded entries are theirs."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers import sctp as S

VIP, VIP6, CL, CL6 = "10.0.1.1", "2001:db8:1::1", "10.0.1.2", "2001:db8:1::2"
R2, R3, R4 = "2001:db8:2::2", "2001:db8:2::3", "2001:db8:2::4"
LOCAL6 = "2001:db8:9::1"
CL_MAC, LOCAL_MAC, GW_MAC, RS_MAC = ("02:00:00:00:00:aa", "02:00:00:00:00:01",
                                     "02:00:00:00:00:fe", "02:00:00:00:01:02")
NS = 1_000_000_000
# (svc id, proto or ("fwm", mark), vaddr, vport, persist, dest ip, dest port, fwd)
SERVICES = [
    (1, 6, VIP, 80, 0, "10.0.2.2", 80, "dr"),
    (2, ("fwm", 7), None, 0, 0, "10.0.2.2", 0, "dr"),
    (3, ("fwm", 9), None, 0, 60, "10.0.2.3", 9100, "nat"),
    (4, 132, VIP, 7000, 0, "10.0.2.3", 7001, "nat"),
    (5, 132, VIP, 7100, 0, "10.0.2.2", 7100, "dr"),
    (6, 6, VIP6, 80, 0, R2, 80, "dr"),
    (7, 6, VIP6, 8080, 0, R3, 8080, "nat"),
    (8, 17, VIP6, 53, 0, R3, 53, "nat"),
    (9, 17, VIP6, 54, 0, R2, 54, "dr"),
    (10, 6, VIP6, 81, 0, R4, 81, "tun"),
    (11, 6, VIP6, 443, 300, R4, 443, "dr"),
]
MARKS = [(7, "tcp", VIP + "/32", 9000, 9000), (9, "tcp", VIP + "/32", 9100, 9100)]
# the v6 mark service (mark 8, persistent DR) and its rule, where the engine has v6 marks
MARK6_SVC = (12, ("fwm", 8), None, 0, 120, R2, 0, "dr")
MARK6_RULE = (8, "tcp", VIP6 + "/128", 9000, 9000)


def _has_v6_marks() -> bool:
    from fastlvs.engine import reference
    try:
        reference.Engine(capacity=16).set_fwm_service(1, 8, af=6)
    except TypeError:
        return False
    return True


V6_MARKS = _has_v6_marks()


def services():
    """SERVICES, and the v6 mark service where the engine has v6 marks."""
    return SERVICES + ([MARK6_SVC] if V6_MARKS else [])


def dest_mac(sid):
    return "02:00:00:00:01:%02x" % sid


def configure(e, scheduler=None):
    """The recording's services on engine e; the scheduler picks the service's one dest."""
    e.set_local(local_ip6=LOCAL6)
    for sid, proto, vaddr, vport, persist, rip, rport, fwd in services():
        if isinstance(proto, tuple):
            kw = {"af": 6} if ":" in rip else {}
            e.set_fwm_service(sid, proto[1], persist_timeout=persist, **kw)
        else:
            e.set_service(sid, proto, vaddr, vport, persist_timeout=persist)
        e.set_dest(sid, sid, rip, rport, fwd, dest_mac(sid), ifindex=10 + sid, weight=1)
    e.set_marks(MARKS + ([MARK6_RULE] if V6_MARKS else []))
    e.set_gateway_mac(GW_MAC, ifindex=2)
    e.set_gateway6_mac(GW_MAC, ifindex=2)
    e.set_scheduler_callback(scheduler or (lambda svcs, flows: list(svcs)))
    return e


def _ip(src, dst):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def c_tcp(cport, vport, flags, load=b"", v6=False):
    ip = _ip(CL6, VIP6) if v6 else _ip(CL, VIP)
    return bytes(Ether(src=CL_MAC, dst=LOCAL_MAC) / ip
                 / TCP(sport=cport, dport=vport, flags=flags, seq=1000, ack=5001) / load)


def r_tcp(rip, rport, cport, flags):
    return bytes(Ether(src=RS_MAC, dst=LOCAL_MAC) / _ip(rip, CL6 if ":" in rip else CL)
                 / TCP(sport=rport, dport=cport, flags=flags, seq=5000, ack=1001))


def c_udp(cport, vport, v6=True):
    ip = _ip(CL6, VIP6) if v6 else _ip(CL, VIP)
    return bytes(Ether(src=CL_MAC, dst=LOCAL_MAC) / ip / UDP(sport=cport, dport=vport) / b"q")


_CHUNKS = {
    "INIT": lambda t: S.SCTPChunkInit(init_tag=t, a_rwnd=65535, n_out_streams=1,
                                      n_in_streams=1, init_tsn=1),
    "INIT_ACK": lambda t: S.SCTPChunkInitAck(init_tag=t + 1, a_rwnd=65535, n_out_streams=1,
                                             n_in_streams=1, init_tsn=1),
    "COOKIE_ECHO": lambda t: S.SCTPChunkCookieEcho(cookie=b"c" * 8),
    "COOKIE_ACK": lambda t: S.SCTPChunkCookieAck(),
    "DATA": lambda t: S.SCTPChunkData(tsn=1, stream_id=0, stream_seq=0, data=b"hello"),
    "SHUTDOWN": lambda t: S.SCTPChunkShutdown(cumul_tsn_ack=1),
    "SHUTDOWN_ACK": lambda t: S.SCTPChunkShutdownAck(),
    "SHUTDOWN_COMPLETE": lambda t: S.SCTPChunkShutdownComplete(),
}


def sctp(src, sport, dst, dport, chunk, client=True):
    tag = 0x1000 + (sport if client else dport)
    body = S.SCTP(sport=sport, dport=dport, tag=0 if chunk == "INIT" else tag) / _CHUNKS[chunk](tag)
    return bytes(Ether(src=CL_MAC if client else RS_MAC, dst=LOCAL_MAC) / _ip(src, dst) / body)


def tcp_open(cport, vport, nat_rs=None, v6=False):
    out = [c_tcp(cport, vport, "S", v6=v6)]
    if nat_rs:
        out.append(r_tcp(nat_rs, vport, cport, "SA"))
    return out + [c_tcp(cport, vport, "A", v6=v6), c_tcp(cport, vport, "PA", b"hello", v6=v6)]


def steps():
    """[(t in s, [frames])]: the job's steps at the times it recorded (mark 8's where the
    engine has v6 marks, SCTP over IPv6 left out)."""
    nat_assoc = [sctp(CL, 40001, VIP, 7000, "INIT"),
                 sctp("10.0.2.3", 7001, CL, 40001, "INIT_ACK", False),
                 sctp(CL, 40001, VIP, 7000, "COOKIE_ECHO"),
                 sctp("10.0.2.3", 7001, CL, 40001, "COOKIE_ACK", False),
                 sctp(CL, 40001, VIP, 7000, "DATA"), sctp(CL, 40001, VIP, 7000, "DATA"),
                 sctp(CL, 40001, VIP, 7000, "SHUTDOWN"),
                 sctp("10.0.2.3", 7001, CL, 40001, "SHUTDOWN_ACK", False),
                 sctp(CL, 40001, VIP, 7000, "SHUTDOWN_COMPLETE")]
    return [
        (0.764, tcp_open(10061, 80, v6=True) + [c_tcp(10061, 80, "FA", v6=True)]),
        (1.185, tcp_open(10071, 8080, R3, v6=True)),
        (1.347, tcp_open(10072, 8080, R3, v6=True)
         + [c_tcp(10072, 8080, "FA", v6=True), r_tcp(R3, 8080, 10072, "FA"),
            c_tcp(10072, 8080, "A", v6=True)]),
        (1.719, [c_udp(10081, 53)] * 3 + [c_udp(10082, 54)] * 3),
        (1.988, tcp_open(10091, 81, v6=True)),
        (2.096, tcp_open(10101, 443, v6=True) + tcp_open(10102, 443, v6=True)),
        (2.632, tcp_open(10041, 9000)),
        (2.846, tcp_open(10042, 9100, "10.0.2.3")),
    ] + ([(3.049, tcp_open(10043, 9000, v6=True))] if V6_MARKS else []) + [
        (3.233, nat_assoc),
        (3.756, [sctp(CL, 40002, VIP, 7100, ch) for ch in
                 ("INIT", "COOKIE_ECHO", "DATA", "DATA", "SHUTDOWN", "SHUTDOWN_COMPLETE")]),
    ]


BULK_T = 4.312


def bulk():
    """The job's last step: 45 v6 UDP flows to :54, three datagrams each, back to back."""
    out = []
    for i in range(45):
        out += [c_udp(20000 + i, 54)] * 3
    return out


def served_entry(c) -> bool:
    """A recorded entry of a kind this engine makes: all but the v6 mark 8's and SCTP over
    IPv6 (not forwarded)."""
    return (V6_MARKS or c.fwmark != 8) and not (c.protocol == 132 and c.ipv6)
