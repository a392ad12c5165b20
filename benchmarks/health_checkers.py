"""What the checker process costs: its CPU (user + system, from /proc) while it runs N
checkers at delay_loop 1 against local listeners, next to the same process idle, measured
in one run. The listeners live in this process (a thread accepts and closes), so only the
checks are counted. Forwarding with the checkers running is measured separately (peers).
Run:  .venv/bin/python -m benchmarks.health_checkers [--checkers 1000] [--kind tcp|http]
      [--seconds 20]      (prints one JSON object)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import threading
import time

from fastlvs.health.spec import CheckSpec, Url
from fastlvs.health.worker import HealthWorker

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK          # utime + stime


class Acceptor:
    """n TCP listeners on 127.0.0.1 whose connections are accepted and closed (a full
    accept queue would turn checks into timeouts); `http` answers one HTTP/1.0 200 first."""

    def __init__(self, n: int, http: bool):
        self.http = http
        self.listeners = []
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            s.setblocking(False)
            self.listeners.append(s)
        self.ports = [s.getsockname()[1] for s in self.listeners]
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        poll = select.epoll()
        by_fd = {s.fileno(): s for s in self.listeners}
        for fd in by_fd:
            poll.register(fd, select.EPOLLIN)
        reply = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
        while not self.stop.is_set():
            for fd, _ in poll.poll(0.1):
                try:
                    conn, _ = by_fd[fd].accept()
                except BlockingIOError:
                    continue
                self.accepted += 1
                if self.http:
                    conn.settimeout(1.0)
                    try:
                        conn.recv(4096)
                        conn.sendall(reply)
                    except OSError:
                        pass
                conn.close()
        poll.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for s in self.listeners:
            s.close()


def specs(ports, n, kind):
    out = []
    for i in range(n):
        port = ports[i % len(ports)]
        base = dict(delay_loop=1.0, connect_timeout=3.0 + i // len(ports), retry=1,
                    delay_before_retry=1.0, warmup=1.0)     # warmup spreads the checks
        if kind == "http":
            out.append(CheckSpec("HTTP_GET", "127.0.0.1", port, urls=(Url("/"),), **base))
        else:
            out.append(CheckSpec("TCP_CHECK", "127.0.0.1", port, **base))
    return out


def measure(w: HealthWorker, seconds: float) -> float:
    """CPU seconds per wall second of the worker over `seconds`, events drained meanwhile."""
    c0, t0 = cpu_seconds(w.proc.pid), time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        select.select([w.fileno()], [], [], 0.2)
        w.events()
    return (cpu_seconds(w.proc.pid) - c0) / (time.monotonic() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkers", type=int, default=1000)
    ap.add_argument("--kind", choices=("tcp", "http"), default="tcp")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--listeners", type=int, default=250)
    a = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * a.listeners + 256)),
                                                hard))
    acc = Acceptor(a.listeners, a.kind == "http")
    w = HealthWorker()
    try:
        w.status(timeout=10)                       # started
        idle = measure(w, min(5.0, a.seconds))
        w.set_probes(specs(acc.ports, a.checkers, a.kind))
        end = time.monotonic() + 3.0               # bootstrap + warmup: all running
        while time.monotonic() < end:
            select.select([w.fileno()], [], [], 0.2)
            w.events()
        acc.accepted = 0
        t0 = time.monotonic()
        busy = measure(w, a.seconds)
        checks_per_s = acc.accepted / (time.monotonic() - t0)
        st = w.status(timeout=10)
        down = sum(not s.up for s in st)
    finally:
        w.close()
        acc.close()
    print(json.dumps({
        "kind": a.kind, "checkers": a.checkers, "delay_loop_s": 1.0,
        "checks_per_s": round(checks_per_s, 1),
        "worker_cpu_percent_of_one_core": round(100 * busy, 2),
        "idle_worker_cpu_percent": round(100 * idle, 2),
        "cpu_us_per_check": round(1e6 * (busy - idle) / checks_per_s, 1) if checks_per_s else None,
        "checkers_down_at_end": down, "cores": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
