"""Load for the failover tests and benchmarks: long-lived TCP connections that each send a
numbered message every interval and expect its echo, plus a stream of new short connections
at a given rate, from one process (selectors, every loop bounded in count and time), ending
with a JSON summary of what was lost and when; and the echo server the real servers run.

Client (inside the client's namespace; stops after --duration, or earlier on SIGTERM/SIGINT):

    python -m fastlvs.lab.load --target VIP:PORT [--long N] [--interval 0.05] [--rate R]
        [--duration S] [--echo-timeout S] [--attempt-timeout S] [--open-timeout S]
        [--source ADDR]

  It opens the N long-lived connections first and writes one line "ready N" (N opened) to
  stderr, then sends and starts new connections. On stop it sends nothing more and waits
  (at most --echo-timeout) for the echoes still due, then prints the summary on stdout:
    long: opened, open_failed, lost, lost_by_reason {reset, timeout, wrong_echo, closed,
          error}, lost_detail (first 50), messages_sent, echoes, max_stall_ms (the longest
          a connection waited for an echo);
    new:  attempts, ok, failed, failed_by_reason {refused, reset, timeout, wrong_echo,
          closed, unreachable, error}, skipped (the in-flight bound was reached);
    outage: first_failure_ms, last_failure_ms (from the start of the run, by the time the
          attempt was started), window_ms (first to last failure), longest_gap_ms (the
          longest time between two successful attempts' starts, the run's first and last
          attempts standing in for a success at the edges);
    start_unix (wall clock at the start, to set events against), duration_s.

Server (inside each real server's namespace; until SIGTERM):

    python -m fastlvs.lab.load --serve [--port 7] [--bind ADDR ...]

  Echoes every byte it receives. A connection whose first byte is "N" (a new short
  connection) is closed by the server once its first line is echoed, so that TIME_WAIT stays
  on the servers and a long run does not use up the client's ports. Writes "serving".

Messages are 18 bytes: "L<conn:5>:<seq:10>\\n" for long-lived connections and
"N<attempt:16>\\n" for short ones.
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import selectors
import signal
import socket
import subprocess
import sys
import time

PORT = 7                     # the echo service's port
MSG_LEN = 18
MAX_DETAIL = 50              # lost connections listed one by one in the summary
OPEN_BATCH = 128             # long-lived connections being opened at once
MAX_INFLIGHT = 4096          # new connections in flight at once; above, attempts are skipped
LONG_REASONS = ("reset", "timeout", "wrong_echo", "closed", "error")
NEW_REASONS = ("refused", "reset", "timeout", "wrong_echo", "closed", "unreachable", "error")


def long_msg(conn: int, seq: int) -> bytes:
    return b"L%05d:%010d\n" % (conn % 100000, seq % 10 ** 10)


def new_msg(k: int) -> bytes:
    return b"N%016d\n" % (k % 10 ** 16)


def reason_of(err: int) -> str:
    """The summary's word for a socket error number."""
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "reset"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err == errno.ETIMEDOUT:
        return "timeout"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


# -- the summary (pure, unit-tested) ----------------------------------------------------------
def outage(attempts: list[tuple[float, bool]]) -> dict:
    """attempts: (start time in seconds from the run's start, succeeded) for every new
    connection. Failure times are the failed attempts' starts; the longest gap is measured
    between successful starts, with the first and last attempts as edges (a run that ends
    failing has its gap run to its last attempt)."""
    if not attempts:
        return {"first_failure_ms": None, "last_failure_ms": None, "window_ms": 0.0,
                "longest_gap_ms": None}
    starts = sorted(attempts)
    fails = [t for t, ok in starts if not ok]
    marks = [starts[0][0]] + [t for t, ok in starts if ok] + [starts[-1][0]]
    gap = max(b - a for a, b in zip(marks, marks[1:]))
    return {"first_failure_ms": _ms(fails[0]) if fails else None,
            "last_failure_ms": _ms(fails[-1]) if fails else None,
            "window_ms": _ms(fails[-1] - fails[0]) if fails else 0.0,
            "longest_gap_ms": _ms(gap)}


