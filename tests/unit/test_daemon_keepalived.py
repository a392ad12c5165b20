"""The daemon with --keepalived-conf or [director] keepalived_conf: where its services come
from, what it refuses to combine, and a bad keepalived.conf as one line and exit status 2,
all before anything touches the network."""
import logging
import subprocess
import sys

import pytest

from fastlvs.control.config import parse_config
from fastlvs.daemon import Daemon, Options, StartupError

KA = """global_defs {
    lvs_timeouts tcp 600
}
vrrp_instance VI_1 {
    state MASTER
}
virtual_server 203.0.113.10 80 {
    lb_algo rr
    lb_kind DR
    protocol TCP
    real_server 192.0.2.11 80 {
        weight 3
        TCP_CHECK {
            connect_timeout 2
        }
    }
}
"""


def test_keepalived_conf_supplies_the_services_and_its_warnings_are_logged(tmp_path, caplog):
    ka = tmp_path / "keepalived.conf"
    ka.write_text(KA)
    d = Daemon(Options(mode="dr", interface="eth0", keepalived_conf=str(ka)))
    d._settings()
    with caplog.at_level(logging.WARNING, logger="fastlvs"):
        table = d._load_table()
    (svc,) = list(table)
    assert (svc.vaddr, svc.vport, svc.sched_name) == ("203.0.113.10", 80, "rr")
    assert [(x.addr, x.weight) for x in svc.dests] == [("192.0.2.11", 3)]
    assert table.timeouts["tcp"] == 600
    # read, not yet served: start() (or a reload that succeeds) makes it d.keepalived
    assert d._read is not None and d._read.table is table and d.keepalived is None
    (spec,) = d._read.health.probes()
    assert spec.connect_timeout == 2.0
    assert f"{ka}:4: vrrp_instance ignored (VRRP stays with keepalived)" in caplog.messages


def test_toml_keepalived_conf_is_relative_to_the_toml_file(tmp_path):
    (tmp_path / "ka").mkdir()
    (tmp_path / "ka" / "keepalived.conf").write_text(KA)
    toml = tmp_path / "fastlvs.toml"
    toml.write_text('[director]\ninterface = "eth0"\nkeepalived_conf = "ka/keepalived.conf"\n')
    assert parse_config(toml.read_text()).director.keepalived_conf == "ka/keepalived.conf"
    d = Daemon(Options(config=str(toml)))
    d._settings()
    (svc,) = list(d._load_table())
    assert svc.vaddr == "203.0.113.10"


def test_toml_with_both_services_and_keepalived_conf_is_refused(tmp_path):
    (tmp_path / "keepalived.conf").write_text(KA)
    toml = tmp_path / "fastlvs.toml"
    toml.write_text('[director]\ninterface = "eth0"\nkeepalived_conf = "keepalived.conf"\n'
                    '[[service]]\nvip = "203.0.113.10:80"\n')
    d = Daemon(Options(config=str(toml)))
    d._settings()
    with pytest.raises(StartupError, match=r"\[\[service\]\] cannot be combined"):
        d._load_table()


@pytest.mark.parametrize("extra", [dict(rules="/x"),
                                   dict(vip="203.0.113.10:80", rs=["192.0.2.11:80"])])
def test_keepalived_conf_cannot_be_combined_with_rules_or_vip(extra):
    with pytest.raises(StartupError, match="--keepalived-conf cannot be combined"):
        Daemon(Options(mode="dr", interface="eth0", keepalived_conf="/x", **extra))._settings()


def test_a_bad_keepalived_conf_is_one_line_and_exit_2(tmp_path):
    ka = tmp_path / "keepalived.conf"
    ka.write_text(KA.replace("lb_kind DR", "lb_kind XX"))
    r = subprocess.run([sys.executable, "-m", "fastlvs", "-i", "eth0",
                        "--keepalived-conf", str(ka)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1
    assert f"{ka}:9: lb_kind XX: unknown forwarding method (NAT, DR or TUN)" in r.stderr


def test_a_missing_keepalived_conf_is_one_line(tmp_path):
    d = Daemon(Options(mode="dr", interface="eth0", keepalived_conf=str(tmp_path / "no")))
    d._settings()
    with pytest.raises(StartupError) as e:
        d._load_table()
    assert str(e.value) == f"{tmp_path / 'no'}: No such file or directory"


def test_the_checker_process_stays_off_the_forwarding_cpu():
    d = Daemon(Options(mode="dr", interface="eth0", keepalived_conf="/x"))
    assert d._checker_cpus() is None                 # no --cpu: anywhere
    d.cfg.cpu = max(d._cpus)
    if len(d._cpus) > 1:
        assert d._checker_cpus() == d._cpus - {d.cfg.cpu}
    else:
        assert d._checker_cpus() is None             # one CPU: nowhere else to go
