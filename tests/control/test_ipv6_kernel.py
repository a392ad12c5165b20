"""IPv6 services through `fastlvs admin`, on each engine, against the 6.1 kernel's recording
(tests/fixtures/kernel/ipv6.json, made by tests/fixtures/kernel/scripts/ipv6.sh): the same
ipvsadm commands list alike (-Ln, -S, -Lnc without the timers and with the connections the
same packets made), -M takes a prefix length, the same packets reach the real server
rewritten alike; what fastlvs refuses is refused with one line."""
from __future__ import annotations

import json
import pathlib

import pytest
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tests.control import control_harness
from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC
from tests.core.test_engine_ipv6 import checksums_ok6

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                      / "ipv6.json").read_text())
TOPO = FIXTURE["topology"]
S = 1_000_000_000
RS_MAC = bytes([2, 0, 0, 0, 6, 2])


@pytest.fixture
def kdaemon(tmp_path, engine_kind, monkeypatch):
    monkeypatch.setitem(control_harness.NEIGHBORS, TOPO["rip"], RS_MAC)
    d = control_harness.Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        with d.lock:
            d.director.set_local_ip6(TOPO["director_rs_side"])
            d.director.set_neighbor(TOPO["client"], CLIENT_MAC, 1)
        yield d
    finally:
        d.stop()


def _rows(lines):
    # -Lnc rows without the expire column
    return sorted(tuple(ln.split()[:1] + ln.split()[2:]) for ln in lines[2:])


def test_ipv6_services_as_the_kernel_lists_them(kdaemon):
    # the job's own commands are its -S output, replayed one by one
    for line in FIXTURE["ipvsadm_S"]:
        kdaemon.ok(*line.replace("--tun-type ipip", "").split())
    assert kdaemon.ok("-Ln").splitlines()[1:] == FIXTURE["ipvsadm_Ln"][1:]
    assert kdaemon.ok("-S", "-n").splitlines() == FIXTURE["ipvsadm_S"]
    # the packets the job sent that made connections, in its order
    sent = []
    for c in FIXTURE["cases"]:
        if c["dir"] != "in" or "ext" in c:
            continue
        size = c.get("ip_len", 60)
        if c["mode"].startswith("dr-udp"):
            l4 = UDP(sport=c["sport"], dport=c["vport"]) / b"q"
        else:
            l4 = TCP(sport=c["sport"], dport=c["vport"], flags="S", seq=1000) / (
                b"x" * (size - 60))
        sent.append((c, bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC)
                              / IPv6(src=TOPO["client"], dst=TOPO["vip"], hlim=c["hlim_sent"])
                              / l4)))
    with kdaemon.lock:
        kdaemon.engine.set_local(mtu=TOPO["rs_link_mtu"])
        for k, (c, frame) in enumerate(sent):
            out = kdaemon.engine.process([frame], (1 + k) * S)
            if c["at_rs"]:
                ((_, ifindex, f),) = out
                assert checksums_ok6(f)
                p = Ether(f)
                ip = IPv6(bytes(p[IPv6].payload)) if c["mode"] == "tun" else p[IPv6]
                want = c["at_rs"][0].get("inner", c["at_rs"][0])
                assert (ip.src, ip.dst, ip.hlim) == (want["src"], want["dst"], want["hlim"])
                assert (ifindex, p.dst) == (1, ":".join(f"{b:02x}" for b in RS_MAC))
    # the kernel's connection listing, but for the one the extension header made (the
    # kernel walks hop-by-hop headers; fastlvs drops and counts such packets)
    kernel = [ln for ln in FIXTURE["ipvsadm_Lnc"] if f"]:{20500} " not in ln]
    assert _rows(kdaemon.ok("-Lnc").splitlines()) == _rows(kernel)


def test_ipv6_refusals_are_one_line(kdaemon):
    kdaemon.ok("-A", "-t", "[2001:db8:1::100]:80", "-s", "rr")
    rc, out, err = kdaemon.admin("-a", "-t", "[2001:db8:1::100]:80", "-r", "10.0.2.2:80", "-i")
    assert rc != 0 and len(err.splitlines()) == 1 and "address family" in err
    rc, out, err = kdaemon.admin("-A", "-t", "[::10.0.0.1]:80", "-s", "rr")
    assert rc != 0 and len(err.splitlines()) == 1 and "::/96" in err
    rc, out, err = kdaemon.admin("-A", "-u", "[2001:db8:1::100]:53", "-p", "60", "-M", "129")
    assert rc != 0 and len(err.splitlines()) == 1
    assert kdaemon.ok("-S", "-n").splitlines() == ["-A -t [2001:db8:1::100]:80 -s rr"]


def test_ipv6_from_toml_keepalived_and_the_quick_start(tmp_path, engine_kind):
    """The three other ways in take IPv6 as ipvsadm does: bracketed in TOML and --vip/--rs,
    bare in keepalived.conf; -M / persistence_granularity as a prefix length."""
    from fastlvs.control.config import load_config
    from fastlvs.control.director import Director
    from fastlvs.control.keepalived import load_keepalived
    from fastlvs.control.rules import dump_rules
    from fastlvs.daemon import quickstart_table

    (tmp_path / "f.toml").write_text(
        '[[service]]\nvip = "[2001:db8:1::100]:80"\nscheduler = "rr"\npersistent = 300\n'
        'netmask = 64\n[[service.dest]]\naddress = "[2001:db8:2::11]:8080"\nfwd = "nat"\n')
    (tmp_path / "k.conf").write_text(
        "virtual_server 2001:db8:1::100 80 {\n lb_algo rr\n lb_kind DR\n protocol TCP\n"
        " persistence_timeout 60\n persistence_granularity 48\n"
        " real_server 2001:db8:2::11 80 {\n  weight 2\n }\n}\n")

    class Quick:
        vip, rs, scheduler, persistent, mode = (
            "udp:[2001:db8:1::100]:53", ["[2001:db8:2::11]:53@2"], "wlc", None, "nat")
    tables = [load_config(str(tmp_path / "f.toml")).table,
              load_keepalived(str(tmp_path / "k.conf")).table, quickstart_table(Quick)]
    assert [dump_rules(t) for t in tables] == [
        "-A -t [2001:db8:1::100]:80 -s rr -p 300 -M 64\n"
        "-a -t [2001:db8:1::100]:80 -r [2001:db8:2::11]:8080 -m -w 1\n",
        "-A -t [2001:db8:1::100]:80 -s rr -p 60 -M 48\n"
        "-a -t [2001:db8:1::100]:80 -r [2001:db8:2::11]:80 -g -w 2\n",
        "-A -u [2001:db8:1::100]:53 -s wlc\n"
        "-a -u [2001:db8:1::100]:53 -r [2001:db8:2::11]:53 -m -w 2\n"]
    for t in tables:
        d = Director(control_harness.engine_class(engine_kind)(capacity=64),
                     lambda ip: (RS_MAC, 1))
        d.load(t)
        assert dump_rules(d.table) == dump_rules(t)
