"""control/health.py over a real Director and each engine: synthetic checker results in,
`ipvsadm -Ln` text out. The rules are keepalived 2.2.7's check/ipwrapper.c (read from the
source, not recorded): removal vs inhibit_on_failure, one probe followed by two services,
several checkers per server, quorum with hysteresis and the sorry server (and its inhibit),
alpha at start, misc_dynamic weights, the scripts and their arguments, omega at shutdown,
a reload that keeps a failed server out, and `fastlvs admin --health`."""
from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass

import pytest

from tests.control.control_harness import LOCAL_IP, LOCAL_MAC, engine_class, nexthop
from fastlvs.control.director import Director
from fastlvs.control.health import HealthPolicy, ScriptRunner
from fastlvs.control.model import ControlError
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.model import Proto, ServiceKey
from fastlvs.control.rules import parse_rules
from fastlvs.health.spec import (CheckSpec, HealthConfig, ServerHealth, SorryServer,
                                 VirtualHealth)

VIP = "203.0.113.10"
RS = [f"192.0.2.{i}" for i in range(10, 20)]
WEB = ServiceKey(Proto.TCP, VIP, 80)
TLS = ServiceKey(Proto.TCP, VIP, 443)
T0 = 1_780_000_000.0          # a wall-clock time for the events


@dataclass
class Event:
    """What the checker process delivers (health/worker.py): one checker's transition."""
    spec: CheckSpec
    up: bool
    reason: str = ""
    weight: int | None = None
    at: float = T0


@dataclass
class Probe:
    """The checker process's ProbeStatus, as a status_source returns it."""
    spec: CheckSpec
    up: bool
    last_ok: bool
    last_reason: str
    last_time: float
    failures: int


def tcp(addr, port=80, **kw):
    return CheckSpec("TCP_CHECK", addr, port, **kw)


@pytest.fixture
def director(engine_kind):
    Engine = engine_class(engine_kind)
    return Director(Engine(capacity=4096, batch=64, local_ip=LOCAL_IP, local_mac=LOCAL_MAC),
                    nexthop)


class Scripts:
    """run_script that records (line, what) instead of forking."""

    def __init__(self):
        self.calls = []

    def __call__(self, line, what):
        self.calls.append(line)


def rules(*services):
    """ipvsadm-save text: services as (key, sched, [(addr, weight), ...])."""
    out = []
    for key, sched, servers in services:
        out.append(f"-A -t {key.vaddr}:{key.vport} -s {sched}")
        out += [f"-a -t {key.vaddr}:{key.vport} -r {a}:{key.vport} -g -w {w}"
                for a, w in servers]
    return parse_rules("\n".join(out) + "\n")


def vhealth(key, servers, **kw):
    """VirtualHealth of (addr, weight, ServerHealth) triples."""
    return VirtualHealth(servers={(a, key.vport): sh for a, _, sh in servers},
                         weights={(a, key.vport): w for a, w, _ in servers}, **kw)


def start(director, config_services, table_services, **kw):
    director.load(rules(*table_services))
    return HealthPolicy(director, HealthConfig(dict(config_services)), **kw)


def dest_line(addr, port, weight, fwd="Route"):
    return f"  -> {addr}:{port:<{28 - len(addr) - 1}} {fwd:<7} {weight:<6} {0:<10} {0:<10}"


def listing(*services):
    """`ipvsadm -Ln` text: services as (key, sched, [(addr, weight), ...]) in sorted order."""
    out = ["IP Virtual Server version 1.2.1 (size=4096)",
           "Prot LocalAddress:Port Scheduler Flags",
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for key, sched, dests in services:
        out.append(f"TCP  {key.vaddr}:{key.vport} {sched}")
        out += [dest_line(a, key.vport, w) for a, w in dests]
    return "\n".join(out) + "\n"


def ln(director):
    return director.list(numeric=True)


# -- removal and inhibit ----------------------------------------------------------------------
def test_a_down_server_is_removed_and_comes_back_with_its_weight(director, caplog):
    c1, c2 = tcp(RS[1]), tcp(RS[2])
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,))),
                                            (RS[2], 3, ServerHealth((c2,)))])},
              [(WEB, "wrr", [(RS[1], 1), (RS[2], 3)])], run_script=Scripts())
    both = listing((WEB, "wrr", [(RS[1], 1), (RS[2], 3)]))
    assert ln(director) == both
    caplog.set_level(logging.INFO, logger="fastlvs")
    p.on_event(Event(c2, False, "connect refused"))
    assert ln(director) == listing((WEB, "wrr", [(RS[1], 1)]))
    assert f"TCP_CHECK {RS[2]}:80 of TCP {VIP}:80 down: connect refused; removed" \
        in caplog.messages
    p.on_event(Event(c2, True, "connected"))
    assert ln(director) == both
    assert f"TCP_CHECK {RS[2]}:80 of TCP {VIP}:80 up: connected; added" in caplog.messages


