"""The director's own traffic in NAT mode: while fastlvs serves, the director's own
connections to a real server's RIP:rport (what a health check or a monitoring probe does)
are answered to the director's own address, and those replies are the kernel's, not taken as
NAT replies; an address added while the daemon runs counts at once. Clients through the VIP
are still served. Both backends.
"""
import os
import socket

import pytest

from tests.e2e.e2e_support import BACKENDS
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import DIRECTOR_RS_IP, HTTP_PORT, RSNET, UDP_PORT, in_ns, run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

EXTRA_IP = f"{RSNET}.3"          # an address the director gains while the daemon runs


@pytest.fixture(scope="module")
def bed():
    tb = tbmod.Testbed("nat", n_rs=3).build()
    try:
        yield tb
    finally:
        tb.destroy()


def director_http_get(bed, ip, source=None, timeout=3.0) -> str:
    """An HTTP/1.0 GET from the director's namespace to ip:80 (a health check): the
    answering server's name."""
    with in_ns(bed.director):
        s = socket.socket()
    try:
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((ip, HTTP_PORT))
        s.sendall(b"GET /health HTTP/1.0\r\nHost: fastlvs\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], data[:80]
    return body.decode().strip()


def director_udp_ask(bed, ip, payload, timeout=3.0) -> str:
    with in_ns(bed.director):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(payload, (ip, UDP_PORT))
        data, peer = s.recvfrom(2048)
    finally:
        s.close()
    name, _, echoed = data.partition(b" ")
    assert peer[0] == ip and echoed == payload, (peer, data)
    return name.decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_director_own_connections_to_real_servers(bed, start, backend):
    start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
    for name in bed.rs_names:
        rip = bed.rip_of(name)
        assert director_http_get(bed, rip) == name
        assert director_udp_ask(bed, rip, b"probe") == name
    # the NAT replies to clients are still taken and translated
    assert sorted(bed.http_get(timeout=3.0) for _ in range(6)) == sorted(bed.rs_names * 2)
    sock = bed.socket(socket.SOCK_DGRAM)
    try:
        assert {bed.udp_ask(sock, b"c%d" % i) for i in range(3)} <= set(bed.rs_names)
    finally:
        sock.close()
    # an address gained while running: replies to it reach the kernel too
    run("ip", "-n", bed.director, "addr", "add", f"{EXTRA_IP}/24", "dev", bed.rs_if)
    try:
        rip = bed.rip_of("rs1")
        assert director_http_get(bed, rip, source=EXTRA_IP) == "rs1"
        assert director_http_get(bed, rip, source=DIRECTOR_RS_IP) == "rs1"
    finally:
        run("ip", "-n", bed.director, "addr", "del", f"{EXTRA_IP}/24", "dev", bed.rs_if)
    assert bed.http_get(timeout=3.0) in bed.rs_names
