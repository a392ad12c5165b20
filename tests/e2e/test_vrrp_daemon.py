"""`fastlvs --keepalived-conf FILE --vrrp`: the daemon runs keepalived --vrrp on the file's VRRP
part (lvs_sync_daemon in the user's file, which would crash keepalived's VRRP process here),
keepalived's instance takes its address, keepalived's lines are in fastlvs's log, SIGHUP makes
keepalived re-read the re-derived file, and SIGTERM leaves no keepalived behind."""
import os
import signal
import time

import pytest

from fastlvs.lab.testbed import run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

BOUND = 20.0        # VRRP's own: a lone BACKUP becomes MASTER after ~3 adverts (advert_int 1)


def conf(bed, vrrp_addr: str) -> str:
    return f"""global_defs {{
    router_id fastlvs-vrrp-e2e
    lvs_sync_daemon {bed.lan_if} VI_E2E id 4
}}
vrrp_instance VI_E2E {{
    state BACKUP
    interface {bed.lan_if}
    virtual_router_id {1 + os.getpid() % 250}
    priority 100
    advert_int 1
    virtual_ipaddress {{
        {vrrp_addr}/32
    }}
}}
virtual_server {bed.vip} 80 {{
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server {bed.rip_of("rs1")} 80 {{
        weight 1
    }}
}}
"""


def _has(bed, addr: str) -> bool:
    out = run("ip", "-n", bed.director, "-4", "-o", "addr", "show", "dev", bed.lan_if).stdout
    return f" {addr}/32 " in out


def _keepalived_pids(bed) -> list[str]:
    pids = run("ip", "netns", "pids", bed.director).stdout.split()
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "keepalived":
                    out.append(pid)
        except FileNotFoundError:
            pass
    return out


def _wait(cond, what: str, d) -> None:
    deadline = time.monotonic() + BOUND
    while not cond():
        assert time.monotonic() < deadline, f"not within {BOUND:g}s: {what}\n{d.stderr}"
        time.sleep(0.2)


@pytest.mark.parametrize("bed", ["dr"], indirect=True)
def test_daemon_runs_keepalived_vrrp_reloads_it_and_stops_it(bed, start):
    first, second = "192.0.2.77", "192.0.2.78"      # only on the director's lan0
    path = bed.write_rules(conf(bed, first), name="keepalived.conf")
    assert not _keepalived_pids(bed)
    d = start("--keepalived-conf", path, "--vrrp")
    _wait(lambda: _has(bed, first), "keepalived's instance holds its address", d)
    assert len(_keepalived_pids(bed)) == 2          # keepalived's parent and its VRRP child
    # keepalived's line reaches fastlvs's log on the loop's next turn, maybe after the address
    _wait(lambda: any(ln.startswith("fastlvs: keepalived: ") and "Entering MASTER STATE" in ln
                      for ln in d.lines), "keepalived's MASTER line in fastlvs's log", d)
    assert not any("exited" in ln for ln in d.lines), d.stderr

    bed.write_rules(conf(bed, second), name="keepalived.conf")
    d.send(signal.SIGHUP)
    _wait(lambda: _has(bed, second) and not _has(bed, first), "the reloaded address", d)
    assert any("vrrp: keepalived re-reads" in ln for ln in d.lines), d.stderr

    pid = d.proc.pid                                # ip netns exec execs: fastlvs's pid
    assert d.stop(signal.SIGTERM) == 0, d.stderr
    assert not _keepalived_pids(bed)
    assert not _has(bed, second)                    # keepalived gave its address up
    assert not [f for f in os.listdir("/run/fastlvs")
                if f.startswith(f"keepalived-vrrp-{pid}")]


@pytest.mark.parametrize("bed", ["dr"], indirect=True)
def test_vrrp_without_keepalived_conf_is_one_line(bed):
    d = bed.start_daemon("--vip", f"{bed.vip}:80", "--rs", f"{bed.rip_of('rs1')}:80", "--vrrp",
              wait_ready=False)
    assert d.wait(20) == 2
    assert "--vrrp needs a keepalived.conf (--keepalived-conf FILE)" in d.stderr
    assert not _keepalived_pids(bed)