def test_inhibit_on_failure_keeps_the_server_at_weight_0(director, caplog):
    c1, c2 = tcp(RS[1]), tcp(RS[2])
    p = start(director, {WEB: vhealth(WEB, [
        (RS[1], 1, ServerHealth((c1,))),
        (RS[2], 3, ServerHealth((c2,), inhibit_on_failure=True))])},
        [(WEB, "wlc", [(RS[1], 1), (RS[2], 3)])], run_script=Scripts())
    caplog.set_level(logging.INFO, logger="fastlvs")
    p.on_event(Event(c2, False, "timeout"))
    assert ln(director) == listing((WEB, "wlc", [(RS[1], 1), (RS[2], 0)]))
    assert f"TCP_CHECK {RS[2]}:80 of TCP {VIP}:80 down: timeout; weight 0 " \
        f"(inhibit_on_failure)" in caplog.messages
    p.on_event(Event(c2, True, "connected"))
    assert ln(director) == listing((WEB, "wlc", [(RS[1], 1), (RS[2], 3)]))


def test_one_probe_is_followed_by_every_service_that_names_it(director, caplog):
    shared = tcp(RS[1], 80)
    p = start(director, {
        WEB: vhealth(WEB, [(RS[1], 2, ServerHealth((shared,))),
                           (RS[2], 1, ServerHealth())]),
        TLS: vhealth(TLS, [(RS[1], 5, ServerHealth((shared,), inhibit_on_failure=True))])},
        [(WEB, "rr", [(RS[1], 2), (RS[2], 1)]), (TLS, "rr", [(RS[1], 5)])],
        run_script=Scripts())
    assert p.config.probes()[shared] == [(WEB, (RS[1], 80)), (TLS, (RS[1], 443))]
    caplog.set_level(logging.INFO, logger="fastlvs")
    p.on_event(Event(shared, False, "connect refused"))
    assert ln(director) == listing((WEB, "rr", [(RS[2], 1)]), (TLS, "rr", [(RS[1], 0)]))
    assert [m for m in caplog.messages if "connect refused" in m] == [
        f"TCP_CHECK {RS[1]}:80 of TCP {VIP}:80 down: connect refused; removed",
        f"TCP_CHECK {RS[1]}:443 (probing {RS[1]}:80) of TCP {VIP}:443 down: connect refused; "
        f"weight 0 (inhibit_on_failure)"]
    p.on_event(Event(shared, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 2), (RS[2], 1)]),
                                   (TLS, "rr", [(RS[1], 5)]))


def test_a_server_is_up_only_while_all_its_checkers_are(director, caplog):
    a, b = tcp(RS[1]), CheckSpec("HTTP_GET", RS[1], 8080)
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((a, b))),
                                            (RS[2], 1, ServerHealth())])},
              [(WEB, "rr", [(RS[1], 1), (RS[2], 1)])], run_script=Scripts())
    both = listing((WEB, "rr", [(RS[1], 1), (RS[2], 1)]))
    one = listing((WEB, "rr", [(RS[2], 1)]))
    caplog.set_level(logging.INFO, logger="fastlvs")
    p.on_event(Event(a, False, "connect refused"))
    assert ln(director) == one
    p.on_event(Event(b, False, "status 500"))
    assert ln(director) == one
    p.on_event(Event(a, True, "connected"))
    assert ln(director) == one                    # b is still down
    assert f"TCP_CHECK {RS[1]}:80 of TCP {VIP}:80 up: connected; server stays down " \
        f"(1 other checker down)" in caplog.messages
    assert f"HTTP_GET {RS[1]}:80 (probing {RS[1]}:8080) of TCP {VIP}:80 down: status 500; " \
        f"server already down" in caplog.messages
    p.on_event(Event(b, True, "status 200"))
    assert ln(director) == both


