"""Packet test cases as data: each case is one sentence plus a scapy-built frame, shared by
the engine tests and benchmarks/test_engine_bench.py. Addresses follow one fixed topology:
clients 198.51.100.0/24, VIP 203.0.113.10, real servers 192.0.2.11.., director 192.0.2.1.
"""
from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

VIP = "203.0.113.10"
VPORT = 80
LOCAL_IP = "192.0.2.1"
LOCAL_MAC = "02:00:00:00:00:01"
CLIENT = "198.51.100.7"
CLIENT_MAC = "02:00:00:00:00:aa"
GW_MAC = "02:00:00:00:00:fe"
RS = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
RS_MAC = ["02:00:00:00:01:11", "02:00:00:00:01:12", "02:00:00:00:01:13"]


def eth(vlan: int | None = None, src=CLIENT_MAC, dst=LOCAL_MAC):
    e = Ether(src=src, dst=dst)
    return e / Dot1Q(vlan=vlan) if vlan is not None else e


def tcp(flags="S", sport=40000, dport=VPORT, src=CLIENT, dst=VIP, payload=b"", vlan=None,
        ip_opts=None, df=True, **ip_kw) -> bytes:
    ip = IP(src=src, dst=dst, flags="DF" if df else 0, **ip_kw)
    if ip_opts is not None:
        ip.options = ip_opts
    return bytes(eth(vlan) / ip / TCP(sport=sport, dport=dport, flags=flags, seq=1000,
                                      ack=2000 if "A" in flags else 0) / payload)


def udp(sport=40000, dport=53, src=CLIENT, dst=VIP, payload=b"q" * 20, vlan=None,
        zero_csum=False, df=False) -> bytes:
    u = UDP(sport=sport, dport=dport)
    if zero_csum:
        u.chksum = 0
    return bytes(eth(vlan) / IP(src=src, dst=dst, flags="DF" if df else 0) / u / payload)


def reply_tcp(flags="SA", rs=RS[0], rport=8080, client=CLIENT, cport=40000,
              payload=b"") -> bytes:
    """A real server's NAT reply towards the client, arriving from the RS side."""
    return bytes(Ether(src=RS_MAC[0], dst=LOCAL_MAC) / IP(src=rs, dst=client)
                 / TCP(sport=rport, dport=cport, flags=flags, seq=5000, ack=1001) / payload)


def reply_udp(rs=RS[0], rport=5353, client=CLIENT, cport=40000, payload=b"a" * 30) -> bytes:
    return bytes(Ether(src=RS_MAC[0], dst=LOCAL_MAC) / IP(src=rs, dst=client)
                 / UDP(sport=rport, dport=cport) / payload)


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    frame: bytes


def _corrupt_ip_csum(b: bytes, l2=14) -> bytes:
    b = bytearray(b)
    b[l2 + 10] ^= 0xFF
    return bytes(b)


