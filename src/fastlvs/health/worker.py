"""The checker process and its parent-side handle. Every probe runs in one separate process
(`python -m fastlvs.health.worker`: asyncio, niced), so checks never take the fast path's
CPU or GIL; the daemon holds a HealthWorker and polls its fileno() with its other files.

Wire (JSON lines; the parent names each distinct CheckSpec by an integer id):
  parent -> worker  {"op": "add", "probes": [[id, spec], ...]}   start these probes
                    {"op": "del", "ids": [id, ...]}               stop these
                    {"op": "status", "id": n}                     ask for every probe's state
  worker -> parent  {"e": [id, up, reason, weight, at]}           an Event
                    {"status": n, "probes": [[id, up, last_ok, last_reason, last_time, failures], ...]}
                    {"lost": n}      n events did not fit the bounded output buffer
                    {"rd": n}        n bytes of the parent's input were read: room in the pipe
The worker exits when its stdin closes, so it never outlives the daemon.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastlvs.health.monitor import Event, Monitor, ProbeStatus
from fastlvs.health.spec import CheckSpec

NICE = 10                    # below the daemon: checks wait, forwarding does not
OUT_LIMIT = 8 << 20          # bytes of output the parent has not read yet, at most
CLOSE_GRACE = 2.0


# -- the worker process ------------------------------------------------------------------------

class _Out:
    """Non-blocking line writer to the parent, bounded: events beyond OUT_LIMIT are counted
    and reported as {"lost": n} once there is room again, never dropped silently."""

    def __init__(self, loop, fd: int):
        self.loop, self.fd = loop, fd
        self.buf = bytearray()
        self.lost = 0
        self.writing = False
        os.set_blocking(fd, False)

    def send(self, msg: dict, droppable: bool = False) -> None:
        line = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        if droppable and (self.lost or len(self.buf) + len(line) > OUT_LIMIT):
            self.lost += 1      # after a loss, nothing newer goes before the notice
            return
        self.buf += line
        self._flush()

    def _flush(self) -> None:
        while True:
            if self.lost and len(self.buf) < OUT_LIMIT // 2:
                self.buf += b'{"lost":%d}\n' % self.lost
                self.lost = 0
            if not self.buf:
                break
            try:
                n = os.write(self.fd, self.buf[:1 << 16])
            except BlockingIOError:
                break
            except BrokenPipeError:         # the parent is gone; stdin EOF ends us soon
                self.buf.clear()
                self.lost = 0
                return
            del self.buf[:n]
        want = bool(self.buf)
        if want != self.writing:
            (self.loop.add_writer(self.fd, self._flush) if want
             else self.loop.remove_writer(self.fd))
            self.writing = want


class _Worker:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.out = _Out(self.loop, sys.stdout.fileno())
        self.monitors: dict[int, Monitor] = {}
        self.tasks: dict[int, asyncio.Task] = {}
        self.inbuf = bytearray()
        self.done = self.loop.create_future()
        os.set_blocking(0, False)
        self.loop.add_reader(0, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(0, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(0)
            if not self.done.done():
                self.done.set_result(None)
            return
        self.inbuf += data
        *lines, rest = self.inbuf.split(b"\n")
        self.inbuf = bytearray(rest)
        for line in lines:
            if line.strip():
                try:
                    self._command(json.loads(line))
                except Exception as e:      # a bad command costs that command only
                    print(f"fastlvs health worker: bad command: {type(e).__name__}: {e}",
                          file=sys.stderr, flush=True)
        self.out.send({"rd": len(data)})

    def _command(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "add":
            now = self.loop.time()
            for pid, d in msg["probes"]:
                if pid not in self.tasks:
                    mon = self.monitors[pid] = Monitor(CheckSpec.from_json(d), now)
                    self.tasks[pid] = self.loop.create_task(self._run(pid, mon))
        elif op == "del":
            for pid in msg["ids"]:
                task = self.tasks.pop(pid, None)
                self.monitors.pop(pid, None)
                if task is not None:
                    task.cancel()
        elif op == "status":
            rows = [[pid, m.up, m.last_ok, m.last_reason, m.last_time, m.failures]
                    for pid, m in self.monitors.items()]
            self.out.send({"status": msg["id"], "probes": rows})

    async def _run(self, pid: int, mon: Monitor) -> None:
        from fastlvs.health.checkers import probe
        loop = self.loop
        while True:
            await asyncio.sleep(max(0.0, mon.due - loop.time()))
            started = loop.time()
            res = await probe(mon.spec)
            ev = mon.result(res, started, loop.time(), time.time())
            if ev is not None:
                self.out.send({"e": [pid, ev.up, ev.reason, ev.weight, ev.at]}, droppable=True)

    async def serve(self) -> None:
        await self.done
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def main() -> None:
    try:
        os.nice(NICE)
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # the daemon's ^C is the daemon's
    if sys.version_info < (3, 12):
        # 3.11's default child watcher spends a thread per MISC_CHECK run; pidfd does not
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.PidfdChildWatcher())

    async def run():
        await _Worker().serve()
    asyncio.run(run())


# -- the parent-side handle ----------------------------------------------------------------------

class HealthWorker:
    """The daemon's handle on the checker process. Non-blocking everywhere except status(),
    which waits at most its timeout. fileno() stays the same number across restart()."""

    def __init__(self, python: str = sys.executable, cpus=None):
        self.python = python
        # the CPUs the process may use (None: as the parent): the daemon keeps it off the
        # CPU it pinned itself to with --cpu, which a child would otherwise inherit
        self.cpus = set(cpus) if cpus else None
        self._ids: dict[CheckSpec, int] = {}       # the specs the worker should run
        self._specs: dict[int, CheckSpec] = {}
        self._next_id = 1
        self._status_seq = 0
        self._events: collections.deque = collections.deque()
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._rfd = self._wfd = -1
        self.proc: subprocess.Popen | None = None
        self._closed = False
        self._spawn()

    # process ---------------------------------------------------------------------------------

    def _spawn(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])     # this fastlvs, whatever the cwd
        env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") \
            else src
        try:
            self.proc = subprocess.Popen([self.python, "-m", "fastlvs.health.worker"],
                                         stdin=to_child_r, stdout=from_child_w, env=env,
                                         close_fds=True)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        if self.cpus:
            try:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            except OSError:         # it died already; the pipes will say so
                pass
        if self._rfd < 0:
            self._rfd, self._wfd = from_child_r, to_child_w
        else:       # keep the numbers the daemon polls
            os.dup2(from_child_r, self._rfd)
            os.dup2(to_child_w, self._wfd)
            os.close(from_child_r)
            os.close(to_child_w)
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._rbuf.clear()
        self._wbuf.clear()
        self.dead = False
        if self._ids:
            self._send({"op": "add", "probes": [[i, s.to_json()] for s, i in self._ids.items()]})

    def restart(self) -> None:
        """A new checker process with the current set of probes (their state starts anew:
        each reports its first verdict again). Also fine while the old one still runs."""
        if self._closed:
            raise RuntimeError("HealthWorker is closed")
        self._stop_process()
        self._spawn()

    def _died(self, why: str) -> None:
        if self.dead:
            return
        self.dead = True
        rc = None
        if self.proc is not None:
            try:        # EOF came because it is exiting: a moment to learn how
                rc = self.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        code = (f"killed by signal {-rc}" if rc is not None and rc < 0
                else f"exit status {rc}" if rc is not None else why)
        self._events.append(Event(None, False, f"checker process died ({code}); "
                                  "restart() starts a new one", None, time.time()))

    @property
    def alive(self) -> bool:
        return not self.dead and not self._closed

    # wire ------------------------------------------------------------------------------------

    def _send(self, msg: dict) -> None:
        self._wbuf += json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        while self._wbuf and not self.dead:
            try:
                n = os.write(self._wfd, self._wbuf[:1 << 16])
            except BlockingIOError:
                return          # the worker says {"rd"} when it has read: we go on then
            except BrokenPipeError:
                self._died("its input pipe closed")
                return
            del self._wbuf[:n]

    def _read(self) -> list[dict]:
        msgs = []
        while not self.dead:
            try:
                data = os.read(self._rfd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                self._died("its output pipe closed")
                break
            self._rbuf += data
        *lines, rest = self._rbuf.split(b"\n")
        self._rbuf = bytearray(rest)
        for line in lines:
            if line:
                msgs.append(json.loads(line))
        return msgs

    def _pump(self, want_status: int | None = None):
        """Flush, read, queue events; the status rows of reply `want_status` if it came."""
        self._flush()
        got = None
        for m in self._read():
            if "e" in m:
                pid, up, reason, weight, at = m["e"]
                spec = self._specs.get(pid)
                if spec is not None and spec in self._ids:     # not one set_probes removed
                    self._events.append(Event(spec, up, reason, weight, at))
            elif "status" in m and m["status"] == want_status:
                got = m["probes"]
            elif "lost" in m:
                self._events.append(Event(None, False, f"{m['lost']} checker events lost "
                                          "(output not read in time); status() has the "
                                          "current states", None, time.time()))
        self._flush()        # an {"rd"} may have made room
        return got

    # the API ---------------------------------------------------------------------------------

    def set_probes(self, specs) -> None:
        """Run exactly these CheckSpecs (duplicates are one probe). A spec already running
        keeps its state and timer, a new one starts (warmup, alpha), a gone one stops."""
        if self._closed:
            raise RuntimeError("HealthWorker is closed")
        want = set(specs)
        gone = [s for s in self._ids if s not in want]
        new = [s for s in want if s not in self._ids]
        if gone:
            ids = [self._ids.pop(s) for s in gone]
            for i in ids:
                del self._specs[i]
            self._send({"op": "del", "ids": ids})
        if new:
            rows = []
            for s in new:
                i = self._ids[s] = self._next_id
                self._specs[i] = s
                self._next_id += 1
                rows.append([i, s.to_json()])
            self._send({"op": "add", "probes": rows})

    def fileno(self) -> int:
        """Readable when the worker has said something: call events()."""
        return self._rfd

    def events(self) -> list[Event]:
        """Every event that arrived, oldest first; never blocks. An Event with spec None is
        about the checker process (died: see restart(); events lost)."""
        if not self._closed:
            self._pump()
        out = list(self._events)
        self._events.clear()
        return out

    def status(self, timeout: float = 1.0) -> list[ProbeStatus]:
        """Each probe's state, asked of the worker; waits at most `timeout` seconds, then
        raises TimeoutError (RuntimeError if the process is dead or closed)."""
        if self._closed or self.dead:
            raise RuntimeError("checker process is not running")
        self._status_seq += 1
        seq = self._status_seq
        self._send({"op": "status", "id": seq})
        deadline = time.monotonic() + timeout
        while True:
            rows = self._pump(seq)
            if rows is not None:
                break
            if self.dead:
                raise RuntimeError("checker process died")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"checker process did not answer in {timeout:g}s")
            p = select.poll()
            p.register(self._rfd, select.POLLIN)
            if self._wbuf:
                p.register(self._wfd, select.POLLOUT)
            p.poll(left * 1000)
        out = []
        for pid, up, last_ok, reason, last_time, failures in rows:
            spec = self._specs.get(pid)
            if spec is not None:
                out.append(ProbeStatus(spec, up, last_ok, reason, last_time, failures))
        return out

    def _stop_process(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            # closing its stdin is the stop signal; /dev/null keeps our fd number
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._wfd)
            os.close(null)
            try:
                proc.wait(timeout=CLOSE_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop the process (stdin closed, then SIGKILL after 2 s) and reap it; safe twice."""
        if self._closed:
            return
        self._closed = True
        self._stop_process()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._rfd = self._wfd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


if __name__ == "__main__":
    main()
