"""Failover of a director pair under load (issue 13's tests): two fastlvs directors on one LAN
(fastlvs.lab.pair), each running keepalived's VRRP under `--vrrp` from a keepalived.conf that
asks for connection sync (lvs_sync_daemon), real servers running the load module's echo
server, and from the client 200 long-lived connections exchanging a message every 50 ms plus a
stream of new connections through the VIP (fastlvs.lab.load). DR and NAT.

- The master crashes (SIGKILL to its fastlvs and keepalived at once) or loses its LAN link:
  the backup takes the VIP, no long-lived connection is lost, and new connections fail only
  between the failure and the backup's takeover (VRRP's detection window).
- Planned switchover (a lower priority in the master's file and SIGHUP; SIGTERM of the
  master): the backup takes the VIP, and no request fails at all.
- A fastlvs killed alone does not leave its keepalived holding the VIP: keepalived dies with
  it (parent-death signal) and the backup takes over; no connection is lost either.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from fastlvs.lab.pair import Pair

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")
if shutil.which("keepalived") is None:
    pytest.skip("keepalived not installed (make build installs it)", allow_module_level=True)

LONG = 200                # long-lived connections
INTERVAL = 0.05           # seconds between two messages of one
RATE = 50                 # new connections per second
ATTEMPT_TIMEOUT = 1.0     # a new connection slower than this failed
ECHO_TIMEOUT = 15.0       # TCP's retransmissions span VRRP's detection window well within it
BEFORE = 2.0              # seconds of load before the event
AFTER = 4.0               # seconds of load after the backup took over
TAKEOVER = 20.0           # bound on VRRP moving the VIP (advert_int 1: ~3.6 s)
SETTLE = 1.0              # after the takeover: the client's ARP entry follows the GARP


@pytest.fixture(params=["dr", "nat"])
def pair(request):
    p = Pair(request.param).build()
    try:
        p.start()
        yield p
    finally:
        p.destroy()


def _run(pair: Pair, event, attempt_timeout=ATTEMPT_TIMEOUT):
    """Load, then event(pair) BEFORE seconds in; the summary, the event's wall-clock time
    and the takeover's (once d2 alone holds the VIP)."""
    lr = pair.load(long=LONG, interval=INTERVAL, rate=RATE, duration=120,
                   echo_timeout=ECHO_TIMEOUT, attempt_timeout=attempt_timeout)
    lr.start()
    try:
        assert lr.opened == LONG
        time.sleep(BEFORE)
        t_event = time.time()
        event(pair)
        pair.wait_holder(1, TAKEOVER)
        t_takeover = time.time()
        time.sleep(AFTER)
        summary = lr.stop()
    finally:
        lr.kill()
    return summary, t_event, t_takeover


def _lost_report(s: dict, pair: Pair) -> str:
    return (f"long-lived: {s['long']}\nnew: {s['new']}\noutage: {s['outage']}\n"
            + pair.log_tail())


def _check_unplanned(pair: Pair, s: dict, t_event: float, t_takeover: float) -> None:
    report = _lost_report(s, pair)
    assert pair.holders() == [1], report
    assert s["long"]["opened"] == LONG
    assert s["long"]["lost"] == 0, report
    assert s["long"]["echoes"] > LONG * (BEFORE / INTERVAL) / 2, report   # they did talk
    new = s["new"]
    assert new["ok"] > 0 and new["skipped"] == 0, report
    if new["failed"]:
        start = s["start_unix"]
        first = start + s["outage"]["first_failure_ms"] / 1000
        last = start + s["outage"]["last_failure_ms"] / 1000
        # attempts in flight at the event may fail; none started before it otherwise
        assert first >= t_event - ATTEMPT_TIMEOUT, report
        # and the stream is back once the backup holds the VIP and the client follows it
        assert last <= t_takeover + SETTLE, report


def _check_planned(pair: Pair, s: dict) -> None:
    report = _lost_report(s, pair)
    assert pair.holders() == [1], report
    assert s["long"]["opened"] == LONG
    assert s["long"]["lost"] == 0, report
    assert s["new"]["failed"] == 0 and s["new"]["skipped"] == 0, report
    assert s["new"]["ok"] > 0, report


def test_a_crashed_master_loses_no_connection(pair):
    s, t_event, t_takeover = _run(pair, lambda p: p.kill_director(0))
    _check_unplanned(pair, s, t_event, t_takeover)


def test_a_master_without_its_link_loses_no_connection(pair):
    s, t_event, t_takeover = _run(pair, lambda p: p.link(0, False))
    _check_unplanned(pair, s, t_event, t_takeover)


def test_a_priority_change_switches_over_without_a_failed_request(pair):
    # a SYN dropped in the handover is sent again after 1 s: a slower request, not a failed one
    s, _, _ = _run(pair, lambda p: p.set_priority(0, 50), attempt_timeout=3.0)
    _check_planned(pair, s)
    assert pair.running[0].proc.poll() is None        # d1 stays, as the backup now


def test_a_stopped_master_switches_over_without_a_failed_request(pair):
    s, _, _ = _run(pair, lambda p: p.stop_director(0), attempt_timeout=3.0)
    _check_planned(pair, s)


def test_a_killed_fastlvs_takes_its_keepalived_along_and_loses_no_connection(pair):
    assert pair.keepalived_pids(0)
    s, t_event, t_takeover = _run(pair, lambda p: p.kill_fastlvs(0))
    # keepalived got SIGTERM as its parent died, and gave the VIP up as it went
    assert pair.keepalived_pids(0) == [], pair.log_tail()
    assert not pair.has_vip(0)
    _check_unplanned(pair, s, t_event, t_takeover)
