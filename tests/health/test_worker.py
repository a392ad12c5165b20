"""The checker process end to end, through the parent-side handle the daemon uses: a real
TCP server stopped and started again, state kept across set_probes, one probe per distinct
spec, status(), the process's death and restart, close() leaving no process behind (nor a
MISC_CHECK's children), a parent that never blocks on a full pipe, and the worker's bounded
output that reports what it could not send. Every wait is bounded."""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import time

import pytest

from fastlvs.health import worker as worker_mod
from fastlvs.health.spec import CheckSpec
from fastlvs.health.worker import HealthWorker
from tests.health.servers import TcpListener, free_port


def tcp(port, **kw):
    base = dict(delay_loop=0.5, retry=1, delay_before_retry=0.2, connect_timeout=1.0,
                warmup=0.0)
    return CheckSpec("TCP_CHECK", "127.0.0.1", port, **{**base, **kw})


_BACKLOG: dict[int, list] = {}   # id(worker) -> events read but not yet looked at


def wait_for(w: HealthWorker, pred, within: float, seen=None):
    """The first event matching pred within `within` seconds (events before it go to
    `seen`; those after it, read in the same call, wait for the next wait_for); fails naming
    every event it saw."""
    seen = [] if seen is None else seen
    end = time.monotonic() + within
    while True:
        backlog = _BACKLOG.pop(id(w), []) + w.events()
        for i, ev in enumerate(backlog):
            if pred(ev):
                _BACKLOG[id(w)] = backlog[i + 1:]
                return ev
            seen.append(ev)
        left = end - time.monotonic()
        if left <= 0:
            pytest.fail(f"no matching event in {within}s; saw {seen}")
        select.select([w.fileno()], [], [], min(left, 0.2))


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def worker():
    w = HealthWorker()
    yield w
    w.close()
    _BACKLOG.pop(id(w), None)


def test_down_when_the_server_stops_and_up_when_it_is_back(worker):
    ls = TcpListener()
    spec = tcp(ls.port)
    try:
        worker.set_probes([spec])
        ev = wait_for(worker, lambda e: e.spec == spec, 20)   # bootstrap: 1 s, slower when loaded
        assert ev.up and ev.reason == "connected" and abs(ev.at - time.time()) < 60
        ls.close()
        stopped = time.monotonic()
        # keepalived's bound: the next check within delay_loop, then `retry` retries
        # delay_before_retry apart, each at most connect_timeout; 3 s of slack for a
        # loaded machine
        bound = spec.delay_loop + spec.retry * spec.delay_before_retry \
            + (spec.retry + 1) * spec.connect_timeout + 3.0
        ev = wait_for(worker, lambda e: e.spec == spec, bound)
        assert (ev.up, ev.reason) == (False, "connect refused"), \
            f"after {time.monotonic() - stopped:.2f}s"
        ls = TcpListener(port=spec.connect_port)
        ev = wait_for(worker, lambda e: e.spec == spec, spec.delay_loop + 3.0)
        assert (ev.up, ev.reason) == (True, "connected")
    finally:
        ls.close()


def test_one_probe_per_distinct_spec_and_status(worker):
    ls = TcpListener()
    try:
        a, b = tcp(ls.port), tcp(ls.port, delay_loop=0.6)
        worker.set_probes([a, a, tcp(ls.port), b])           # a three times: one probe
        got = {wait_for(worker, lambda e: e.spec is not None, 20).spec}
        got.add(wait_for(worker, lambda e: e.spec is not None and e.spec not in got, 20).spec)
        assert got == {a, b}
        st = {s.spec: s for s in worker.status()}
        assert set(st) == {a, b}
        assert all(s.up and s.last_ok and s.failures == 0 and s.last_reason == "connected"
                   for s in st.values())
    finally:
        ls.close()


def test_set_probes_keeps_running_specs_and_stops_gone_ones(worker):
    ls = TcpListener()
    dead = free_port()
    try:
        keep, gone = tcp(ls.port), tcp(dead, delay_loop=0.3)
        worker.set_probes([keep, gone])
        seen = []
        wait_for(worker, lambda e: e.spec == keep, 20, seen)
        if not any(e.spec == gone for e in seen):
            wait_for(worker, lambda e: e.spec == gone, 20)
        before = {s.spec: s for s in worker.status()}[keep]
        new = tcp(ls.port, delay_loop=0.4)
        worker.set_probes([keep, new])
        seen = []
        ev = wait_for(worker, lambda e: e.spec == new, 20, seen)
        assert ev.up
        # `keep` was not restarted: no second first-verdict from it, its history goes on
        assert not any(e.spec in (keep, gone)
                       for e in seen + _BACKLOG.pop(id(worker), []) + worker.events())
        st = {s.spec: s for s in worker.status()}
        assert set(st) == {keep, new}
        assert st[keep].last_time >= before.last_time and st[keep].up
    finally:
        ls.close()


def test_misc_dynamic_weight_changes_reach_the_parent(worker, tmp_path):
    code = tmp_path / "code"
    code.write_text("12")
    spec = CheckSpec("MISC_CHECK", "127.0.0.1", misc_path=f"sh -c 'exit $(cat {code})'",
                     misc_dynamic=True, delay_loop=0.3, warmup=0.0)
    worker.set_probes([spec])
    ev = wait_for(worker, lambda e: e.spec == spec, 20)
    assert (ev.up, ev.weight) == (True, 10)
    code.write_text("5")
    ev = wait_for(worker, lambda e: e.spec == spec, 20)
    assert (ev.up, ev.weight, ev.reason) == (True, 3, "exit 5")
    code.write_text("1")
    ev = wait_for(worker, lambda e: e.spec == spec, 20)
    assert (ev.up, ev.weight, ev.reason) == (False, None, "exit 1")


