"""bgp/ without BIRD or root: the include file, BIRD's control-socket protocol against a
stand-in server, which VIPs may be announced (absent, NAT, no available server, sorry
server), the announcer's life (ready, drain, BIRD missing then back), the [bgp] table and
`fastlvs admin --drain` parsing."""
from __future__ import annotations

import io
import logging
import os
import socket
import threading

import pytest

from fastlvs import admin
from fastlvs.bgp import announce, bird
from fastlvs.bgp.announce import Announcer, BgpConfig, servable
from fastlvs.control.config import ConfigError, parse_config
from fastlvs.control.ipvsadm import apply_command, parse_command
from fastlvs.control.model import ServiceTable


def table_of(*commands) -> ServiceTable:
    t = ServiceTable()
    for c in commands:
        apply_command(t, parse_command(c.split()))
    return t


class FakeBird:
    """A Unix socket that answers as BIRD's control socket does: the banner, then per
    request the lines of `reply` (what `configure` answers by default). Records each
    request with the include file's content at that moment."""

    def __init__(self, path, include=None, reply=("0002-Reading configuration from x",
                                                  "0003 Reconfigured")):
        self.path, self.include, self.reply = path, include, list(reply)
        self.seen: list[tuple[str, str | None]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"0001 BIRD 2.0.12 ready.\n")
                req = conn.makefile("rb").readline().decode().strip()
                content = open(self.include).read() if self.include else None
                self.seen.append((req, content))
                conn.sendall("".join(line + "\n" for line in self.reply).encode())

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)


class FakeDirector:
    def __init__(self, table, absent=()):
        self.table, self.absent, self.inpkts = table, set(absent), 0

    def vips(self):
        vips = sorted({s.vaddr for s in self.table})
        return {"served": [v for v in vips if v not in self.absent],
                "absent": [v for v in vips if v in self.absent]}

    def totals(self):
        return {"inpkts": self.inpkts}

    def pull_counters(self):
        pass


def test_include_text_orders_vips_and_routes_via_the_beacon():
    text = bird.include_text({"10.0.0.20", "10.0.0.3"}, "fastlvs-bgp")
    routes = [line for line in text.splitlines() if not line.startswith("#")]
    assert routes == ['route 10.0.0.3/32 via "fastlvs-bgp";',
                      'route 10.0.0.20/32 via "fastlvs-bgp";']
    assert [ln for ln in bird.include_text(["10.0.0.3"]).splitlines()
            if not ln.startswith("#")] == ["route 10.0.0.3/32 blackhole;"]
    with pytest.raises(ValueError):
        bird.include_text(["not-an-address"])


def test_write_include_says_whether_it_changed(tmp_path):
    path = str(tmp_path / "sub" / "vips.conf")
    assert bird.write_include(path, ["10.0.0.1"]) is True
    assert bird.write_include(path, ["10.0.0.1"]) is False
    assert bird.write_include(path, []) is True
    assert "route" not in open(path).read()
    assert [f for f in os.listdir(tmp_path / "sub")] == ["vips.conf"]   # no temp file left


def test_read_reply_continuations_and_end():
    a, b = socket.socketpair()
    a.sendall(b"1007-Table master4:\n 10.0.0.1/32 unicast\n0000 \n")
    buf = bytearray()
    assert bird.read_reply(b, buf) == [(1007, "Table master4:"), (1007, "10.0.0.1/32 unicast"),
                                       (0, "")]
    a.sendall(b"garbage\n")
    with pytest.raises(bird.BirdError, match="answered 'garbage'"):
        bird.read_reply(b, buf)
    a.close()
    with pytest.raises(bird.BirdError, match="closed"):
        bird.read_reply(b, buf)
    b.close()


def test_configure_success_refusal_and_no_bird(tmp_path):
    path = str(tmp_path / "bird.ctl")
    fake = FakeBird(path)
    try:
        assert bird.configure(path) == "Reconfigured"
        fake.reply = ["8002 /etc/bird/bird.conf:12:3 syntax error"]
        with pytest.raises(bird.BirdError) as e:
            bird.configure(path)
        assert str(e.value) == "BIRD refused `configure`: /etc/bird/bird.conf:12:3 syntax error"
        assert [r for r, _ in fake.seen] == ["configure", "configure"]
    finally:
        fake.close()
    with pytest.raises(bird.BirdError) as e:
        bird.configure(str(tmp_path / "absent.ctl"))
    assert "no such file (is bird running?)" in str(e.value)
    assert "\n" not in str(e.value)


