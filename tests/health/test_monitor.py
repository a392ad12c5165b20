"""The checker state machine with a fake clock: keepalived's first check (bootstrap delay
plus a drawn part of warmup), the first verdict deciding at once, retries only while up,
alpha, MISC_CHECK's timing from the start of a run, misc_dynamic weights, and HTTP's
two-step recovery. Every case is worked out by hand from keepalived 2.4's epilogs."""
from __future__ import annotations

from fastlvs.health.checkers import Result
from fastlvs.health.monitor import BOOTSTRAP_DELAY, Monitor
from fastlvs.health.spec import CheckSpec

OK, FAIL = Result(True, "connected"), Result(False, "connect refused")


class Clock:
    """Drives a Monitor: each check starts at mon.due and lasts `took` seconds."""

    def __init__(self, spec, now=100.0, rng=lambda: 0.0):
        self.mon = Monitor(spec, now, rng=rng)

    def check(self, res, took=0.0):
        start = self.mon.due
        ev = self.mon.result(res, start, start + took, wall=1000.0 + start)
        return ev, self.mon.due - start          # the event, the gap to the next check


def tcp(**kw):
    base = dict(delay_loop=10.0, retry=2, delay_before_retry=1.0, warmup=0.0)
    return CheckSpec("TCP_CHECK", "192.0.2.1", 80, **{**base, **kw})


def test_first_check_after_bootstrap_and_a_drawn_part_of_warmup():
    assert Monitor(tcp(warmup=8.0), 100.0, rng=lambda: 0.25).due == 100.0 + BOOTSTRAP_DELAY + 2.0
    assert Monitor(tcp(warmup=0.0), 100.0, rng=lambda: 0.9).due == 101.0


def test_initially_up_and_the_first_success_is_reported():
    c = Clock(tcp())
    assert c.mon.up
    ev, gap = c.check(OK)
    assert (ev.up, ev.reason, ev.weight, ev.at, gap) == (True, "connected", None, 1101.0, 10.0)
    ev, gap = c.check(OK)
    assert ev is None and gap == 10.0          # no change, nothing said


def test_the_first_failure_decides_without_retries():
    c = Clock(tcp(retry=3))
    ev, gap = c.check(FAIL)
    assert ev is not None and not ev.up and ev.reason == "connect refused"
    assert gap == 10.0 and not c.mon.up


def test_an_up_checker_retries_then_goes_down():
    c = Clock(tcp(retry=2, delay_before_retry=1.5))
    c.check(OK)
    assert c.check(FAIL) == (None, 1.5)        # retry 1 of 2
    assert c.check(FAIL) == (None, 1.5)        # retry 2 of 2
    ev, gap = c.check(FAIL, took=0.5)          # the third failure in a row decides
    assert not ev.up and c.mon.failures == 3
    assert gap == 0.5 + 10.0                   # delay_loop counted from the end of the check


def test_a_success_between_retries_starts_the_count_again():
    c = Clock(tcp(retry=1))
    c.check(OK)
    assert c.check(FAIL) == (None, 1.0)
    assert c.check(OK) == (None, 10.0)
    assert c.check(FAIL) == (None, 1.0)
    ev, _ = c.check(FAIL)
    assert not ev.up


def test_retry_zero_goes_down_on_the_first_failure():
    c = Clock(tcp(retry=0))
    c.check(OK)
    ev, gap = c.check(FAIL)
    assert not ev.up and gap == 10.0


def test_a_down_checker_is_not_retried_and_comes_back_on_one_success():
    c = Clock(tcp())
    c.check(FAIL)
    for _ in range(3):
        assert c.check(FAIL) == (None, 10.0)
    ev, gap = c.check(OK)
    assert ev.up and gap == 10.0 and c.mon.failures == 0


def test_alpha_starts_down_and_reports_its_first_verdict_either_way():
    c = Clock(tcp(alpha=True))
    assert not c.mon.up
    ev, _ = c.check(OK)
    assert ev.up
    c = Clock(tcp(alpha=True, retry=3))
    ev, gap = c.check(FAIL)                     # already down, but the first verdict is said
    assert not ev.up and gap == 10.0
    assert c.check(FAIL) == (None, 10.0)


def test_status_follows_the_results():
    c = Clock(tcp())
    st = c.mon.status()
    assert (st.up, st.last_ok, st.last_time, st.failures) == (True, None, None, 0)
    c.check(OK)
    c.check(FAIL)
    st = c.mon.status()
    assert (st.up, st.last_ok, st.last_reason, st.failures) == (True, False, "connect refused", 1)


# -- MISC_CHECK ---------------------------------------------------------------------------------

def misc(**kw):
    base = dict(delay_loop=10.0, retry=0, delay_before_retry=1.0, misc_path="x")
    return CheckSpec("MISC_CHECK", "192.0.2.1", **{**base, **kw})


def test_misc_next_run_counts_from_the_start_of_the_last():
    c = Clock(misc(retry=1, delay_before_retry=2.0))
    _, gap = c.check(Result(True, "exit 0"), took=3.0)
    assert gap == 10.0                       # start + delay_loop, whatever it took
    _, gap = c.check(Result(False, "exit 1"), took=1.5)
    assert gap == 2.0                        # a retry: start + delay_before_retry
    _, gap = c.check(Result(False, "timeout after 5.0s"), took=5.0)
    assert gap == 10.0


def test_misc_dynamic_weights():
    c = Clock(misc(misc_dynamic=True))
    ev, _ = c.check(Result(True, "exit 12", weight=10))
    assert (ev.up, ev.weight) == (True, 10)                   # first verdict with its weight
    assert c.check(Result(True, "exit 12", weight=10)) == (None, 10.0)
    ev, _ = c.check(Result(True, "exit 7", weight=5))
    assert (ev.up, ev.weight, ev.reason) == (True, 5, "exit 7")
    ev, _ = c.check(Result(True, "exit 0"))
    assert (ev.up, ev.weight) == (True, None)                 # back to the configured weight
    ev, _ = c.check(Result(False, "exit 1"))
    assert (ev.up, ev.weight) == (False, None)
    ev, _ = c.check(Result(True, "exit 5", weight=3))
    assert (ev.up, ev.weight) == (True, 3)


def test_weights_are_not_events_without_misc_dynamic():
    c = Clock(misc())
    c.check(Result(True, "exit 0"))
    assert c.check(Result(True, "exit 0", weight=4)) == (None, 10.0)


# -- HTTP_GET / SSL_GET -------------------------------------------------------------------------

def test_http_comes_back_after_two_good_checks_and_waits_longer_while_down():
    spec = CheckSpec("HTTP_GET", "192.0.2.1", 80, delay_loop=5.0, retry=1,
                     delay_before_retry=8.0, warmup=0.0)
    c = Clock(spec)
    c.check(OK)
    assert c.check(FAIL) == (None, 8.0)
    ev, gap = c.check(FAIL)
    assert not ev.up and gap == 8.0              # max(delay_loop, delay_before_retry)
    assert c.check(FAIL) == (None, 8.0)
    assert c.check(OK) == (None, 5.0)            # the failed url is good again: not yet up
    ev, gap = c.check(OK)
    assert ev.up and gap == 5.0


def test_http_first_success_is_up_at_once():
    c = Clock(CheckSpec("SSL_GET", "192.0.2.1", 443, alpha=True, warmup=0.0))
    ev, _ = c.check(OK)
    assert ev.up
