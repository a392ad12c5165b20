"""Health checks end to end, DR and NAT, from a keepalived.conf: real servers whose process the
test kills and starts again. A killed server is out of rotation within keepalived's bound and
back when it returns, while the other servers' established connections carry on; HTTP_GET
with a wrong status code or digest marks a server down (removed, or weight 0 with
inhibit_on_failure); MISC_CHECK misc_dynamic sets a weight; with every server down the sorry
server takes the new connections; a flapping server gives a bounded number of transitions
and costs the other servers nothing."""
import collections
import hashlib
import os
import re
import signal
import time

import pytest

from tests.e2e.e2e_support import make_bed
from fastlvs.lab.testbed import HTTP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

KIND = {"dr": "DR", "nat": "NAT"}
# Fast checks: a dead server (connection refused) is out after the next check and one retry.
FAST = "        delay_loop 1\n        retry 1\n        delay_before_retry 1\n"
BOUND = 1 * 1 + 1          # delay_loop × retry + connect_timeout (the issue's bound), seconds
SLACK = 3.0                # a loaded 2-core machine: the loop, the checker process, admin


@pytest.fixture(scope="module", params=list(KIND))
def bed(request):
    tb = make_bed(request.param)
    try:
        yield tb
    finally:
        tb.destroy()


@pytest.fixture(autouse=True)
def servers_back(bed):
    yield
    for name in bed.rs_names:            # a test that failed half-way leaves none dead
        if name not in bed.servers:
            bed.start_server(name)


def conf(bed, servers: str, extra: str = "") -> str:
    return f"""virtual_server {bed.vip} {HTTP_PORT} {{
    lb_algo rr
    lb_kind {KIND[bed.mode]}
    protocol TCP
{extra}{servers}}}
"""


def tcp_server(bed, name, body="", port=HTTP_PORT):
    return (f"    real_server {bed.rip_of(name)} {HTTP_PORT} {{\n{body}"
            f"        TCP_CHECK {{\n            connect_timeout 1\n"
            f"            connect_port {port}\n{FAST}        }}\n    }}\n")


