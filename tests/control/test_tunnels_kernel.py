"""TUN's GUE and GRE forms through `fastlvs admin`, on each engine, against the 6.1 kernel's
recording (tests/fixtures/kernel/tunnels.json, made by tests/fixtures/kernel/scripts/
tunnels.sh): the job's ipvsadm commands list alike (-Ln, -Ln --tun-info, -S), ipvsadm's
refusals of bad tunnel options come back with its words on one line, what it accepts is
accepted, and the director hands each dest's tunnel to the engine (the frames it sends carry
the dest's GUE port or GRE header)."""
from __future__ import annotations

import json
import pathlib

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.control import control_harness
from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "tunnels.json").read_text())
TOPO = FIXTURE["topology"]
S = 1_000_000_000
RS_MAC = bytes([2, 0, 0, 0, 6, 2])


@pytest.fixture
def kdaemon(tmp_path, engine_kind, monkeypatch):
    monkeypatch.setitem(control_harness.NEIGHBORS, TOPO["rip4"], RS_MAC)
    monkeypatch.setitem(control_harness.NEIGHBORS, TOPO["rip6"], RS_MAC)
    monkeypatch.setitem(control_harness.NEIGHBORS, "10.0.2.3", RS_MAC)  # the refusals' dest
    d = control_harness.Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        yield d
    finally:
        d.stop()


def test_tunnels_as_the_kernel_lists_and_saves_them(kdaemon):
    for line in FIXTURE["ipvsadm_S"]:
        kdaemon.ok(*line.split())
    assert kdaemon.ok("-Ln").splitlines()[1:] == FIXTURE["ipvsadm_Ln"][1:]
    assert kdaemon.ok("-Ln", "--tun-info").splitlines()[1:] == \
        FIXTURE["ipvsadm_Ln_tun_info"][1:]
    assert kdaemon.ok("-Ln", "-t", "10.0.1.100:90", "--tun-info").splitlines() == \
        FIXTURE["ipvsadm_Ln_one"]
    assert kdaemon.ok("-S", "-n").splitlines() == FIXTURE["ipvsadm_S"]


@pytest.mark.parametrize("port,proto,head", [(90, 17, (6080, 4)), (91, 17, (6081, 4)),
                                             (93, 47, b"\0\0\x08\0"),
                                             (94, 47, b"\x80\0\x08\0"), (97, 4, None)])
def test_the_director_gives_the_engine_each_dests_tunnel(kdaemon, port, proto, head):
    for line in FIXTURE["ipvsadm_S"]:
        kdaemon.ok(*line.split())
    frame = bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC)
                  / IP(src=TOPO["client4"], dst=TOPO["vip4"], flags="DF")
                  / TCP(sport=40000, dport=port, flags="S"))
    with kdaemon.lock:
        ((_, _, out),) = kdaemon.engine.process([frame], 1 * S)
    ip = bytes(Ether(out)[IP])
    assert ip[9] == proto and ip[16:20] == bytes(map(int, TOPO["rip4"].split(".")))
    if proto == 17:
        assert (int.from_bytes(ip[22:24], "big"), ip[29]) == head
    elif proto == 47:
        assert ip[20:24] == head


def test_tunnel_options_are_checked_as_ipvsadm_checks_them(kdaemon):
    kdaemon.ok("-A", "-t", "10.9.9.9:80", "-s", "rr")
    for case in FIXTURE["errors"]:
        rc, out, err = kdaemon.admin(*case["args"].split())
        if case["rc"] == 0:
            assert (rc, err) == (0, ""), case["args"]
            if case["stdout"]:
                assert out.splitlines() == case["stdout"].splitlines()
            continue
        kernel = case["stderr"].strip().splitlines()[0]
        assert rc != 0 and len(err.splitlines()) == 1, (case["args"], err)
        assert kernel in err, (case["args"], err)
