"""An SCTP service through the running daemon, NAT over both backends: the association's
chunks are built with scapy and sent from the client's and the real server's namespaces on
raw sockets (the kernels there have no SCTP of their own to answer with), and each side's
packet socket sees what arrives. The server must get every client chunk at RIP:7001 with a
CRC32c that checks, the client every reply from VIP:7000 with one that checks, and `-Lnc`
must walk INIT, C-SENT, C-REPLIED, ESTABLISHED, S-RECEIVED, S-ACK-SENT, CLOSED as IPVS does.
"""
import os
import signal
import socket
import struct
import time

import pytest

from tests.e2e.e2e_support import BACKENDS, assert_clean, make_bed
from fastlvs.lab.testbed import CLIENT_IP, in_ns

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")
from scapy.layers import sctp as S                  # noqa: E402
from scapy.layers.inet import IP                     # noqa: E402
from scapy.layers.l2 import Ether                    # noqa: E402

VPORT, RPORT, CPORT = 7000, 7001, 40001

INIT = S.SCTPChunkInit(init_tag=1, a_rwnd=65535, n_out_streams=1, n_in_streams=1, init_tsn=1)
STEPS = [  # (side, chunk, the state -Lnc shows after it)
    # INIT1 lasts 4 s, too short to look at on a busy machine: the INIT is sent again, as a
    # client does when no INIT-ACK came, and the entry moves to INIT (61 s)
    ("c", INIT, None),
    ("c", INIT, "INIT"),
    ("s", S.SCTPChunkInitAck(init_tag=2, a_rwnd=65535, n_out_streams=1, n_in_streams=1,
                             init_tsn=1), "C-SENT"),
    ("c", S.SCTPChunkCookieEcho(cookie=b"c" * 8), "C-REPLIED"),
    ("s", S.SCTPChunkCookieAck(), "ESTABLISHED"),
    ("c", S.SCTPChunkData(tsn=1, data=b"hello"), "ESTABLISHED"),
    ("c", S.SCTPChunkShutdown(cumul_tsn_ack=1), "S-RECEIVED"),
    ("s", S.SCTPChunkShutdownAck(), "S-ACK-SENT"),
    ("c", S.SCTPChunkShutdownComplete(), "CLOSED"),
]


@pytest.fixture(scope="module")
def natbed():
    tb = make_bed("nat")
    try:
        yield tb
    finally:
        tb.destroy()


def crc_ok(l4: bytes) -> bool:
    return struct.unpack("<I", l4[8:12])[0] == struct.unpack(
        "<I", struct.pack(">I", S.crc32c(l4[:8] + b"\0" * 4 + l4[12:])))[0]


def sctp_from(sock, want_src, deadline):
    """The first SCTP packet from `want_src` the packet socket sees, as (IP, its bytes)."""
    while time.monotonic() < deadline:
        try:
            data, addr = sock.recvfrom(65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        p = Ether(data)
        if IP in p and p[IP].proto == 132 and p[IP].src == want_src:
            return p[IP], bytes(p[IP])[p[IP].ihl * 4:]
    return None, None


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_sctp_association_through_nat(natbed, backend):
    bed = natbed
    rip = bed.rips[0]
    d = bed.start_daemon("--rules", bed.write_rules(
        f"-A --sctp-service {bed.vip}:{VPORT} -s rr\n"
        f"-a --sctp-service {bed.vip}:{VPORT} -r {rip}:{RPORT} -m\n", "sctp"), backend=backend)
    socks = []
    try:
        with in_ns(bed.client):
            c_tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            c_rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            c_rx.bind(("eth0", 0))
        rs_ns = bed.rs[bed.rips.index(rip)]
        with in_ns(rs_ns):
            s_tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            s_rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            s_rx.bind(("eth0", 0))
        socks = [c_tx, c_rx, s_tx, s_rx]
        for s in (c_rx, s_rx):
            s.setblocking(False)
        for side, chunk, state in STEPS:
            if side == "c":
                pkt = IP(src=CLIENT_IP, dst=bed.vip) / S.SCTP(
                    sport=CPORT, dport=VPORT, tag=0 if chunk is INIT else 2) / chunk
                c_tx.sendto(bytes(pkt), (bed.vip, 0))
                ip, l4 = sctp_from(s_rx, CLIENT_IP, time.monotonic() + 3)
                assert ip is not None, f"{chunk.name} did not reach the server"
                assert (ip.dst, ip[S.SCTP].dport) == (rip, RPORT)
            else:
                pkt = IP(src=rip, dst=CLIENT_IP) / S.SCTP(sport=RPORT, dport=CPORT, tag=1) \
                    / chunk
                s_tx.sendto(bytes(pkt), (CLIENT_IP, 0))
                ip, l4 = sctp_from(c_rx, bed.vip, time.monotonic() + 3)
                assert ip is not None, f"{chunk.name} did not reach the client"
                assert ip[S.SCTP].sport == VPORT
            assert crc_ok(l4), chunk.name
            if state is None:
                continue
            rows = [ln.split() for ln in d.admin("-Lnc").stdout.splitlines()[2:]
                    if f":{CPORT} " in ln]
            assert len(rows) == 1 and rows[0][0] == "SCTP" and rows[0][2] == state, (
                chunk.name, rows)
            assert rows[0][4:6] == [f"{bed.vip}:{VPORT}", f"{rip}:{RPORT}"]
    finally:
        for s in socks:
            s.close()
        rc = d.stop(signal.SIGTERM)
    assert rc == 0, d.stderr
    assert_clean(bed, d)