def test_the_operators_other_changes_are_not_reverted(director):
    """Only the dest a result is about changes, and an inhibited one keeps the thresholds
    the operator gave it (its edit changes the weight alone)."""
    c1 = tcp(RS[1])
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,),
                                                                    inhibit_on_failure=True)),
                                            (RS[2], 1, ServerHealth())])},
              [(WEB, "rr", [(RS[1], 1), (RS[2], 1)])], run_script=Scripts())
    director.execute(parse_command(["-e", "-t", f"{VIP}:80", "-r", f"{RS[2]}:80", "-w", "7"]))
    director.execute(parse_command(["-a", "-t", f"{VIP}:80", "-r", f"{RS[3]}:80", "-w", "4"]))
    director.execute(parse_command(["-e", "-t", f"{VIP}:80", "-r", f"{RS[1]}:80", "-w", "1",
                                    "-x", "50", "-y", "10"]))
    p.on_event(Event(c1, False))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 0), (RS[2], 7), (RS[3], 4)]))
    p.on_event(Event(c1, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 1), (RS[2], 7), (RS[3], 4)]))
    assert director.list(numeric=True, thresholds=True).splitlines()[4].split()[2:4] \
        == ["50", "10"]


def test_an_event_for_a_checker_not_configured_changes_nothing(director):
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((tcp(RS[1]),)))])},
              [(WEB, "rr", [(RS[1], 1)])], run_script=Scripts())
    before = ln(director)
    p.on_event(Event(tcp(RS[1], 81), False))
    p.on_event(Event(tcp(RS[9]), False))
    assert ln(director) == before


# -- quorum, hysteresis, sorry server -----------------------------------------------------------
def _quorum_pool(inhibit=False, sorry_inhibit=False, **kw):
    checks = [tcp(a) for a in RS[1:5]]
    vh = vhealth(WEB, [(a, 1, ServerHealth((c,), inhibit_on_failure=inhibit))
                       for a, c in zip(RS[1:5], checks)],
                 quorum=3, hysteresis=1,
                 sorry_server=SorryServer(RS[9], 80, inhibit=sorry_inhibit), **kw)
    return checks, vh


def test_quorum_lost_and_gained_with_hysteresis_swaps_in_the_sorry_server(director, caplog):
    """quorum 3, hysteresis 1, four servers of weight 1: the quorum is lost below 3 - 1 = 2
    and gained again at 3 + 1 = 4; while lost, the sorry server takes the alive servers'
    place (they are removed, not left beside it)."""
    checks, vh = _quorum_pool()
    caplog.set_level(logging.INFO, logger="fastlvs")
    p = start(director, {WEB: vh}, [(WEB, "rr", [(a, 1) for a in RS[1:5]])],
              run_script=Scripts())
    assert f"quorum gained for TCP {VIP}:80: live weight 4 >= 4 (quorum 3 + hysteresis 1)" \
        in caplog.messages
    p.on_event(Event(checks[0], False))
    p.on_event(Event(checks[1], False))           # live 2: not below 3 - 1
    assert ln(director) == listing((WEB, "rr", [(RS[3], 1), (RS[4], 1)]))
    p.on_event(Event(checks[2], False))           # live 1 < 2: lost
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    assert f"quorum lost for TCP {VIP}:80: live weight 1 < 2 (quorum 3 - hysteresis 1); " \
        f"sorry server {RS[9]}:80 in, alive real servers out" in caplog.messages
    p.on_event(Event(checks[0], True))
    p.on_event(Event(checks[1], True))            # live 3: not yet 3 + 1
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    assert p.status()["services"][0]["quorum_up"] is False
    p.on_event(Event(checks[2], True))            # live 4: gained
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:5]]))
    assert p.status()["services"][0]["quorum_up"] is True
    p.on_event(Event(checks[3], False))           # live 3 >= 2: kept
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:4]]))


def test_sorry_server_inhibit_keeps_it_at_weight_0_while_unused(director):
    checks, vh = _quorum_pool(inhibit=True, sorry_inhibit=True)
    p = start(director, {WEB: vh}, [(WEB, "rr", [(a, 1) for a in RS[1:5]])],
              run_script=Scripts())
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:5]] + [(RS[9], 0)]))
    for c in checks[:3]:
        p.on_event(Event(c, False))
    # inhibited: the failed ones and the one still alive are all at weight 0
    assert ln(director) == listing((WEB, "rr", [(a, 0) for a in RS[1:5]] + [(RS[9], 1)]))
    for c in checks[:3]:
        p.on_event(Event(c, True))
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:5]] + [(RS[9], 0)]))


