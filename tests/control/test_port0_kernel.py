"""Port-0 services against the 6.1 kernel's recording (tests/fixtures/kernel/port0.json, made
by tests/fixtures/kernel/scripts/port0.sh): the same ipvsadm commands through `fastlvs admin`
on each engine must be refused alike, list alike (-Ln, -S, -Lnc without the timers), and the
same client packets must reach the same real servers with the same addresses and ports."""
from __future__ import annotations

import json
import pathlib

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.control import control_harness
from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC
from tests.core.helpers import checksums_ok

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "port0.json").read_text())
S = 1_000_000_000

# the job's commands, in its order (port0.sh)
SETUP = [
    "-A -t 10.0.1.100:0 -s rr -p 300", "-a -t 10.0.1.100:0 -r 10.0.2.2:0 -m",
    "-a -t 10.0.1.100:0 -r 10.0.2.3:0 -m", "-A -t 10.0.1.100:80 -s rr",
    "-a -t 10.0.1.100:80 -r 10.0.2.3:80 -m", "-A -u 10.0.1.100:0 -s rr -p 300",
    "-a -u 10.0.1.100:0 -r 10.0.2.2:0 -m", "-A -t 10.0.1.101:0 -s rr -p 300",
    "-a -t 10.0.1.101:0 -r 10.0.2.2 -g", "-a -t 10.0.1.101:0 -r 10.0.2.3 -g",
    "-A -t 10.0.1.102:0 -s rr -p 300", "-a -t 10.0.1.102:0 -r 10.0.2.2:8443 -m"]
REFUSED = ["-A -t 10.0.1.103:0 -s rr", "-A -u 10.0.1.103 -s wlc", "-E -t 10.0.1.102:0 -s rr"]


@pytest.fixture
def kdaemon(tmp_path, engine_kind, monkeypatch):
    for i in (2, 3):
        monkeypatch.setitem(control_harness.NEIGHBORS, f"10.0.2.{i}", bytes([2, 0, 0, 0, 2, i]))
    d = control_harness.Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        yield d
    finally:
        d.stop()


def _rows(text):
    # -Lnc rows without the expire column
    return sorted(tuple(line.split()[:1] + line.split()[2:]) for line in text.splitlines()[2:])


def test_port0_as_the_kernel_recorded_it(kdaemon):
    for argv in SETUP[:11]:
        kdaemon.ok(*argv.split())
    rc, out, err = kdaemon.admin(*REFUSED[0].split())
    assert (rc, err) == (FIXTURE["refusals"][0]["rc"],
                         FIXTURE["refusals"][0]["out"].splitlines()[-1] + "\n")
    assert kdaemon.admin(*REFUSED[1].split())[::2] == (
        FIXTURE["refusals"][1]["rc"], FIXTURE["refusals"][1]["out"].splitlines()[-1] + "\n")
    kdaemon.ok(*SETUP[11].split())
    assert kdaemon.admin(*REFUSED[2].split())[::2] == (
        FIXTURE["refusals"][2]["rc"], FIXTURE["refusals"][2]["out"].splitlines()[-1] + "\n")
    # the banner's size is the table's; the rest line for line
    assert kdaemon.ok("-Ln").splitlines()[1:] == FIXTURE["ipvsadm_Ln"].splitlines()[1:]
    assert kdaemon.ok("-S", "-n") == FIXTURE["ipvsadm_S"]
    got = []
    with kdaemon.lock:
        for k, (client, proto, sport, vip, vport) in enumerate(FIXTURE["sent"]):
            l4 = (TCP(sport=sport, dport=vport, flags="S", seq=1000) if proto == "tcp"
                  else UDP(sport=sport, dport=vport) / (b"q" * 20))
            frame = bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=client, dst=vip) / l4)
            for _, _, f in kdaemon.engine.process([frame], (1 + k) * S):
                assert checksums_ok(f)
                p = Ether(f)
                l4 = p[TCP] if TCP in p else p[UDP]
                got.append({"src": p[IP].src, "dst": p[IP].dst,
                            "proto": "tcp" if TCP in p else "udp",
                            "sport": l4.sport, "dport": l4.dport})
    assert got == [{k: v for k, v in r.items() if k != "eth_dst"} for r in FIXTURE["at_rs"]]
    assert len(got) == 10 and len(_rows(FIXTURE["ipvsadm_Lnc"])) == 16
    assert _rows(kdaemon.ok("-Lnc")) == _rows(FIXTURE["ipvsadm_Lnc"])