def test_a_dead_worker_is_reported_and_restart_runs_the_probes_again(worker):
    ls = TcpListener()
    try:
        spec = tcp(ls.port)
        worker.set_probes([spec])
        wait_for(worker, lambda e: e.spec == spec, 20)
        fd = worker.fileno()
        old = worker.proc.pid
        os.kill(old, signal.SIGKILL)
        ev = wait_for(worker, lambda e: e.spec is None, 5)
        assert not ev.up and "killed by signal 9" in ev.reason and not worker.alive
        with pytest.raises(RuntimeError):
            worker.status()
        worker.restart()
        assert worker.fileno() == fd and worker.alive and worker.proc.pid != old
        ev = wait_for(worker, lambda e: e.spec == spec, 20)      # its first verdict again
        assert ev.up
        assert [s.spec for s in worker.status()] == [spec]
    finally:
        ls.close()


def test_close_leaves_no_process_not_even_a_running_misc_check(tmp_path):
    pidfile = tmp_path / "pid"
    w = HealthWorker()
    spec = CheckSpec("MISC_CHECK", "127.0.0.1", misc_path=f"sh -c 'echo $$ > {pidfile}; "
                     "sleep 30'", delay_loop=60.0, warmup=0.0)
    w.set_probes([spec])
    end = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < end, "the MISC_CHECK never started"
        time.sleep(0.05)
    script = int(pidfile.read_text())
    pid = w.proc.pid
    assert alive(script) and alive(pid)
    w.close()
    w.close()                                    # safe twice
    assert not alive(pid)                        # reaped: not even a zombie
    end = time.monotonic() + 5
    while alive(script):
        assert time.monotonic() < end, "the MISC_CHECK's process outlived the worker"
        time.sleep(0.05)


def test_a_killed_worker_takes_its_misc_check_along(worker, tmp_path):
    pidfile = tmp_path / "pid"
    spec = CheckSpec("MISC_CHECK", "127.0.0.1", misc_path=f"sh -c 'echo $$ > {pidfile}; "
                     "exec sleep 30'", delay_loop=60.0, warmup=0.0)
    worker.set_probes([spec])
    end = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < end, "the MISC_CHECK never started"
        time.sleep(0.05)
    script = int(pidfile.read_text())
    os.kill(worker.proc.pid, signal.SIGKILL)
    wait_for(worker, lambda e: e.spec is None, 5)
    end = time.monotonic() + 5
    while alive(script):
        assert time.monotonic() < end, "the MISC_CHECK's process outlived a killed worker"
        time.sleep(0.05)


def test_the_worker_runs_niced(worker):
    worker.status(timeout=10)                  # it is running its main loop
    with open(f"/proc/{worker.proc.pid}/stat") as f:
        nice = int(f.read().rsplit(")", 1)[1].split()[16])
    assert nice == min(19, os.nice(0) + worker_mod.NICE)


def test_the_parent_never_blocks_on_a_full_pipe(worker):
    """With the worker stopped (SIGSTOP) set_probes of ~3 MB returns at once: the rest waits
    in the handle and goes as the worker reads (it says so with {"rd"})."""
    dead = free_port()
    specs = [tcp(dead, delay_loop=3600.0, warmup=3600.0, bind_port=0, connect_timeout=1.0 + i)
             for i in range(5000)]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("set_probes blocked"))
        signal.alarm(20)
        try:
            worker.set_probes(specs)
            assert worker.events() == []
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        assert len(worker._wbuf) > 0                # part of it is still waiting
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    # the daemon's loop: poll fileno(), call events(); the pending input drains that way
    end = time.monotonic() + 30
    while worker._wbuf:
        assert time.monotonic() < end, "the handle's pending input never drained"
        select.select([worker.fileno()], [], [], 0.5)
        worker.events()
    assert len(worker.status(timeout=20)) == 5000


def test_worker_output_is_bounded_and_losses_are_reported(monkeypatch):
    """The worker's writer with the parent not reading: beyond the limit events are counted,
    and a {"lost": n} line follows once the parent reads; sent = received + lost."""
    monkeypatch.setattr(worker_mod, "OUT_LIMIT", 4096)
    r, w = os.pipe()

    async def main():
        out = worker_mod._Out(asyncio.get_running_loop(), w)
        for i in range(5000):
            out.send({"e": [i, True, "x" * 20, None, 0.0]}, droppable=True)
        assert out.lost > 0
        got = bytearray()
        os.set_blocking(r, False)
        end = time.monotonic() + 10
        while b'"lost"' not in got:
            assert time.monotonic() < end
            try:
                got += os.read(r, 1 << 16)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        try:
            got += os.read(r, 1 << 16)
        except BlockingIOError:
            pass
        return [json.loads(x) for x in got.splitlines()]
    try:
        msgs = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        os.close(r)
        os.close(w)
    events = [m["e"][0] for m in msgs if "e" in m]
    lost = sum(m["lost"] for m in msgs if "lost" in m)
    assert events == list(range(len(events)))          # in order, the oldest kept
    assert lost > 0 and len(events) + lost == 5000


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nowhere else to go")
def test_the_process_runs_on_the_cpus_it_is_given_also_after_a_restart():
    cpus = {min(os.sched_getaffinity(0))}
    w = HealthWorker(cpus=cpus)
    try:
        assert os.sched_getaffinity(w.proc.pid) == cpus
        w.restart()
        assert os.sched_getaffinity(w.proc.pid) == cpus
    finally:
        w.close()
