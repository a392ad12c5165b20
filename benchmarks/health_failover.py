"""How fast a health check takes a dead real server out and puts it back, with clients
watching (root; network namespaces of fastlvs.lab.testbed): fastlvs started from a
keepalived.conf (TCP_CHECK or HTTP_GET at the stated settings), a paced client of new-connection
HTTP/1.0 GETs to the VIP (rr over three real servers), one real server's process killed
(SIGKILL: its port refuses at once) and later started again, several rounds. Measured: kill ->
the daemon's "down ...; removed" line and the client requests that failed in between;
listening again -> "up ...; added". Requests that fail after the removal are counted apart:
new connections whose client port was last used towards the removed server, whose entry
IPVS (expire_nodest_conn 0, the default) keeps and drops packets for. Beside it,
keepalived 2.2.7's figure for the same settings, computed from its checker rules (not
measured: see expected()). Prints JSON and a table.

    .venv/bin/python -m benchmarks.health_failover [--rounds 5] [--rate 1000]
        [--checks tcp,http] [--modes dr,nat] [--sysctl NAME=VALUE] [--json FILE]
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import itertools
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time

from fastlvs.lab.testbed import CLONE_NEWNET, Daemon, Testbed, sysctl

# The settings under test (keepalived.conf keywords); DELAY_LOOP etc. are also the inputs
# of keepalived's computed figure.
DELAY_LOOP, CONNECT_TIMEOUT, RETRY, DELAY_BEFORE_RETRY = 1, 1, 1, 1
REQUEST_TIMEOUT = 0.5        # a client's patience per request (connect + answer)
KIND = {"dr": "DR", "nat": "NAT"}


def keepalived_conf(tb: Testbed, check: str) -> str:
    body = ("            url {\n                path /\n                status_code 200\n"
            "            }\n") if check == "HTTP_GET" else ""
    servers = "".join(f"""    real_server {rip} 80 {{
        weight 1
        {check} {{
{body}            connect_timeout {CONNECT_TIMEOUT}
            retry {RETRY}
            delay_before_retry {DELAY_BEFORE_RETRY}
        }}
    }}
""" for rip in tb.rips)
    return f"""virtual_server {tb.vip} 80 {{
    delay_loop {DELAY_LOOP}
    lvs_sched rr
    lvs_method {KIND[tb.mode]}
    protocol TCP
{servers}}}
"""


def expected(check: str, rate: float, n_rs: int) -> dict:
    """keepalived 2.2.7's figures, computed from its checker rules for a process that
    refuses connections at once: the next scheduled check comes U(0, delay_loop) after the
    kill, fails, and retry more checks delay_before_retry apart must fail too before the
    server is removed; a down checker is checked every delay_loop (HTTP_GET: every
    max(delay_loop, delay_before_retry)) and one success brings a TCP_CHECK back, while
    HTTP_GET's url walk needs a second good check delay_loop later. The requests lost are
    the dead server's share (rr: 1/n) of the requests sent in the removal window."""
    fixed = RETRY * DELAY_BEFORE_RETRY
    rem = {"median": fixed + DELAY_LOOP / 2, "worst": fixed + DELAY_LOOP}
    if check == "HTTP_GET":
        every = max(DELAY_LOOP, DELAY_BEFORE_RETRY)
        back = {"median": every / 2 + DELAY_LOOP, "worst": every + DELAY_LOOP}
    else:
        back = {"median": DELAY_LOOP / 2, "worst": DELAY_LOOP}
    return {"removal_s": rem, "failed_requests": {k: rate * v / n_rs for k, v in rem.items()},
            "return_s": back, "measured": False}


class TimedDaemon(Daemon):
    """The testbed's daemon, each stderr line kept with the moment it arrived (monotonic):
    the transition log line is written just after the table changed."""

    def __init__(self, tb, args):
        super().__init__(tb, args)
        self.timed: list[tuple[float, str]] = []

    def _read(self):
        for line in self.proc.stderr:
            self.timed.append((time.monotonic(), line.rstrip("\n")))
            self.lines.append(line.rstrip("\n"))
            if "ready" in line:
                self._ready.set()

    def wait_line(self, after: float, *words: str, timeout: float = 30.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.timed):
                if t >= after and all(w in line for w in words):
                    return t, line
            time.sleep(0.002)
        raise RuntimeError(f"no line with {words} within {timeout}s: "
                           + " | ".join(self.lines[-5:]))


