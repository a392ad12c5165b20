"""Real keepalived (Debian's 2.2.7) on the files fastlvs derives: `keepalived --config-test`
accepts every derived corpus file, and two directors on one bridge, each with keepalived
--vrrp run by VrrpKeepalived (system/vrrp.py), elect a master that holds the VIP; the backup
takes it when the master stops; a killed keepalived is started again; nothing is left.
Namespaces with unique names, removed in finally; pid files in the test's own directory, so
a system keepalived is never touched.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from fastlvs.control.keepalived import load_keepalived
from fastlvs.control.vrrp import vrrp_conf
from fastlvs.system import vrrp as vrrpmod
from fastlvs.system.vrrp import VrrpKeepalived
from tests.netns.netns_support import run

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces)"),
              pytest.mark.skipif(shutil.which("keepalived") is None,
                                 reason="keepalived not installed (make build installs it)")]

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "keepalived"
CORPUS = sorted(FIX.glob("*.conf")) + [FIX / "vrrp" / "main.conf"]
_seq = itertools.count()


def _tag() -> str:
    return f"vr{os.getpid() % 100000}{next(_seq)}"


def _complaints(stderr: str) -> set[str]:
    # keepalived prefixes "(FILE: Line N) ": the same complaint sits on other lines in a
    # derived file
    return {re.sub(r"^\([^)]*Line \d+\) ", "", ln).strip() for ln in stderr.splitlines()
            if ln.strip()}


@pytest.fixture
def ns_eth0():
    """A namespace holding an eth0 (the interface the corpus names): one end of a veth pair
    whose other end stays there too."""
    ns = _tag() + "t"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        run("ip", "-n", ns, "link", "set", "dev", "eth0", "up")
        yield ns
    finally:
        run("ip", "netns", "del", ns, check=False)


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.relative_to(FIX).as_posix())
def test_keepalived_config_test_accepts_the_derived_file(path, ns_eth0, tmp_path):
    derived = tmp_path / "vrrp.conf"
    derived.write_text(vrrp_conf(path))
    got = run("ip", "netns", "exec", ns_eth0, "keepalived", "--config-test", "-f",
              str(derived), check=False, timeout=30)
    orig = run("ip", "netns", "exec", ns_eth0, "keepalived", "--config-test", "-f", str(path),
               check=False, timeout=30)
    # nothing keepalived says of the derived file that it did not say of the user's
    assert _complaints(got.stderr) <= _complaints(orig.stderr), got.stderr
    if not _complaints(orig.stderr) & _complaints(got.stderr):
        assert got.returncode == 0, got.stderr


def test_the_pair_file_passes_keepalived_config_test_cleanly(ns_eth0, tmp_path):
    derived = tmp_path / "vrrp.conf"
    derived.write_text(vrrp_conf(FIX / "vrrp" / "main.conf"))
    got = run("ip", "netns", "exec", ns_eth0, "keepalived", "-t", "-f", str(derived),
              check=False, timeout=30)
    assert (got.returncode, got.stderr) == (0, "")


# -- a director pair --------------------------------------------------------------------------
PAIR_CONF = """global_defs {{
    router_id {name}
    script_user root
    enable_script_security
    vrrp_garp_master_delay 1
    lvs_sync_daemon eth0 VI_T id 9
    lvs_timeouts tcp 900
}}
vrrp_instance VI_T {{
    state BACKUP
    interface eth0
    virtual_router_id {vrid}
    priority {prio}
    advert_int 1
    authentication {{
        auth_type PASS
        auth_pass "t#{vrid}"
    }}
    virtual_ipaddress {{
        {vip}/32 dev eth0
    }}
}}
virtual_server {vip} 80 {{
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server 10.{net}.0.9 80 {{ weight 1 }}
}}
"""
BOUND = 20.0        # seconds: VRRP's own bound (3 adverts + skew) is ~4 s; this is a ceiling


class Pair:
    def __init__(self, tmp_path: Path):
        tag = _tag()
        self.sw, self.a, self.b = f"{tag}s", f"{tag}a", f"{tag}b"
        self.net = 100 + os.getpid() % 100
        self.vip = f"10.{self.net}.0.100"
        self.vrid = 1 + os.getpid() % 250
        self.tmp = tmp_path
        self.made: list[str] = []
        self.sup: dict[str, VrrpKeepalived] = {}

    def build(self):
        for ns in (self.sw, self.a, self.b):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        run("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.sw, "link", "set", "dev", "br0", "up")
        for i, ns in enumerate((self.a, self.b), 1):
            port = f"p{i}"
            run("ip", "-n", self.sw, "link", "add", port, "type", "veth", "peer", "name",
                "eth0", "netns", ns)
            run("ip", "-n", self.sw, "link", "set", "dev", port, "master", "br0")
            run("ip", "-n", self.sw, "link", "set", "dev", port, "up")
            run("ip", "-n", ns, "addr", "add", f"10.{self.net}.0.{i}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "dev", "eth0", "up")
        return self

    def start(self, ns: str, prio: int) -> VrrpKeepalived:
        src = self.tmp / f"{ns}.conf"
        src.write_text(PAIR_CONF.format(name=ns, vrid=self.vrid, prio=prio, vip=self.vip,
                                        net=self.net))
        assert load_keepalived(src).sync_daemon.interface == "eth0"   # the line is there
        rundir = self.tmp / f"run-{ns}"
        sup = VrrpKeepalived(lambda: vrrp_conf(src), run_dir=str(rundir),
                             command=("ip", "netns", "exec", ns, "keepalived"))
        self.sup[ns] = sup
        sup.start()
        return sup

    def has_vip(self, ns: str) -> bool:
        out = run("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {self.vip}/32 " in out

    def wait(self, cond, what: str) -> None:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            for sup in self.sup.values():
                sup.poll()
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"not within {BOUND:g}s: {what}")

    def pids(self, ns: str) -> list[str]:
        return run("ip", "netns", "pids", ns, check=False).stdout.split()

    def destroy(self):
        for sup in self.sup.values():
            sup.close()
        for ns in reversed(self.made):
            for pid in self.pids(ns):          # anything left in our namespaces
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    try:
        yield p.build()
    finally:
        p.destroy()


def test_master_holds_the_vip_backup_takes_it_when_the_master_stops(pair, caplog):
    caplog.set_level(logging.INFO, logger="fastlvs")
    a = pair.start(pair.a, 150)
    b = pair.start(pair.b, 100)
    pair.wait(lambda: pair.has_vip(pair.a) and not pair.has_vip(pair.b), "A holds the VIP")
    # lvs_sync_daemon was in the user's file: keepalived's VRRP process still runs (it would
    # die initialising IPVS on a kernel without it)
    assert a.alive and b.alive and a.restarts == b.restarts == 0
    assert "lvs_sync_daemon" not in Path(a.conf_path).read_text()
    # keepalived's own lines come through fastlvs's log; its parent restarts a VRRP child
    # that crashed (as with lvs_sync_daemon here), and says so: it never did
    said = [m for m in caplog.messages if m.startswith("keepalived: ")]
    assert any("Entering MASTER STATE" in m for m in said)
    assert not [m for m in said if "exited due to" in m]
    a_pgid = a.proc.pid
    a.close()                            # SIGTERM: A gives the VIP up
    assert not pair.pids(pair.a)         # no keepalived (parent or VRRP child) left in A
    with pytest.raises(ProcessLookupError):
        os.killpg(a_pgid, 0)
    assert not any(Path(a.conf_path).parent.iterdir())      # conf and pid files removed
    pair.wait(lambda: pair.has_vip(pair.b) and not pair.has_vip(pair.a), "B takes the VIP")
    b.close()
    assert not pair.pids(pair.b)
    pair.wait(lambda: not pair.has_vip(pair.b), "B releases the VIP at stop")


def test_a_killed_keepalived_is_started_again_and_takes_the_vip_back(pair, monkeypatch):
    monkeypatch.setattr(vrrpmod, "RESTART_EVERY", 0.0)
    a = pair.start(pair.a, 150)
    pair.wait(lambda: pair.has_vip(pair.a), "A holds the VIP")
    first = a.proc.pid
    os.killpg(first, signal.SIGKILL)     # parent and VRRP child at once, as a crash
    pair.wait(lambda: a.restarts == 1 and a.alive, "A's keepalived started again")
    assert a.proc.pid != first
    pair.wait(lambda: pair.has_vip(pair.a), "A holds the VIP again")
    a.close()
    assert not pair.pids(pair.a)


def test_reload_rewrites_the_file_and_keepalived_follows(pair):
    a = pair.start(pair.a, 150)
    pair.wait(lambda: pair.has_vip(pair.a), "A holds the VIP")
    src = pair.tmp / f"{pair.a}.conf"
    new_vip = f"10.{pair.net}.0.101"
    src.write_text(src.read_text().replace(pair.vip, new_vip))
    pid = a.proc.pid
    a.reload()
    assert new_vip in Path(a.conf_path).read_text()
    old_vip, pair.vip = pair.vip, new_vip
    pair.wait(lambda: pair.has_vip(pair.a), "A holds the new VIP after SIGHUP")
    pair.vip = old_vip
    assert not pair.has_vip(pair.a) and a.proc.pid == pid and a.restarts == 0
    # a file that no longer reads: keepalived keeps running on its old one
    src.write_text("vrrp_instance VI_T {\n")
    a.reload()
    assert new_vip in Path(a.conf_path).read_text() and a.alive


def test_start_failure_is_one_line(tmp_path):
    sup = VrrpKeepalived(lambda: "vrrp_instance X {\n", run_dir=str(tmp_path),
                         command=("/nonexistent/keepalived",))
    with pytest.raises(vrrpmod.VrrpError, match=r"^--vrrp: /nonexistent/keepalived not found "
                       r"\(install the keepalived package\)$"):
        sup.start()
    sup.close()
    # a keepalived that exits at once: its last line and status
    sup = VrrpKeepalived(lambda: "", run_dir=str(tmp_path),
                         command=("sh", "-c", "echo starting; echo cannot do it >&2; exit 3",
                                  "keepalived"))
    with pytest.raises(vrrpmod.VrrpError) as e:
        sup.start()
    assert str(e.value) == "--vrrp: keepalived exited at once (status 3): cannot do it"
    sup.close()
    bad = tmp_path / "k.conf"
    bad.write_text("vrrp_instance X {\n")
    sup = VrrpKeepalived(lambda: vrrp_conf(bad), run_dir=str(tmp_path))
    with pytest.raises(vrrpmod.VrrpError, match=rf"^{bad}:1: the block of vrrp_instance"):
        sup.start()
    sup.close()
    assert not list(tmp_path.glob("keepalived-vrrp-*"))