def _patch(b: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(b)
    b[offset:offset + len(value)] = value
    return bytes(b)


def _fix_ip_csum(b: bytes, l2=14) -> bytes:
    b = bytearray(b)
    ihl = (b[l2] & 0xF) * 4
    b[l2 + 10:l2 + 12] = b"\0\0"
    s = sum(int.from_bytes(b[l2 + i:l2 + i + 2], "big") for i in range(0, ihl, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[l2 + 10:l2 + 12] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


GOOD = [
    Case("tcp_syn", "A client's TCP SYN to the VIP opens a connection.", tcp("S")),
    Case("tcp_ack_payload", "An ACK with 100 bytes of data on an open connection.",
         tcp("A", payload=b"x" * 100)),
    Case("udp", "A UDP datagram to the VIP's port 53 (UDP service).", udp()),
    Case("udp_zero_csum", "A UDP datagram sent without checksum (0) keeps it 0 under NAT.",
         udp(zero_csum=True)),
    Case("tcp_vlan", "A TCP SYN inside an 802.1Q tag (VLAN 42); the tag stays on output.",
         tcp("S", vlan=42)),
    Case("tcp_ip_options", "A TCP SYN whose IP header carries options (IHL 6).",
         tcp("S", ip_opts=[b"\x01\x01\x01\x00"])),
    Case("tcp_padded", "A short TCP SYN followed by Ethernet padding beyond IP's length.",
         tcp("S") + b"\0" * 6),
]

BAD = [
    Case("not_ip", "An ARP-type frame: not IPv4, passed to the host.",
         bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC, type=0x0806) / (b"\0" * 28))),
    Case("ihl_lt5", "IPv4 with IHL 4: malformed.", _fix_ip_csum(_patch(tcp("S"), 14, b"\x44"))),
    Case("tot_len_beyond", "IP total length larger than the frame: malformed.",
         _fix_ip_csum(_patch(tcp("S"), 16, (2000).to_bytes(2, "big")))),
    Case("bad_ip_csum", "A wrong IPv4 header checksum.", _corrupt_ip_csum(tcp("S"))),
    Case("fragment_mf", "A first fragment (MF set).",
         bytes(eth() / IP(src=CLIENT, dst=VIP, flags="MF") / TCP(dport=VPORT, flags="S"))),
    Case("fragment_offset", "A later fragment (offset 8).",
         bytes(eth() / IP(src=CLIENT, dst=VIP, frag=8, proto=6) / (b"\0" * 20))),
    Case("tcp_doff_lt5", "A TCP header with data offset 4.",
         bytes(eth() / IP(src=CLIENT, dst=VIP) / TCP(dport=VPORT, flags="S", dataofs=4))),
    Case("tcp_doff_beyond", "A TCP data offset pointing past the packet.",
         bytes(eth() / IP(src=CLIENT, dst=VIP) / TCP(dport=VPORT, flags="S", dataofs=15))),
    Case("udp_len_bad", "A UDP length larger than the IP payload.",
         bytes(eth() / IP(src=CLIENT, dst=VIP) / UDP(dport=53, len=200) / b"x")),
    Case("icmp", "An ICMP echo to the VIP: not a TCP/UDP service, passed.",
         bytes(eth() / IP(src=CLIENT, dst=VIP) / ICMP())),
]

CASES = GOOD + BAD


# -- ICMP errors about a conn's packets (tests/core/test_engine_icmp.py, the differential test)

def _icmp(src, dst, typ, code, info, quoted: bytes, ttl=64, src_mac=CLIENT_MAC, vlan=None,
          bad_csum=False) -> bytes:
    ic = ICMP(type=typ, code=code)
    if typ == 3 and code == 4:
        ic.nexthopmtu = info
    b = bytearray(bytes(eth(vlan, src=src_mac) / IP(src=src, dst=dst, ttl=ttl) / ic / quoted))
    if bad_csum:
        at = (18 if vlan is not None else 14) + 20 + 2
        b[at + 1] ^= 0x01
    return bytes(b)


def icmp_about_reply(typ=3, code=4, info=1400, quote=28, proto=6, vport=VPORT, cport=40000,
                     src=CLIENT, payload=b"", client=CLIENT, **kw) -> bytes:
    """An ICMP error from the client side (the client, or a router on its way) to the VIP,
    about what the director's service sent it: VIP:vport -> client:cport, quoting `quote`
    bytes of that packet."""
    l4 = (TCP(sport=vport, dport=cport, flags="SA", seq=5000, ack=1001) if proto == 6
          else UDP(sport=vport, dport=cport) / (b"a" * 20))
    q = bytes(IP(src=VIP, dst=client, flags="DF", ttl=60) / l4 / payload)
    return _icmp(src, VIP, typ, code, info, q[:quote], **kw)


def icmp_about_request(typ=3, code=4, info=1300, quote=28, proto=6, rs=RS[0], rport=8080,
                       cport=40000, src=None, **kw) -> bytes:
    """An ICMP error from a NAT real server's side (the server, or `src`, a router before
    it) to the client, about the request the server got: client:cport -> RIP:rport."""
    l4 = (TCP(sport=cport, dport=rport, flags="A", seq=1001, ack=5001) if proto == 6
          else UDP(sport=cport, dport=rport) / (b"q" * 20))
    q = bytes(IP(src=CLIENT, dst=rs, flags="DF", ttl=63) / l4)
    kw.setdefault("src_mac", RS_MAC[0])
    return _icmp(src or rs, CLIENT, typ, code, info, q[:quote], **kw)


def icmp_about_ipip(typ=3, code=4, info=1300, quote=68, rs=RS[0], cport=40000, df=True,
                    **kw) -> bytes:
    """An ICMP error from a TUN real server's side to the director's own address, about the
    IPIP packet the director sent it around a client's request (client:cport -> VIP:80)."""
    inner = IP(src=CLIENT, dst=VIP, flags="DF" if df else 0, ttl=63) / TCP(
        sport=cport, dport=VPORT, flags="A", seq=1001, ack=5001)
    q = bytes(IP(src=LOCAL_IP, dst=rs, flags="DF", ttl=63, proto=4) / inner / (b"x" * 40))
    kw.setdefault("src_mac", RS_MAC[0])
    return _icmp(rs, LOCAL_IP, typ, code, info, q[:quote], **kw)
