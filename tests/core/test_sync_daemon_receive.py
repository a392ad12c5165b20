"""The sync backup's reading side without a network: a loop turn reads RECV_BUDGET datagrams;
while a master's burst keeps datagrams waiting, each next turn reads twice as many, up to
RECV_BUDGET_MAX, and an emptied socket brings the budget back down; every datagram read
reaches the director, in order."""
from __future__ import annotations

import collections

from fastlvs.sync.daemon import (BACKUP, RECV_BUDGET, RECV_BUDGET_MAX, SyncConfig,
                                 SyncDaemons, _Daemon)


class _Queue:
    """A non-blocking datagram socket's receiving end: recv() pops, or BlockingIOError."""

    def __init__(self):
        self.q = collections.deque()

    def recv(self, size):
        if not self.q:
            raise BlockingIOError
        return self.q.popleft()[:size]

    def close(self):
        pass


class _Director:
    def __init__(self):
        self.got = []

    def sync_receive(self, data, now):
        self.got.append(data)


def _backup():
    director = _Director()
    sd = SyncDaemons(director, clock=lambda: 0)
    sock = _Queue()
    sd.backup = _Daemon(SyncConfig(BACKUP, "test", 0, 1472), sock, 0)
    return sd, sock, director


def test_a_burst_is_read_in_growing_turns_and_the_budget_comes_back_down():
    sd, sock, director = _backup()
    burst = [b"%06d" % i for i in range(RECV_BUDGET * 40)]
    sock.q.extend(burst)
    per_turn = []
    for _ in range(40):
        n = sd.poll(0)
        per_turn.append(n)
        if not sock.q:
            break
    want, budget, left = [], RECV_BUDGET, len(burst)
    while left:
        want.append(min(budget, left))
        left -= want[-1]
        budget = min(budget * 2, RECV_BUDGET_MAX)
    assert per_turn == want and max(per_turn) == RECV_BUDGET_MAX
    assert director.got == burst
    # the socket ran dry (the last turn read less than its budget, or the next finds none)
    sd.poll(0)
    sock.q.extend([b"x"] * (RECV_BUDGET + 5))
    assert sd.poll(0) == RECV_BUDGET             # back to the first budget
    assert sd.poll(0) == 5


def test_a_steady_trickle_keeps_the_small_budget():
    sd, sock, director = _backup()
    for turn in range(10):
        sock.q.extend([b"y"] * 100)
        assert sd.poll(0) == 100
        assert sd.backup.budget == RECV_BUDGET
    assert len(director.got) == 1000
