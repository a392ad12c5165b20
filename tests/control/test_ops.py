"""`-o` (one-packet scheduling) through the director: every datagram of a UDP service is
scheduled on its own, by the service's scheduler, and leaves no connection entry (what the
kernel was recorded doing, tests/fixtures/kernel/conns.json case "ops")."""
from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC

VIP = "203.0.113.10"


def datagram(sport):
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src="198.51.100.7", dst=VIP)
                 / UDP(sport=sport, dport=53) / b"q")


def test_ops_schedules_each_datagram_and_keeps_no_entry(daemon):
    daemon.ok("-A", "-u", f"{VIP}:53", "-s", "rr", "-o")
    daemon.ok("-a", "-u", f"{VIP}:53", "-r", "192.0.2.11:53", "-m")
    daemon.ok("-a", "-u", f"{VIP}:53", "-r", "192.0.2.12:53", "-m")
    with daemon.lock:
        out = daemon.engine.process([datagram(4001)] * 4)          # one batch, one flow
        dsts = [IP(o[2][14:]).dst for o in out]
        more = [IP(daemon.engine.process([datagram(4001)])[0][2][14:]).dst for _ in range(2)]
        entries = daemon.engine.conn_count()
    assert len(out) == 4 and dsts[0] != dsts[1] and dsts[0::2] == [dsts[0]] * 2
    assert dsts[2:] + more == dsts[0:2] * 2                      # rr goes on alternating
    assert entries == 0 and "198.51.100.7" not in daemon.ok("-Lnc")
    # the service without -o keeps the flow on one server
    daemon.ok("-E", "-u", f"{VIP}:53", "-s", "rr")
    with daemon.lock:
        out = daemon.engine.process([datagram(4002)] * 4)
    assert len({IP(o[2][14:]).dst for o in out}) == 1
