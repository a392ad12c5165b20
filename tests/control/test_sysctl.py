"""The IPVS sysctls through every door: `fastlvs admin --sysctl`, the control socket's
"sysctl" op, the TOML [sysctl] table and Director.load; the kernel's names and defaults
(recorded on 6.1), refusal by name, nothing half applied, and each one reaching the engine."""
from __future__ import annotations

import json
import pathlib

import pytest

from fastlvs.control import ctl, sysctl
from fastlvs.control.config import ConfigError, parse_config

KERNEL = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" /
                     "conns.json").read_text())


def test_declared_defaults_are_the_kernels():
    recorded = dict(KERNEL["sysctl_defaults"])
    # the kernel's sync_threshold is the pair "threshold period", two names here; its
    # sync_qlen_max default is a share of free memory (15191 on the oracle's guest)
    recorded["sync_threshold"], recorded["sync_period"] = recorded["sync_threshold"].split()
    del recorded["sync_qlen_max"]
    for s in sysctl.SYSCTLS.values():
        if s.name in recorded:
            assert int(recorded[s.name]) == s.default, s.name
    assert set(sysctl.SYSCTLS) - set(recorded) == {"sync_qlen_max"}


def test_admin_lists_sets_and_refuses(daemon):
    out = daemon.ok("--sysctl")
    assert out == "".join(f"{n} = {v}\n" for n, v in sysctl.defaults().items())
    assert daemon.ok("--sysctl", "expire_nodest_conn=1", "--sysctl",
                     "net.ipv4.vs.drop_entry=3") == ""
    values = dict(line.split(" = ") for line in daemon.ok("--sysctl").splitlines())
    assert values["expire_nodest_conn"] == "1" and values["drop_entry"] == "3"
    with daemon.lock:
        assert daemon.engine.sysctls()["expire_nodest_conn"] == 1
        assert daemon.engine.defense_state()["drop_entry"]
    assert daemon.ok("--sysctl", "nat_icmp_send=1", "--sysctl", "pmtu_disc=0") == ""
    with daemon.lock:
        got = daemon.engine.sysctls()
    assert (got["nat_icmp_send"], got["pmtu_disc"]) == (1, 0)
    for bad, word in (("conntrack=1", "conntrack"), ("drop_entry=7", "drop_entry"),
                      ("drop_entry", "NAME=VALUE"), ("nat_icmp_send=2", "nat_icmp_send"),
                      ("conn_reuse_mode=x", "conn_reuse_mode")):
        rc, out, err = daemon.admin("--sysctl", bad)
        assert rc == ctl.EXIT_SYNTAX and out == "" and word in err, (bad, err)
        assert len(err.strip().splitlines()) == 1


def test_ctl_op_checks_everything_before_applying(daemon):
    ans = ctl.call("sysctl", daemon.path, set={"sloppy_tcp": 1, "secure_tcp": 9})
    assert not ans["ok"] and "secure_tcp" in ans["error"]
    ans = ctl.call("sysctl", daemon.path)
    assert ans["ok"] and ans["result"]["sloppy_tcp"] == 0       # nothing half applied
    ans = ctl.call("sysctl", daemon.path, set={"no_such": 1})
    assert not ans["ok"] and "no_such" in ans["error"]
    ans = ctl.call("sysctl", daemon.path, set=["sloppy_tcp"])
    assert not ans["ok"] and ans["code"] == ctl.EXIT_SYNTAX
    ans = ctl.call("sysctl", daemon.path, set={"conn_reuse_mode": 2, "amemthresh": 10})
    assert ans["ok"] and ans["result"]["conn_reuse_mode"] == 2
    with daemon.lock:
        assert daemon.engine.sysctls()["amemthresh"] == 10


def test_toml_sysctl_table():
    cfg = parse_config('[sysctl]\nexpire_nodest_conn = 1\ndrop_entry = 1\n'
                       'amemthresh = 4096\n', "f.toml")
    assert cfg.table.sysctls == {"expire_nodest_conn": 1, "drop_entry": 1,
                                 "amemthresh": 4096}
    assert parse_config("", "f.toml").table.sysctls == {}
    for text, where, what in (
            ("[sysctl]\nconntrack = 1\n", "f.toml:2: sysctl.conntrack",
             "not supported"),
            ("\n[sysctl]\ndrop_packet = 5\n", "f.toml:3: sysctl.drop_packet", "0..3"),
            ("[sysctl]\nsloppy_tcp = 'yes'\n", "f.toml:2: sysctl.sloppy_tcp",
             "not an integer"),
            ("sysctl = 3\n", "f.toml", "must be a table")):
        with pytest.raises(ConfigError) as ei:
            parse_config(text, "f.toml")
        msg = str(ei.value)
        assert msg.startswith(where) and what in msg and "\n" not in msg, msg


def test_director_load_applies_a_files_sysctls_and_keeps_them_otherwise(daemon):
    d = daemon.director
    with daemon.lock:
        d.set_sysctl("sloppy_tcp", 1)
        table = parse_config("[sysctl]\nexpire_nodest_conn = 1\nnat_icmp_send = 1\n"
                             "pmtu_disc = 0\n", "f.toml").table
        d.load(table)
        # a configuration file is the whole truth: what it leaves out is the default
        assert d.sysctls()["expire_nodest_conn"] == 1 and d.sysctls()["sloppy_tcp"] == 0
        assert daemon.engine.sysctls()["sloppy_tcp"] == 0
        got = daemon.engine.sysctls()
        assert (got["nat_icmp_send"], got["pmtu_disc"]) == (1, 0)
        d.load(parse_config("", "f.toml").table)
        got = daemon.engine.sysctls()
        assert (got["nat_icmp_send"], got["pmtu_disc"]) == (0, 1)
        d.set_sysctl("sloppy_tcp", 1)
        from fastlvs.control.model import ServiceTable
        d.load(ServiceTable())          # a rules file carries no sysctls: they stay
        assert d.sysctls()["sloppy_tcp"] == 1


def test_parse_assignment():
    assert sysctl.parse_assignment("drop_entry=1") == ("drop_entry", 1)
    assert sysctl.parse_assignment("net.ipv4.vs.amemthresh = 20") == ("amemthresh", 20)
    assert sysctl.parse_assignment("pmtu_disc=0") == ("pmtu_disc", 0)
    with pytest.raises(sysctl.SysctlError, match="pmtu_disc"):
        sysctl.parse_assignment("pmtu_disc=2")