def summarize(long_records: list[dict], attempts: list[tuple[float, bool, str]],
              skipped: int, start_unix: float, duration: float) -> dict:
    """The run's JSON summary. long_records: one dict per long-lived connection with keys
    opened (bool), lost (None or a reason of LONG_REASONS), lost_at (s from the start),
    sent, echoes, max_stall (s). attempts: (start s, ok, reason or "") per new connection."""
    lost = [r for r in long_records if r["opened"] and r["lost"]]
    by_reason = {k: 0 for k in LONG_REASONS}
    for r in lost:
        by_reason[r["lost"]] += 1
    failed = {k: 0 for k in NEW_REASONS}
    for _, ok, why in attempts:
        if not ok:
            failed[why] += 1
    detail = sorted(lost, key=lambda r: (r["lost_at"], r["conn"]))[:MAX_DETAIL]
    return {
        "long": {
            "opened": sum(1 for r in long_records if r["opened"]),
            "open_failed": sum(1 for r in long_records if not r["opened"]),
            "lost": len(lost),
            "lost_by_reason": by_reason,
            "lost_detail": [{"conn": r["conn"], "reason": r["lost"], "at_ms": _ms(r["lost_at"]),
                             "echoes": r["echoes"]} for r in detail],
            "messages_sent": sum(r["sent"] for r in long_records),
            "echoes": sum(r["echoes"] for r in long_records),
            "max_stall_ms": _ms(max((r["max_stall"] for r in long_records), default=0.0)),
        },
        "new": {
            "attempts": len(attempts),
            "ok": sum(1 for _, ok, _ in attempts if ok),
            "failed": sum(1 for _, ok, _ in attempts if not ok),
            "failed_by_reason": failed,
            "skipped": skipped,
        },
        "outage": outage([(t, ok) for t, ok, _ in attempts]),
        "start_unix": round(start_unix, 3),
        "duration_s": round(duration, 3),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


# -- the client ---------------------------------------------------------------------------------
class _Long:
    __slots__ = ("idx", "sock", "state", "seq", "pending", "times", "out", "lost", "lost_at",
                 "sent", "echoes", "max_stall", "opened", "deadline")

    def __init__(self, idx):
        self.idx = idx
        self.sock = None
        self.state = "new"           # new -> connecting -> open -> done
        self.seq = 0
        self.pending = bytearray()   # sent bytes whose echo has not come back yet
        self.times = collections.deque()    # send time of each unanswered message
        self.out = bytearray()       # bytes not yet taken by the socket
        self.lost = None
        self.lost_at = 0.0
        self.sent = self.echoes = 0
        self.max_stall = 0.0
        self.opened = False
        self.deadline = 0.0

    def record(self) -> dict:
        return {"conn": self.idx, "opened": self.opened, "lost": self.lost,
                "lost_at": self.lost_at, "sent": self.sent, "echoes": self.echoes,
                "max_stall": self.max_stall}


class _Attempt:
    __slots__ = ("k", "sock", "start", "deadline", "state", "msg", "got")

    def __init__(self, k, start, deadline):
        self.k = k
        self.sock = None
        self.start = start
        self.deadline = deadline
        self.state = "connecting"    # connecting -> sent -> done
        self.msg = new_msg(k)
        self.got = bytearray()


class Client:
    """One run of the load (see the module's docstring); run() returns the summary."""

    def __init__(self, target: tuple[str, int], n_long: int = 0, interval: float = 0.05,
                 rate: float = 0.0, duration: float = 30.0, echo_timeout: float = 10.0,
                 attempt_timeout: float = 1.0, open_timeout: float = 5.0,
                 source: str | None = None, err=None):
        self.target = target
        self.interval = interval
        self.rate = rate
        self.duration = duration
        self.echo_timeout = echo_timeout
        self.attempt_timeout = attempt_timeout
        self.open_timeout = open_timeout
        self.source = source
        self.err = err if err is not None else sys.stderr
        self.longs = [_Long(i) for i in range(n_long)]
        self.attempts: list[tuple[float, bool, str]] = []
        self.skipped = 0
        self.inflight: dict[int, _Attempt] = {}
        self.inflight_order: collections.deque = collections.deque()
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.t0 = time.monotonic()

    def stop(self, *_):
        self.stopping = True

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.source:
            s.bind((self.source, 0))
        return s

    def _connect(self, s) -> int:
        return s.connect_ex(self.target)

    # long-lived connections
    def _lose(self, c: _Long, reason: str) -> None:
        if c.state == "done":
            return
        if c.state == "open":
            c.lost = reason
            c.lost_at = self.now()
        c.state = "done"
        self._close(c.sock)

    def _close(self, s) -> None:
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def _open_long(self, deadline_open: float) -> None:
        """Open every long-lived connection, OPEN_BATCH at a time, until open_timeout."""
        todo = collections.deque(self.longs)
        connecting = 0
        while (todo or connecting) and time.monotonic() < deadline_open and not self.stopping:
            while todo and connecting < OPEN_BATCH:
                c = todo.popleft()
                c.sock = self._socket()
                rc = self._connect(c.sock)
                if rc not in (0, errno.EINPROGRESS):
                    c.state = "done"
                    c.sock.close()
                    continue
                c.state = "connecting"
                self.sel.register(c.sock, selectors.EVENT_WRITE, c)
                connecting += 1
            for key, _ in self.sel.select(0.05):
                c = key.data
                self.sel.unregister(c.sock)
                connecting -= 1
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    c.state = "done"
                    c.sock.close()
                    continue
                c.state = "open"
                c.opened = True
                self.sel.register(c.sock, selectors.EVENT_READ, c)
        for c in self.longs:             # what did not open in time
            if c.state in ("new", "connecting"):
                if c.sock is not None:
                    self._close(c.sock)
                c.state = "done"

    def _send_long(self, c: _Long, t: float) -> None:
        if c.times and t - c.times[0] > self.echo_timeout:
            self._lose(c, "timeout")
            return
        msg = long_msg(c.idx, c.seq)
        c.seq += 1
        c.sent += 1
        c.pending += msg
        c.times.append(t)
        c.out += msg
        self._flush_long(c)

    def _flush_long(self, c: _Long) -> None:
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._lose(c, reason_of(e.errno) if reason_of(e.errno) in LONG_REASONS else "error")
            return
        del c.out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.out else 0)
        if self.sel.get_key(c.sock).events != want:
            self.sel.modify(c.sock, want, c)

    def _read_long(self, c: _Long, t: float) -> None:
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            r = reason_of(e.errno)
            self._lose(c, r if r in LONG_REASONS else "error")
            return
        if not data:
            self._lose(c, "closed")
            return
        if bytes(c.pending[:len(data)]) != data:
            self._lose(c, "wrong_echo")
            return
        del c.pending[:len(data)]
        done = len(c.times) - (len(c.pending) + MSG_LEN - 1) // MSG_LEN
        for _ in range(done):
            c.max_stall = max(c.max_stall, t - c.times.popleft())
            c.echoes += 1

    # new connections
    def _start_attempt(self, k: int, t: float) -> None:
        if len(self.inflight) >= MAX_INFLIGHT:
            self.skipped += 1
            return
        a = _Attempt(k, t, t + self.attempt_timeout)
        try:
            a.sock = self._socket()
        except OSError as e:
            self._finish(a, False, reason_of(e.errno))
            return
        rc = self._connect(a.sock)
        if rc not in (0, errno.EINPROGRESS):
            self._finish(a, False, reason_of(rc))
            return
        self.inflight[a.sock.fileno()] = a
        self.inflight_order.append(a)
        self.sel.register(a.sock, selectors.EVENT_WRITE, a)

    def _finish(self, a: _Attempt, ok: bool, why: str = "") -> None:
        if a.state == "done":
            return
        a.state = "done"
        self.attempts.append((a.start, ok, why))
        if a.sock is not None:
            self.inflight.pop(a.sock.fileno(), None)
            self._close(a.sock)

    def _attempt_event(self, a: _Attempt) -> None:
        s = a.sock
        if a.state == "connecting":
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._finish(a, False, reason_of(err))
                return
            try:
                s.send(a.msg)            # 18 bytes into an empty send buffer: all taken
            except OSError as e:
                self._finish(a, False, reason_of(e.errno))
                return
            a.state = "sent"
            self.sel.modify(s, selectors.EVENT_READ, a)
            return
        try:
            data = s.recv(256)
        except BlockingIOError:
            return
        except OSError as e:
            self._finish(a, False, reason_of(e.errno))
            return
        if not data:
            self._finish(a, False, "closed")
            return
        a.got += data
        if bytes(a.got) != a.msg[:len(a.got)]:
            self._finish(a, False, "wrong_echo")
        elif len(a.got) == MSG_LEN:
            self._finish(a, True)

    def _expire_attempts(self, mono: float) -> None:
        q = self.inflight_order
        for _ in range(len(q)):          # started in order, so deadlines come in order
            a = q[0]
            if a.state == "done":
                q.popleft()
                continue
            if a.deadline > mono - self.t0:        # deadlines count from the run's start
                break
            q.popleft()
            self._finish(a, False, "timeout")

    def run(self) -> dict:
        start_unix = time.time()
        self.t0 = time.monotonic()
        self._open_long(self.t0 + self.open_timeout)
        opened = [c for c in self.longs if c.opened]
        print(f"ready {len(opened)}", file=self.err, flush=True)
        t_run = time.monotonic()
        end = t_run + self.duration
        # one rotating queue: every connection sends once per interval, spread evenly
        due = collections.deque()
        for i, c in enumerate(opened):
            due.append((t_run + self.interval * i / max(1, len(opened)), c))
        k = 0
        next_new = t_run
        step = 1.0 / self.rate if self.rate > 0 else None
        while not self.stopping:
            mono = time.monotonic()
            if mono >= end:
                break
            t = mono - self.t0
            for _ in range(len(due)):
                when, c = due[0]
                if when > mono:
                    break
                due.popleft()
                if c.state != "open":
                    continue
                self._send_long(c, t)
                # late (this process had no CPU): no burst to catch up; the order holds, as
                # every late connection gets the same next time
                due.append((max(when + self.interval, mono), c))
            if step is not None:
                # catch up at most one second's worth after a stall, never a burst beyond
                for _ in range(int(self.rate) + 1):
                    if next_new > mono:
                        break
                    self._start_attempt(k, t)
                    k += 1
                    next_new += step
            self._expire_attempts(mono)
            wake = min([end, due[0][0] if due else end, next_new if step else end])
            self._poll(max(0.0, min(wake - time.monotonic(), 0.05)))
        self._drain()
        for c in self.longs:
            if c.state == "open":
                c.state = "done"
                self._close(c.sock)
        duration = time.monotonic() - self.t0
        self.sel.close()
        return summarize([c.record() for c in self.longs], self.attempts, self.skipped,
                         start_unix, duration)

    def _poll(self, timeout: float) -> None:
        t = self.now()
        for key, ev in self.sel.select(timeout):
            obj = key.data
            if isinstance(obj, _Long):
                if obj.state != "open":
                    continue
                if ev & selectors.EVENT_READ:
                    self._read_long(obj, t)
                if obj.state == "open" and ev & selectors.EVENT_WRITE:
                    self._flush_long(obj)
            elif obj.state != "done":
                self._attempt_event(obj)

    def _drain(self) -> None:
        """Wait for the echoes still due (each at most echo_timeout after it was sent) and
        the new connections still in flight; what is still missing then is lost."""
        end = time.monotonic() + max(self.echo_timeout, self.attempt_timeout) + 0.5
        while time.monotonic() < end:
            mono = time.monotonic()
            t = mono - self.t0
            waiting = False
            for c in self.longs:
                if c.state == "open" and c.times:
                    if t - c.times[0] > self.echo_timeout:
                        self._lose(c, "timeout")
                    else:
                        waiting = True
            self._expire_attempts(mono)
            if not waiting and not self.inflight:
                return
            self._poll(0.05)
        for c in self.longs:
            if c.state == "open" and c.times:
                self._lose(c, "timeout")
        for a in list(self.inflight.values()):
            self._finish(a, False, "timeout")


