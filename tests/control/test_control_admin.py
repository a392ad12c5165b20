"""`fastlvs admin` against a live ControlServer + Director + Engine: every command path,
listings byte for byte, ipvsadm's error wording and exit statuses."""
from __future__ import annotations

import os
import subprocess
import sys

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC
from fastlvs.control.listing import format_list
from fastlvs.control.names import named_listing, named_save
from fastlvs.control.rules import dump_rules

VIP = "203.0.113.10"
RS1, RS2, RS3 = "192.0.2.11", "192.0.2.12", "192.0.2.13"


def _setup(d):
    d.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    d.ok("-a", "-t", f"{VIP}:80", "-r", f"{RS1}:80", "-g", "-w", "1")
    d.ok("-a", "-t", f"{VIP}:80", "-r", f"{RS2}:80", "-g", "-w", "3")
    d.ok("-A", "-u", f"{VIP}:53", "-s", "sh", "-b", "sh-port")
    d.ok("-a", "-u", f"{VIP}:53", "-r", f"{RS3}:53", "-m", "-w", "2", "-x", "100", "-y", "10")


LISTING = f"""\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  {VIP}:80 rr
  -> {RS1}:80                Route   1      0          0         
  -> {RS2}:80                Route   3      0          0         
UDP  {VIP}:53 sh (sh-port)
  -> {RS3}:53                Masq    2      0          0         
"""


def test_add_and_list_byte_exact(daemon):
    _setup(daemon)
    out = daemon.ok("-Ln")
    assert out == LISTING
    # plain -L is -Ln with the names the admin client looked up (tests/unit/test_names.py)
    assert daemon.ok("-L") == named_listing(LISTING)
    assert daemon.ok() == daemon.ok("-L")      # ipvsadm with no argument lists
    with daemon.lock:
        assert out == format_list(daemon.director.table)


def test_list_variants_match_the_formatter(daemon):
    _setup(daemon)
    t = daemon.director.table
    assert daemon.ok("-Ln", "--stats") == format_list(t, stats=True)
    assert daemon.ok("-Ln", "--rate") == format_list(t, rate=True)
    assert daemon.ok("-Ln", "--thresholds") == format_list(t, thresholds=True)
    assert daemon.ok("-Ln", "--persistent-conn") == format_list(t, persistent_conn=True)
    assert daemon.ok("-Ln", "--stats", "--exact") == format_list(t, stats=True, exact=True)
    assert daemon.ok("-Ln", "--nosort") == format_list(t, sort=False)
    one = daemon.ok("-Ln", "-t", f"{VIP}:80")
    assert one == format_list(t, service=("tcp", VIP, 80))
    assert not one.startswith("IP Virtual Server")
    assert daemon.ok("-L", "--timeout") == "Timeout (tcp tcpfin udp): 900 120 300\n"
    assert daemon.ok("-L", "--daemon") == ""
    assert daemon.ok("-Lnc") == "IPVS connection entries\n" \
        "pro expire state       source             virtual            destination\n"


def test_edit_and_delete_reach_the_engine(daemon):
    _setup(daemon)
    daemon.ok("-E", "-t", f"{VIP}:80", "-s", "wlc", "-p", "60")
    daemon.ok("-e", "-t", f"{VIP}:80", "-r", f"{RS1}:80", "-w", "0")
    daemon.ok("-d", "-t", f"{VIP}:80", "-r", f"{RS2}:80")
    daemon.ok("-D", "-u", f"{VIP}:53")
    assert daemon.ok("-Ln") == f"""\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  {VIP}:80 wlc persistent 60
  -> {RS1}:80                Route   0      0          0         
"""
    with daemon.lock:
        c = daemon.director.counters()
    assert [s["service"] for s in c["services"]] == [f"-t {VIP}:80"]
    assert c["services"][0]["dests"][0]["weight"] == 0
    daemon.ok("-C")
    assert daemon.ok("-Ln").count("\n") == 3