def test_servable_reasons():
    t = table_of("-A -t 10.0.0.1:80 -s mh", "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g",
                 "-A -t 10.0.0.2:80 -s mh", "-a -t 10.0.0.2:80 -r 10.1.0.1:80 -g -w 0",
                 "-A -t 10.0.0.3:80 -s rr", "-a -t 10.0.0.3:80 -r 10.1.0.1:80 -m",
                 "-A -t 10.0.0.4:80 -s rr",
                 # one available port is enough: the /32 carries every port
                 "-A -t 10.0.0.5:80 -s rr", "-A -t 10.0.0.5:443 -s rr",
                 "-a -t 10.0.0.5:443 -r 10.1.0.2:443 -i",
                 "-A -t 10.0.0.6:80 -s rr", "-a -t 10.0.0.6:80 -r 10.1.0.1:80 -g")
    got = servable(t, absent={"10.0.0.6"})
    assert got == {"10.0.0.1": None, "10.0.0.2": "no available real server",
                   "10.0.0.3": announce.NAT_REASON, "10.0.0.4": "no available real server",
                   "10.0.0.5": None, "10.0.0.6": "not on this host"}


def _announcer(tmp_path, **kw):
    cfg = BgpConfig(include=str(tmp_path / "vips.conf"), socket=str(tmp_path / "bird.ctl"),
                    device="", **kw)
    return Announcer(cfg)


def _routes(path):
    return [ln.split()[1] for ln in open(path).read().splitlines() if ln.startswith("route")]


def test_announcer_ready_health_drain_undrain_and_stop(tmp_path):
    t = table_of("-A -t 10.0.0.1:80 -s mh", "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g",
                 "-A -t 10.0.0.2:80 -s mh", "-a -t 10.0.0.2:80 -r 10.1.0.2:80 -g")
    d = FakeDirector(t)
    a = _announcer(tmp_path)
    fake = FakeBird(a.cfg.socket, a.cfg.include)
    try:
        a.update(d, 0.0, force=True)                  # not ready: nothing, even if servable
        assert _routes(a.cfg.include) == [] and a.announced == set()
        a.start(d)
        assert _routes(a.cfg.include) == ["10.0.0.1/32", "10.0.0.2/32"]
        assert fake.seen[-1][0] == "configure" and "10.0.0.2/32" in fake.seen[-1][1]
        # health checks took the last server of 10.0.0.2 out
        t.get(next(s.key for s in t if s.vaddr == "10.0.0.2")).dests[0].weight = 0
        told = len(fake.seen)
        a.update(d, 1.0)
        assert _routes(a.cfg.include) == ["10.0.0.1/32"]
        assert len(fake.seen) == told + 1
        a.update(d, 2.0)                              # nothing changed: BIRD is not bothered
        assert len(fake.seen) == told + 1
        assert a.status()["withheld"] == {"10.0.0.2": "no available real server"}
        d.inpkts = 5
        for s in t:
            for x in s.dests:
                x.activeconns = 3
        a.drain(d, 3.0, timeout=100)
        assert _routes(a.cfg.include) == [] and a.draining and not a.drained
        d.inpkts = 6                                  # still traffic
        a.update(d, 3.6)
        assert not a.drained
        a.update(d, 6.0)                              # nothing new arrived for 2 s
        assert a.drained and "nothing arrived" in a.status()["drain_reason"]
        a.undrain(d, 7.0)
        assert _routes(a.cfg.include) == ["10.0.0.1/32"]
        a.withdraw_all()
        assert _routes(a.cfg.include) == [] and "10.0.0.1/32" not in fake.seen[-1][1]
    finally:
        fake.close()


