"""The daemon's command line, before anything touches the network."""
import subprocess
import sys

import pytest

from fastlvs.daemon import Daemon, Options, StartupError, quickstart_table
from fastlvs.control.model import FwdMethod


def test_quick_start_adds_real_servers_in_order_so_the_last_heads_the_list():
    """--rs are `ipvsadm -a` in order: IPVS inserts each at the head of the list."""
    t = quickstart_table(Options(mode="nat", vip="udp:203.0.113.10:53",
                                 rs=["192.0.2.11:5353@3", "192.0.2.12:5353"], scheduler="wrr"))
    (svc,) = list(t)
    assert (svc.proto.value, svc.vaddr, svc.vport, svc.sched_name) == ("udp", "203.0.113.10", 53,
                                                                       "wrr")
    assert [(d.addr, d.port, d.weight, d.fwd) for d in svc.dests] == [
        ("192.0.2.12", 5353, 1, FwdMethod.NAT), ("192.0.2.11", 5353, 3, FwdMethod.NAT)]


def test_quick_start_persistence():
    t = quickstart_table(Options(mode="dr", vip="203.0.113.10:443", rs=["192.0.2.11:443"],
                                 persistent=600))
    assert next(iter(t)).timeout == 600


@pytest.mark.parametrize("opts,expect", [
    (Options(mode="dr", vip="sctp:203.0.113.10:80", rs=["192.0.2.11:80"]), "tcp or udp"),
    (Options(mode="dr", vip="203.0.113.10:80", rs=["192.0.2.11:80@-1"]), "--vip/--rs"),
    (Options(mode="dr", vip="203.0.113.10:80", rs=["192.0.2.11:80"], scheduler="xyz"), "xyz"),
])
def test_bad_quick_start_is_one_line(opts, expect):
    with pytest.raises(StartupError) as e:
        quickstart_table(opts)
    assert expect in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("opts,expect", [
    (Options(mode="dr", vip="203.0.113.10:80", rs=["192.0.2.11:80"]), "no interface"),
    (Options(mode="dr", interface="eth0"), "nothing to serve"),
    (Options(mode="dr", interface="eth0", vip="203.0.113.10:80"), "at least one --rs"),
    (Options(mode="dr", interface="eth0", vip="203.0.113.10:80", rs=["192.0.2.11:80"],
             rules="/x"), "cannot be combined"),
    (Options(mode="dr", interface="eth0", vip="203.0.113.10:80", rs=["192.0.2.11:80"],
             capacity=-5), "--capacity: -5"),
    (Options(mode="dr", interface="eth0", vip="203.0.113.10:80", rs=["192.0.2.11:80"],
             mtu=20), "--mtu: 20"),
])
def test_settings_refuse_incomplete_command_lines(opts, expect):
    with pytest.raises(StartupError, match=expect):
        Daemon(opts)._settings()


def test_a_malformed_rules_file_names_file_and_line(tmp_path):
    rules = tmp_path / "rules"
    rules.write_text("-A -t 203.0.113.10:80 -s rr\n-a -t 203.0.113.10:80 -r 192.0.2.11 -w x\n")
    d = Daemon(Options(mode="dr", interface="eth0", rules=str(rules)))
    d._settings()
    with pytest.raises(StartupError) as e:
        d._load_table()
    assert str(e.value).startswith(f"{rules}:2: ")


def test_cli_usage_errors_are_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "fastlvs", "--mode", "xx", "-i", "eth0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--mode" in r.stderr


@pytest.mark.parametrize("content,expect", [
    (b"-A -t 203.0.113.10:80 -s rr\n-a -t 203.0.113.10:80 -r 192.0.2.\xff1 -g\n",
     "not UTF-8 text (byte 61)"),
    (b"-A -t 203.0.113.10:80 -s rr\0\n", "unknown scheduler"),
])
def test_a_rules_file_the_daemon_cannot_read_is_one_line(tmp_path, content, expect):
    rules = tmp_path / "rules"
    rules.write_bytes(content)
    d = Daemon(Options(mode="dr", interface="eth0", rules=str(rules)))
    d._settings()
    with pytest.raises(StartupError) as e:
        d._load_table()
    assert str(e.value).startswith(f"{rules}:") and expect in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value,expect", [
    ("9100", "--metrics: '9100' is not ADDR:PORT"),
    ("localhost:9100", "--metrics: 'localhost:9100': 'localhost' is not an IP address"),
    ("127.0.0.1:0", "--metrics: '127.0.0.1:0': the port must be 1..65535, not '0'"),
    ("::1:9100", "--metrics: '::1:9100': an IPv6 address goes in brackets, [ADDR]:PORT"),
])
def test_a_bad_metrics_address_is_one_line_before_anything_opens(value, expect):
    opts = Options(mode="dr", interface="eth0", vip="203.0.113.10:80", rs=["192.0.2.11:80"],
                   metrics=value)
    with pytest.raises(StartupError) as e:
        Daemon(opts)._settings()
    assert str(e.value) == expect


def test_a_metrics_port_in_use_is_one_line():
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        d = Daemon(Options(mode="dr", interface="eth0", vip="203.0.113.10:80",
                           rs=["192.0.2.11:80"], metrics=f"127.0.0.1:{port}"))
        d._settings()
        with pytest.raises(StartupError) as e:
            d._open_metrics()
        assert str(e.value) == f"--metrics 127.0.0.1:{port}: Address already in use"
    finally:
        holder.close()


def test_metrics_from_the_config_file_is_checked_with_its_line(tmp_path):
    from fastlvs.control.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config('[director]\ninterface = "eth0"\nmetrics = "[::1]:99999"\n', "f.toml")
    assert str(e.value) == ("f.toml:3: director.metrics: '[::1]:99999': the port must be "
                            "1..65535, not '99999'")
    cfg = parse_config('[director]\nmetrics = "[::1]:9100"\n', "f.toml").director
    assert cfg.metrics == "[::1]:9100"


def test_cli_bad_metrics_exits_2_with_one_line_before_needing_root():
    r = subprocess.run([sys.executable, "-m", "fastlvs", "-i", "eth0", "--vip", "203.0.113.10:80",
                        "--rs", "192.0.2.11:80", "--metrics", "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--metrics" in r.stderr