def test_quorum_already_lost_at_start_puts_the_sorry_server_in(director, caplog):
    """alpha checkers start down: with two of four servers alpha the live weight at start
    is 2 < 3 + 1, so keepalived starts with the quorum down and the sorry server in."""
    checks = [tcp(a, alpha=(i < 2)) for i, a in enumerate(RS[1:5])]
    vh = vhealth(WEB, [(a, 1, ServerHealth((c,))) for a, c in zip(RS[1:5], checks)],
                 quorum=3, hysteresis=1, sorry_server=SorryServer(RS[9], 80),
                 quorum_down="echo down")
    scripts = Scripts()
    caplog.set_level(logging.INFO, logger="fastlvs")
    p = start(director, {WEB: vh}, [(WEB, "rr", [(a, 1) for a in RS[1:5]])],
              run_script=scripts)
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    assert f"starting with quorum down for TCP {VIP}:80: live weight 2 < 4 (quorum 3 + " \
        f"hysteresis 1); sorry server {RS[9]}:80 in, alive real servers out" in caplog.messages
    assert scripts.calls == ["echo down"]
    p.on_event(Event(checks[0], True))
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    p.on_event(Event(checks[1], True))
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:5]]))


def test_alpha_servers_start_out_of_the_pool(director):
    a, b = tcp(RS[1], alpha=True), tcp(RS[2], alpha=True)
    p = start(director, {WEB: vhealth(WEB, [
        (RS[1], 2, ServerHealth((a,))), (RS[2], 2, ServerHealth((b,), inhibit_on_failure=True)),
        (RS[3], 1, ServerHealth())])},
        [(WEB, "rr", [(RS[1], 2), (RS[2], 2), (RS[3], 1)])], run_script=Scripts())
    assert ln(director) == listing((WEB, "rr", [(RS[2], 0), (RS[3], 1)]))
    p.on_event(Event(a, True))
    p.on_event(Event(b, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 2), (RS[2], 2), (RS[3], 1)]))


def test_quorum_counts_misc_dynamic_weights(director):
    m = CheckSpec("MISC_CHECK", RS[1], 0, misc_path="/bin/true", misc_dynamic=True)
    c2 = tcp(RS[2])
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((m,))),
                                            (RS[2], 1, ServerHealth((c2,)))],
                                      quorum=2, sorry_server=SorryServer(RS[9], 80))},
              [(WEB, "wrr", [(RS[1], 1), (RS[2], 1)])], run_script=Scripts())
    p.on_event(Event(m, True, "exit 7", weight=5))
    assert ln(director) == listing((WEB, "wrr", [(RS[1], 5), (RS[2], 1)]))
    p.on_event(Event(c2, False))                   # live 5 >= 2: no sorry server
    assert ln(director) == listing((WEB, "wrr", [(RS[1], 5)]))
    p.on_event(Event(m, True, "exit 2", weight=0))  # live 0: lost, sorry server in
    assert ln(director) == listing((WEB, "wrr", [(RS[9], 1)]))
    p.on_event(Event(m, True, "exit 4", weight=2))  # live 2: gained
    assert ln(director) == listing((WEB, "wrr", [(RS[1], 2)]))
    p.on_event(Event(m, False, "exit 1"))
    assert ln(director) == listing((WEB, "wrr", [(RS[9], 1)]))
    p.on_event(Event(m, True, "exit 0"))           # exit 0: the configured weight again,
    assert ln(director) == listing((WEB, "wrr", [(RS[9], 1)]))    # live 1 < 2
    p.on_event(Event(c2, True))
    assert ln(director) == listing((WEB, "wrr", [(RS[1], 1), (RS[2], 1)]))


