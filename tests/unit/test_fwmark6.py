"""IPv6 firewall-mark services in the control plane, without the extension: IPv6 mark rules
(one-token form, TOML [[mark]], rules files) and their refusals, `-f N -6` in ipvsadm's
syntax and words, a TOML or keepalived.conf fwmark service's family (keepalived's rules:
ip_family, the real servers, persistence_granularity), and the steering keys: a mark's v6
rules steer for its v6 service only, its v4 rules for its v4 one (reference engine under
the director)."""
from __future__ import annotations

import pytest

from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import CommandError, parse_command
from fastlvs.control.keepalived import KeepalivedError, load_keepalived
from fastlvs.control.model import ControlError, Proto, ServiceKey, parse_mark_rule
from fastlvs.control.rules import dump_rules, parse_rules
from fastlvs.engine.reference import Engine

V6 = ServiceKey(Proto.FWM, "::", 1)
V4 = ServiceKey(Proto.FWM, "0.0.0.0", 1)


@pytest.mark.parametrize("text,want,af", [
    ("1,tcp,2001:db8:1::100,8000-8010", "1,tcp,2001:db8:1::100/128,8000-8010", 6),
    ("1,tcp,[2001:db8:1::100],80", "1,tcp,2001:db8:1::100/128,80", 6),
    ("2,udp,2001:db8:1:f::/126,53", "2,udp,2001:db8:1:f::/126,53", 6),
    ("2,any,[2001:db8:1:f::]/126,any", "2,any,2001:db8:1:f::/126,any", 6),
    ("3,sctp,10.0.0.0/30,5", "3,sctp,10.0.0.0/30,5", 4),
])
def test_v6_mark_rule_forms(text, want, af):
    r = parse_mark_rule(text)
    assert (r.text(), r.af) == (want, af)
    assert parse_mark_rule(r.text()) == r


@pytest.mark.parametrize("text,msg", [
    ("1,tcp,2001:db8::/129,80", "prefix length 129 is outside 0..128"),
    ("1,tcp,10.0.0.0/33,80", "prefix length 33 is outside 0..32"),
    ("1,tcp,2001:db8::1/64,80", "has host bits set"),
    ("1,sctp,2001:db8::1,80", "IPv6 marks match tcp and udp only"),
    ("1,tcp,::a00:1,80", "IPv6 addresses in ::/96 are not forwarded"),
    ("1,tcp,2001:db8::zz,80", "does not appear to be"),
])
def test_bad_v6_mark_rules_are_one_line(text, msg):
    with pytest.raises(ControlError) as e:
        parse_mark_rule(text)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv,msg", [
    ("-A -6 -f 1 -s rr", "-6 used before -f"),              # ipvsadm's words and order
    ("-A -u [2001:db8::1]:53 -6", "-6 used before -f"),
    ("-L -n -6", "-6 used before -f"),
    ("-A -f 1 -6 -p 60 -M 129", "illegal ipv6 netmask specified"),
    ("-A -f 1 -6 -p 60 -M 255.255.255.0", "illegal ipv6 netmask specified"),
    ("-a -f 1 -6 -r 10.0.0.2 -g", "Different address family is allowed only for tunneling"),
    ("-a -f 1 -6 -r [2001:db8::2] -g", "illegal real server address[:port] specified"),
])
def test_bad_v6_fwmark_commands_are_ipvsadm_s(argv, msg):
    with pytest.raises(CommandError) as e:
        parse_command(argv.split())
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_v6_fwmark_commands():
    cmd = parse_command("-A -f 1 -6 -s rr -p 60 -M 64".split())
    assert (cmd.service, cmd.netmask) == (V6, 64)
    cmd = parse_command("-a -f 1 -6 -r 2001:db8::2 -g".split())
    assert (cmd.service, cmd.dest_addr, cmd.dest_port) == (V6, "2001:db8::2", 0)
    cmd = parse_command("-a -f 1 -6 -r [2001:db8::2]:8080 -m".split())
    assert (cmd.dest_addr, cmd.dest_port) == ("2001:db8::2", 8080)


def test_rules_file_with_v6_rules_and_both_families_of_one_mark_round_trips():
    text = ("--mark-rule 1,tcp,2001:db8:1::100/128,8000-8010\n"
            "--mark-rule 1,tcp,10.0.1.100/32,8000-8010\n"
            "-A -f 1 -s rr\n-a -f 1 -r 10.0.2.2:0 -g -w 1\n"
            "-A -f 1 -6 -s rr -p 60 -M 64\n-a -f 1 -6 -r [2001:db8:2::2]:0 -g -w 1\n")
    table = parse_rules(text)
    assert [r.af for r in table.marks] == [6, 4]
    assert {s.key for s in table} == {V4, V6}
    assert dump_rules(table, sort=False) == text


