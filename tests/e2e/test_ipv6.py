"""IPv6 end to end, in every forwarding mode over both backends (AF_XDP, AF_PACKET): a
cluster addressed in IPv6 only (fastlvs.lab.testbed with ipv6=True: v6 client, director and
real servers in namespaces; TUN servers decapsulate IPv6-in-IPv6 with an XDP program), the
daemon started on a rules file of bracketed v6 addresses; real HTTP over separate TCP
connections spread as wrr says and counted alike by the director, UDP datagrams answered from
the VIP, `-Ln` listing the v6 service as ipvsadm does. The kernel of the client and of the
real servers checks every checksum the director rewrote: a bad one would lose the request."""
import collections
import os
import socket
import time

import pytest

from tests.e2e.e2e_support import BACKENDS, DECAP_SRC, assert_clean
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

N_REQUESTS = 60


@pytest.fixture(scope="module", params=list(tbmod.MODES))
def bed6(request):
    tb = tbmod.Testbed(request.param, n_rs=3, decap_src=DECAP_SRC, prefix="f6", ipv6=True)
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


def settle(d, want, key, timeout=3.0):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st = d.stats()
        if st.get(key) and st[key]["conns"] >= want and st == last:
            return st
        if time.monotonic() > deadline:
            return st
        last = st
        time.sleep(0.15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_http_and_udp_in_every_mode(bed6, start6, backend):
    # wrr 1, 2, 3: every 6 connections go 1/2/3 whatever the starting point
    d = start6("--rules", bed6.write_rules(bed6.rules([1, 2, 3], sched="wrr")),
               backend=backend)
    got = collections.Counter(bed6.http_get(timeout=3.0) for _ in range(N_REQUESTS))
    assert dict(got) == {"rs1": 10, "rs2": 20, "rs3": 30}, got
    key = ("TCP", bed6.vs(HTTP_PORT))
    st = settle(d, N_REQUESTS, key)[key]
    assert st["conns"] == N_REQUESTS
    for name, n in got.items():
        dest = tbmod._addrport(bed6.rip_of(name), HTTP_PORT)
        assert st["dests"][dest]["conns"] == n, st["dests"]
    if bed6.mode == "nat":
        assert st["outpkts"] > 0            # the replies came back through the director
    # UDP: one flow sticks to one server; the answer comes from the VIP
    s = bed6.socket(socket.SOCK_DGRAM)
    try:
        names = {bed6.udp_ask(s, f"ping{i}".encode()) for i in range(5)}
    finally:
        s.close()
    assert len(names) == 1 and names <= {"rs1", "rs2", "rs3"}
    listing = d.admin("-Ln").stdout
    assert f"TCP  {bed6.vs(HTTP_PORT)} wrr" in listing
    flag = {"dr": "Route", "nat": "Masq", "tun": "Tunnel"}[bed6.mode]
    assert f"  -> {tbmod._addrport(bed6.rips[0], HTTP_PORT)}" in listing and flag in listing
    conns = d.admin("-Lnc").stdout
    assert f"[{bed6.client_ip}]:" in conns


def test_ipv6_persistence_by_prefix(bed6, start6):
    """-M 64: every connection of the client's /64 goes to one real server."""
    rules = bed6.rules([1, 1, 1], sched="rr", udp=False).replace(
        " -s rr", " -s rr -p 60 -M 64")
    d = start6("--rules", bed6.write_rules(rules))
    got = {bed6.http_get(timeout=3.0) for _ in range(9)}
    assert len(got) == 1
    assert "persistent 60 mask 64" in d.admin("-Ln").stdout
    assert "[fd20:201::]:0" in d.admin("-Lnc").stdout


SIZES6 = [3000, 8000, 1500, 4001]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_datagram_larger_than_the_mtu_arrives_whole(bed6, start6, backend):
    """The client's kernel sends UDP datagrams over the MTU as IPv6 fragments; the director
    reassembles them, schedules the whole datagram and sends it on in fragments; the real
    server's kernel reassembles and its echo (which checks every byte) answers, in NAT66
    through the director again, also in fragments. One packet per datagram is counted, at
    its reassembled length (40 + 8 + payload), as IPVS counts it. TUN is left out: the real
    servers decapsulate with an XDP program, which cannot put outer fragments together."""
    if bed6.mode == "tun":
        pytest.skip("the XDP decapsulator of the TUN servers sees fragments one by one")
    d = start6("--rules", bed6.write_rules(bed6.rules([1, 1, 1], sched="rr")),
               backend=backend)
    s = bed6.socket(socket.SOCK_DGRAM)
    try:
        names = []
        for k, size in enumerate(SIZES6):
            payload = bytes((i * 11 + k) & 0xFF for i in range(size))
            names.append(bed6.udp_ask(s, payload, timeout=3.0))
    finally:
        s.close()
    assert len(set(names)) == 1, names                  # one flow, one real server
    key = ("UDP", bed6.vs(tbmod.UDP_PORT))
    deadline = time.monotonic() + 3.0
    while d.stats().get(key, {}).get("inpkts", 0) < len(SIZES6) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = d.stats()[key]
    assert st["conns"] == 1
    assert (st["inpkts"], st["inbytes"]) == (len(SIZES6), sum(n + 48 for n in SIZES6))
    if bed6.mode == "nat":
        assert (st["outpkts"], st["outbytes"]) == \
            (len(SIZES6), sum(n + 48 + len(names[0]) + 1 for n in SIZES6))