def start_daemon(tb: Testbed, *args) -> TimedDaemon:
    cmd = ["--mode", tb.mode, "-i", tb.lan_if, *(["--rs-interface", tb.rs_if] if tb.rs_if else []),
           "--backend", "xdp", *args]
    d = TimedDaemon(tb, cmd)
    tb.daemons.append(d)
    d.start(timeout=30)
    return d


class Client:
    """`rate` HTTP/1.0 GETs per second, each over a new TCP connection to the VIP, from
    `threads` threads living in the client namespace; the k-th request is due at t0 + k/rate
    (one that is late goes at once, so the rate holds on average). Every request is kept as
    (start, ok, server name or error)."""

    def __init__(self, tb: Testbed, rate: float, threads: int = 24):
        self.tb, self.rate = tb, rate
        self.log: list[tuple[float, bool, str]] = []
        self.stop = threading.Event()
        self.slots = itertools.count()
        self.lock = threading.Lock()
        self.t0 = time.monotonic() + 0.2
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        fd = os.open(f"/run/netns/{self.tb.client}", os.O_RDONLY)
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:  # this thread only
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)
        req = b"GET / HTTP/1.0\r\nHost: fastlvs\r\n\r\n"
        while not self.stop.is_set():
            with self.lock:
                due = self.t0 + next(self.slots) / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            start = time.monotonic()
            s = socket.socket()
            s.settimeout(REQUEST_TIMEOUT)
            try:
                s.connect((self.tb.vip, 80))
                s.sendall(req)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                ok = data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]
                what = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip() \
                    if ok else "bad answer"
            except OSError as e:
                ok, what = False, type(e).__name__
            finally:
                s.close()
            self.log.append((start, ok, what))

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT + 5)

    def between(self, a: float, b: float) -> list[tuple[float, bool, str]]:
        return [r for r in self.log if a <= r[0] < b]


def one_round(tb, d, client, victim, check, settle) -> dict:
    rip = tb.rip_of(victim)
    time.sleep(settle + random.uniform(0, DELAY_LOOP))   # any phase of the checks
    t_kill = time.monotonic()
    tb.stop_server(victim)
    t_rm, _ = d.wait_line(t_kill, f"{check} {rip}:80", "down", "removed")
    listed = d.table()
    gone = all(f"{rip}:80" not in v["dests"] for v in listed.values())
    time.sleep(1.0)                                      # requests after the removal: must pass
    t_start = time.monotonic()
    tb.start_server(victim)
    t_listen = time.monotonic()
    t_back, _ = d.wait_line(t_listen, f"{check} {rip}:80", "up", "added")
    time.sleep(1.0)
    window = client.between(t_kill, t_rm)
    after = client.between(t_rm, t_start)
    return {"victim": victim, "removal_s": t_rm - t_kill, "return_s": t_back - t_listen,
            "restart_s": t_listen - t_start,
            "requests_in_window": len(window),
            "failed_in_window": sum(not ok for _, ok, _ in window),
            "failed_after_removal": sum(not ok for _, ok, _ in after),
            "requests_after_removal": len(after),
            "errors_after_removal": dict(collections.Counter(w for _, ok, w in after if not ok)),
            "removed_from_listing": gone}


