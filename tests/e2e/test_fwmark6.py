"""IPv6 firewall-mark services with real v6 clients, in every forwarding mode over both
backends (fastlvs.lab.testbed with ipv6=True; TUN servers decapsulate IPv6-in-IPv6 with an
XDP program): fastlvs' own v6 rules give mark 1 to the VIP's TCP port 80 and UDP port 53,
and one `-f 1 -6` service spans the three real servers (port 0: the client's port is kept),
beside a v4 `-f 1` service of the same mark that takes nothing (no v4 traffic). rr spreads
new HTTP connections evenly; with persistence the mark's one template, keyed [0:1::] as
IPVS keys a v6 mark's, sends a client's TCP and UDP alike to one server; `-Ln` lists
`FWM  1 IPv6` with what it did. The real servers' and the client's kernels check every
checksum the director rewrote (NAT66)."""
import collections
import os
import socket

import pytest

from tests.e2e.e2e_support import BACKENDS, DECAP_SRC, assert_clean
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT, UDP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

FWD = {"dr": "-g", "nat": "-m", "tun": "-i"}


@pytest.fixture(scope="module", params=list(tbmod.MODES))
def bed6(request):
    tb = tbmod.Testbed(request.param, n_rs=3, decap_src=DECAP_SRC, prefix="m6", ipv6=True)
    tb.build()
    try:
        yield tb
    finally:
        tb.destroy()


@pytest.fixture
def start6(bed6):
    started = []

    def _start(*args, backend="xdp"):
        d = bed6.start_daemon(*args, backend=backend)
        started.append(d)
        return d

    yield _start
    problems = []
    for d in started:
        if d.proc.poll() is None and d.stop() != 0:
            problems.append(f"exit after SIGTERM: {d.stderr}")
        try:
            assert_clean(bed6, d)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, problems


def mark_rules(bed, persistent=None):
    lines = [f"--mark-rule 1,tcp,{bed.vip},{HTTP_PORT}",
             f"--mark-rule 1,udp,{bed.vip},{UDP_PORT}",
             "-A -f 1 -s rr",
             "-A -f 1 -6 -s rr" + (f" -p {persistent}" if persistent else "")]
    for name in bed.rs_names:
        lines.append(f"-a -f 1 -6 -r [{bed.rip_of(name)}]:0 {FWD[bed.mode]} -w 1")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_v6_mark_service_spreads_tcp_and_serves_udp(bed6, start6, backend):
    d = start6("--rules", bed6.write_rules(mark_rules(bed6), "fwm6"), backend=backend)
    got = collections.Counter(bed6.http_get(timeout=3.0) for _ in range(30))
    assert dict(got) == {name: 10 for name in bed6.rs_names}, got
    s = bed6.socket(socket.SOCK_DGRAM)
    try:
        answers = {bed6.udp_ask(s, f"q{i}".encode()) for i in range(3)}
    finally:
        s.close()
    assert len(answers) == 1 and answers <= set(bed6.rs_names)      # one conn, one server
    listing = d.admin("-Ln").stdout.splitlines()
    assert listing[3:5] == ["FWM  1 rr", "FWM  1 IPv6 rr"], listing
    assert len([ln for ln in listing[5:] if ln.startswith("  -> [")]) == 3
    stats = d.admin("-Ln", "--stats").stdout.splitlines()
    assert stats[3].split()[:3] == ["FWM", "1", "0"]                  # the v4 one: nothing
    assert stats[4].split()[:4] == ["FWM", "1", "IPv6", "31"]         # 30 TCP + 1 UDP


@pytest.mark.parametrize("backend", BACKENDS)
def test_persistent_v6_mark_keeps_a_client_s_tcp_and_udp_together(bed6, start6, backend):
    d = start6("--rules", bed6.write_rules(mark_rules(bed6, persistent=60), "fwm6p"),
               backend=backend)
    names = {bed6.http_get(timeout=3.0) for _ in range(6)}
    s = bed6.socket(socket.SOCK_DGRAM)
    try:
        names |= {bed6.udp_ask(s, b"hello")}
    finally:
        s.close()
    assert len(names) == 1, names
    conns = d.admin("-Lnc").stdout.splitlines()[2:]
    templates = [ln.split() for ln in conns if ln.startswith("IP ")]
    # keyed by the mark in the first 32 bits, as 6.1 lists it (fwmark6.json)
    assert len(templates) == 1 and templates[0][4] == "[0:1::]:0", conns
    assert templates[0][5] == f"[{bed6.rip_of(names.pop())}]:0"