# -- the server ---------------------------------------------------------------------------------
def serve(port: int = PORT, binds=("0.0.0.0",), backlog: int = 4096, stop=None,
          ready=None) -> None:
    """Echo server until SIGTERM, or until the event `stop` is set (in-process use, where
    `ready` is set once it listens)."""
    sel = selectors.DefaultSelector()
    for addr in binds:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(backlog)
        ls.setblocking(False)
        sel.register(ls, selectors.EVENT_READ, None)
    # state per connection: [pending output, one-shot?, first line complete?]
    print("serving", flush=True)
    if ready is not None:
        ready.set()
    while stop is None or not stop.is_set():
        for key, ev in sel.select(0.2):
            s = key.fileobj
            if key.data is None:
                for _ in range(64):          # bounded: other sockets get their turn
                    try:
                        cs, _ = s.accept()
                    except (BlockingIOError, ConnectionAbortedError):
                        break
                    cs.setblocking(False)
                    cs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(cs, selectors.EVENT_READ, [bytearray(), None, False])
                continue
            st = key.data
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    sel.unregister(s)
                    s.close()
                    continue
                if data:
                    if st[1] is None:
                        st[1] = data[:1] == b"N"
                    st[0] += data
                    st[2] = st[2] or b"\n" in data
            if st[0]:
                try:
                    n = s.send(st[0])
                except BlockingIOError:
                    n = 0
                except OSError:
                    sel.unregister(s)
                    s.close()
                    continue
                del st[0][:n]
            if st[1] and st[2] and not st[0]:
                sel.unregister(s)
                s.close()                    # the server closes: TIME_WAIT stays here
                continue
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if st[0] else 0)
            if key.events != want:
                sel.modify(s, want, st)
    sel.close()