def test_drain_ends_on_timeout_or_when_no_connection_is_left(tmp_path):
    t = table_of("-A -t 10.0.0.1:80 -s mh", "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g")
    d = FakeDirector(t)
    a = _announcer(tmp_path)
    a.start(d)
    t.get(next(iter(t)).key).dests[0].activeconns = 1
    a.drain(d, 10.0, timeout=1)
    for i, now in enumerate((10.6, 11.2)):
        d.inpkts += 1                                 # traffic keeps arriving
        a.update(d, now)
    assert a.drained and a.drain_reason.startswith("drain timeout (1 active")
    a.drain(d, 20.0, timeout=100)
    t.get(next(iter(t)).key).dests[0].activeconns = 0
    a.update(d, 20.6)
    assert a.drained and a.drain_reason == "no active connection left"


def test_bird_missing_is_one_line_and_retried(tmp_path, caplog):
    t = table_of("-A -t 10.0.0.1:80 -s mh", "-a -t 10.0.0.1:80 -r 10.1.0.1:80 -g")
    d = FakeDirector(t)
    a = _announcer(tmp_path)
    with caplog.at_level(logging.INFO, logger="fastlvs"):
        a.start(d)
        a.update(d, 1.0)
        a.update(d, announce.RETRY + 1)              # retried, same error: not logged again
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "no such file (is bird running?)" in errors[0]
    assert a.status()["bird_error"] and _routes(a.cfg.include) == ["10.0.0.1/32"]
    fake = FakeBird(a.cfg.socket, a.cfg.include)
    try:
        a.update(d, 2 * announce.RETRY + 2)
        assert a.status()["bird_error"] is None
        assert fake.seen and "10.0.0.1/32" in fake.seen[-1][1]
    finally:
        fake.close()


def test_bgp_table_in_the_config():
    base = '[[service]]\nvip = "10.0.0.1:80"\n[[service.dest]]\naddress = "10.1.0.1"\n'
    cfg = parse_config(base + '[bgp]\ninclude = "/run/x.conf"\ndrain_timeout = 5\n')
    assert cfg.bgp.include == "/run/x.conf" and cfg.bgp.drain_timeout == 5.0
    assert cfg.bgp.socket == bird.DEFAULT_SOCKET and cfg.bgp.sloppy_tcp is True
    assert parse_config(base).bgp is None
    for bad, what in (('[bgp]\nsocket = "/x"\n', "bgp.include: missing"),
                      ('[bgp]\ninclude = "/x"\ndrain_timeout = -1\n', "bgp.drain_timeout"),
                      ('[bgp]\ninclude = "/x"\nholdtime = 3\n', "bgp.holdtime: unknown key"),
                      ('[bgp]\ninclude = "/x"\ndevice = "a/b"\n', "bgp.device")):
        with pytest.raises(ConfigError, match=what):
            parse_config(base + bad)


@pytest.mark.parametrize("argv, why", [
    (["--drain", "--drain-timeout"], "--drain-timeout: missing argument"),
    (["--drain", "--drain-timeout", "x"], "not a number"),
    (["--drain", "--drain-timeout", "-1"], "outside 0..86400"),
    (["--undrain", "--drain-timeout", "3"], "goes with --drain"),
    (["--bgp", "extra"], "unexpected argument"),
])
def test_admin_drain_refusals_are_one_line(argv, why):
    err = io.StringIO()
    assert admin.main(["--socket", "/nonexistent/sock", *argv], stderr=err) == 2
    assert why in err.getvalue() and err.getvalue().count("\n") == 1


def test_admin_drain_without_daemon_is_one_line():
    err = io.StringIO()
    assert admin.main(["--socket", "/nonexistent/sock", "--drain", "--drain-timeout=4"],
                      stderr=err) == 2
    assert "cannot reach the daemon" in err.getvalue() and err.getvalue().count("\n") == 1


def test_example_bird_configs_parse(tmp_path):
    """examples/bird-*.conf are what BIRD 2 accepts (`bird -p` parses and exits)."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("bird") is None:
        pytest.skip("bird2 is not installed (make test installs it)")
    examples = Path(__file__).resolve().parents[2] / "examples"
    include = tmp_path / "vips.conf"
    include.write_text(bird.include_text(["192.0.2.100"], "fastlvs-bgp"))
    director = tmp_path / "director.conf"
    director.write_text((examples / "bird-director.conf").read_text()
                        .replace(bird.DEFAULT_INCLUDE, str(include)))
    for conf in (director, examples / "bird-router.conf"):
        r = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, (conf.name, r.stderr)
