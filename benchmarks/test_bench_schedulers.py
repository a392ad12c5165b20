"""schedule() throughput of every scheduler at 4, 64 and 1024 servers, and the mh table build.

Each round schedules the same 1,000 pre-built flows, so one round's time / 1000 is the cost of
one decision; `benchmarks/report_schedulers.py` turns the JSON into decisions/s.
Run: make bench-sched
"""
import random

import pytest

from fastlvs.schedulers import Flow, RealServer, create, names

FLOWS_PER_ROUND = 1000


def _servers(n: int) -> list[RealServer]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        rs = RealServer(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 80, weight=rng.randrange(1, 10))
        rs.activeconns = rng.randrange(0, 50)
        rs.inactconns = rng.randrange(0, 500)
        out.append(rs)
    return out


def _flows() -> list[Flow]:
    rng = random.Random(7)
    return [Flow.from_ints(4, rng.getrandbits(32), rng.randrange(1024, 65536),
                           0xCB00710A + rng.randrange(0, 8), 80, "tcp")
            for _ in range(FLOWS_PER_ROUND)]


@pytest.mark.parametrize("nservers", [4, 64, 1024])
@pytest.mark.parametrize("name", names())
def test_schedule(benchmark, name, nservers):
    sched = create(name, _servers(nservers), rng=random.Random(1), clock=lambda: 0.0)
    flows = _flows()
    schedule = sched.schedule

    def run():
        for f in flows:
            schedule(f)

    benchmark.group = f"schedule-{nservers}"
    benchmark.extra_info.update(sched=name, servers=nservers, decisions=FLOWS_PER_ROUND)
    benchmark(run)


def test_mh_table_build_1024(benchmark):
    servers = _servers(1024)
    benchmark.group = "mh-build"
    benchmark.extra_info.update(sched="mh", servers=1024)
    benchmark(create, "mh", servers)


def test_mh_unseen_clients_64(benchmark):
    """mh for clients it has never seen: every decision pays a pure-Python hsiphash (the
    table lookup of a repeat client is cached). Each round gets 1,000 fresh flows."""
    sched = create("mh", _servers(64))
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
