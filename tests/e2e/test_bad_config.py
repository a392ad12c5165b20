"""Bad configuration stops the daemon before it touches the network: one line on stderr,
exit status 2, and no XDP program, nft table or control socket left in the director's
namespace. Run in a DR cluster (the mode where the VIP rule and the on-link rule both apply).
"""
import os

import pytest

from tests.e2e.e2e_support import assert_clean, make_bed
from fastlvs.lab.testbed import Daemon

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")


@pytest.fixture(scope="module")
def dr_bed():
    tb = make_bed("dr")
    try:
        yield tb
    finally:
        tb.destroy()


def run_bad(tb, args, timeout=15):
    d = Daemon(tb, args)
    tb.daemons.append(d)
    d.start(wait_ready=False)
    rc = d.wait(timeout)
    return d, rc


def rules_file(tb, text):
    return tb.write_rules(text, name="bad-rules")


CASES = {
    "unknown interface": lambda tb: (
        ["--mode", "dr", "-i", "nosuch0", "--vip", f"{tb.vip}:80", "--rs", f"{tb.rips[0]}:80"],
        "nosuch0"),
    # a VIP not on this host is no error (a backup waits for it); one that never can be is
    "multicast VIP (DR)": lambda tb: (
        ["--mode", "dr", "-i", tb.lan_if, "--vip", "239.1.2.3:80",
         "--rs", f"{tb.rips[0]}:80"],
        "VIP 239.1.2.3 is a multicast address"),
    # on the LAN, but nobody answers ARP for it (resolution gives up after ~3 s)
    "unresolvable RS": lambda tb: (
        ["--mode", "dr", "-i", tb.lan_if, "--vip", f"{tb.vip}:80",
         "--rs", f"{tb.rips[0]}:80", "--rs", "10.201.0.77:80"],
        "10.201.0.77"),
    "malformed rules file": lambda tb: (
        ["--mode", "dr", "-i", tb.lan_if, "--rules",
         rules_file(tb, f"-A -t {tb.vip}:80 -s wrr\n-a -t {tb.vip}:80 -r banana -g\n")],
        "banana"),
    "CPU not ours": lambda tb: (
        ["--mode", "dr", "-i", tb.lan_if, "--vip", f"{tb.vip}:80", "--rs", f"{tb.rips[0]}:80",
         "--cpu", "4095"],
        "--cpu: 4095"),
    "unknown scheduler in rules": lambda tb: (
        ["--mode", "dr", "-i", tb.lan_if, "--rules",
         rules_file(tb, f"-A -t {tb.vip}:80 -s nosuchsched\n")],
        "nosuchsched"),
    "malformed keepalived.conf": lambda tb: (
        ["-i", tb.lan_if, "--keepalived-conf",
         tb.write_rules(f"virtual_server {tb.vip} 80 {{\n    protocol TCP\n    lb_kind XX\n}}\n",
                        name="bad-keepalived.conf")],
        "bad-keepalived.conf:3: lb_kind XX: unknown forwarding method"),
}


# Every case on both backends, except the unresolvable RS: its check (3 s of ARP) runs
# before any backend is chosen, so one backend covers it.
_PAIRS = [(c, b) for c in CASES for b in ("xdp", "packet")
          if not (c == "unresolvable RS" and b == "packet")]


@pytest.mark.parametrize("case,backend", _PAIRS)
def test_bad_config_exits_2_with_one_line(dr_bed, case, backend):
    args, word = CASES[case](dr_bed)
    d, rc = run_bad(dr_bed, args + ["--backend", backend])
    lines = [ln for ln in d.lines if ln.strip()]
    assert rc == 2, d.stderr
    assert len(lines) == 1, lines
    assert word in lines[0], lines
    assert_clean(dr_bed, d)
    assert not os.path.exists(d.socket_path)