def run_case(mode: str, check: str, args) -> dict:
    tb = Testbed(mode, n_rs=3, prefix="flhf").build()
    client = None
    try:
        # The client's ports still come round within seconds (about 8 s at 1,000/s here): a
        # new SYN on an entry of the removed server is dropped (expire_nodest_conn 0, IPVS's
        # default) and times out; counted apart as failed_after_removal.
        sysctl(tb.client, ipv4__ip_local_port_range="1024 65535")
        path = tb.write_rules(keepalived_conf(tb, check), name="keepalived.conf")
        d = start_daemon(tb, "--keepalived-conf", path)
        if args.sysctl:
            d.admin("--sysctl", *args.sysctl)
        time.sleep(2.5 * DELAY_LOOP + 1.0)                # every checker's first verdict in
        client = Client(tb, args.rate)
        time.sleep(2.0)
        rounds = []
        for i in range(args.rounds):
            victim = tb.rs_names[i % len(tb.rs_names)]
            r = one_round(tb, d, client, victim, check, args.settle)
            print(f"health_failover: {mode} {check} round {i + 1}: removed in "
                  f"{r['removal_s']:.2f} s, {r['failed_in_window']} of "
                  f"{r['requests_in_window']} requests failed; back in {r['return_s']:.2f} s",
                  file=sys.stderr, flush=True)
            rounds.append(r)
        t_end = time.monotonic()
        client.close()
        sent = client.between(client.t0, t_end)
        achieved = len(sent) / (t_end - client.t0)
        client = None
        d.stop()
    finally:
        if client is not None:
            client.close()
        tb.destroy()

    def stat(key):
        vals = [r[key] for r in rounds]
        return {"median": statistics.median(vals), "worst": max(vals), "best": min(vals)}

    return {"mode": mode, "check": check, "rounds": rounds, "achieved_rate": achieved,
            "removal_s": stat("removal_s"), "failed_in_window": stat("failed_in_window"),
            "return_s": stat("return_s"),
            "failed_after_removal": sum(r["failed_after_removal"] for r in rounds),
            "keepalived_2_2_7": expected(check, achieved, len(tb.rips))}


def table(results) -> str:
    rows = ["| mode, checker | removal s (median / worst) | requests failed (median / worst) "
            "| back s (median / worst) | failed after removal (all rounds) "
            "| keepalived 2.2.7, computed: removal s, failed, back s |",
            "|---|---:|---:|---:|---:|---|"]
    for r in results:
        k = r["keepalived_2_2_7"]
        rows.append(
            f"| {r['mode'].upper()}, {r['check']} | {r['removal_s']['median']:.2f} / "
            f"{r['removal_s']['worst']:.2f} | {r['failed_in_window']['median']:.0f} / "
            f"{r['failed_in_window']['worst']:.0f} | {r['return_s']['median']:.2f} / "
            f"{r['return_s']['worst']:.2f} | {r['failed_after_removal']} "
            f"| {k['removal_s']['median']:.2f} / "
            f"{k['removal_s']['worst']:.2f}, {k['failed_requests']['median']:.0f} / "
            f"{k['failed_requests']['worst']:.0f}, {k['return_s']['median']:.2f} / "
            f"{k['return_s']['worst']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="kills per case")
    ap.add_argument("--rate", type=float, default=1000.0, help="client requests per second")
    ap.add_argument("--checks", default="tcp,http", help="tcp,http")
    ap.add_argument("--modes", default="dr,nat", help="dr,nat")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between rounds")
    ap.add_argument("--sysctl", action="append", metavar="NAME=VALUE",
                    help="IPVS sysctl set through `fastlvs admin --sysctl` (e.g. "
                         "expire_nodest_conn=1); repeatable")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("health_failover: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    checks = {"tcp": "TCP_CHECK", "http": "HTTP_GET"}
    try:
        cases = [(m, checks[c]) for m in args.modes.split(",") for c in args.checks.split(",")]
    except KeyError as e:
        print(f"health_failover: unknown checker {e} (tcp, http)", file=sys.stderr)
        return 2
    if any(m not in KIND for m, _ in cases):
        print("health_failover: --modes takes dr, nat", file=sys.stderr)
        return 2
    load = os.getloadavg()
    results = [run_case(m, c, args) for m, c in cases]
    out = {"machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                       "loadavg_before": load, "loadavg_after": os.getloadavg()},
           "settings": {"delay_loop": DELAY_LOOP, "connect_timeout": CONNECT_TIMEOUT,
                        "retry": RETRY, "delay_before_retry": DELAY_BEFORE_RETRY,
                        "request_timeout": REQUEST_TIMEOUT, "rate": args.rate,
                        "real_servers": 3, "sched": "rr", "sysctl": args.sysctl or []},
           "results": results}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print()
    print(table(results))
    print(f"\n(load average before/after: {load[0]:.2f} / {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
