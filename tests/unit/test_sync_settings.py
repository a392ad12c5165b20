"""The sync daemon's settings without root: ipvsadm's own refusals of --start-daemon and
--stop-daemon (each one the oracle recorded, word for word, exit 2), the TOML [sync] table,
keepalived.conf's lvs_sync_daemon resolved as keepalived resolves it, and the daemon's
switching of master and backup as the VIPs come and go (keepalived's VRRP transitions)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from fastlvs import admin
from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.ipvsadm import CommandError, SyncDaemonOptions, parse_command
from fastlvs.control.keepalived import load_keepalived
from fastlvs.daemon import SYNC_LINGER, Daemon, Options
from fastlvs.settings import SyncSettings
from fastlvs.sync.daemon import SyncConfig, SyncError, config_of

FIXTURE = Path(__file__).parents[1] / "fixtures" / "kernel" / "sync_daemon.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if c["rc"] == 2],
                         ids=lambda c: c["name"])
def test_ipvsadm_refusals_word_for_word_without_a_daemon(case):
    # exit 2 is ipvsadm's own refusal: fastlvs admin gives it before reaching any daemon
    out, err = io.StringIO(), io.StringIO()
    rc = admin.main(["--socket", "/nonexistent/fastlvs.sock", *case["argv"]],
                    stdout=out, stderr=err)
    assert (rc, out.getvalue(), err.getvalue()) == (2, "", case["stderr"])


def test_options_as_given_and_defaults_filled_as_the_kernel_fills_them():
    cmd = parse_command(["--start-daemon", "backup", "--mcast-interface", "eth1", "--syncid",
                         "9", "--sync-maxlen", "8000", "--mcast-group", "FF02::1:3",
                         "--mcast-port", "9001", "--mcast-ttl", "7"])
    assert cmd.sync == SyncDaemonOptions("backup", "eth1", 9, 8000, "ff02::1:3", 9001, 7)
    master = parse_command(["--start-daemon=master", "--mcast-interface=eth0"]).sync
    assert master == SyncDaemonOptions("master", "eth0")
    assert config_of(master, mtu=9000) == SyncConfig("master", "eth0", 0, 1472,
                                                     "224.0.0.81", 8848, 1)
    backup = SyncDaemonOptions("backup", "eth0")
    assert config_of(backup, mtu=9000).maxlen == 9000 - 28
    assert config_of(backup, mtu=1280).maxlen == 1472
    assert config_of(SyncDaemonOptions("master", "e", group="ff02::1:3"), 1500).maxlen == 1452
    assert parse_command(["--stop-daemon", "backup", "--syncid", "3"]).sync.state == "backup"
    assert parse_command(["-L", "--daemon"]).daemon


def test_describe_is_ipvsadms_line():
    cfg = SyncConfig("master", "s0", 7, 1000, "239.1.2.3", 9000, 5)
    assert cfg.describe() == ("master sync daemon (mcast=s0, syncid=7, maxlen=1000, "
                              "group=239.1.2.3, port=9000, ttl=5)")


def test_sync_commands_are_not_rules_file_lines():
    from fastlvs.control.rules import RulesError, parse_rules
    with pytest.raises(RulesError, match="--start-daemon does not belong in a rules file"):
        parse_rules("--start-daemon master --mcast-interface eth0\n")


# -- TOML [sync] --------------------------------------------------------------------------------
def test_toml_sync_table():
    cfg = parse_config('[sync]\ninterface = "eth1"\nrole = "backup"\nsyncid = 7\n'
                       'maxlen = 1400\ngroup = "239.0.0.81"\nport = 8849\nttl = 2\n')
    assert cfg.sync == SyncSettings("eth1", "backup", 7, 1400, "239.0.0.81", 8849, 2)
    assert cfg.sync.options("master").state == "master"
    assert cfg.sync.options("master").ifname == "eth1"
    assert parse_config('[sync]\ninterface = "eth1"\n').sync.role == "auto"
    assert parse_config("").sync is None


@pytest.mark.parametrize("text, error", [
    ('[sync]\nrole = "master"\n', 'fastlvs.toml:1: sync: missing "interface"'),
    ('[sync]\ninterface = "eth1"\nrole = "primary"\n',
     "fastlvs.toml:3: sync.role: 'primary' is not one of master, backup, both, auto"),
    ('[sync]\ninterface = "eth1"\nsyncid = 256\n',
     "fastlvs.toml:3: sync.syncid: 256 is outside 0..255"),
    ('[sync]\ninterface = "eth1"\nmaxlen = 65508\n',
     "fastlvs.toml:3: sync.maxlen: 65508 is outside 1..65507"),
    ('[sync]\ninterface = "eth1"\nport = 0\n', "fastlvs.toml:3: sync.port: 0 is outside 1..65535"),
    ('[sync]\ninterface = "eth1"\nttl = "1"\n', "fastlvs.toml:3: sync.ttl: '1' is not an integer"),
    ('[sync]\ninterface = "eth1"\ngroup = "10.0.0.1"\n',
     "fastlvs.toml:3: sync.group: '10.0.0.1' is not a multicast address"),
    ('[sync]\ninterface = "a-very-long-name0"\n', "is longer than an interface name"),
    ('[sync]\ninterface = "eth1"\nmcast = 1\n', "fastlvs.toml:3: sync.mcast: unknown key"),
])
def test_toml_sync_refusals_are_one_line(text, error):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert error in str(e.value) and "\n" not in str(e.value)


# -- keepalived.conf's lvs_sync_daemon ---------------------------------------------------------
VRRP = """vrrp_instance VI_WEB {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress {
        192.0.2.10/32 dev eth0
        192.0.2.53
    }
    virtual_ipaddress_excluded {
        192.0.2.99/24
    }
}
"""


def _kc(tmp_path, line, vrrp=VRRP):
    src = tmp_path / "keepalived.conf"
    src.write_text(f"global_defs {{\n    {line}\n}}\n{vrrp}")
    return src, load_keepalived(src)


def test_lvs_sync_daemon_follows_its_instance(tmp_path):
    src, kc = _kc(tmp_path, "lvs_sync_daemon eth1 VI_WEB maxlen 1400 port 8849 ttl 2 "
                            "group 239.0.0.81")
    assert kc.sync == SyncSettings("eth1", "auto", 51, 1400, "239.0.0.81", 8849, 2,
                                   ("192.0.2.10", "192.0.2.53", "192.0.2.99"),
                                   f"{src}:2: lvs_sync_daemon")
    _, kc = _kc(tmp_path, "lvs_sync_daemon eth1 inst VI_WEB id 0")
    assert (kc.sync.role, kc.sync.syncid) == ("auto", 0)


def test_lvs_sync_daemon_without_instance_runs_both(tmp_path):
    _, kc = _kc(tmp_path, "lvs_sync_daemon eth1", vrrp="")
    assert (kc.sync.role, kc.sync.syncid, kc.sync.vips) == ("both", 0, ())


def test_lvs_sync_daemon_of_an_unknown_instance_is_cleared(tmp_path):
    src, kc = _kc(tmp_path, "lvs_sync_daemon eth1 VI_OTHER")
    assert kc.sync is None
    assert (f"{src}:2: lvs_sync_daemon: no vrrp_instance VI_OTHER in the file; no sync daemon "
            "runs (as keepalived clears it)") in kc.warnings


def test_second_lvs_sync_daemon_is_reported_and_the_first_stands(tmp_path):
    src, kc = _kc(tmp_path, "lvs_sync_daemon eth1 VI_WEB\n    lvs_sync_daemon eth2 VI_WEB")
    assert kc.sync.interface == "eth1"
    assert f"{src}:3: lvs_sync_daemon given again; the first one stands" in kc.warnings


# -- the daemon's switching -------------------------------------------------------------------
class Recorder:
    """The SyncDaemons calls the daemon makes, and which states run (no sockets)."""

    def __init__(self, fail=()):
        self.calls, self.on, self.fail = [], set(), set(fail)

    def running(self, state):
        return state if state in self.on else None

    def start(self, opts):
        self.calls.append(("start", opts.state))
        if opts.state in self.fail:
            raise SyncError("No such device")
        self.on.add(opts.state)
        return SyncConfig(opts.state, opts.ifname)

    def stop(self, state):
        self.calls.append(("stop", state))
        self.on.discard(state)


def _daemon(plan, vips_here):
    d = Daemon(Options())
    d._sync_plan = plan
    d.sync = Recorder()
    d._vip_here = dict(vips_here)
    return d


def test_auto_role_switches_as_keepalived_switches_ipvs():
    plan = SyncSettings("eth1", "auto", vips=("192.0.2.10",))
    d = _daemon(plan, {"192.0.2.10": False})
    d._sync_apply(d._sync_wanted())
    assert d.sync.calls == [("start", "backup")]
    d._sync_follow()                                # nothing moved: nothing done
    assert d.sync.calls == [("start", "backup")]
    d._vip_here["192.0.2.10"] = True                # the instance became MASTER
    d._sync_follow()
    # the backup still hears the old master's handover for SYNC_LINGER, then stops
    assert d.sync.calls[1:] == [("start", "master")] and d.sync.on == {"master", "backup"}
    d.sync.poll = lambda now_ns: 0
    d._sync_turn(time.monotonic() + SYNC_LINGER / 2)
    assert d.sync.on == {"master", "backup"}
    d._sync_turn(time.monotonic() + SYNC_LINGER + 0.1)
    assert d.sync.calls[2:] == [("stop", "backup")] and d.sync.on == {"master"}
    d.sync.stop("master")                           # an admin's --stop-daemon stands...
    d._sync_follow()
    assert d.sync.on == set()
    d._vip_here["192.0.2.10"] = False               # ...until the next transition
    d._sync_follow()
    assert d.sync.on == {"backup"}


def test_back_to_backup_within_the_linger_keeps_the_backup():
    d = _daemon(SyncSettings("eth1", "auto", vips=("192.0.2.10",)), {"192.0.2.10": False})
    d._sync_apply(d._sync_wanted())
    d._vip_here["192.0.2.10"] = True
    d._sync_follow()
    d._vip_here["192.0.2.10"] = False               # the VIP went again at once
    d._sync_follow()
    d.sync.poll = lambda now_ns: 0
    d._sync_turn(time.monotonic() + SYNC_LINGER + 0.1)
    assert d.sync.calls == [("start", "backup"), ("start", "master"), ("stop", "master")]
    assert d.sync.on == {"backup"}


def test_auto_role_without_vips_follows_every_service_vip():
    d = _daemon(SyncSettings("eth1"), {"192.0.2.10": False, "192.0.2.11": True})
    assert d._sync_wanted() == "master"
    d._vip_here["192.0.2.11"] = False
    assert d._sync_wanted() == "backup"


def test_fixed_roles_and_a_failed_switch_is_tried_again():
    d = _daemon(SyncSettings("eth1", "both"), {})
    d._sync_apply(d._sync_wanted())
    assert d.sync.on == {"master", "backup"}
    d = _daemon(SyncSettings("eth1", "auto", vips=("192.0.2.10",)), {"192.0.2.10": True})
    d.sync.fail = {"master"}
    d._sync_follow()
    assert d._sync_retry_at is not None and d.sync.on == set()
    d.sync.fail = set()
    d.sync.poll = lambda now_ns: 0
    d._sync_turn(d._sync_retry_at + 0.1)
    assert d.sync.on == {"master"} and d._sync_retry_at is None


def test_a_reload_restarts_the_daemons_only_when_the_settings_changed(tmp_path):
    toml = tmp_path / "fastlvs.toml"
    toml.write_text('[sync]\ninterface = "eth1"\nrole = "master"\n')
    d = _daemon(SyncSettings("eth1", "master"), {})
    d.opts.config = str(toml)
    d._sync_apply("master")
    d._sync_reload()
    assert d.sync.calls == [("start", "master")]          # the same: nothing moves
    toml.write_text('[sync]\ninterface = "eth1"\nrole = "both"\nsyncid = 3\n')
    d._sync_reload()
    assert d.sync.calls[1:] == [("stop", "master"), ("start", "master"), ("start", "backup")]
    assert d._sync_plan.syncid == 3
    toml.write_text("")
    d._sync_reload()
    assert d.sync.on == set() and d._sync_plan is None


def test_sync_table_and_lvs_sync_daemon_together_are_refused(tmp_path):
    from fastlvs.daemon import StartupError
    d = Daemon(Options(config=str(tmp_path / "fastlvs.toml")))
    _, d._read = _kc(tmp_path, "lvs_sync_daemon eth1 VI_WEB")
    d._sync_toml = SyncSettings("eth1")
    with pytest.raises(StartupError, match=r"\[sync\] cannot be combined with keepalived.conf's "
                       "lvs_sync_daemon"):
        d._start_sync()


def test_a_sync_daemon_that_cannot_start_is_a_startup_error():
    from fastlvs.daemon import StartupError
    d = Daemon(Options())
    d._sync_toml = SyncSettings("nosuch9", "master")
    with pytest.raises(StartupError) as e:
        d._start_sync()
    assert str(e.value) == "[sync]: sync daemon on nosuch9: No such device"
