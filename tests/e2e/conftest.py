"""End-to-end fixtures (root only; skipped otherwise): a whole cluster per forwarding mode
(fastlvs.lab.testbed: switch, client, director, three real servers with HTTP and UDP echo
servers), the `fastlvs` daemon started in the director namespace per test, stopped with
SIGTERM afterwards and checked to have left nothing behind, and nft counters in the client
namespace that say exactly what the client sent to (and got from) the VIP.
"""
from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.e2e_support import ClientCounters, assert_clean, make_bed
from fastlvs.lab import testbed as tbmod


@pytest.fixture(scope="module", params=list(tbmod.MODES))
def bed(request):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tb = make_bed(request.param)
    try:
        yield tb
    finally:
        tb.destroy()


@pytest.fixture
def start(bed):
    """start(*args, backend=...) -> a running daemon (waits for "ready"); every daemon
    still running at the end gets SIGTERM, must exit 0 and leave nothing behind."""
    started = []

    def _start(*args, backend="xdp"):
        d = bed.start_daemon(*args, backend=backend)
        started.append(d)
        return d

    yield _start
    problems = []
    for d in started:
        if d.proc.poll() is None:
            rc = d.stop(signal.SIGTERM)
            if rc != 0:
                problems.append(f"exit {rc} after SIGTERM: {d.stderr}")
        try:
            assert_clean(bed, d)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, problems


@pytest.fixture
def counters(bed):
    c = ClientCounters(bed)
    try:
        yield c
    finally:
        c.close()
