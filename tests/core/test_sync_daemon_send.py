"""The sync daemon's master side over a real engine (both engines): what the engine makes after
real traffic (tests/sync/kernel_traffic.py) leaves by the socket whole and in order; a full
socket buffer keeps the rest for later turns and shows as lag; a socket that refuses is
counted and the daemon goes on. The socket here is one end of a datagram socketpair, so the
test needs no root; the multicast sockets themselves are tests/netns/test_sync_sockets.py's."""
from __future__ import annotations

import socket

import pytest

from fastlvs.sync import protocol
from fastlvs.sync.daemon import MASTER, SEND_BUDGET, SyncConfig, SyncDaemons, _Daemon
from tests.control.control_harness import ENGINE_KINDS, engine_class
from tests.sync import kernel_traffic as kt

S = kt.S


def _master(kind):
    Engine = engine_class(kind)
    e = kt.configure(Engine(capacity=4096, batch=64, local_ip=kt.VIP, local_mac=kt.LOCAL_MAC))
    sd = SyncDaemons(e, clock=lambda: 0)
    out, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    out.setblocking(False)
    peer.setblocking(False)
    e.sync_start_master(3, 200)              # small messages: many datagrams
    sd.master = _Daemon(SyncConfig(MASTER, "test", 3, 200), out, 0)
    return e, sd, peer


def _drain(peer) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(peer.recv(65536))
        except BlockingIOError:
            return got


def _traffic(e, t0=S) -> int:
    t = t0
    for _, frames in kt.steps():
        t = kt.run(e, frames, t)
    return kt.run(e, kt.bulk(), t)


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_what_the_engine_makes_leaves_whole_and_in_order(kind):
    e, sd, peer = _master(kind)
    try:
        t = _traffic(e)
        sd.poll(t + 3 * S)                      # past the 2 s flush of a partial message
        got = _drain(peer)
        assert got, "no datagram sent"
        conns = 0
        for data in got:
            d = protocol.decode(data, syncid=3)
            assert d.ok, d.reason
            assert len(data) <= 200
            conns += len(d.conns)
        stats = sd.stats(t + 3 * S)
        assert stats["sent_messages"] == len(got) == e.sync_stats()["sent"]
        assert stats["sent_bytes"] == sum(map(len, got))
        assert conns == e.sync_stats()["sent_conns"]
        assert (stats["master_pending"], stats["master_lag_ns"]) == (0, 0)
    finally:
        sd.master.close()
        peer.close()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_a_full_buffer_keeps_the_rest_and_shows_lag(kind):
    e, sd, peer = _master(kind)
    out = sd.master.sock
    try:
        # fill the socket: nobody reads the peer
        filler = 0
        while True:
            try:
                out.send(b"x" * 200)
                filler += 1
            except BlockingIOError:
                break
        t = _traffic(e)
        now = t + 3 * S
        sd.poll(now)
        stats = sd.stats(now + S)
        assert stats["sent_messages"] == 0
        waiting = stats["master_pending"]
        assert waiting > 0
        assert stats["master_lag_ns"] == S         # taken at `now`, looked at a second later
        # the reader catches up: later turns send the rest, in order, SEND_BUDGET a turn
        _drain(peer)
        got = []
        for turn in range(1, 1 + waiting // SEND_BUDGET + 3):
            sd.poll(now + turn)
            got += [g for g in _drain(peer) if g != b"x" * 200]
        assert len(got) == waiting
        assert all(protocol.decode(g, syncid=3).ok for g in got)
        assert sd.stats(now + S)["master_pending"] == 0
    finally:
        out.close()
        peer.close()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_a_refusing_socket_is_counted_and_the_daemon_goes_on(kind):
    e, sd, peer = _master(kind)
    peer.close()                                # sends now fail: ECONNREFUSED
    try:
        t = _traffic(e)
        made = e.sync_stats()["queued"]
        sd.poll(t + 3 * S)
        stats = sd.stats()
        assert stats["send_errors"] >= 1
        assert stats["sent_messages"] == 0
        assert stats["master_pending"] == 0       # lost, as the kernel loses them
        assert made >= 1
    finally:
        sd.master.close()
