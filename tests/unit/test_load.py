"""The load generator's bookkeeping (fastlvs.lab.load): the outage window and the longest gap
computed from new-connection attempts, the summary's counts by reason, and a client run over
loopback against the module's echo server and against servers that answer wrongly, close,
or reset (no root: 127.0.0.1, ephemeral ports)."""
from __future__ import annotations

import socket
import struct
import threading

import pytest

from fastlvs.lab import load


def test_outage_is_first_to_last_failure_and_longest_gap_between_successes():
    attempts = [(0.0, True), (0.1, True), (0.2, False), (0.3, False), (0.45, False),
                (0.5, True), (0.6, True)]
    got = load.outage(attempts)
    assert got == {"first_failure_ms": 200.0, "last_failure_ms": 450.0, "window_ms": 250.0,
                   "longest_gap_ms": 400.0}


def test_outage_without_failures_and_with_a_run_that_ends_failing():
    assert load.outage([(0.0, True), (0.01, True), (0.02, True)]) == {
        "first_failure_ms": None, "last_failure_ms": None, "window_ms": 0.0,
        "longest_gap_ms": 10.0}
    # no success after the failures: the gap runs to the last attempt
    got = load.outage([(0.0, True), (0.5, False), (1.5, False)])
    assert got["longest_gap_ms"] == 1500.0 and got["window_ms"] == 1000.0
    # nothing ever succeeded: the whole run is the gap
    assert load.outage([(1.0, False), (3.0, False)])["longest_gap_ms"] == 2000.0
    assert load.outage([])["window_ms"] == 0.0


def test_outage_sorts_attempts_that_finished_out_of_order():
    # attempts are recorded when they end; a timeout ends after later successes
    attempts = [(0.1, True), (0.3, True), (0.0, False), (0.2, True)]
    got = load.outage(attempts)
    assert got["first_failure_ms"] == 0.0 and got["longest_gap_ms"] == 100.0


def _rec(conn, opened=True, lost=None, lost_at=0.0, sent=10, echoes=10, stall=0.05):
    return {"conn": conn, "opened": opened, "lost": lost, "lost_at": lost_at, "sent": sent,
            "echoes": echoes, "max_stall": stall}


def test_summary_counts_lost_connections_by_reason_and_ignores_never_opened_ones():
    recs = [_rec(0), _rec(1, lost="reset", lost_at=2.0, echoes=7),
            _rec(2, lost="timeout", lost_at=1.0, echoes=3, stall=0.4),
            _rec(3, opened=False, sent=0, echoes=0, stall=0.0)]
    attempts = [(0.0, True, ""), (0.1, False, "refused"), (0.2, False, "timeout"),
                (0.3, True, "")]
    s = load.summarize(recs, attempts, skipped=2, start_unix=1000.0, duration=5.0)
    assert s["long"]["opened"] == 3 and s["long"]["open_failed"] == 1
    assert s["long"]["lost"] == 2
    assert s["long"]["lost_by_reason"] == {"reset": 1, "timeout": 1, "wrong_echo": 0,
                                           "closed": 0, "error": 0}
    # earliest loss first
    assert [d["conn"] for d in s["long"]["lost_detail"]] == [2, 1]
    assert s["long"]["lost_detail"][0] == {"conn": 2, "reason": "timeout", "at_ms": 1000.0,
                                           "echoes": 3}
    assert s["long"]["messages_sent"] == 30 and s["long"]["echoes"] == 20
    assert s["long"]["max_stall_ms"] == 400.0
    assert s["new"]["attempts"] == 4 and s["new"]["ok"] == 2 and s["new"]["failed"] == 2
    assert s["new"]["failed_by_reason"]["refused"] == 1
    assert s["new"]["failed_by_reason"]["timeout"] == 1
    assert s["new"]["skipped"] == 2
    assert s["outage"]["window_ms"] == 100.0


def test_summary_lists_at_most_max_detail_losses():
    recs = [_rec(i, lost="closed", lost_at=i / 100) for i in range(load.MAX_DETAIL + 7)]
    s = load.summarize(recs, [], 0, 0.0, 1.0)
    assert s["long"]["lost"] == load.MAX_DETAIL + 7
    assert len(s["long"]["lost_detail"]) == load.MAX_DETAIL


