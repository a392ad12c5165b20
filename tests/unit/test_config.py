"""`--config FILE` (fastlvs.control.config): the commented example, equivalence with ipvsadm rules,
defaults, and one-line errors naming file, line and table path. No root, no build."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastlvs.control.config import ConfigError, DirectorConfig, load_config, parse_config
from fastlvs.control.listing import format_list
from fastlvs.control.rules import dump_rules, parse_rules

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastlvs.toml"


def test_the_example_loads_and_means_what_ipvsadm_lines_would():
    cfg = load_config(EXAMPLE)
    assert cfg.director == DirectorConfig()
    assert cfg.services == 2
    rules = parse_rules("""
-A -t 203.0.113.10:80 -s wlc
-a -t 203.0.113.10:80 -r 192.0.2.11:80 -g -w 1
-a -t 203.0.113.10:80 -r 192.0.2.12:80 -g -w 2
-A -u 203.0.113.10:53 -s sh -b sh-port
-a -u 203.0.113.10:53 -r 192.0.2.11:53 -g
-a -u 203.0.113.10:53 -r 192.0.2.12:53 -g
""")
    # Same table, same list order (newest first, as IPVS inserts at the head).
    assert dump_rules(cfg.table, sort=False) == dump_rules(rules, sort=False)
    assert format_list(cfg.table, sort=False) == format_list(rules, sort=False)
    assert [d.addr for d in cfg.table.get(("tcp", "203.0.113.10", 80)).dests] == \
        ["192.0.2.12", "192.0.2.11"]
    assert cfg.table.timeouts == {"tcp": 900, "tcpfin": 120, "udp": 300}


def test_every_director_key_and_mode_default_for_dests():
    cfg = parse_config("""
