"""Helpers of the end-to-end tests (their own module: conftest names clash across test
folders): the no-leftovers check of a stopped daemon, nft counters in the client namespace,
and keep-alive connections that ask every 100 ms from a thread.
"""
from __future__ import annotations

import json
import os
import threading
import time

from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import Testbed, run

HERE = os.path.dirname(os.path.abspath(__file__))
DECAP_SRC = os.path.join(HERE, "bpf", "decap.bpf.c")
BACKENDS = ["xdp", "packet"]


def make_bed(mode: str) -> Testbed:
    """A cluster of three real servers for `mode`, built (TUN servers get the decapsulator)."""
    return Testbed(mode, n_rs=3, decap_src=DECAP_SRC).build()


def assert_clean(tb: Testbed, d) -> None:
    """What a stopped daemon must not leave: XDP programs, its nft table, its socket."""
    assert tb.xdp_attached() == [], run("ip", "-n", tb.director, "-d", "link").stdout
    assert "fastlvs" not in tb.nft_tables(), tb.nft_tables()
    assert not os.path.exists(d.socket_path), d.socket_path


class ClientCounters:
    """nft counters in the client namespace: packets/bytes (IP length, as IPVS counts) the
    client sent to VIP:port and received from it, per protocol."""

    TABLE = "flcount"

    def __init__(self, tb: Testbed):
        self.tb = tb
        vip = tb.vip
        rules = f"""
table ip {self.TABLE} {{
  chain out {{ type filter hook output priority 0; policy accept;
    ip daddr {vip} tcp dport {tbmod.HTTP_PORT} counter comment "tcp_out"
    ip daddr {vip} udp dport {tbmod.UDP_PORT} counter comment "udp_out"
  }}
  chain in {{ type filter hook input priority 0; policy accept;
    ip saddr {vip} tcp sport {tbmod.HTTP_PORT} counter comment "tcp_in"
    ip saddr {vip} udp sport {tbmod.UDP_PORT} counter comment "udp_in"
  }}
}}
"""
        run("ip", "netns", "exec", tb.client, "nft", "-f", "-", input=rules)

    def read(self) -> dict:
        out = run("ip", "netns", "exec", self.tb.client, "nft", "-j", "list", "table", "ip",
                  self.TABLE).stdout
        got = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule:
                continue
            for e in rule["expr"]:
                if "counter" in e:
                    got[rule["comment"]] = (e["counter"]["packets"], e["counter"]["bytes"])
        return got

    def close(self):
        run("ip", "netns", "exec", self.tb.client, "nft", "delete", "table", "ip", self.TABLE,
            check=False)


class LongLived:
    """Keep-alive HTTP connections that each send a request every `period` seconds from a
    thread, recording the server names they were answered with and any error. Bounded: the
    thread ends after `max_seconds` whatever happens."""

    def __init__(self, tb: Testbed, n: int, period=0.1, max_seconds=30.0):
        self.conns = [tb.keepalive(timeout=2.0) for _ in range(n)]
        self.answers: list[list[str]] = [[] for _ in range(n)]
        self.errors: list[str] = []
        self.period = period
        self.max_seconds = max_seconds
        self._stop = threading.Event()
        for i, c in enumerate(self.conns):       # who serves each, before anything changes
            self.answers[i].append(c.ask())
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            for i, c in enumerate(self.conns):
                if c is None:
                    continue
                try:
                    self.answers[i].append(c.ask())
                except Exception as e:           # recorded; the test fails on it
                    self.errors.append(f"conn {i} ({self.answers[i][:1]}): {e!r}")
                    self.conns[i] = None
            self._stop.wait(self.period)

    @property
    def servers(self) -> list[str]:
        return [a[0] for a in self.answers]

    def rounds(self) -> int:
        return min(len(a) for a in self.answers)

    def wait_rounds(self, n: int, timeout=5.0):
        """Block until every connection answered n more times (or timeout)."""
        target = self.rounds() + n
        deadline = time.monotonic() + timeout
        while self.rounds() < target and not self.errors and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            if c is not None:
                c.close()

    def check(self, min_answers: int):
        """Every connection answered at least min_answers times, always by the same server."""
        assert not self.errors, self.errors
        for i, a in enumerate(self.answers):
            assert len(a) >= min_answers, (i, len(a))
            assert set(a) == {a[0]}, (i, a)