def test_misc_dynamic_changes_the_weight_of_a_server_in_the_pool(director, caplog):
    m = CheckSpec("MISC_CHECK", RS[1], 0, misc_path="/bin/true", misc_dynamic=True)
    plain = CheckSpec("MISC_CHECK", RS[2], 0, misc_path="/bin/true")
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 3, ServerHealth((m,))),
                                            (RS[2], 3, ServerHealth((plain,)))])},
              [(WEB, "wlc", [(RS[1], 3), (RS[2], 3)])], run_script=Scripts())
    caplog.set_level(logging.INFO, logger="fastlvs")
    p.on_event(Event(m, True, "exit 12", weight=10))
    p.on_event(Event(plain, True, "exit 12", weight=10))    # not dynamic: ignored
    assert ln(director) == listing((WEB, "wlc", [(RS[1], 10), (RS[2], 3)]))
    assert f"MISC_CHECK {RS[1]}:80 of TCP {VIP}:80 weight 3 -> 10 (exit 12); applied" \
        in caplog.messages
    p.on_event(Event(m, False, "exit 1"))
    assert ln(director) == listing((WEB, "wlc", [(RS[2], 3)]))
    p.on_event(Event(m, True, "exit 9", weight=7))
    assert ln(director) == listing((WEB, "wlc", [(RS[1], 7), (RS[2], 3)]))


# -- scripts ------------------------------------------------------------------------------------
def _wait_lines(path, n, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if os.path.exists(path):
            lines = open(path).read().splitlines()
            if len(lines) >= n:
                return lines
        time.sleep(0.02)
    return open(path).read().splitlines() if os.path.exists(path) else []


def _notify_script(tmp_path):
    marker = tmp_path / "marker"
    script = tmp_path / "notify.sh"
    script.write_text(f'#!/bin/sh\necho "$*" >> {marker}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), str(marker)


def test_scripts_run_through_the_shell_with_their_arguments(director, tmp_path):
    script, marker = _notify_script(tmp_path)
    c1, c2 = tcp(RS[1]), tcp(RS[2])
    runner = ScriptRunner()
    vh = vhealth(WEB, [
        (RS[1], 1, ServerHealth((c1,), notify_up=f"{script} UP {RS[1]}:80",
                                notify_down=f"{script} DOWN '{RS[1]} port 80'")),
        (RS[2], 1, ServerHealth((c2,)))],
        quorum=2, quorum_up=f"{script} QUORUM_UP {VIP}:80",
        quorum_down=f"{script} QUORUM_DOWN {VIP}:80")
    p = start(director, {WEB: vh}, [(WEB, "rr", [(RS[1], 1), (RS[2], 1)])], run_script=runner)
    assert _wait_lines(marker, 1) == [f"QUORUM_UP {VIP}:80"]     # quorum at start
    p.on_event(Event(c1, False))
    assert _wait_lines(marker, 3)[1:] in ([f"DOWN {RS[1]} port 80", f"QUORUM_DOWN {VIP}:80"],
                                          [f"QUORUM_DOWN {VIP}:80", f"DOWN {RS[1]} port 80"])
    p.on_event(Event(c1, True))
    assert sorted(_wait_lines(marker, 5)[3:]) == [f"QUORUM_UP {VIP}:80", f"UP {RS[1]}:80"]
    assert runner.wait(5.0) == 0 and runner.running == 0


def test_a_script_is_never_waited_for_and_is_killed_past_its_time(director, tmp_path):
    c1 = tcp(RS[1])
    runner = ScriptRunner(timeout=0.2)
    pidfile = tmp_path / "pid"
    p = start(director, {WEB: vhealth(WEB, [
        (RS[1], 1, ServerHealth((c1,), notify_down=f"echo $$ > {pidfile}; exec sleep 30"))])},
        [(WEB, "rr", [(RS[1], 1)])], run_script=runner)
    t = time.monotonic()
    p.on_event(Event(c1, False))
    assert time.monotonic() - t < 5.0 and runner.running == 1
    pid = int(_wait_lines(pidfile, 1)[0])
    end = time.monotonic() + 10
    while runner.running and time.monotonic() < end:
        time.sleep(0.05)
        p.tick()
    assert runner.running == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_script_that_cannot_run_or_a_runner_that_raises_is_one_log_line(director, caplog):
    def broken(line, what):
        raise RuntimeError("no fork today")
    c1 = tcp(RS[1])
    p = start(director, {WEB: vhealth(WEB, [
        (RS[1], 1, ServerHealth((c1,), notify_down="true"))])},
        [(WEB, "rr", [(RS[1], 1)])], run_script=broken)
    caplog.set_level(logging.WARNING, logger="fastlvs")
    p.on_event(Event(c1, False))
    assert ln(director) == listing((WEB, "rr", []))
    assert any("no fork today" in m for m in caplog.messages)


def test_omega_runs_notify_down_and_quorum_down_at_shutdown(director):
    c1, c2, c3 = tcp(RS[1]), tcp(RS[2]), tcp(RS[3])
    scripts = Scripts()
    p = start(director, {
        WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,), notify_down="down 1")),
                           (RS[2], 1, ServerHealth((c2,), notify_down="down 2"))],
                     omega=True, quorum_down="qdown web"),
        TLS: vhealth(TLS, [(RS[3], 1, ServerHealth((c3,), notify_down="down 3"))],
                     quorum_down="qdown tls")},
        [(WEB, "rr", [(RS[1], 1), (RS[2], 1)]), (TLS, "rr", [(RS[3], 1)])],
        run_script=scripts)
    p.on_event(Event(c2, False))
    assert scripts.calls == ["down 2"]
    scripts.calls.clear()
    p.shutdown(wait=0)
    assert scripts.calls == ["down 1", "qdown web"]    # not TLS: no omega there


