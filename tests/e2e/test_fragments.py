"""UDP datagrams larger than the MTU through the daemon, in every forwarding mode over both
backends: the client's kernel sends them as fragments, fastlvs reassembles them, schedules
the whole datagram and forwards it cut again; the real server's UDP echo gets it intact and
its answer (fragmented too, and through the director in NAT) comes back intact. The service
counts one packet per datagram at its reassembled length, as IPVS does.
"""
import os
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.e2e.e2e_support import BACKENDS
from fastlvs.lab.testbed import UDP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ipip_relay.py")
SIZES = [3000, 8000, 1400, 4001]


def start_relays(bed):
    """TUN: the real servers' kernels reassemble the outer fragments; this relay hands the
    inner datagram to the echo (see ipip_relay.py)."""
    procs = []
    try:
        for ns in bed.rs:
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, RELAY],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            r, _, _ = select.select([p.stdout], [], [], 10)
            if not r or "relaying" not in p.stdout.readline():
                raise RuntimeError(f"relay in {ns} did not start: {p.stderr.read()}")
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs):
    for p in procs:
        p.kill()
        p.wait(timeout=5)
        p.stdout.close()
        p.stderr.close()


def settled(d, key, want, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        st = d.stats().get(key)
        if (st and st["inpkts"] >= want) or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_datagram_larger_than_the_mtu_arrives_whole(bed, start, backend):
    relays = start_relays(bed) if bed.mode == "tun" else []
    try:
        d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
        s = bed.socket(socket.SOCK_DGRAM)
        try:
            names = []
            for k, size in enumerate(SIZES):
                payload = bytes((i * 7 + k) & 0xFF for i in range(size))
                # udp_ask checks that the echo carries exactly what was sent
                names.append(bed.udp_ask(s, payload, timeout=3.0))
        finally:
            s.close()
    finally:
        stop(relays)
    assert len(set(names)) == 1, names                  # one flow, one real server
    st = settled(d, ("UDP", f"{bed.vip}:{UDP_PORT}"), len(SIZES))
    assert st["conns"] == 1
    assert (st["inpkts"], st["inbytes"]) == (len(SIZES), sum(n + 28 for n in SIZES))
    if bed.mode == "nat":
        # the answers: "<name> " + payload, reassembled in the director too
        assert (st["outpkts"], st["outbytes"]) == \
            (len(SIZES), sum(n + 28 + len(names[0]) + 1 for n in SIZES))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tun_pmtu_disc_0_sends_a_df_datagram_the_tunnel_cannot_carry(bed, start, backend):
    """A UDP datagram with DF that fits the client's link but not the tunnel (1472 bytes of
    payload: 1500 on the wire, 1520 in IPIP): refused with pmtu_disc=1 (the client gets
    fragmentation needed, no answer), and with pmtu_disc=0 sent in fragments of the tunnel
    packet, which the real server's kernel puts back together; the echo comes back whole."""
    if bed.mode != "tun":
        pytest.skip("pmtu_disc only changes TUN")
    relays = start_relays(bed)
    try:
        d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
        s = bed.socket(socket.SOCK_DGRAM)
        try:
            # IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF on, whatever the route's learned MTU
            s.setsockopt(socket.IPPROTO_IP, 10, 3)
            payload = bytes((i * 11) & 0xFF for i in range(1472))
            with pytest.raises(OSError):
                bed.udp_ask(s, payload, timeout=1.5)
            d.admin("--sysctl", "pmtu_disc=0")
            name = bed.udp_ask(s, payload, timeout=3.0)
        finally:
            s.close()
    finally:
        stop(relays)
    assert name
