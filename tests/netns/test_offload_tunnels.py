"""The XDP offload leaves GUE and GRE tunnel dests to the engine: its program writes IPIP
only, so a connection to such a dest is never put in the map and its frames come back from
the program as XDP_PASS; a dest edited from ipip to gue takes its conns out of the map.
Run with BPF_PROG_TEST_RUN as tests/netns/test_offload.py does. Needs root (BPF)."""
from __future__ import annotations

import ipaddress
import os
import time

import pytest

from tests.core import helpers as H
from tests.core.packets import CLIENT, RS, VIP, udp

if os.geteuid() != 0:
    pytest.skip("needs root (BPF)", allow_module_level=True)
core = pytest.importorskip("fastlvs.engine._core")
if not core.XDP_BUILT:
    pytest.skip(core.XDP_MISSING, allow_module_level=True)

XDP_PASS, XDP_REDIRECT = 2, 4
SVC_KEY = bytes([4, 17]) + (53).to_bytes(2, "big") + ipaddress.ip_address(VIP).packed \
    + bytes(12)
TUNNELS = [dict(tun_type="gue", tun_port=6080), dict(tun_type="gue", tun_port=6080,
           tun_flags="csum"), dict(tun_type="gre"), dict(tun_type="gre", tun_flags="csum")]


@pytest.mark.parametrize("tun", TUNNELS, ids=lambda t: "-".join(map(str, t.values())))
def test_gue_and_gre_conns_stay_the_engines(tun):
    e = H.engine(fwd="tun", proto=17, vport=53, **tun)
    e.offload_enable()
    out = e.process([udp()], time.monotonic_ns())
    assert len(out) == 1
    assert e.offload_conns() == []
    frame = udp(df=True)
    action, _ = e.offload_test_run(frame, SVC_KEY, None)
    assert action == XDP_PASS


def test_an_ipip_dest_edited_to_gue_leaves_the_map():
    e = H.engine(fwd="tun", proto=17, vport=53)
    e.offload_enable()
    e.process([udp()], time.monotonic_ns())
    assert e.offload_conns() == [(CLIENT, 40000, 53)]       # plain IPIP: the program's
    assert e.offload_test_run(udp(df=True), SVC_KEY, None)[0] == XDP_REDIRECT
    e.set_dest(1, 1, RS[0], 53, "tun", H.RS_MAC[0], ifindex=10, tun_type="gue",
               tun_port=6080)
    assert e.offload_conns() == []
    e.process([udp()], time.monotonic_ns())                  # the engine sees it again
    assert e.offload_conns() == []
    assert e.offload_test_run(udp(df=True), SVC_KEY, None)[0] == XDP_PASS