# -- reload ----------------------------------------------------------------------------------
def test_reload_keeps_a_failed_server_out_and_starts_new_ones_as_their_spec_says(director):
    c1, c2, c3 = tcp(RS[1]), tcp(RS[2]), tcp(RS[3])
    cfg = {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,))),
                              (RS[2], 2, ServerHealth((c2,), inhibit_on_failure=True)),
                              (RS[3], 1, ServerHealth((c3,)))])}
    scripts = Scripts()
    p = start(director, cfg, [(WEB, "rr", [(RS[1], 1), (RS[2], 2), (RS[3], 1)])],
              run_script=scripts)
    p.on_event(Event(c1, False))
    p.on_event(Event(c2, False))
    assert ln(director) == listing((WEB, "rr", [(RS[2], 0), (RS[3], 1)]))
    # the new file: RS3 gone, RS4 new (up), RS5 new with an alpha checker (out)
    c4, c5 = tcp(RS[4]), tcp(RS[5], alpha=True)
    new_cfg = {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,))),
                                  (RS[2], 2, ServerHealth((c2,), inhibit_on_failure=True)),
                                  (RS[4], 1, ServerHealth((c4,))),
                                  (RS[5], 1, ServerHealth((c5,)))])}
    p.reload(HealthConfig(new_cfg), rules((WEB, "rr", [(RS[1], 1), (RS[2], 2), (RS[4], 1),
                                                        (RS[5], 1)])))
    assert ln(director) == listing((WEB, "rr", [(RS[2], 0), (RS[4], 1)]))
    p.on_event(Event(c3, False))                 # a checker no longer configured: ignored
    p.on_event(Event(c1, True))
    p.on_event(Event(c5, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 1), (RS[2], 0), (RS[4], 1),
                                                (RS[5], 1)]))
    p.on_event(Event(c2, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 1), (RS[2], 2), (RS[4], 1),
                                                (RS[5], 1)]))


def test_reload_keeps_the_quorum_state_and_the_sorry_server(director):
    checks, vh = _quorum_pool()
    p = start(director, {WEB: vh}, [(WEB, "rr", [(a, 1) for a in RS[1:5]])],
              run_script=Scripts())
    for c in checks[:3]:
        p.on_event(Event(c, False))
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    p.reload(HealthConfig({WEB: vh}), rules((WEB, "rr", [(a, 1) for a in RS[1:5]])))
    assert ln(director) == listing((WEB, "rr", [(RS[9], 1)]))
    for c in checks[:3]:
        p.on_event(Event(c, True))
    assert ln(director) == listing((WEB, "rr", [(a, 1) for a in RS[1:5]]))


def test_reload_forgets_what_went_running_its_down_scripts(director):
    """A server that goes while up runs notify_down, a service that goes with its quorum
    runs quorum_down (keepalived's clear_diff_services); what stays runs nothing."""
    c1, c2, c3 = tcp(RS[1]), tcp(RS[2]), tcp(RS[3], 443)
    web = vhealth(WEB, [(RS[1], 1, ServerHealth((c1,), notify_down="down 1")),
                        (RS[2], 1, ServerHealth((c2,), notify_down="down 2"))],
                  quorum_down="qdown web")
    tls = vhealth(TLS, [(RS[3], 1, ServerHealth((c3,), notify_down="down 3"))],
                  quorum_down="qdown tls")
    scripts = Scripts()
    p = start(director, {WEB: web, TLS: tls},
              [(WEB, "rr", [(RS[1], 1), (RS[2], 1)]), (TLS, "rr", [(RS[3], 1)])],
              run_script=scripts)
    new_web = vhealth(WEB, [(RS[1], 1, ServerHealth((c1,), notify_down="down 1"))],
                      quorum_down="qdown web")
    p.reload(HealthConfig({WEB: new_web}), rules((WEB, "rr", [(RS[1], 1)])))
    assert sorted(scripts.calls) == ["down 2", "down 3", "qdown tls"]
    assert ln(director) == listing((WEB, "rr", [(RS[1], 1)]))
    scripts.calls.clear()
    p.on_event(Event(c2, False))
    p.on_event(Event(c3, False))
    assert scripts.calls == [] and ln(director) == listing((WEB, "rr", [(RS[1], 1)]))


