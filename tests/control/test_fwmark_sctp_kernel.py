"""Firewall-mark and SCTP services through `fastlvs admin`, against Linux 6.1's recording
(tests/fixtures/kernel/fwmark_sctp.json, made by tests/fixtures/kernel/scripts/fwmark_sctp.sh):
the services the job made, plus fastlvs' mark rules standing in for the job's nft marks, must
list as ipvsadm listed them (-Ln, -S, -Ln -f, before and after the traffic, --stats), the
recorded frames must leave as the kernel's did, and -Lnc must hold the same entries, the
kernel's IPv6 mark service (-f -1 -6, no real server) included (tests/control/
test_fwmark6_kernel.py has IPv6 mark services at work)."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.control import control_harness

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "fwmark_sctp.json").read_text())
S = 1_000_000_000
MARKS = ["--mark-rule 1,tcp,10.0.1.100/32,8000-8010", "--mark-rule 2,udp,10.0.1.96/30,53"]


@pytest.fixture
def kdaemon(tmp_path, engine_kind, monkeypatch):
    for i in (2, 3):
        monkeypatch.setitem(control_harness.NEIGHBORS, f"10.0.2.{i}", bytes([2, 0, 0, 0, 2, 2]))
    d = control_harness.Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        yield d
    finally:
        d.stop()


def setup(kdaemon):
    for argv in MARKS:
        kdaemon.ok(*argv.split())
    for line in FIXTURE["ipvsadm_S"].splitlines()[1:]:
        kdaemon.ok(*line.split())


def rows(text):
    # -Lnc rows without the expire column
    return sorted(tuple(ln.split()[:1] + ln.split()[2:]) for ln in text.splitlines()[2:]
                  if ln.strip())


def test_mark_zero_is_refused_as_ipvsadm_refuses_it(kdaemon):
    rc, out, err = kdaemon.admin("-A", "-f", "0", "-s", "rr")
    ref = FIXTURE["refuse_f0"]
    assert rc == ref["rc"] and ref["out"].splitlines()[-1] in err


def test_listings_are_ipvsadm_s(kdaemon):
    setup(kdaemon)
    assert kdaemon.ok("-Ln").splitlines()[1:] == FIXTURE["ipvsadm_Ln"].splitlines()[2:]
    assert kdaemon.ok("-Ln", "-f", "2").splitlines() == FIXTURE["ipvsadm_Ln_f2"].splitlines()[1:]
    # -S: the mark rules first (fastlvs' own lines), then exactly ipvsadm's
    saved = kdaemon.ok("-S", "-n").splitlines()
    assert saved[:2] == MARKS
    assert saved[2:] == FIXTURE["ipvsadm_S"].splitlines()[1:]


def test_the_recorded_traffic_leaves_and_lists_as_the_kernel_s(kdaemon):
    setup(kdaemon)
    now = S
    with kdaemon.lock:
        # the clients' side: NAT replies go to 10.0.1.2 through this next hop
        kdaemon.director.set_gateway(bytes([2, 0, 0, 0, 1, 2]), 1)
        for st in FIXTURE["steps"]:
            if st["step"] == "after 5 s":
                now += 5 * S
                # a frame that is nobody's (not IPv4) only moves the engine's clock on
                kdaemon.engine.process([bytes(12) + b"\x86\xdd" + bytes(40)], now)
                continue
            now += S // 2
            side = st["step"][0]
            out = kdaemon.engine.process([bytes.fromhex(st["sent"])], now)
            theirs = st["at_rs"] if side == "c" else st["at_client"]
            # (a reply of no conn the kernel merely routed keeps its source address)
            forwarded_by_ipvs = bool(theirs) and (
                side == "c" or theirs[0][52:60] != st["sent"][52:60])
            if "badcrc" in st["step"][6]:
                assert out == []            # dropped (the kernel gives it a new CRC)
            elif forwarded_by_ipvs:
                assert len(out) == 1, st["step"]
                assert out[0][2][14:] == bytes.fromhex(theirs[0])[14:], st["step"]
            else:
                assert out == [], st["step"]
    assert rows(kdaemon.ok("-Lnc")) == rows(FIXTURE["ipvsadm_Lnc_after"].split("\n", 1)[1])
    assert kdaemon.ok("-Ln").splitlines()[1:] == FIXTURE["ipvsadm_Ln_after"].splitlines()[2:]
    assert kdaemon.ok("-Ln", "--stats").splitlines()[1:] == \
        FIXTURE["ipvsadm_Ln_stats"].splitlines()[2:]