[director]
mode = "nat"
interface = "eth0"
rs_interface = "eth1"
backend = "packet"
socket = "/tmp/x.sock"
capacity = 4096
mtu = 9000
busy_poll = 50
batch = 32
cpu = 1
[[service]]
vip = "10.0.0.1:80"
persistent = true
netmask = "255.255.255.0"
[[service.dest]]
address = "192.168.0.2:8080"
u_threshold = 10
l_threshold = 5
[[service.dest]]
address = "192.168.0.3"
fwd = "tun"
[timeouts]
udp = 30
""")
    d = cfg.director
    assert (d.mode, d.interface, d.rs_interface, d.backend, d.socket, d.capacity, d.mtu,
            d.busy_poll, d.batch, d.cpu) == ("nat", "eth0", "eth1", "packet", "/tmp/x.sock",
                                             4096, 9000, 50, 32, 1)
    assert d.socket_path == "/tmp/x.sock"
    svc = cfg.table.get(("tcp", "10.0.0.1", 80))
    assert (svc.timeout, svc.netmask, svc.sched_name) == (360, "255.255.255.0", "wlc")
    tun, nat = svc.dests
    assert (nat.fwd.value, nat.port, nat.u_threshold, nat.l_threshold) == ("nat", 8080, 10, 5)
    assert (tun.fwd.value, tun.port) == ("tun", 80)
    assert cfg.table.timeouts == {"tcp": 900, "tcpfin": 120, "udp": 30}


def test_an_empty_file_is_a_director_with_no_services():
    cfg = parse_config("")
    assert cfg.director == DirectorConfig() and len(cfg.table) == 0


BASE = '[[service]]\nvip = "10.0.0.1:80"\n'


@pytest.mark.parametrize("text, message", [
    # TOML syntax: tomllib's words, with line and column.
    ('[director]\nmode = dr\n', "f.toml:2:8: Invalid value"),
    ('[director\n', "f.toml:1:10: Expected ']' at the end of a table declaration"),
    ('a = "x', "f.toml:1: Unterminated string (at end of file)"),
    # Semantics: file, line, table path, what is wrong.
    ('[director]\nmode = "dsr"\n', "f.toml:2: director.mode: 'dsr' is not one of dr, nat, tun"),
    ('[director]\ninterfce = "eth0"\n', "f.toml:2: director.interfce: unknown key (valid: "
     "mode, interface, rs_interface, backend, offload, socket, capacity, mtu, busy_poll, batch, cpu, "
     "keepalived_conf, metrics, vrrp)"),
    ('[director]\ncpu = -1\n', "f.toml:2: director.cpu: -1 is outside 0..4095"),
    ('[director]\nmtu = 40\n', "f.toml:2: director.mtu: 40 is outside 68..65535"),
    ('[director]\ncapacity = true\n', "f.toml:2: director.capacity: True is not an integer"),
    ('[director]\nbackend = "dpdk"\n',
     "f.toml:2: director.backend: 'dpdk' is not one of auto, xdp, packet"),
    ('[servce]\n', "f.toml:1: servce: unknown key (valid: director, service, timeouts, sysctl, "
                    "sync, bgp, mark)"),
    ('[[service]]\nproto = "tcp"\n', 'f.toml:1: service[0]: missing "vip" ("ip:port")'),
    (BASE + 'proto = "icmp"\n', "f.toml:3: service[0].proto: 'icmp' is not one of tcp, udp, sctp"),
    ('[[service]]\nvip = "10.0.0.300:80"\n', "f.toml:2: service[0].vip: 10.0.0.300:80: "
     "'10.0.0.300' is not an IP address (host names are not looked up)"),
    ('[[service]]\nvip = "10.0.0.1:0"\n', "f.toml:2: service[0].vip: Zero port specified "
     "for non-persistent service"),
    (BASE + 'scheduler = "fair"\n', "f.toml:3: service[0].scheduler: Scheduler or "
     "persistence engine not found (unknown scheduler 'fair'; valid: rr, wrr, lc, wlc, lblc, "
     "lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)"),
    (BASE + 'scheduler = "rr"\nflags = ["sh-port"]\n', "f.toml:4: service[0].flags: "
     "incompatible scheduler flag `sh-port' (sh-port is a flag of the sh scheduler, not of rr)"),
    (BASE + 'netmask = "255.0.0.0"\n',
     "f.toml:3: service[0].netmask: only a persistent service has a netmask"),
    (BASE + 'persistent = 5000000\n',
     "f.toml:3: service[0].persistent: 5000000 is outside 0..2678400"),
    (BASE + 'ops = true\n', "f.toml:3: service[0].ops: One-Packet Scheduling is only for "
     "UDP virtual services"),
    (BASE + BASE, "f.toml:3: service[1]: Service already exists (-t 10.0.0.1:80)"),
    (BASE + '[[service.dest]]\nweight = 1\n',
     'f.toml:3: service[0].dest[0]: missing "address" ("ip[:port]")'),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1"\nweight = -1\n',
     "f.toml:5: service[0].dest[0].weight: -1 is outside 0..65535"),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1"\nfwd = "masq"\n',
     "f.toml:5: service[0].dest[0].fwd: 'masq' is not one of dr, nat, tun"),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1:8080"\n',
     "f.toml:4: service[0].dest[0].address: port 8080 differs from the service's 80: Route "
     "forwarding keeps the client's destination port (omit the port)"),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1"\n[[service.dest]]\naddress = "10.1.1.1"\n',
     "f.toml:6: service[0].dest[1].address: Destination already exists (10.1.1.1:80)"),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1"\nu_threshold = 5\nl_threshold = 6\n',
     "f.toml:6: service[0].dest[0].l_threshold: Numerical result out of range "
     "(l_threshold 6 is above u_threshold 5)"),
    (BASE + '[[service.dest]]\naddress = "2001:db8::1"\n',
     "f.toml:3: service[0].dest[0].fwd: Different address family is allowed only for "
     "tunneling servers"),
    (BASE + '[[service.dest]]\naddress = "10.1.1.1"\nsize = 3\n',
     "f.toml:5: service[0].dest[0].size: unknown key (valid: address, weight, u_threshold, "
     "l_threshold, fwd, tun_type, tun_port, tun_flags)"),
    ('[timeouts]\ntcp = -5\n', "f.toml:2: timeouts.tcp: -5 is outside 0..2678400"),
    ('director = 3\n', "f.toml:1: director: must be a table ([director])"),
    ('service = "x"\n', "f.toml:1: service: must be an array of tables ([[service]])"),
])
def test_errors_are_one_line_with_file_line_and_path(text, message):
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "f.toml")
    assert str(ei.value).startswith(message), str(ei.value)
    assert "\n" not in str(ei.value)


def test_the_second_service_and_its_dests_are_located():
    text = (BASE + '[[service.dest]]\naddress = "10.1.1.1"\n'
            '[[service]]\nvip = "10.0.0.1:81"\n[[service.dest]]\naddress = "10.1.1.1"\n'
            '[[service.dest]]\naddress = "10.1.1.2"\n\nweight = 70000\n')
    with pytest.raises(ConfigError, match=r"^f\.toml:12: service\[1\]\.dest\[1\]\.weight: "
                                          r"70000 is outside 0\.\.65535$"):
        parse_config(text, "f.toml")


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}/nope.toml: No such file or directory$"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"a = 1\n\xff")
    with pytest.raises(ConfigError, match=r"bin.toml: not UTF-8 text \(byte 6\)$"):
        load_config(tmp_path / "bin.toml")


def test_a_deeply_nested_file_is_one_line():
    with pytest.raises(ConfigError, match=r"^f\.toml: nested too deeply$"):
        parse_config("x = " + "[" * 100000 + "]" * 100000 + "\n", "f.toml")