def test_a_refused_reload_changes_nothing(director):
    c1 = tcp(RS[1])
    cfg = HealthConfig({WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,))),
                                           (RS[2], 1, ServerHealth())])})
    p = start(director, cfg.services, [(WEB, "rr", [(RS[1], 1), (RS[2], 1)])],
              run_script=Scripts())
    p.on_event(Event(c1, False))
    before = ln(director)
    bad = rules((WEB, "rr", [(RS[1], 1), (RS[2], 1), ("198.51.100.99", 1)]))
    with pytest.raises(Exception):
        p.reload(cfg, bad)
    assert ln(director) == before
    p.on_event(Event(c1, True))
    assert ln(director) == listing((WEB, "rr", [(RS[1], 1), (RS[2], 1)]))


# -- the listing ----------------------------------------------------------------------------------
def _when(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def test_admin_health_lists_quorum_servers_and_checkers(daemon):
    a, b = tcp(RS[1]), CheckSpec("HTTP_GET", RS[2], 8080)
    cfg = HealthConfig({WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((a,))),
                                           (RS[2], 2, ServerHealth((b,),
                                                                   inhibit_on_failure=True))],
                                     quorum=2, sorry_server=SorryServer(RS[9], 80))})
    rc, out, err = daemon.admin("--health")
    assert rc == 255 and out == "" and "runs no health checks" in err
    with daemon.lock:
        daemon.director.load(rules((WEB, "rr", [(RS[1], 1), (RS[2], 2)])))
        p = HealthPolicy(daemon.director, cfg, run_script=Scripts())
        daemon.server.health = p.status
        p.on_event(Event(b, True, "status 200", at=T0 + 5))     # repeats its state
    assert daemon.ok("--health") == (
        f"TCP {VIP}:80  quorum up (live weight 3, quorum 2, hysteresis 0)\n"
        f"  -> {RS[1]}:80          up    weight 1\n"
        f"       TCP_CHECK {RS[1]}:80          up    -  no result yet\n"
        f"  -> {RS[2]}:80          up    weight 2\n"
        f"       HTTP_GET {RS[2]}:8080        up    {_when(T0 + 5)}  status 200\n"
        f"  sorry server {RS[9]}:80: not in use (not in the table)\n")
    with daemon.lock:
        p.on_event(Event(b, False, "status 503", at=T0 + 6))
    assert daemon.ok("--health") == (
        f"TCP {VIP}:80  quorum down (live weight 1, quorum 2, hysteresis 0)\n"
        f"  -> {RS[1]}:80          up    removed\n"
        f"       TCP_CHECK {RS[1]}:80          up    -  no result yet\n"
        f"  -> {RS[2]}:80          down  weight 0\n"
        f"       HTTP_GET {RS[2]}:8080        down  {_when(T0 + 6)}  status 503\n"
        f"  sorry server {RS[9]}:80: in use (weight 1)\n")
    with daemon.lock:
        p.on_event(Event(a, False, "connect refused", at=T0 + 9))
        p.status_source = lambda: [Probe(b, False, False, "status 500", T0 + 20, 4)]
    out = daemon.ok("--health").splitlines()
    assert out[0] == f"TCP {VIP}:80  quorum down (live weight 0, quorum 2, hysteresis 0)"
    assert out[2] == f"       TCP_CHECK {RS[1]}:80          down  {_when(T0 + 9)}  " \
        f"connect refused"
    assert out[4] == f"       HTTP_GET {RS[2]}:8080        down  {_when(T0 + 20)}  " \
        f"status 500  failures 4"
    assert out[5] == f"  sorry server {RS[9]}:80: in use (weight 1)"
    assert daemon.ok("-Ln") == listing((WEB, "rr", [(RS[2], 0), (RS[9], 1)]))
    rc, _, err = daemon.admin("--health", "-n")
    assert rc == 2 and err == "--health takes no other options\n"


