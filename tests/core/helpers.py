"""Engine set-ups and output checks shared by the engine tests."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

import fastlvs.engine._core as core
from tests.core.packets import GW_MAC, LOCAL_IP, LOCAL_MAC, RS, RS_MAC, VIP, VPORT

S = 1_000_000_000


def engine(fwd="dr", proto=6, vport=VPORT, rport=None, ndest=1, capacity=4096, sched=None,
           persist=0, netmask=None, weights=None, mtu=1500, **kw):
    """An engine with service 1 = proto VIP:vport and dests 1..ndest (RS[i], RS_MAC[i])."""
    e = core.Engine(capacity=capacity, local_ip=LOCAL_IP, local_mac=LOCAL_MAC, mtu=mtu)
    e.set_service(1, proto, VIP, vport, persist_timeout=persist, netmask=netmask)
    for i in range(ndest):
        w = 1 if weights is None else weights[i]
        e.set_dest(i + 1, 1, RS[i], vport if rport is None else rport, fwd, RS_MAC[i],
                   ifindex=10 + i, weight=w, **kw)
    e.set_gateway_mac(GW_MAC, ifindex=2)
    if sched is None:
        e.set_scheduler_callback(lambda svcs, flows: [1] * len(flows))
    else:
        e.set_scheduler_callback(sched)
    return e


def checksums_ok(frame: bytes) -> bool:
    """Re-parse with scapy, recompute every checksum, compare with what the frame carries."""
    pkt = Ether(frame)
    ok = True
    for layer in (IP, TCP, UDP, ICMP):
        # walk all instances (TUN has two IP layers)
        i = 1
        while True:
            lay = pkt.getlayer(layer, i)
            if lay is None:
                break
            got = lay.chksum
            if not (layer is UDP and got == 0):
                c = lay.copy()
                del c.chksum
                if layer is IP:
                    expect = IP(bytes(c)).chksum
                else:
                    under = lay.underlayer
                    u = under.copy()
                    u.remove_payload()
                    rebuilt = IP(bytes(u / c)) if isinstance(under, IP) else None
                    if rebuilt is None:
                        i += 1
                        continue
                    expect = rebuilt[layer].chksum
                if expect != got:
                    ok = False
            i += 1
    return ok