def dests(d) -> dict[str, int]:
    """{RIP: weight} of the one service, from `fastlvs admin -Ln`."""
    out = {}
    for line in d.admin("-Ln").stdout.splitlines():
        m = re.match(r"\s+->\s+([\d.]+):\d+\s+\S+\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def wait_for(what, predicate, timeout):
    """Seconds until predicate() holds, polled every 50 ms; fails after `timeout`."""
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def requests(bed, n):
    got = collections.Counter()
    for _ in range(n):
        try:
            got[bed.http_get(timeout=2.0)] += 1
        except OSError as e:
            got[f"failed: {type(e).__name__}"] += 1
    return got


def established_elsewhere(bed, name, tries=6):
    """Keep-alive connections (at least one) answered by real servers other than `name`."""
    kept = []
    for _ in range(tries):
        k = bed.keepalive()
        if k.ask() != name:
            kept.append(k)
        else:
            k.close()
    assert kept
    return kept


def start_checked(bed, start, text):
    path = bed.write_rules(text, name="keepalived.conf")
    return start("--keepalived-conf", path)


def test_a_killed_server_leaves_rotation_and_returns(bed, start):
    d = start_checked(bed, start, conf(bed, "".join(tcp_server(bed, n) for n in bed.rs_names)))
    rip2 = bed.rip_of("rs2")
    wait_for("all three up", lambda: len(dests(d)) == 3, 10)
    kept = established_elsewhere(bed, "rs2")
    bed.stop_server("rs2")
    took = wait_for("rs2 removed", lambda: rip2 not in dests(d), BOUND + SLACK)
    assert any(f"TCP_CHECK {rip2}:{HTTP_PORT} of TCP {bed.vip}:{HTTP_PORT} down: "
               "connect refused; removed" in ln for ln in d.lines), d.stderr
    got = requests(bed, 20)
    assert set(got) == {"rs1", "rs3"}, got               # no new connection goes to rs2
    assert all(k.ask() in ("rs1", "rs3") for k in kept)  # established ones untouched
    bed.start_server("rs2")
    wait_for("rs2 back", lambda: rip2 in dests(d), BOUND + SLACK)
    got = requests(bed, 30)
    assert set(got) == {"rs1", "rs2", "rs3"}, got
    assert all(k.ask() in ("rs1", "rs3") for k in kept)
    for k in kept:
        k.close()
    assert took <= BOUND + SLACK
    # the health listing says who is up, with the last result
    health = d.admin("--health").stdout
    assert f"TCP {bed.vip}:{HTTP_PORT}" in health and "TCP_CHECK" in health
    assert health.count(" up ") >= 3, health


def test_a_reload_keeps_a_failed_server_out(bed, start):
    """keepalived's reload re-adds failed servers until their checks fail again; here a
    SIGHUP applies only the difference and a failed server never reappears."""
    text = conf(bed, "".join(tcp_server(bed, n) for n in bed.rs_names))
    d = start_checked(bed, start, text)
    rip2 = bed.rip_of("rs2")
    wait_for("all three up", lambda: len(dests(d)) == 3, 10)
    bed.stop_server("rs2")
    wait_for("rs2 removed", lambda: rip2 not in dests(d), BOUND + SLACK)
    n = len(d.lines)
    d.send(signal.SIGHUP)
    wait_for("reloaded", lambda: any("reloaded" in ln for ln in d.lines[n:]), 10)
    seen = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        seen.update(dests(d))
    assert rip2 not in seen and len(seen) == 2, seen
    assert set(requests(bed, 10)) == {"rs1", "rs3"}


def test_http_status_digest_inhibit_and_misc_dynamic(bed, start):
    r1, r2, r3 = (bed.rip_of(n) for n in ("rs1", "rs2", "rs3"))
    good = hashlib.md5(b"rs1\n").hexdigest()
    servers = (
        f"    real_server {r1} {HTTP_PORT} {{\n        weight 1\n"
        f"        HTTP_GET {{\n            url {{\n                path /\n"
        f"                digest {good}\n                status_code 200\n            }}\n"
        f"            connect_timeout 1\n{FAST}        }}\n"
        f"        MISC_CHECK {{\n            misc_path \"/bin/sh -c 'exit 7'\"\n"
        f"            misc_dynamic\n            misc_timeout 3\n{FAST}        }}\n    }}\n"
        f"    real_server {r2} {HTTP_PORT} {{\n        inhibit_on_failure\n"
        f"        HTTP_GET {{\n            url {{\n                path /\n"
        f"                status_code 201\n            }}\n"
        f"            connect_timeout 1\n{FAST}        }}\n    }}\n"
        f"    real_server {r3} {HTTP_PORT} {{\n"
        f"        HTTP_GET {{\n            url {{\n                path /\n"
        f"                digest {'0' * 32}\n            }}\n"
        f"            connect_timeout 1\n{FAST}        }}\n    }}\n")
    d = start_checked(bed, start, conf(bed, servers))
    # rs1 up at misc_dynamic's weight 7 - 2; rs2 (status 200, not 201) inhibited at weight 0;
    # rs3 (digest mismatch) removed
    wait_for("checkers' verdicts", lambda: dests(d) == {r1: 5, r2: 0}, 10)
    assert any(f"HTTP_GET {r2}:{HTTP_PORT} of TCP {bed.vip}:{HTTP_PORT} down:" in ln
               and "weight 0 (inhibit_on_failure)" in ln for ln in d.lines), d.stderr
    assert any(f"HTTP_GET {r3}:{HTTP_PORT} of TCP {bed.vip}:{HTTP_PORT} down:" in ln
               and "digest mismatch" in ln for ln in d.lines), d.stderr
    got = requests(bed, 10)
    assert set(got) == {"rs1"}, got
    health = d.admin("--health").stdout
    assert "digest mismatch" in health and "MISC_CHECK" in health


def test_every_server_down_brings_the_sorry_server(bed, start):
    # rs1 and rs2 are checked on a port nobody listens on; rs3 is the sorry server
    servers = tcp_server(bed, "rs1", port=81) + tcp_server(bed, "rs2", port=81)
    extra = f"    sorry_server {bed.rip_of('rs3')} {HTTP_PORT}\n"
    d = start_checked(bed, start, conf(bed, servers, extra))
    wait_for("sorry server alone", lambda: dests(d) == {bed.rip_of("rs3"): 1}, 10)
    assert any("quorum lost" in ln or "quorum down" in ln for ln in d.lines), d.stderr
    got = requests(bed, 10)
    assert set(got) == {"rs3"}, got


def test_a_flapping_server_gives_bounded_transitions_and_costs_others_nothing(bed, start):
    d = start_checked(bed, start, conf(bed, "".join(tcp_server(bed, n) for n in bed.rs_names)))
    rip2 = bed.rip_of("rs2")
    wait_for("all three up", lambda: len(dests(d)) == 3, 10)
    kept = established_elsewhere(bed, "rs2")
    flaps, asked = 5, collections.Counter()
    for _ in range(flaps):               # down and up again every second
        bed.stop_server("rs2")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            asked.update(k.ask() for k in kept)
        bed.start_server("rs2")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            asked.update(k.ask() for k in kept)
    assert set(asked) <= {"rs1", "rs3"} and sum(asked.values()) > 0   # nothing lost elsewhere
    changes = [ln for ln in d.lines
               if f"TCP_CHECK {rip2}:{HTTP_PORT} of TCP" in ln and (" down:" in ln
                                                                   or " up:" in ln)]
    # retry 1 wants two failures in a row, a second apart: a server down for about a second
    # at a time may never be taken out (keepalived's damping); never more than one down and
    # one up per flap
    assert len(changes) <= 2 * flaps, changes
    wait_for("rs2 settles back", lambda: rip2 in dests(d), BOUND + SLACK + 2)
    got = requests(bed, 30)
    assert set(got) == {"rs1", "rs2", "rs3"}, got
    for k in kept:
        k.close()