# -- helpers for tests and benchmarks (run the module in a namespace) ---------------------------
def _ns_cmd(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "fastlvs.lab.load", *args]


def _env() -> dict:
    from fastlvs.lab.testbed import _env as env
    return env()


def start_server(ns: str, port: int = PORT, binds=(), timeout: float = 15.0) -> subprocess.Popen:
    """The echo server in namespace ns, once it said "serving"; stop it with .kill()."""
    args = ["--serve", "--port", str(port)]
    for b in binds:
        args += ["--bind", b]
    p = subprocess.Popen(_ns_cmd(ns, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    line = _readline(p.stdout, timeout)
    if "serving" not in line:
        p.kill()
        p.wait(5)
        raise RuntimeError(f"load echo server in {ns} did not start: {line!r} "
                           f"{p.stderr.read()[-400:]}")
    return p


def _readline(f, timeout: float) -> str:
    import select as _select
    r, _, _ = _select.select([f], [], [], timeout)
    return f.readline() if r else ""


class LoadRun:
    """The client in namespace ns: start() returns once its long-lived connections are open
    ("ready N"), stop() ends it early (SIGTERM) and returns the summary, wait() waits for it
    to end by itself. Both are bounded."""

    def __init__(self, ns: str, target: str, port: int = PORT, **opts):
        self.args = ["--target", f"{target}:{port}"]
        for k, v in opts.items():
            if v is not None:
                self.args += ["--" + k.replace("_", "-"), str(v)]
        self.ns = ns
        self.proc: subprocess.Popen | None = None
        self.opened = 0
        self.err_lines: list[str] = []
        self.duration = float(opts.get("duration") or 30.0)
        self.echo_timeout = float(opts.get("echo_timeout") or 10.0)

    def start(self, timeout: float = 60.0) -> "LoadRun":
        self.proc = subprocess.Popen(_ns_cmd(self.ns, *self.args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_env())
        line = _readline(self.proc.stderr, timeout)
        if not line.startswith("ready "):
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
            raise RuntimeError(f"load client did not become ready: {line!r} {err[-400:]}")
        self.opened = int(line.split()[1])
        return self

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(self.echo_timeout + 10.0)

    def wait(self, timeout: float | None = None) -> dict:
        if timeout is None:
            timeout = self.duration + self.echo_timeout + 10.0
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=5)
            raise RuntimeError("load client did not end in time") from None
        self.err_lines = err.splitlines()
        if self.proc.returncode != 0:
            raise RuntimeError(f"load client exit {self.proc.returncode}: {err[-400:]}")
        return json.loads(out)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


# -- command line -------------------------------------------------------------------------------
def _target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        socket.inet_aton(host)
        p = int(port)
        if not sep or not 0 < p < 65536:
            raise ValueError
    except (OSError, ValueError):
        raise argparse.ArgumentTypeError(f"not an IPv4 ADDR:PORT: {text!r}") from None
    return host, p


def _positive(kind):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            v = -1
        if v < 0:
            raise argparse.ArgumentTypeError(f"not a non-negative number: {text!r}")
        return v
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastlvs.lab.load",
        description="Long-lived echo connections plus a stream of new ones, counting what is "
                    "lost (JSON summary on stdout); or, with --serve, the echo server.")
    p.add_argument("--serve", action="store_true", help="run the echo server (until SIGTERM)")
    p.add_argument("--port", type=int, default=PORT, help="--serve: port (default %(default)s)")
    p.add_argument("--bind", action="append", default=[],
                   help="--serve: address to listen on (repeatable; default 0.0.0.0)")
    p.add_argument("--target", type=_target, help="client: VIP:PORT to connect to")
    p.add_argument("--long", type=_positive(int), default=0,
                   help="long-lived connections (default %(default)s)")
    p.add_argument("--interval", type=_positive(float), default=0.05,
                   help="seconds between two messages of a long-lived connection "
                        "(default %(default)s)")
    p.add_argument("--rate", type=_positive(float), default=0.0,
                   help="new short connections per second (default %(default)s: none)")
    p.add_argument("--duration", type=_positive(float), default=30.0,
                   help="seconds to run after the long-lived connections are open; SIGTERM "
                        "ends sooner (default %(default)s)")
    p.add_argument("--echo-timeout", type=_positive(float), default=10.0,
                   help="a long-lived connection whose oldest message has no echo after this "
                        "many seconds is lost (default %(default)s)")
    p.add_argument("--attempt-timeout", type=_positive(float), default=1.0,
                   help="a new connection not connected and echoed after this many seconds "
                        "failed (default %(default)s)")
    p.add_argument("--open-timeout", type=_positive(float), default=5.0,
                   help="seconds allowed to open the long-lived connections "
                        "(default %(default)s)")
    p.add_argument("--source", help="client: source address to bind")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.serve:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            serve(args.port, args.bind or ["0.0.0.0"])
        except OSError as e:
            print(f"load: --serve: cannot listen on port {args.port}: {e.strerror}",
                  file=sys.stderr)
            return 1
        return 0
    if args.target is None:
        print("load: --target VIP:PORT is needed (or --serve)", file=sys.stderr)
        return 2
    if args.interval <= 0 and args.long:
        print("load: --interval must be above 0", file=sys.stderr)
        return 2
    client = Client(args.target, n_long=args.long, interval=args.interval, rate=args.rate,
                    duration=args.duration, echo_timeout=args.echo_timeout,
                    attempt_timeout=args.attempt_timeout, open_timeout=args.open_timeout,
                    source=args.source)
    signal.signal(signal.SIGTERM, client.stop)
    signal.signal(signal.SIGINT, client.stop)
    try:
        summary = client.run()
    except OSError as e:
        print(f"load: {e.strerror or e}", file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