def director():
    return Director(Engine(capacity=256, local_ip="192.0.2.1", local_mac="02:00:00:00:00:01"),
                    lambda ip: (b"\2" * 6, 7 if ":" in ip else 8))


def test_each_family_s_service_steers_its_own_family_s_rules():
    d = director()
    d.load(parse_rules("--mark-rule 1,tcp,2001:db8:1::100/127,8000-8001\n"
                       "--mark-rule 1,any,2001:db8:1::200,0-65535\n"
                       "--mark-rule 1,udp,10.0.1.100,53\n"
                       "-A -f 1 -6 -s rr\n-a -f 1 -6 -r [2001:db8:2::2]:0 -m -w 1\n"))
    want = d.steering(3)
    # the v6 rules only: there is no v4 service of mark 1 for its v4 rule to feed
    assert want[3] == {("service", "tcp", a, p) for a in ("2001:db8:1::100", "2001:db8:1::101")
                       for p in (8000, 8001)} | {
        ("service", pr, "2001:db8:1::200", 0) for pr in ("tcp", "udp")}
    assert want[7] == {("rserver", pr, "2001:db8:2::2", 0) for pr in ("tcp", "udp")}
    assert d.engine.marks() == [(1, 6, "2001:db8:1::100/127", 8000, 8001),
                                (1, 0, "2001:db8:1::200/128", 0, 65535),
                                (1, 17, "10.0.1.100/32", 53, 53)]
    d.execute(parse_command("-A -f 1 -s rr".split()))
    d.execute(parse_command("-a -f 1 -r 10.0.2.2 -m".split()))
    want = d.steering(3)
    assert ("service", "udp", "10.0.1.100", 53) in want[3]
    assert want[8] == {("rserver", "udp", "10.0.2.2", 0)}


def test_a_v4_server_in_a_v6_service_is_refused_by_the_director_in_one_line():
    d = director()
    d.execute(parse_command("-A -f 1 -6 -s rr".split()))
    with pytest.raises(ControlError) as e:
        d.execute(parse_command("-a -f 1 -6 -r 10.0.2.9 -i".split()))
    assert "Address family not supported" in str(e.value) and "\n" not in str(e.value)
    assert d.table.get(V6).dests == []


def test_toml_v6_marks_and_fwmark_service_families():
    cfg = parse_config('''
[[mark]]
mark = 1
proto = "tcp"
address = "2001:db8:1::100"
ports = "8000-8010"
[[mark]]
mark = 1
address = "10.0.1.100"
[[service]]
fwmark = 1
family = "inet6"
persistent = 60
netmask = 64
dest = [{address = "[2001:db8:2::3]:8080", fwd = "nat"}]
[[service]]
fwmark = 1
dest = [{address = "10.0.2.2", fwd = "dr"}]
[[service]]
fwmark = 2
dest = [{address = "2001:db8:2::2", fwd = "dr"}]
''', "f.toml")
    assert [r.text() for r in cfg.table.marks] == ["1,tcp,2001:db8:1::100/128,8000-8010",
                                                   "1,any,10.0.1.100/32,any"]
    svc = cfg.table.get(V6)
    assert (svc.netmask, [(d.addr, d.port) for d in svc.dests]) == (64, [("2001:db8:2::3", 8080)])
    assert [d.addr for d in cfg.table.get(V4).dests] == ["10.0.2.2"]
    # no family: the first dest's, as keepalived decides
    assert cfg.table.get(ServiceKey(Proto.FWM, "::", 2)) is not None


@pytest.mark.parametrize("body,what", [
    ('[[mark]]\nmark = 1\naddress = "2001:db8::/129"\n',
     "f.toml:3: mark[0].address: address '2001:db8::/129': prefix length 129 is outside"),
    ('[[mark]]\nmark = 1\nproto = "sctp"\naddress = "2001:db8::1"\n',
     "f.toml:4: mark[0].address: address '2001:db8::1': IPv6 marks match tcp and udp only"),
    ('[[service]]\nfwmark = 1\nfamily = "inet7"\n', "f.toml:3: service[0].family: 'inet7'"),
    ('[[service]]\nvip = "10.0.0.1:80"\nfamily = "inet6"\n', "f.toml:3: service[0].family:"),
    ('[[service]]\nfwmark = 1\nfamily = "inet6"\n[[service.dest]]\naddress = "10.0.2.2"\n',
     "f.toml:4: service[0].dest[0].fwd: Different address family"),
])
def test_toml_v6_mark_errors_are_one_line(body, what):
    with pytest.raises(ConfigError) as e:
        parse_config(body, "f.toml")
    assert str(e.value).startswith(what), str(e.value)
    assert "\n" not in str(e.value)


