"""The Director and the engine together, on each engine: what a change made through the
control API does to the forwarding of new flows."""
from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC

VIP = "203.0.113.10"
S = 1_000_000_000


def _syns(first, n):
    """SYNs of n new flows of one client, from source port `first` on."""
    return [bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src="198.51.100.7", dst=VIP)
                  / TCP(sport=first + i, dport=80, flags="S")) for i in range(n)]


def test_editing_a_hash_scheduler_to_rr_hands_new_flows_to_rr(daemon):
    """-E from sh to rr: sh sent every flow of one client to one server; rr must now spread
    that client's new flows over all three, not keep using sh's old table in the engine."""
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "sh")
    for i in (11, 12, 13):
        daemon.ok("-a", "-t", f"{VIP}:80", "-r", f"192.0.2.{i}:80", "-g")
    with daemon.lock:
        out = daemon.engine.process(_syns(41000, 6), 1 * S)
    assert len(out) == 6 and len({Ether(f).dst for _, _, f in out}) == 1
    daemon.ok("-E", "-t", f"{VIP}:80", "-s", "rr")
    with daemon.lock:
        out = daemon.engine.process(_syns(42000, 6), 2 * S)
    macs = [Ether(f).dst for _, _, f in out]
    assert len(out) == 6 and len(set(macs)) == 3
    assert macs[:3] == macs[3:]                 # round robin over the three
    daemon.ok("-E", "-t", f"{VIP}:80", "-s", "mh")
    with daemon.lock:
        out = daemon.engine.process(_syns(43000, 6), 3 * S)
    assert len(out) == 6 and len({Ether(f).dst for _, _, f in out}) == 1
