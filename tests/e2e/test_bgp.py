"""A VIP is announced only while this director can serve it, as the router sees it (BIRD 2
router, two directors each with fastlvs + BIRD, lab/cluster.py): nothing before fastlvs
starts; the route once it is ready; withdrawn when every real server is out and back when
one returns; withdrawn by `fastlvs admin --drain` and back with --undrain; withdrawn by
SIGTERM before the process exits (exit 0); withdrawn at once when fastlvs is SIGKILLed (the
beacon device goes with it). A BIRD that cannot be reached is one log line, and the
director keeps running."""
from __future__ import annotations

import os
import signal
import time

import pytest

from fastlvs.lab.cluster import Cluster


@pytest.fixture(scope="module")
def cl():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    c = Cluster(n_directors=2, n_rs=2, clients=8, prefix="fb").build()
    try:
        yield c
    finally:
        c.destroy()


def _ips(cl, *idx):
    return sorted(cl.director_ips[i] for i in idx)


def test_announced_only_while_serving(cl):
    assert cl.nexthops() == []                        # BIRD runs, fastlvs does not yet
    d0 = cl.start_director(0)
    cl.wait_nexthops(1)
    assert cl.nexthops() == _ips(cl, 0)
    assert set(cl.requests(8)) <= {"rs1", "rs2"}
    # every real server out (weight 0: quiescent, no new connection can be served)
    for rip in cl.rips:
        d0.admin("-e", "-t", f"{cl.vip}:80", "-r", f"{rip}:80", "-g", "-w", "0")
    cl.wait_nexthops(0)
    status = d0.admin("--bgp").stdout
    assert f"{cl.vip}" in status and "withheld: no available real server" in status
    d0.admin("-e", "-t", f"{cl.vip}:80", "-r", f"{cl.rips[0]}:80", "-g", "-w", "1")
    cl.wait_nexthops(1)
    # deleted real servers: the same
    for rip in cl.rips:
        d0.admin("-d", "-t", f"{cl.vip}:80", "-r", f"{rip}:80")
    cl.wait_nexthops(0)
    for rip in cl.rips:
        d0.admin("-a", "-t", f"{cl.vip}:80", "-r", f"{rip}:80", "-g")
    cl.wait_nexthops(1)
    assert "announced" in d0.admin("--bgp").stdout


def test_drain_and_undrain(cl):
    d0 = cl.fastlvs.get(0) or cl.start_director(0)
    cl.wait_nexthops(1)
    out = d0.admin("--drain", "--drain-timeout", "60").stdout
    assert "draining" in out or "drained" in out
    cl.wait_nexthops(0)
    assert d0.proc.poll() is None                     # admin drain: the daemon stays, idle
    assert "announced" not in d0.admin("--bgp").stdout.split("\n", 1)[1]
    d0.admin("--undrain")
    cl.wait_nexthops(1)


def test_sigterm_withdraws_before_exit_and_sigkill_at_once(cl):
    d0 = cl.fastlvs.get(0) or cl.start_director(0)
    d1 = cl.start_director(1)
    cl.wait_nexthops(2)
    ll = cl.long_lived(16)
    rc = cl.stop_director(0, signal.SIGTERM)
    assert rc == 0
    lines = d0.lines
    withdraw = next(i for i, ln in enumerate(lines) if "bgp: withdrawing VIP" in ln)
    stopped = next(i for i, ln in enumerate(lines) if ln.endswith("stopped"))
    assert withdraw < stopped and any("bgp: drained" in ln for ln in lines)
    assert cl.nexthops() == _ips(cl, 1)
    assert ll.probe() == 0                            # mh + sloppy_tcp: director 1 took them
    cl.stop_director(1, signal.SIGKILL)
    cl.wait_nexthops(0, timeout=5)                    # the beacon device went with it
    ll.close()
    assert d1.proc.poll() is not None


def test_health_checks_that_empty_the_service_withdraw_it(cl):
    """keepalived.conf TCP_CHECKs: both real servers' processes killed, the checks take them
    out, the VIP is withdrawn; one back, it is announced again."""
    servers = "".join(
        f"    real_server {rip} 80 {{\n        TCP_CHECK {{\n            connect_timeout 1\n"
        f"            delay_loop 1\n            retry 1\n            delay_before_retry 1\n"
        f"        }}\n    }}\n" for rip in cl.rips)
    path = os.path.join(cl.tmp, "keepalived.conf")
    with open(path, "w") as f:
        f.write(f"virtual_server {cl.vip} 80 {{\n    lb_algo mh\n    lb_kind DR\n"
                f"    protocol TCP\n{servers}}}\n")
    d = cl.start_director(0, "--keepalived-conf", path)
    try:
        cl.wait_nexthops(1)
        for i in range(len(cl.rs)):
            cl.stop_server(i)
        cl.wait_nexthops(0, timeout=20)
        assert "withheld: no available real server" in d.admin("--bgp").stdout
        cl.start_server(0)
        cl.wait_nexthops(1, timeout=20)
        assert set(cl.requests(4)) == {"rs1"}
    finally:
        for i in range(len(cl.rs)):
            if i not in cl.servers:
                cl.start_server(i)
        assert cl.stop_director(0) == 0


def test_bird_unreachable_is_one_line_and_the_director_runs(cl):
    d = cl.start_director(0, "--bird-socket", os.path.join(cl.tmp, "no-such.ctl"))
    try:
        time.sleep(7)                                  # past one retry
        errors = [ln for ln in d.lines if "no such file (is bird running?)" in ln]
        assert len(errors) == 1, d.lines
        assert "Traceback" not in d.stderr
        assert d.proc.poll() is None
        assert "TCP" in d.admin("-Ln").stdout
        assert "BIRD not up to date" in d.admin("--bgp").stdout
    finally:
        assert cl.stop_director(0) == 0
