"""The daemon under operators' mistakes and hard deaths, in a DR cluster: a reload that
cannot resolve a real server is refused with one line while the old state keeps serving; a
fastlvs killed with SIGKILL leaves an XDP program, an nft table and changed NAPI settings
that the next start removes and restores; systemd hears READY=1, WATCHDOG=1 and STOPPING=1.
"""
import collections
import json
import os
import signal
import socket
import threading
import time

import pytest

from tests.e2e.e2e_support import assert_clean, make_bed
from fastlvs.lab.testbed import HTTP_PORT, run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")


@pytest.fixture(scope="module")
def bed():
    tb = make_bed("dr")
    try:
        yield tb
    finally:
        tb.destroy()


@pytest.fixture
def daemons(bed):
    started = []
    yield started
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGTERM)


def requests(bed, n):
    got = collections.Counter()
    for _ in range(n):
        got[bed.http_get(timeout=3.0)] += 1
    return got


def wait_line(d, start, word, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        new = [ln for ln in d.lines[start:] if word in ln]
        if new:
            return new
        assert time.monotonic() < deadline, d.stderr
        assert d.proc.poll() is None, d.stderr
        time.sleep(0.05)


def sysfs(bed, ifname, knob):
    return run("ip", "netns", "exec", bed.director, "cat",
               f"/sys/class/net/{ifname}/{knob}").stdout.strip()


def test_reload_with_an_unresolvable_real_server_keeps_the_old_state(bed, daemons):
    vip = f"{bed.vip}:{HTTP_PORT}"
    r1, r2, r3 = (f"{bed.rip_of(n)}:{HTTP_PORT}" for n in ("rs1", "rs2", "rs3"))
    path = bed.write_rules(f"-A -t {vip} -s rr\n-a -t {vip} -r {r1} -g\n-a -t {vip} -r {r2} -g\n")
    d = bed.start_daemon("--rules", path)
    daemons.append(d)
    before = d.admin("-Ln").stdout
    # a good change to the served service, and a new one whose server nobody answers ARP for
    bed.write_rules(f"-A -t {vip} -s wrr\n-a -t {vip} -r {r3} -g -w 5\n"
                    f"-A -t {bed.vip}:8080 -s rr\n-a -t {bed.vip}:8080 -r 10.201.0.77:8080 -g\n")
    n = len(d.lines)
    d.send(signal.SIGHUP)
    (line,) = wait_line(d, n, "reload refused")
    assert "10.201.0.77" in line
    time.sleep(0.3)
    assert [ln for ln in d.lines[n:] if ln.strip()] == [line]        # one line, no traceback
    assert d.proc.poll() is None
    assert d.admin("-Ln").stdout == before
    assert set(requests(bed, 6)) == {"rs1", "rs2"}
    d.stop(signal.SIGTERM)
    assert_clean(bed, d)


def test_waiting_for_arp_never_stalls_forwarding(bed, daemons):
    """`fastlvs admin -a` of a real server nobody answers ARP for, and a SIGHUP reload that
    adds one, wait for the kernel's answer (3 s) while the loop goes on forwarding: every
    request made meanwhile is answered, then the refusal comes as one line."""
    vip = f"{bed.vip}:{HTTP_PORT}"
    r1 = f"{bed.rip_of('rs1')}:{HTTP_PORT}"
    path = bed.write_rules(f"-A -t {vip} -s rr\n-a -t {vip} -r {r1} -g\n")
    d = bed.start_daemon("--rules", path)
    daemons.append(d)
    result = {}
    t = threading.Thread(target=lambda: result.update(
        a=d.admin("-a", "-t", vip, "-r", "10.201.0.78", "-g", check=False)))
    t0 = time.monotonic()
    t.start()
    got = collections.Counter()
    while t.is_alive() and time.monotonic() - t0 < 10:
        got[bed.http_get(timeout=1.0)] += 1
    t.join(10)
    assert result["a"].returncode == 255
    assert "No route to host" in result["a"].stderr and "10.201.0.78" in result["a"].stderr
    assert time.monotonic() - t0 >= 2.5           # it did wait for the kernel's answer
    assert got["rs1"] >= 5 and set(got) == {"rs1"}, got     # and forwarding went on
    bed.write_rules(f"-A -t {vip} -s rr\n-a -t {vip} -r {r1} -g\n"
                    f"-a -t {vip} -r 10.201.0.79:{HTTP_PORT} -g\n")
    n = len(d.lines)
    d.send(signal.SIGHUP)
    got.clear()
    t0 = time.monotonic()
    while not [ln for ln in d.lines[n:] if "reload refused" in ln] and \
            time.monotonic() - t0 < 10:
        got[bed.http_get(timeout=1.0)] += 1
    assert got["rs1"] >= 5 and set(got) == {"rs1"}, got
    (line,) = wait_line(d, n, "reload refused")
    assert "10.201.0.79" in line and "within 3 s" in line
    d.stop(signal.SIGTERM)
    assert_clean(bed, d)


@pytest.mark.parametrize("backend", ["xdp", "packet"])
def test_after_sigkill_the_next_start_cleans_up(bed, daemons, backend):
    vip = f"{bed.vip}:{HTTP_PORT}"
    args = ["--vip", f"tcp:{vip}", "--rs", f"{bed.rip_of('rs1')}:{HTTP_PORT}"]
    knobs = ("napi_defer_hard_irqs", "gro_flush_timeout", "threaded")
    extra = ["--busy-poll", "--cpu", str(max(os.sched_getaffinity(0)))] if backend == "xdp" \
        else []
    before = {k: sysfs(bed, bed.lan_if, k) for k in knobs}
    d = bed.start_daemon(*args, *extra, backend=backend)
    daemons.append(d)
    assert set(requests(bed, 2)) == {"rs1"}
    changed = {k: sysfs(bed, bed.lan_if, k) for k in knobs}
    state = f"/run/fastlvs/state-{d.proc.pid}.json"
    recorded = json.load(open(state))
    d.kill()
    # what a killed fastlvs leaves behind
    if backend == "xdp":
        assert bed.xdp_attached() == [bed.lan_if]
        assert changed != before and recorded["xdp"] == [bed.lan_if]
        assert recorded["sysfs"][f"{bed.lan_if}/gro_flush_timeout"] == \
            before["gro_flush_timeout"]
    else:
        assert f"fastlvs_{d.proc.pid}_" in bed.nft_tables()
    assert os.path.exists(state)
    # the next start (same backend, no busy polling) removes it and serves
    d2 = bed.start_daemon(*args, backend=backend)
    daemons.append(d2)
    assert any(f"({backend} " in ln for ln in d2.lines if "ready" in ln), d2.stderr
    assert f"fastlvs_{d.proc.pid}_" not in bed.nft_tables()
    assert not os.path.exists(state)
    assert {k: sysfs(bed, bed.lan_if, k) for k in knobs} == before
    assert set(requests(bed, 2)) == {"rs1"}
    assert d2.stop(signal.SIGTERM) == 0, d2.stderr
    assert_clean(bed, d2)
    assert not os.path.exists(f"/run/fastlvs/state-{d2.proc.pid}.json")


def test_systemd_hears_ready_watchdog_and_stopping(bed, daemons, monkeypatch):
    path = os.path.join(bed.tmp, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        d = bed.start_daemon("--vip", f"tcp:{bed.vip}:{HTTP_PORT}",
                             "--rs", f"{bed.rip_of('rs1')}:{HTTP_PORT}")
        daemons.append(d)
        got = []
        for _ in range(50):
            got.append(s.recv(4096).decode())
            if sum(m == "WATCHDOG=1" for m in got) >= 2:
                break
        ready = [m for m in got if m.startswith("READY=1")]
        assert len(ready) == 1 and f"MAINPID={d.proc.pid}" in ready[0], got
        assert got[0] == ready[0] and got.count("WATCHDOG=1") >= 2, got
        assert d.stop(signal.SIGTERM) == 0
        rest = []
        s.settimeout(2)
        try:
            while "STOPPING=1" not in rest:
                rest.append(s.recv(4096).decode())
        except socket.timeout:
            pass
        assert "STOPPING=1" in rest, rest
    finally:
        s.close()
