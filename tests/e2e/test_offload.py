"""The XDP offload end to end: the daemon with --offload on, in a namespace cluster whose
switch-side veths run an XDP_PASS program (a veth delivers what XDP_TX/XDP_REDIRECT sends
into it only where its peer runs NAPI; GRO on the peer is not enough on this kernel). A keep-alive
HTTP connection's established packets are forwarded by the XDP program (its "offloaded"
counter and the engine's read-back grow) while the answers stay right, the service's
counters count every packet the client sent (client-side nft counters), ActiveConn stays
1, and the client's FIN still reaches the core (the entry leaves the map and moves on).
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.e2e.e2e_support import ClientCounters
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
core = pytest.importorskip("fastlvs.engine._core")
if not core.XDP_BUILT:
    pytest.skip(core.XDP_MISSING, allow_module_level=True)

REQUESTS = 40
PASS_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "pass.bpf.c")


@pytest.fixture(params=["dr", "nat"])
def bed(request):
    if shutil.which("clang") is None:
        pytest.skip("clang is needed for the switch side's XDP_PASS program")
    tb = tbmod.Testbed(request.param, n_rs=2).build()
    try:
        obj = os.path.join(tb.tmp, "pass.bpf.o")
        arch = f"/usr/include/{os.uname().machine}-linux-gnu"
        subprocess.run(["clang", "-O2", "-target", "bpf", "-I", arch, "-c", PASS_SRC, "-o", obj],
                       check=True, capture_output=True, timeout=60)
        for dev in ("pd", "pdn") if request.param == "nat" else ("pd",):
            tbmod.run("ip", "-n", tb.switch, "link", "set", "dev", dev, "xdp", "obj", obj,
                      "sec", "xdp")
        yield tb
    finally:
        tb.destroy()


def counters(d) -> dict:
    return json.loads(d.admin("--counters").stdout)


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return pred()


def test_established_packets_bypass_the_core_and_are_still_counted(bed):
    d = bed.start_daemon("--rules", bed.write_rules(bed.rules([1, 0], udp=False)),
                         "--offload", "on")
    assert "XDP offload: on" in d.stderr
    cc = ClientCounters(bed)
    try:
        ka = bed.keepalive()
        try:
            names = {ka.ask() for _ in range(REQUESTS)}
            assert names == {"rs1"}
            c = counters(d)
            # (a NAT conn leaves and comes back when the kernel's neighbour entry for the
            # client changes: its replies were installed with the old next hop)
            assert c["offload"]["installed"] >= 1
            lan = c["ports"]["lan0"]
            assert lan["offloaded"] > REQUESTS // 2       # the program forwarded most
            table = d.table()
            assert table[("TCP", f"{bed.vip}:{HTTP_PORT}")]["dests"][
                f"{bed.rips[0]}:{HTTP_PORT}"]["active"] == 1
        finally:
            ka.close()
        # the FIN reaches the core: the entry leaves the map
        assert wait_for(lambda: counters(d)["offload"]["removed"]
                        == counters(d)["offload"]["installed"])
        # every packet the client sent to the VIP is in -Ln --stats, offloaded or not
        key = ("TCP", f"{bed.vip}:{HTTP_PORT}")
        assert wait_for(lambda: d.stats()[key]["inpkts"] == cc.read()["tcp_out"][0])
        st = d.stats()[key]
        assert st["conns"] == 1 and st["inbytes"] == cc.read()["tcp_out"][1]
    finally:
        cc.close()
        d.stop()
