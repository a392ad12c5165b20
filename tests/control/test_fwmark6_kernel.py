"""IPv6 firewall-mark services through `fastlvs admin`, against Linux 6.1's recording
(tests/fixtures/kernel/fwmark6.json, made by tests/fixtures/kernel/scripts/fwmark6.sh): the
job's services (`-A -f N -6`, a v4 `-f 1` beside the v6 one of the same mark), with fastlvs'
mark rules standing in for the job's nft marks, must list as ipvsadm listed them (-Ln, -S,
-Ln -f N [-6], before and after the traffic, --stats, --thresholds, --persistent-conn), the
recorded frames must leave as the kernel's did (DR, NAT66 both ways, ip6ip6 TUN), -Lnc must
hold the same entries, and what ipvsadm refuses is refused with its words and exit status.
The one difference on purpose: an IPv4 TUN server in an IPv6 service, which the kernel takes
and fastlvs refuses (it tunnels IPv6 in IPv6 only)."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.control import control_harness

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "fwmark6.json").read_text())
CALLS = FIXTURE["calls"]
S = 1_000_000_000
MARKS = ["--mark-rule 1,tcp,2001:db8:1::100/128,8000-8010",
         "--mark-rule 2,udp,2001:db8:1:f::/126,53",
         "--mark-rule 3,tcp,2001:db8:1::101/128,9000",
         "--mark-rule 1,tcp,10.0.1.100/32,8000-8010"]
RS_MAC = bytes([2, 0, 0, 0, 2, 2])
CL_MAC = bytes([2, 0, 0, 0, 1, 2])


@pytest.fixture
def kdaemon(tmp_path, engine_kind, monkeypatch):
    for a in ("2001:db8:2::2", "2001:db8:2::3", "10.0.2.2"):
        monkeypatch.setitem(control_harness.NEIGHBORS, a, RS_MAC)
    d = control_harness.Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        yield d
    finally:
        d.stop()


def body(text, skip=2):
    """A recorded listing without the job's `+ ipvsadm ...` trace line (and, skip=2, the
    version line, which names the kernel's table size)."""
    return text.splitlines()[skip:]


def setup(kdaemon):
    for argv in MARKS:
        kdaemon.ok(*argv.split())
    for line in body(FIXTURE["ipvsadm_S"], 1):
        kdaemon.ok(*line.split())
    # the job added this one with -x 10 -y 5, which -S does not save
    kdaemon.ok(*"-e -f 6 -6 -r [2001:db8:2::2]:80 -g -w 0 -x 10 -y 5".split())


def rows(text):
    # -Lnc rows without the expire column
    return sorted(tuple(ln.split()[:1] + ln.split()[2:]) for ln in text.splitlines()[2:]
                  if ln.strip())


def test_listings_are_ipvsadm_s(kdaemon):
    setup(kdaemon)
    assert kdaemon.ok("-Ln").splitlines()[1:] == body(FIXTURE["ipvsadm_Ln"])
    assert kdaemon.ok("-Ln", "-f", "1").splitlines() == body(FIXTURE["ipvsadm_Ln_f1"], 1)
    assert kdaemon.ok("-Ln", "-f", "1", "-6").splitlines() == \
        body(FIXTURE["ipvsadm_Ln_f1_6"], 1)
    # -f 2 has only an IPv6 service: without -6 there is none
    rc, out, err = kdaemon.admin("-Ln", "-f", "2")
    want = body(FIXTURE["ipvsadm_Ln_f2"], 1)
    assert rc == int(want[-1]) and err.startswith(want[0])
    # -S: the mark rules first (fastlvs' own lines), then exactly ipvsadm's
    saved = kdaemon.ok("-S", "-n").splitlines()
    assert saved[:4] == MARKS
    assert saved[4:] == body(FIXTURE["ipvsadm_S"], 1)


