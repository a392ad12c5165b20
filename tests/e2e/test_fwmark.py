"""Firewall-mark services with real clients, in every forwarding mode over both backends: one
mark given by fastlvs' own rules to the VIP's TCP port 80 and UDP port 53, one `-f` service
over the three real servers (port 0: the client's port is kept). rr spreads new HTTP
connections evenly; with persistence the mark's one template sends a client's TCP and UDP
alike to one server (what fwmark services are for); `-Ln` lists `FWM  1` with what it did.
"""
import collections
import os
import socket

import pytest

from tests.e2e.e2e_support import BACKENDS
from fastlvs.lab.testbed import HTTP_PORT, UDP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

FWD = {"dr": "-g", "nat": "-m", "tun": "-i"}


def mark_rules(bed, persistent=None):
    lines = [f"--mark-rule 1,tcp,{bed.vip}/32,{HTTP_PORT}",
             f"--mark-rule 1,udp,{bed.vip}/32,{UDP_PORT}",
             "-A -f 1 -s rr" + (f" -p {persistent}" if persistent else "")]
    for name in bed.rs_names:
        lines.append(f"-a -f 1 -r {bed.rip_of(name)}:0 {FWD[bed.mode]} -w 1")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mark_service_spreads_tcp_and_serves_udp(bed, start, backend):
    d = start("--rules", bed.write_rules(mark_rules(bed), "fwm"), backend=backend)
    got = collections.Counter(bed.http_get(timeout=3.0) for _ in range(30))
    assert dict(got) == {name: 10 for name in bed.rs_names}, got
    s = bed.socket(socket.SOCK_DGRAM)
    try:
        answers = {bed.udp_ask(s, f"q{i}".encode()) for i in range(3)}
    finally:
        s.close()
    assert len(answers) == 1 and answers <= set(bed.rs_names)       # one conn, one server
    listing = d.admin("-Ln").stdout.splitlines()
    assert listing[3] == "FWM  1 rr"
    assert len([ln for ln in listing[4:] if ln.startswith("  -> ")]) == 3
    stats = d.admin("-Ln", "--stats").stdout.splitlines()
    assert stats[3].split()[:3] == ["FWM", "1", "31"]                  # 30 TCP + 1 UDP conns


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistent_mark_keeps_a_client_s_tcp_and_udp_together(bed, start, backend):
    d = start("--rules", bed.write_rules(mark_rules(bed, persistent=60), "fwmp"),
              backend=backend)
    names = {bed.http_get(timeout=3.0) for _ in range(6)}
    s = bed.socket(socket.SOCK_DGRAM)
    try:
        names |= {bed.udp_ask(s, b"hello")}
    finally:
        s.close()
    assert len(names) == 1, names
    conns = d.admin("-Lnc").stdout.splitlines()[2:]
    templates = [ln.split() for ln in conns if ln.startswith("IP ")]
    # the template is keyed by the mark: <client, 0, 0.0.0.1:0, server:0>, as IPVS lists it
    assert len(templates) == 1 and templates[0][4] == "0.0.0.1:0", conns
    assert templates[0][5].split(":")[0] == bed.rip_of(names.pop())
