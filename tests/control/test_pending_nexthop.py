"""A real server whose next hop the kernel is still resolving: the control server parks the
command (and the requests behind it) and asks again each turn, so the loop that serves it,
which also forwards, never waits for ARP; after resolve_wait the refusal is final."""
from __future__ import annotations

import json
import socket
import time

import pytest

from fastlvs.control import ctl
from fastlvs.control.director import Director
from fastlvs.control.model import NoRoute
from fastlvs.control.server import ControlServer
from tests.control.control_harness import LOCAL_IP, LOCAL_MAC, engine_class

RS = "192.0.2.50"
MAC = bytes([2, 0, 0, 0, 1, 50])


class SlowArp:
    """A next-hop resolver whose kernel answers for RS after `answers_after` asks (None:
    never), pending until then."""

    def __init__(self, answers_after):
        self.answers_after = answers_after
        self.asked = 0

    def __call__(self, ip):
        if ip != RS:
            raise NoRoute(f"{ip}: no route")
        self.asked += 1
        if self.answers_after is None or self.asked <= self.answers_after:
            raise NoRoute(f"{ip}: no ARP/ND answer yet", pending=True)
        return MAC, 1


def _setup(tmp_path, resolver, wait):
    Engine = engine_class("reference")
    director = Director(Engine(capacity=1024, batch=16, local_ip=LOCAL_IP,
                               local_mac=LOCAL_MAC), resolver)
    server = ControlServer(director, str(tmp_path / "s.sock"), resolve_wait=wait)
    return director, server


def _send(path, *argvs):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    for argv in argvs:
        s.sendall(ctl.encode({"op": "command", "argv": list(argv)}))
    return s


def _answers(server, sock, n, turns=2000):
    """Turn the server's loop (each turn bounded: poll_once(0.005)) until `n` answers came;
    returns (answers, turns taken, longest turn in seconds)."""
    data, longest = b"", 0.0
    for turn in range(turns):
        t0 = time.monotonic()
        server.poll_once(0.005)
        longest = max(longest, time.monotonic() - t0)
        try:
            data += sock.recv(1 << 16)
        except BlockingIOError:
            pass
        if data.count(b"\n") >= n:
            return [json.loads(l) for l in data.splitlines()], turn, longest
    raise AssertionError(f"{n} answers not seen in {turns} turns: {data!r}")


ADD_SVC = ("-A", "-t", "203.0.113.1:80")
ADD_RS = ("-a", "-t", "203.0.113.1:80", "-r", f"{RS}:80", "-m")


@pytest.mark.parametrize("answers_after", [5, 40])
def test_add_waits_for_arp_without_holding_the_loop(tmp_path, answers_after):
    resolver = SlowArp(answers_after)
    director, server = _setup(tmp_path, resolver, wait=10.0)
    try:
        sock = _send(server.path, ADD_SVC, ADD_RS, ("-L", "-n"))
        answers, turns, longest = _answers(server, sock, 3)
        assert [a["ok"] for a in answers] == [True, True, True]
        # the -L behind the parked -a was answered after it, and shows the new server
        assert f"{RS}:80" in answers[2]["result"] and "Masq" in answers[2]["result"]
        assert resolver.asked > answers_after          # it was asked again, turn by turn
        assert turns >= answers_after
        assert not server.waiting
        sock.close()
    finally:
        server.close()


def test_unanswered_arp_is_refused_after_the_wait_and_changes_nothing(tmp_path):
    director, server = _setup(tmp_path, SlowArp(None), wait=0.3)
    try:
        sock = _send(server.path, ADD_SVC, ADD_RS)
        t0 = time.monotonic()
        answers, _, _ = _answers(server, sock, 2)
        assert time.monotonic() - t0 >= 0.3
        assert answers[0]["ok"] is True
        assert answers[1]["ok"] is False and answers[1]["code"] == ctl.EXIT_REFUSED
        assert "No route to host" in answers[1]["error"] and RS in answers[1]["error"]
        assert director.table.get(next(iter(director.table)).key).dests == []
        sock.close()
    finally:
        server.close()


def test_restore_waits_for_every_new_server_before_applying_any(tmp_path):
    resolver = SlowArp(3)
    director, server = _setup(tmp_path, resolver, wait=10.0)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        s.setblocking(False)
        rules = f"-A -t 203.0.113.1:80 -s rr\n-a -t 203.0.113.1:80 -r {RS}:80 -g -w 1\n"
        s.sendall(ctl.encode({"op": "command", "argv": ["-R"], "stdin": rules}))
        answers, turns, _ = _answers(server, s, 1)
        assert answers[0]["ok"] is True, answers
        svc = next(iter(director.table))
        assert [d.addr for d in svc.dests] == [RS]
        s.close()
    finally:
        server.close()


def test_reload_hook_is_asked_again_until_final(tmp_path):
    director, server = _setup(tmp_path, SlowArp(None), wait=0.2)
    calls = []

    def reload(final):
        from fastlvs.control.server import Later
        calls.append(final)
        if not final:
            raise Later()
        raise ValueError("rules:2: -r 192.0.2.50: no ARP/ND answer within 3 s")

    server.reload = reload
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        s.setblocking(False)
        s.sendall(ctl.encode({"op": "reload"}))
        answers, _, _ = _answers(server, s, 1)
        assert answers[0] == {"ok": False, "code": ctl.EXIT_LIST,
                              "error": "reload: rules:2: -r 192.0.2.50: no ARP/ND answer "
                                       "within 3 s"}
        assert calls[-1] is True and calls.count(True) == 1 and len(calls) >= 2
        s.close()
    finally:
        server.close()