@pytest.mark.parametrize("name,argv", [
    ("dup6", "-A -f 1 -6 -s rr"),
    ("v4dest", "-a -f 1 -6 -r 10.0.2.9 -g"),
    ("v6dest_in4", "-a -f 1 -r [2001:db8:2::9]:0 -g"),
    ("brackets", "-a -f 1 -6 -r [2001:db8:2::9] -g"),
    ("six_first", "-A -6 -f 9 -s rr"),
    ("six_tcp", "-A -t [2001:db8::1]:80 -6 -s rr"),
    ("m129", "-A -f 7 -6 -s rr -p 60 -M 129"),
    ("m0", "-A -f 7 -6 -s rr -p 60 -M 0"),
    ("mask4", "-A -f 7 -6 -s rr -p 60 -M 255.255.255.0"),
    ("nosvc6", "-a -f 8 -6 -r 2001:db8:2::2 -g"),
])
def test_refusals_are_ipvsadm_s(kdaemon, name, argv):
    setup(kdaemon)
    rc, out, err = kdaemon.admin(*argv.split())
    want = CALLS[name]
    assert rc == want["rc"], (rc, err)
    assert want["out"].strip() in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_v4_tun_server_in_a_v6_service_is_refused_where_the_kernel_takes_it(kdaemon):
    setup(kdaemon)
    assert CALLS["v4dest_tun"]["rc"] == 0
    rc, out, err = kdaemon.admin("-a", "-f", "1", "-6", "-r", "10.0.2.9", "-i")
    assert rc == 255 and "Address family not supported by protocol" in err
    assert len(err.strip().splitlines()) == 1


def test_deleting_and_adding_the_v6_service_again(kdaemon):
    setup(kdaemon)
    assert CALLS["del6"]["rc"] == 0 and CALLS["readd6"]["rc"] == 0
    kdaemon.ok("-D", "-f", "3", "-6")
    assert "FWM  3 IPv6" not in kdaemon.ok("-Ln")
    assert "FWM  1 rr" in kdaemon.ok("-Ln")           # the v4 one of mark 1 untouched
    kdaemon.ok("-A", "-f", "3", "-6", "-s", "wlc")
    kdaemon.ok("-a", "-f", "3", "-6", "-r", "[2001:db8:2::2]:0", "-i", "-w", "2")
    assert kdaemon.ok("-Ln").splitlines()[1:] == body(FIXTURE["ipvsadm_Ln"])


def test_the_recorded_traffic_leaves_and_lists_as_the_kernel_s(kdaemon):
    setup(kdaemon)
    now = S
    with kdaemon.lock:
        kdaemon.director.set_local_ip6("2001:db8:2::1")          # TUN's outer source
        kdaemon.director.set_gateway6(CL_MAC, 1)                # NAT66 replies' next hop
        kdaemon.director.set_gateway(CL_MAC, 1)
        for st in FIXTURE["steps"]:
            now += S // 2
            side = st["step"][0]
            out = kdaemon.engine.process([bytes.fromhex(st["sent"])], now)
            theirs = st["at_rs"] if side == "c" else st["at_client"]
            # a reply of a conn is rewritten (its source is the VIP); the host's own
            # answers to what IPVS left (a RST, port unreachable) are not the engine's
            vip_src = "20010db8000100000000000000000100"
            forwarded_by_ipvs = bool(theirs) and (side == "c" or theirs[0][44:76] == vip_src)
            if forwarded_by_ipvs:
                assert len(out) == 1, st["step"]
                assert out[0][2][14:] == bytes.fromhex(theirs[0])[14:], st["step"]
            else:
                assert out == [], st["step"]
    assert rows(kdaemon.ok("-Lnc")) == rows(FIXTURE["ipvsadm_Lnc_after"].split("\n", 1)[1])
    assert kdaemon.ok("-Ln").splitlines()[1:] == body(FIXTURE["ipvsadm_Ln_after"])
    assert kdaemon.ok("-Ln", "--stats").splitlines()[1:] == body(FIXTURE["ipvsadm_Ln_stats"])
    assert kdaemon.ok("-Ln", "--thresholds").splitlines()[1:] == \
        body(FIXTURE["ipvsadm_Ln_thresholds"])
    assert kdaemon.ok("-Ln", "--persistent-conn").splitlines()[1:] == \
        body(FIXTURE["ipvsadm_Ln_persistent"])
    # --rate: the kernel's estimator figures depend on its timing; the layout does not
    rate = kdaemon.ok("-Ln", "--rate").splitlines()[1:]
    want = body(FIXTURE["ipvsadm_Ln_rate"])
    assert [ln[:36] for ln in rate] == [ln[:36] for ln in want]


@pytest.mark.parametrize("rule,msg", [
    ("1,tcp,2001:db8::/129,80", "prefix length 129 is outside 0..128"),
    ("1,sctp,2001:db8::1,80", "IPv6 marks match tcp and udp only"),
    ("1,tcp,2001:db8::/100,80-90", "use a longer prefix"),
])
def test_bad_v6_mark_rules_through_admin_are_one_line(kdaemon, rule, msg):
    rc, out, err = kdaemon.admin("--mark-rule", rule)
    assert rc != 0 and msg in err, (rc, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert kdaemon.ok("-S", "-n") == ""                  # nothing was added