def test_errors_are_ipvsadms_words_and_exit_statuses(daemon):
    _setup(daemon)
    assert daemon.admin("-A", "-t", f"{VIP}:80") == (
        255, "", f"Service already exists (-t {VIP}:80)\n")
    rc, _, err = daemon.admin("-D", "-t", "198.51.100.1:80")
    assert (rc, err) == (255, "No such service (-t 198.51.100.1:80)\n")
    rc, _, err = daemon.admin("-a", "-t", "198.51.100.1:80", "-r", f"{RS1}:80")
    assert (rc, err.split(" (")[0]) == (255, "Service not defined")
    rc, _, err = daemon.admin("-d", "-t", f"{VIP}:80", "-r", f"{RS3}:80")
    assert (rc, err.split(" (")[0]) == (255, "No such destination")
    rc, _, err = daemon.admin("-a", "-t", f"{VIP}:80", "-r", f"{RS1}:80")
    assert (rc, err.split(" (")[0]) == (255, "Destination already exists")
    # A listing of an absent service: ipvsadm's list_service exits 1.
    rc, _, err = daemon.admin("-Ln", "-t", "198.51.100.1:80")
    assert (rc, err.split(" (")[0]) == (1, "No such service")
    # Syntax: exit 2, ipvsadm's own words, one line.
    assert daemon.admin("-A", "-t", f"{VIP}:0") == (
        2, "", "Zero port specified for non-persistent service\n")
    assert daemon.admin("-L", "-c", "--stats") == (2, "", "options conflicts in the list command\n")
    assert daemon.admin("-a", "-t", f"{VIP}:80") == (
        2, "", "You need to supply the 'real-server' option for the 'add-server' command\n")
    assert daemon.admin("--set", "1", "2") == (2, "", "--set option requires 3 timeout values\n")
    # Nothing of the refused commands reached the table.
    assert daemon.ok("-Ln") == LISTING


def test_real_server_without_next_hop_is_refused_and_leaves_nothing(daemon):
    _setup(daemon)
    rc, _, err = daemon.admin("-a", "-t", f"{VIP}:80", "-r", "198.51.100.99:80")
    assert rc == 255
    assert err == (f"-a -t {VIP}:80 -r 198.51.100.99:80: No route to host "
                   f"(198.51.100.99 is not a neighbour)\n")
    assert daemon.ok("-Ln") == LISTING


def test_save_restore_round_trip_and_restore_adds(daemon):
    _setup(daemon)
    saved = daemon.ok("-S", "-n")
    assert saved == dump_rules(daemon.director.table)
    assert daemon.ok("-S") == named_save(saved)
    daemon.ok("-C")
    daemon.ok("-A", "-t", f"{VIP}:443")        # -R adds: this one stays
    daemon.ok("-R", stdin=saved)
    out = daemon.ok("-Ln")
    assert f"TCP  {VIP}:443 wlc\n" in out
    daemon.ok("-D", "-t", f"{VIP}:443")
    assert daemon.ok("-Ln") == LISTING
    assert daemon.ok("-S", "-n") == saved


def test_restore_skips_refused_lines_and_reports_each(daemon):
    _setup(daemon)
    rules = (f"-A -t {VIP}:80 -s rr\n"                       # exists: refused
             f"-A -t {VIP}:8080 -s wrr\n"
             f"-a -t {VIP}:8080 -r {RS1}:8080 -m -w 5\n"
             f"-a -t {VIP}:9999 -r {RS1}:80\n")               # no such service: refused
    rc, out, err = daemon.admin("-R", stdin=rules)
    assert rc == 255 and out == ""
    assert err.splitlines() == [
        f"-:1: -A for a service that was already added: -t {VIP}:80",
        f"-:4: -a for a service that was not added: -t {VIP}:9999"]
    assert f"TCP  {VIP}:8080 wrr\n  -> {RS1}:8080              Masq    5" in daemon.ok("-Ln")


def test_restore_syntax_error_applies_nothing(daemon):
    _setup(daemon)
    rules = f"-A -t {VIP}:8080 -s wrr\n-a -t {VIP}:8080 -r {RS1}:8080 -w 70000\n"
    rc, out, err = daemon.admin("-R", stdin=rules)
    assert (rc, out, err) == (2, "", "-:2: weight: 70000 is outside 0..65535\n")
    assert daemon.ok("-Ln") == LISTING
    # The daemon checks again whatever the client did.
    from fastlvs.control import ctl
    answer = ctl.call("command", daemon.path, argv=["-R"], stdin=rules)
    assert answer == {"ok": False, "code": 2,
                      "error": "-:2: weight: 70000 is outside 0..65535"}
    assert daemon.ok("-Ln") == LISTING


