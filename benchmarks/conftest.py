"""Shared benchmark fixtures: servers and flows made once, outside the timed code.

`servers(n)` gives n weighted servers with random counters (the same objects for the same n:
schedulers only read them), `flows` the 1,000 client flows every scheduler round schedules."""
import random

import pytest

from fastlvs.schedulers import Flow, RealServer

FLOWS_PER_ROUND = 1000


def _make_servers(n: int) -> list[RealServer]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        rs = RealServer(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 80, weight=rng.randrange(1, 10))
        rs.activeconns = rng.randrange(0, 50)
        rs.inactconns = rng.randrange(0, 500)
        out.append(rs)
    return out


@pytest.fixture(scope="session")
def servers():
    """servers(n) -> a new list of the n benchmark servers (built once per n)."""
    made: dict[int, list[RealServer]] = {}

    def get(n: int) -> list[RealServer]:
        if n not in made:
            made[n] = _make_servers(n)
        return list(made[n])
    return get


@pytest.fixture(scope="session")
def flows() -> list[Flow]:
    """FLOWS_PER_ROUND TCP flows from random clients to 8 VIPs on port 80."""
    rng = random.Random(7)
    return [Flow.from_ints(4, rng.getrandbits(32), rng.randrange(1024, 65536),
                           0xCB00710A + rng.randrange(0, 8), 80, "tcp")
            for _ in range(FLOWS_PER_ROUND)]
