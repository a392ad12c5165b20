"""Firewall-mark services in the control plane, without the extension: the ipvsadm -f syntax,
the mark rules (one-token form, TOML [[mark]]), rules files round-tripping them, and the
steering keys a mark's rules become (reference engine under the director)."""
from __future__ import annotations

import pytest

from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.director import MARK_STEER_KEYS, Director, mark_rule_keys
from fastlvs.control.ipvsadm import CommandError, parse_command
from fastlvs.control.model import ControlError, Proto, ServiceKey, mark_rule, parse_mark_rule
from fastlvs.control.rules import RulesError, dump_rules, parse_rules
from fastlvs.engine.reference import Engine


@pytest.mark.parametrize("argv,mark,af,port", [
    ("-A -f 1 -s rr", 1, 4, None),
    ("-A -f 4294967295 -s rr", 4294967295, 4, None),
    ("-A -f -1 -6 -s rr", 4294967295, 6, None),     # what ipvsadm -S writes for it
    ("-a -f 1 -r 10.0.0.2 -g", 1, 4, 0),            # no port: 0, even for DR
    ("-a -f 1 -r 10.0.0.2:80 -g", 1, 4, 80),         # DR keeps a mark dest's port
])
def test_fwmark_option(argv, mark, af, port):
    cmd = parse_command(argv.split())
    assert cmd.service == ServiceKey(Proto.FWM, "0.0.0.0" if af == 4 else "::", mark)
    assert cmd.service.option_text() == ("-f " + ("-1 -6" if af == 6 else
                                                  str(mark) if mark < 2**31 else "-1"))
    if port is not None:
        assert cmd.dest_port == port


@pytest.mark.parametrize("argv,msg", [
    ("-A -f 0 -s rr", "invalid fwmark value `0' specified"),
    ("-A -f 4294967296", "invalid fwmark value `4294967296' specified"),
    ("-A -f abc", "invalid fwmark value `abc' specified"),
    ("-A -t 10.0.0.1:80 -6", "-6 used before -f"),     # ipvsadm's words (fwmark6.json)
    ("--mark-rule 1,tcp", "--mark-rule 1,tcp: '1,tcp': want MARK,PROTO"),
    ("--mark-rule 1,icmp,any,any", "protocol 'icmp' is not one of"),
    ("--mark-rule 1,tcp,10.0.0.1/8,80", "host bits set"),
    ("--mark-rule 1,tcp,any,80 -s rr", "takes one argument and no options"),
])
def test_bad_mark_commands_say_what_is_wrong(argv, msg):
    with pytest.raises(CommandError, match=None) as e:
        parse_command(argv.split())
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_mark_rule_forms():
    r = parse_mark_rule("1,tcp,10.0.1.100/32,8000-8010")
    assert r == mark_rule(1, "tcp", "10.0.1.100", "8000-8010")
    assert r.text() == "1,tcp,10.0.1.100/32,8000-8010"
    assert r.engine_row() == (1, 6, "10.0.1.100/32", 8000, 8010)
    assert parse_mark_rule("9,any,any,any").engine_row() == (9, 0, "0.0.0.0/0", 0, 65535)
    assert parse_mark_rule("2,sctp,10.0.0.0/30,5").text() == "2,sctp,10.0.0.0/30,5"


def test_rules_file_round_trip_and_refusals():
    text = ("--mark-rule 2,udp,10.0.1.96/30,53\n--mark-rule 1,tcp,10.0.1.100/32,8000-8010\n"
            "-A -f 1 -s rr\n-a -f 1 -r 10.0.2.2:0 -m -w 1\n-A -f 2 -s wlc -p 60\n"
            "-a -f 2 -r 10.0.2.3:0 -g -w 1\n")
    table = parse_rules(text)
    assert [r.mark for r in table.marks] == [2, 1]          # the order is the matching order
    assert dump_rules(table, sort=False) == text
    with pytest.raises(RulesError, match="f:2: .*Rule already exists"):
        parse_rules("--mark-rule 1,tcp,any,80\n--mark-rule 1,tcp,any,80\n", "f")
    table = parse_rules("--mark-rule 1,tcp,any,80\n--mark-rule 1,udp,any,53\n"
                        "--mark-rule 3,tcp,any,1\n--del-mark-rules 1\n")
    assert [r.text() for r in table.marks] == ["3,tcp,0.0.0.0/0,1"]
    with pytest.raises(RulesError, match="No such rule"):
        parse_rules("--del-mark-rules 5\n")


