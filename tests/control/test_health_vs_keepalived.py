"""The health policy against real keepalived: tests/fixtures/kernel/keepalived_quorum.json is
what Debian 12's keepalived 2.2.7 did to a 6.1 kernel's IPVS (recorded in the kernel oracle by
tests/fixtures/kernel/scripts/keepalived_quorum_record.sh) as the MISC_CHECK results of four
virtual servers changed step by step: removal, inhibit_on_failure, quorum 3 with hysteresis 1
and a sorry server, sorry_server_inhibit, misc_dynamic weights and quorum 2, alpha checkers
with the quorum lost at start, the notify and quorum scripts, omega at exit. The same
configuration and the same results, fed to HealthPolicy over a real Director, must give the
same `ipvsadm -Ln` and run the same scripts at every step."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.control.control_harness import engine_class
from fastlvs.control.director import Director
from fastlvs.control.health import HealthPolicy
from fastlvs.control.model import Proto, ServiceKey
from fastlvs.control.rules import parse_rules
from fastlvs.health.spec import (CheckSpec, HealthConfig, ServerHealth, SorryServer,
                                 VirtualHealth)

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" / "keepalived_quorum.json"
VIP = "10.0.1.100"
EV = "/tmp/ev.sh "
# The recorded configuration (the job writes it; it is in the fixture as "config"): per
# virtual server port, its options and its real servers as (host number, state file).
SERVICES = {
    80: (dict(quorum=3, hysteresis=1, omega=True), False, False,
         [(1, "r1"), (2, "r2"), (3, "r3"), (4, "r4")]),
    81: (dict(quorum=3, hysteresis=1), True, False,
         [(1, "r1"), (2, "r2"), (3, "r3"), (4, "r4")]),
    82: (dict(quorum=2), False, False, [(1, "d1"), (2, "r4")]),
    83: (dict(quorum=3, hysteresis=1), False, True,
         [(5, "a5"), (6, "a6"), (7, "a7"), (8, "a8")]),
}
START = {"r1": 0, "r2": 0, "r3": 0, "r4": 0, "d1": 0, "a5": 1, "a6": 1, "a7": 0, "a8": 0}


class Event:
    def __init__(self, spec, up, weight):
        self.spec, self.up, self.reason, self.weight, self.at = spec, up, "", weight, 0.0


def _config():
    services, files = {}, {}
    for port, (opts, inhibit, alpha, servers) in SERVICES.items():
        key = ServiceKey(Proto.TCP, VIP, port)
        health, weights = {}, {}
        for n, state in servers:
            addr = f"10.0.2.{n}"
            spec = CheckSpec("MISC_CHECK", addr, port, delay_loop=2.0, retry=0,
                             misc_path=f"/tmp/st.sh {state}", misc_timeout=30.0,
                             misc_dynamic=state == "d1", alpha=alpha)
            files[spec] = state
            health[(addr, port)] = ServerHealth(
                (spec,), inhibit_on_failure=inhibit,
                notify_up=f"{EV}up {port} rs{n}", notify_down=f"{EV}down {port} rs{n}")
            weights[(addr, port)] = 1
        services[key] = VirtualHealth(
            servers=health, weights=weights, quorum_up=f"{EV}quorum_up {port}",
            quorum_down=f"{EV}quorum_down {port}",
            sorry_server=SorryServer("10.0.2.9", port, inhibit=inhibit), **opts)
    return HealthConfig(services), files


def _table():
    lines = []
    for port, (_, _, _, servers) in SERVICES.items():
        lines.append(f"-A -t {VIP}:{port} -s rr")
        lines += [f"-a -t {VIP}:{port} -r 10.0.2.{n}:{port} -g -w 1" for n, _ in servers]
    return parse_rules("\n".join(lines) + "\n")


def _result(spec, value):
    # MISC_CHECK: exit 0 up; with misc_dynamic 2..255 up at weight status - 2; else down
    if value == 0:
        return True, None
    if spec.misc_dynamic and value >= 2:
        return True, value - 2
    return False, None


@pytest.fixture(scope="module")
def recording():
    return json.loads(FIXTURE.read_text())


def test_the_recording_is_of_the_configuration_replayed_here(recording):
    conf = recording["config"]
    assert recording["keepalived"].startswith("2.2.7")
    for port, (opts, inhibit, alpha, servers) in SERVICES.items():
        block = conf.split(f"virtual_server {VIP} {port} {{")[1].split("\nvirtual_server")[0]
        for k, v in opts.items():
            assert (k if v is True else f"{k} {v}") in block, (port, k)
        assert ("inhibit_on_failure" in block) == inhibit
        assert ("sorry_server_inhibit" in block) == inhibit
        assert ("\n    alpha" in block) == alpha
        for n, state in servers:
            assert f"real_server 10.0.2.{n} {port}" in block
            assert f"/tmp/st.sh {state}" in block
        assert ("misc_dynamic" in block) == (port == 82)


def test_the_policy_does_what_keepalived_did_step_by_step(recording, engine_kind):
    Engine = engine_class(engine_kind)
    director = Director(Engine(capacity=4096, batch=64, local_ip="10.0.2.254",
                               local_mac="02:00:00:00:00:01"),
                        lambda ip: (b"\x02\x00\x00\x00\x02" + bytes([int(ip.split(".")[3])]), 1))
    director.load(_table())
    config, files = _config()
    ran = []
    policy = HealthPolicy(director, config,
                          run_script=lambda line, what: ran.append(line[len(EV):]))
    state = dict(START)
    results = {spec: (not spec.alpha, None) for spec in files}
    for i, step in enumerate(recording["steps"]):
        for kv in step["set"].split():
            name, value = kv.split("=")
            state[name] = int(value)
        for spec, name in files.items():
            now = _result(spec, state[name])
            # the first result of every checker at step 0 (keepalived runs notify_down
            # for an alpha checker whose first check fails), then each change
            if i == 0 or now != results[spec]:
                policy.on_event(Event(spec, *now))
                results[spec] = now
        assert director.list(numeric=True) == step["ipvsadm_Ln"], f"step {i}: {step['set']}"
        assert sorted(ran) == step["scripts"], f"step {i}: {step['set']}"
        ran.clear()
    policy.shutdown(wait=0)
    assert sorted(ran) == recording["stop"]["scripts"]