def test_a_change_the_director_refuses_is_logged_not_raised(director, caplog):
    """A sorry server with no next hop, a service the operator deleted: one warning each
    (keepalived logs a failed ipvs_cmd and goes on), and the policy keeps following."""
    c1 = tcp(RS[1])
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,)))],
                                      sorry_server=SorryServer("198.51.100.99", 80))},
              [(WEB, "rr", [(RS[1], 1)])], run_script=Scripts())
    caplog.set_level(logging.WARNING, logger="fastlvs")
    p.on_event(Event(c1, False))
    assert ln(director) == listing((WEB, "rr", []))
    assert [m for m in caplog.messages if m.startswith("health: -a")] == [
        f"health: -a -t {VIP}:80 -r 198.51.100.99:80: No route to host "
        f"(198.51.100.99 is not a neighbour)"]
    director.execute(parse_command(["-D", "-t", f"{VIP}:80"]))
    p.on_event(Event(c1, True))
    assert ln(director) == listing()
    assert any("for a service that was not added" in m for m in caplog.messages)


# -- the reader and the policy together: the daemon's start ----------------------------------
CORPUS = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "keepalived"


@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("*.conf")))
def test_the_daemons_start_from_each_corpus_file_serves_what_keepalived_installed(name):
    """The daemon loads keepalived.conf's table into the director and then hands it to the
    policy, which puts it in keepalived's starting state: the two together must still be
    the table real keepalived installed (recorded), not alpha or sorry servers twice."""
    from fastlvs.control.keepalived import load_keepalived
    from fastlvs.control.listing import format_list
    from fastlvs.engine.reference import Engine

    kc = load_keepalived(CORPUS / f"{name}.conf")
    director = Director(Engine(capacity=4096, batch=16, local_ip="192.0.2.1",
                               local_mac="02:00:00:00:00:01"), lambda ip: (b"\2" * 6, 1))
    try:
        director.check_table(kc.table)
    except ControlError as e:
        # SCTP and IPv6 services are the corpus's too, and TUN servers of the other family
        # (fwmark6); the engine refuses them (the daemon says so at start), so the
        # composition is checked on the files it serves
        assert name in ("groups", "schedulers", "fwmark6"), e
        pytest.skip(f"{name}: {e}")
    director.load(kc.table)
    HealthPolicy(director, kc.health, run_script=lambda line, what: None)
    assert format_list(director.table) == (CORPUS / "expected" / f"{name}.Ln").read_text()


def test_health_metrics_follow_the_checkers(director):
    """fastlvs_health_* (the --metrics endpoint's health collector) say what --health says,
    without asking the checker process (a scrape must not wait for it)."""
    from prometheus_client.parser import text_string_to_metric_families
    from fastlvs.control.metrics import HealthCollector, Metrics

    c1, c2 = tcp(RS[1]), tcp(RS[2])
    p = start(director, {WEB: vhealth(WEB, [(RS[1], 1, ServerHealth((c1,))),
                                            (RS[2], 3, ServerHealth((c2,)))], quorum=2)},
              [(WEB, "wrr", [(RS[1], 1), (RS[2], 3)])], run_script=Scripts())
    p.status_source = lambda: pytest.fail("a scrape asked the checker process")
    m = Metrics()
    m.register("health", HealthCollector(p))

    def scrape():
        fams = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
        return {(f.name, tuple(sorted(s.labels.items()))): s.value
                for f in fams.values() for s in f.samples}

    svc = f"TCP {VIP}:80"
    up2 = ("fastlvs_health_server_up", (("server", f"{RS[2]}:80"), ("service", svc)))
    chk2 = ("fastlvs_health_checker_up", (("checker", "TCP_CHECK"), ("server", f"{RS[2]}:80"),
                                          ("service", svc), ("target", f"{RS[2]}:80")))
    quorum = ("fastlvs_health_quorum_up", (("service", svc),))
    live = ("fastlvs_health_live_weight", (("service", svc),))
    got = scrape()
    assert (got[up2], got[chk2], got[quorum], got[live]) == (1, 1, 1, 4)
    p.on_event(Event(c2, False, "connect refused"))
    got = scrape()
    assert (got[up2], got[chk2], got[quorum], got[live]) == (0, 0, 0, 1)