KEEPALIVED = """
virtual_server fwmark 1 {
    lvs_sched rr
    lb_kind DR
%s
}
"""


def keepalived(tmp_path, inner):
    p = tmp_path / "keepalived.conf"
    p.write_text(KEEPALIVED % inner)
    return load_keepalived(p)


@pytest.mark.parametrize("inner,af,dests", [
    # the real servers say it
    ("    real_server 2001:db8:2::2 80 {\n    }\n", 6, ["2001:db8:2::2"]),
    ("    real_server 10.0.2.2 80 {\n    }\n", 4, ["10.0.2.2"]),
    # the first non-TUN one decides; one of the other family is dropped (warned)
    ("    real_server 2001:db8:2::2 80 {\n    }\n    real_server 10.0.2.2 80 {\n    }\n",
     6, ["2001:db8:2::2"]),
    # ip_family first
    ("    ip_family inet6\n    real_server 10.0.2.2 80 {\n    }\n"
     "    real_server 2001:db8:2::3 80 {\n    }\n", 6, ["2001:db8:2::3"]),
    # a TUN server does not decide; all-TUN of one family does
    ("    real_server 2001:db8:2::4 80 {\n        lb_kind TUN\n    }\n"
     "    real_server 2001:db8:2::2 80 {\n    }\n", 6, ["2001:db8:2::2", "2001:db8:2::4"]),
    ("    lb_kind TUN\n    real_server 2001:db8:2::4 80 {\n    }\n", 6, ["2001:db8:2::4"]),
    # persistence_granularity as a prefix length says IPv6
    ("    persistence_granularity 64\n    lb_kind TUN\n"
     "    real_server 2001:db8:2::4 80 {\n    }\n", 6, ["2001:db8:2::4"]),
])
def test_keepalived_fwmark_service_family(tmp_path, inner, af, dests):
    cfg = keepalived(tmp_path, inner)
    (svc,) = list(cfg.table)
    assert svc.key == (V6 if af == 6 else V4)
    assert sorted(d.addr for d in svc.dests) == dests


def test_keepalived_ip_family_against_the_servers_is_warned_and_ignored(tmp_path):
    cfg = keepalived(tmp_path, "    real_server 10.0.2.2 80 {\n    }\n    ip_family inet6\n")
    (svc,) = list(cfg.table)
    assert svc.key == V4
    assert any("ip_family inet6 conflicts" in w for w in cfg.warnings)
    with pytest.raises(KeepalivedError, match="ip_family inet7: not inet or inet6"):
        keepalived(tmp_path, "    ip_family inet7\n")


def test_daemon_takes_a_v6_keepalived_fwmark_service_and_the_toml_s_v6_rules(tmp_path, caplog):
    import logging
    from fastlvs.daemon import Daemon, Options
    (tmp_path / "keepalived.conf").write_text(
        "virtual_server fwmark 1 {\n    lvs_sched rr\n    lb_kind DR\n"
        "    real_server 2001:db8:2::2 80 {\n    }\n}\n"
        "virtual_server fwmark 2 {\n    ip_family inet6\n    lb_kind DR\n"
        "    real_server 2001:db8:2::3 80 {\n    }\n}\n")
    toml = tmp_path / "fastlvs.toml"
    toml.write_text('[director]\ninterface = "eth0"\nkeepalived_conf = "keepalived.conf"\n'
                    '[[mark]]\nmark = 1\nproto = "tcp"\naddress = "2001:db8:1::100"\n'
                    'ports = 80\n[[mark]]\nmark = 2\naddress = "10.0.1.100"\n')
    d = Daemon(Options(config=str(toml)))
    d._settings()
    with caplog.at_level(logging.WARNING, logger="fastlvs"):
        table = d._load_table()
    assert {s.key for s in table} == {V6, ServiceKey(Proto.FWM, "::", 2)}
    assert [r.af for r in table.marks] == [6, 4]
    # mark 2's only rule is IPv4: its IPv6 service gets nothing, and is warned about
    warned = [m for m in caplog.messages if "no [[mark]] rule" in m]
    assert len(warned) == 1 and "fwmark 2" in warned[0] and "IPv6" in warned[0]