def test_set_timeouts_reach_the_engine(daemon):
    daemon.ok("--set", "100", "0", "30")
    assert daemon.ok("-L", "--timeout") == "Timeout (tcp tcpfin udp): 100 120 30\n"
    with daemon.lock:
        assert tuple(daemon.engine.get_timeouts()) == (100, 120, 30)


def _syns(n, t0):
    frames, stamps = [], []
    for i in range(n):
        f = Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=f"198.51.100.{i + 1}", dst=VIP) / \
            TCP(sport=40000 + i, dport=80, flags="S")
        frames.append(bytes(f))
        stamps.append(int((t0 + i * 0.001) * 1e9))
    return frames, stamps


def test_stats_rate_and_zero(daemon):
    _setup(daemon)
    d = daemon.director
    with daemon.lock:
        d.tick(100.0)                           # starts the estimator's clock
        frames, stamps = _syns(40, 100.5)
        sent = daemon.engine.process(frames, stamps)
        assert len(sent) == 40
        assert d.tick(101.0) is False           # not 2 s yet
        assert d.tick(102.0) is True
    stats = daemon.ok("-Ln", "--stats")
    line = [l for l in stats.splitlines() if l.startswith("TCP")][0]
    assert line.split()[2:4] == ["40", "40"]    # conns, inpkts
    rate = daemon.ok("-Ln", "--rate")
    # 40 conns in one 2 s sample: the average moves a quarter of the way to 20/s -> 5.
    line = [l for l in rate.splitlines() if l.startswith("TCP")][0]
    assert line.split()[2:4] == ["5", "5"]
    assert rate == format_list(d.table, rate=True)
    daemon.ok("-Z")
    zeroed = daemon.ok("-Ln", "--stats")
    assert [l.split()[2:] for l in zeroed.splitlines() if l.startswith("TCP")] == [["0"] * 5]
    assert [l.split()[2:] for l in daemon.ok("-Ln", "--rate").splitlines()
            if l.startswith("TCP")] == [["0"] * 5]
    with daemon.lock:
        d.tick(104.0)                           # no traffic since -Z: still 0
    assert [l.split()[2:] for l in daemon.ok("-Ln", "--rate").splitlines()
            if l.startswith("TCP")] == [["0"] * 5]
    # Active connections are live state: -Z leaves them (rr: 20 SYN_RECV conns each).
    assert [l.split()[4:6] for l in daemon.ok("-Ln").splitlines()
            if l.startswith(f"  -> {RS1[:-1]}")] == [["20", "0"], ["20", "0"], ["0", "0"]]


def test_the_command_line_itself(daemon):
    """The installed entry point: `python -m fastlvs admin`, --socket and $FASTLVS_SOCKET."""
    _setup(daemon)
    r = subprocess.run([sys.executable, "-m", "fastlvs", "admin", "--socket", daemon.path,
                        "-Ln"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, LISTING, "")
    env = dict(os.environ, FASTLVS_SOCKET=daemon.path)
    r = subprocess.run([sys.executable, "-m", "fastlvs", "admin", "-D", "-t", "10.9.9.9:1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (255, "", "No such service (-t 10.9.9.9:1)\n")


def test_daemon_not_running(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastlvs", "admin", "--socket",
                        str(tmp_path / "none.sock"), "-Ln"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"fastlvs admin: cannot reach the daemon at {tmp_path}/none.sock: "
                        f"No such file or directory\n")


def test_counters_is_the_directors_json(daemon):
    """`--counters`: fastlvs's own option, every counter as one JSON object; with anything
    else on the line it is a one-line usage error."""
    import json

    _setup(daemon)
    daemon.director.port_stats = lambda: {"eth9": {"rx": 7, "rx_ring_full": 1}}
    base = [sys.executable, "-m", "fastlvs", "admin", "--socket", daemon.path]
    r = subprocess.run(base + ["--counters"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["ports"] == {"eth9": {"rx": 7, "rx_ring_full": 1}}
    assert [s["service"] for s in got["services"]] == [f"-t {VIP}:80", f"-u {VIP}:53"]
    assert got["engine"] == daemon.director.engine.stats()
    r = subprocess.run(base + ["--counters", "-n"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", "--counters takes no other options\n")
