"""One checker's up/down state with keepalived's rules (check_api.c, check_data.c and each
checker's epilog in keepalived 2.4): when to check next, how many failures make it down, and
what is worth reporting. Pure logic: the caller runs the probe and passes the times in, so
tests drive it with a fake clock.

- Start: up, or down with `alpha`; the first check after 1 s + a random part of `warmup`.
- The first check decides at once (keepalived starts with its retry counter used up); later,
  an up checker retries a failure `retry` times, `delay_before_retry` apart, and only the
  failure after the last retry makes it down. A down checker is not retried.
- After a success, or a failure that decides, the next check is `delay_loop` later: counted
  from the end of the check, or for MISC_CHECK from its start (keepalived's last_ran).
- HTTP_GET/SSL_GET: coming back needs two good checks, `delay_loop` apart (keepalived clears
  the failed url with the first and walks its urls again), and a down checker is checked
  every max(delay_loop, delay_before_retry).
- Reported (an Event): the first verdict of a checker, then only changes of state, and with
  misc_dynamic changes of weight while up.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from fastlvs.health.checkers import Result
from fastlvs.health.spec import CheckSpec

BOOTSTRAP_DELAY = 1.0          # keepalived's delay before the first check of every checker
_HTTP = ("HTTP_GET", "SSL_GET")


@dataclass(frozen=True)
class Event:
    """A checker's verdict: `up`, why (`reason`, the probe's), the misc_dynamic `weight`
    (None: the configured weight) and the wall time `at`. `spec` None is an event about
    the checker process itself (it died, or its output overflowed); `reason` says which."""

    spec: CheckSpec | None
    up: bool
    reason: str
    weight: int | None
    at: float


@dataclass(frozen=True)
class ProbeStatus:
    """What status() says of one probe: its state, its last result (`last_ok` None before
    the first check), the wall time of that result, and its failures in a row."""

    spec: CheckSpec
    up: bool
    last_ok: bool | None
    last_reason: str
    last_time: float | None
    failures: int


class Monitor:
    """The state machine of one CheckSpec. `now` is the monotonic time it starts at; `rng`
    returns a float in [0, 1) for the warmup draw."""

    def __init__(self, spec: CheckSpec, now: float, rng=random.random):
        self.spec = spec
        self.up = not spec.alpha
        self.has_run = False
        self.retry_it = spec.retry          # used up: the first failure decides
        self.weight: int | None = None      # misc_dynamic: status - 2, None = configured
        self.http_failed = False            # HTTP: keepalived's failed_url is set
        self.due = now + BOOTSTRAP_DELAY + spec.warmup * rng()
        self.last_ok: bool | None = None
        self.last_reason = ""
        self.last_time: float | None = None
        self.failures = 0

    def result(self, res: Result, started: float, ended: float, wall: float) -> Event | None:
        """Take one probe's result (monotonic start and end, wall time of the end); set
        `due` to the next check's monotonic time; the Event to report, or None."""
        spec = self.spec
        self.last_ok, self.last_reason, self.last_time = res.ok, res.reason, wall
        self.failures = 0 if res.ok else self.failures + 1
        report = False
        delay = spec.delay_loop
        if res.ok:
            self.retry_it = 0
            if spec.kind in _HTTP and self.http_failed:
                self.http_failed = False    # the url is good again; up on the next one
            elif not self.up or not self.has_run:
                self.up, report = True, True
            if self.up and spec.misc_dynamic and res.weight != self.weight:
                report = True
            if self.up:
                self.weight = res.weight
        elif (self.up or not self.has_run) and self.retry_it >= spec.retry:
            self.retry_it = 0
            self.up, report, self.weight = False, True, None
            self.http_failed = True
            if spec.kind in _HTTP:
                delay = max(spec.delay_loop, spec.delay_before_retry)
        elif self.up:
            self.retry_it += 1
            delay = spec.delay_before_retry
        elif spec.kind in _HTTP:
            delay = max(spec.delay_loop, spec.delay_before_retry) if self.http_failed \
                else spec.delay_before_retry
        self.has_run = True
        self.due = (started if spec.kind == "MISC_CHECK" else ended) + delay
        if report:
            return Event(spec, self.up, res.reason, self.weight if self.up else None, wall)
        return None

    def status(self) -> ProbeStatus:
        return ProbeStatus(self.spec, self.up, self.last_ok, self.last_reason, self.last_time,
                           self.failures)
