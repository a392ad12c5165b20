"""schedule() throughput of every scheduler at 4, 64 and 1024 servers, and the mh table build.

Each round schedules the same 1,000 pre-built flows, so one round's time / 1000 is the cost of
one decision; `benchmarks/report_schedulers.py` turns the JSON into decisions/s.
Run: make bench-sched
"""
import random

import pytest

from benchmarks.conftest import FLOWS_PER_ROUND
from fastlvs.schedulers import Flow, create, names


@pytest.mark.parametrize("nservers", [4, 64, 1024])
@pytest.mark.parametrize("name", names())
def test_schedule(benchmark, servers, flows, name, nservers):
    sched = create(name, servers(nservers), rng=random.Random(1), clock=lambda: 0.0)
    schedule = sched.schedule

    def run():
        for f in flows:
            schedule(f)

    benchmark.group = f"schedule-{nservers}"
    benchmark.extra_info.update(sched=name, servers=nservers, decisions=FLOWS_PER_ROUND)
    benchmark(run)


def test_mh_table_build_1024(benchmark, servers):
    benchmark.group = "mh-build"
    benchmark.extra_info.update(sched="mh", servers=1024)
    benchmark(create, "mh", servers(1024))


def test_mh_unseen_clients_64(benchmark, servers):
    """mh for clients it has never seen: every decision pays a pure-Python hsiphash (the
    table lookup of a repeat client is cached). Each round gets 1,000 fresh flows."""
    sched = create("mh", servers(64))
    rng = random.Random(11)
    rounds = 30
    chunks = iter([[Flow.from_ints(4, rng.getrandbits(32), 40000, 0xCB00710A, 80, "tcp")
                    for _ in range(FLOWS_PER_ROUND)] for _ in range(rounds + 1)])
    schedule = sched.schedule

    def run(flows):
        for f in flows:
            schedule(f)

    benchmark.group = "schedule-64-unseen"
    benchmark.extra_info.update(sched="mh (unseen clients)", servers=64,
                                decisions=FLOWS_PER_ROUND)
    benchmark.pedantic(run, setup=lambda: ((next(chunks),), {}), rounds=rounds)
