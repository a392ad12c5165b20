"""A TUN dest's GUE/GRE tunnel from the other ways in: TOML's [[service.dest]] tun_type /
tun_port / tun_flags and keepalived 2.2.7's `lvs_method TUN type gue port N [csum]` (in the
virtual server, overridden by a real server's own); each table saves as the kernel saved the
same dests (tests/fixtures/kernel/tunnels.json); bad settings are one line naming the place;
the health policy's copy of a table keeps the tunnels."""
from __future__ import annotations

import json
import pathlib

import pytest

from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.health import copy_table
from fastlvs.control.keepalived import KeepalivedError, load_keepalived
from fastlvs.control.rules import dump_rules

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "tunnels.json").read_text())


def kernel_saved(port: int) -> str:
    """The kernel's -S lines of TCP 10.0.1.100:PORT."""
    return "".join(ln + "\n" for ln in FIXTURE["ipvsadm_S"]
                   if ln.split()[1:3] == ["-t", f"10.0.1.100:{port}"])


TOML = '''[[service]]
vip = "10.0.1.100:{port}"
scheduler = "rr"
[[service.dest]]
address = "10.0.2.2"
fwd = "tun"
{extra}'''


@pytest.mark.parametrize("port,extra", [
    (90, 'tun_type = "gue"\ntun_port = 6080\n'),
    (91, 'tun_type = "gue"\ntun_port = 6081\ntun_flags = "csum"\n'),
    (92, 'tun_type = "gue"\ntun_port = 6082\ntun_flags = "remcsum"\n'),
    (93, 'tun_type = "gre"\n'),
    (94, 'tun_type = "gre"\ntun_flags = "csum"\n'),
    (97, ''),
])
def test_toml_dests_save_as_the_kernel_saved_them(port, extra):
    table = parse_config(TOML.format(port=port, extra=extra), "f.toml").table
    assert dump_rules(table) == kernel_saved(port)
    assert dump_rules(copy_table(table)) == kernel_saved(port)


@pytest.mark.parametrize("extra,where", [
    ('tun_type = "gue"\n', "tun_port"),
    ('tun_type = "gre"\ntun_flags = "remcsum"\n', "tun_flags"),
    ('tun_type = "gre"\ntun_port = 6080\n', "tun_port"),
    ('tun_type = "vxlan"\n', "tun_type"),
    ('tun_type = "gue"\ntun_port = 0\n', "tun_port"),
    ('tun_flags = "csum"\n', "tun_flags"),
])
def test_toml_bad_tunnels_are_one_line(extra, where):
    with pytest.raises(ConfigError) as e:
        parse_config(TOML.format(port=90, extra=extra), "f.toml")
    text = str(e.value)
    assert len(text.splitlines()) == 1 and f"service[0].dest[0].{where}" in text


def test_toml_tunnel_settings_need_a_tun_dest():
    with pytest.raises(ConfigError) as e:
        parse_config(TOML.format(port=90, extra="").replace('"tun"', '"dr"')
                     + 'tun_type = "gre"\n', "f.toml")
    assert "tun_type" in str(e.value) and "only a tun dest" in str(e.value)


KCONF = '''virtual_server 10.0.1.100 {port} {{
    lb_algo rr
    protocol TCP
    lvs_method {vmethod}
    real_server 10.0.2.2 {port} {{
        weight 1
{rmethod}    }}
}}
'''


@pytest.mark.parametrize("port,vmethod,rmethod", [
    (90, "TUN type gue port 6080", ""),
    (91, "TUN type gue port 6081 csum", ""),
    (92, "DR", "        lvs_method TUN type gue port 6082 remcsum\n"),
    (93, "TUN type gue port 6080 csum", "        lvs_method TUN type gre\n"),
    (94, "TUN type gre csum", ""),
    (96, "TUN type gre nocsum", ""),
    (97, "TUN type gre", "        lvs_method TUN\n"),
])
def test_keepalived_tunnels_save_as_the_kernel_saved_them(tmp_path, port, vmethod, rmethod):
    (tmp_path / "k.conf").write_text(KCONF.format(port=port, vmethod=vmethod, rmethod=rmethod))
    assert dump_rules(load_keepalived(str(tmp_path / "k.conf")).table) == kernel_saved(port)


@pytest.mark.parametrize("method", ["TUN type gue", "TUN type gue port x",
                                    "TUN type gre remcsum", "TUN type gue port 6080 csum x",
                                    "TUN type vxlan", "DR type gre"])
def test_keepalived_bad_tunnels_are_one_line(tmp_path, method):
    (tmp_path / "k.conf").write_text(KCONF.format(port=90, vmethod=method, rmethod=""))
    with pytest.raises(KeepalivedError) as e:
        load_keepalived(str(tmp_path / "k.conf"))
    text = str(e.value)
    assert len(text.splitlines()) == 1 and "k.conf:4" in text