def test_toml_marks_and_mark_services():
    cfg = parse_config('''
[[mark]]
mark = 1
proto = "tcp"
address = "10.0.1.100"
ports = "8000-8010"
[[mark]]
mark = 2
address = "10.0.1.96/30"
ports = 53
[[service]]
fwmark = 1
scheduler = "rr"
dest = [{address = "10.0.2.2", fwd = "nat"}, {address = "10.0.2.3:8080", fwd = "nat"}]
[[service]]
fwmark = 2
dest = [{address = "10.0.2.3", fwd = "dr"}]
''', "f.toml")
    assert [r.text() for r in cfg.table.marks] == ["1,tcp,10.0.1.100/32,8000-8010",
                                                   "2,any,10.0.1.96/30,53"]
    svc = cfg.table.get(ServiceKey(Proto.FWM, "0.0.0.0", 1))
    assert sorted((d.addr, d.port) for d in svc.dests) == [("10.0.2.2", 0), ("10.0.2.3", 8080)]


@pytest.mark.parametrize("body,what", [
    ('[[mark]]\nproto = "tcp"\n', 'f.toml:1: mark[0]: missing "mark"'),
    ('[[mark]]\nmark = 0\n', "f.toml:2: mark[0].mark: 0 is outside 1..4294967295"),
    ('[[mark]]\nmark = 1\nports = "9-8"\n', "f.toml:3: mark[0].ports: ports '9-8'"),
    ('[[mark]]\nmark = 1\naddress = "10.0.0.1/8"\n', "f.toml:3: mark[0].address: address '10.0.0.1/8'"),
    ('[[mark]]\nmark = 1\nfoo = 1\n', "f.toml:3: mark[0].foo: unknown key"),
    ('[[service]]\nfwmark = 1\nvip = "10.0.0.1:80"\n', "f.toml:3: service[0].vip: a fwmark"),
])
def test_toml_mark_errors_are_one_line(body, what):
    with pytest.raises(ConfigError) as e:
        parse_config(body, "f.toml")
    assert str(e.value).startswith(what), str(e.value)
    assert "\n" not in str(e.value)


def test_steering_spells_out_a_mark_s_rules():
    d = Director(Engine(capacity=256, local_ip="192.0.2.1", local_mac="02:00:00:00:00:01"),
                 lambda ip: (b"\2" * 6, 7))
    d.load(parse_rules("--mark-rule 1,tcp,10.0.1.100/31,8000-8002\n"
                       "--mark-rule 1,any,10.0.1.200,0-65535\n"
                       "-A -f 1 -s rr\n-a -f 1 -r 10.0.2.2:0 -m -w 1\n"))
    want = d.steering(3)
    assert want[3] == {("service", "tcp", a, p) for a in ("10.0.1.100", "10.0.1.101")
                       for p in (8000, 8001, 8002)} | {
        ("service", pr, "10.0.1.200", 0) for pr in ("tcp", "udp", "sctp")}
    # the NAT dest's replies, for every protocol the mark's rules name
    assert want[7] == {("rserver", pr, "10.0.2.2", 0) for pr in ("tcp", "udp", "sctp")}
    assert d.engine.marks() == [(1, 6, "10.0.1.100/31", 8000, 8002),
                                (1, 0, "10.0.1.200/32", 0, 65535)]


def test_a_rule_too_wide_to_steer_is_refused_before_anything_changes():
    d = Director(Engine(capacity=256), lambda ip: (b"\2" * 6, 7))
    with pytest.raises(ControlError, match="use a longer prefix"):
        d.execute(parse_command("--mark-rule 1,tcp,10.0.0.0/16,80".split()))
    assert d.table.marks == [] and d.engine.marks() == []
    assert len(mark_rule_keys(parse_mark_rule("1,any,10.0.0.0/22,1"))) <= MARK_STEER_KEYS