def test_messages_have_the_fixed_length():
    assert len(load.long_msg(99999, 10 ** 10 - 1)) == load.MSG_LEN
    assert len(load.long_msg(123456, 10 ** 12)) == load.MSG_LEN     # wrapped, not longer
    assert len(load.new_msg(10 ** 17)) == load.MSG_LEN


# -- a real run over loopback --------------------------------------------------------------------
@pytest.fixture
def echo_server():
    stop, ready = threading.Event(), threading.Event()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    t = threading.Thread(target=load.serve, kwargs=dict(port=port, binds=["127.0.0.1"],
                                                        stop=stop, ready=ready), daemon=True)
    t.start()
    assert ready.wait(5)
    yield port
    stop.set()
    t.join(5)


def test_a_run_against_the_echo_server_loses_nothing(echo_server):
    c = load.Client(("127.0.0.1", echo_server), n_long=20, interval=0.02, rate=50,
                    duration=0.6, echo_timeout=3.0)
    s = c.run()
    assert s["long"]["opened"] == 20 and s["long"]["lost"] == 0
    assert s["long"]["echoes"] == s["long"]["messages_sent"] >= 20 * 5
    assert s["new"]["attempts"] >= 10 and s["new"]["failed"] == 0
    assert s["outage"]["first_failure_ms"] is None


class _BadServer:
    """Accepts connections and, per `how`: echoes with one byte changed, closes after the
    first message, or resets (SO_LINGER 0) after the first message."""

    def __init__(self, how):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.how = how
        self.stop = threading.Event()
        self.conns = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                cs, _ = self.ls.accept()
            except socket.timeout:
                continue
            self.conns.append(cs)
            threading.Thread(target=self._one, args=(cs,), daemon=True).start()

    def _one(self, cs):
        cs.settimeout(2.0)
        try:
            data = cs.recv(load.MSG_LEN)
            if self.how == "wrong":
                cs.sendall(data[:-2] + b"X\n")
            elif self.how == "close":
                cs.sendall(data)
                cs.close()
            elif self.how == "reset":
                cs.sendall(data)
                cs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                cs.close()
        except OSError:
            pass

    def close(self):
        self.stop.set()
        self.t.join(2)
        self.ls.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("how,reason", [("wrong", "wrong_echo"), ("close", "closed"),
                                        ("reset", "reset")])
def test_a_broken_path_is_counted_with_its_reason(how, reason):
    srv = _BadServer(how)
    try:
        c = load.Client(("127.0.0.1", srv.port), n_long=5, interval=0.05, duration=0.5,
                        echo_timeout=2.0)
        s = c.run()
    finally:
        srv.close()
    assert s["long"]["opened"] == 5
    assert s["long"]["lost"] == 5
    # a close seen by a sender can also surface as a reset (RST answers its next message)
    allowed = {reason, "reset"} if reason == "closed" else {reason}
    assert {d["reason"] for d in s["long"]["lost_detail"]} <= allowed, s["long"]
    assert s["long"]["lost_by_reason"][reason] >= 1


def test_a_silent_server_makes_timeouts():
    srv = _BadServer("silent")           # reads one message, answers nothing
    try:
        c = load.Client(("127.0.0.1", srv.port), n_long=3, interval=0.05, rate=20,
                        duration=0.6, echo_timeout=0.2, attempt_timeout=0.2)
        s = c.run()
    finally:
        srv.close()
    assert s["long"]["lost"] == 3
    assert s["long"]["lost_by_reason"]["timeout"] == 3
    assert s["new"]["ok"] == 0 and s["new"]["failed_by_reason"]["timeout"] == s["new"]["attempts"]
    assert s["outage"]["first_failure_ms"] is not None


def test_command_line_errors_are_one_line(capsys):
    assert load.main(["--long", "3"]) == 2
    assert capsys.readouterr().err.strip() == "load: --target VIP:PORT is needed (or --serve)"
    with pytest.raises(SystemExit) as e:
        load.main(["--target", "nohost:80"])
    assert e.value.code == 2
    assert "not an IPv4 ADDR:PORT: 'nohost:80'" in capsys.readouterr().err
