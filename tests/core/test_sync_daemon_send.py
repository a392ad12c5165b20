"""The sync daemon's master side over a real engine (both engines): what the engine makes after
real traffic (tests/sync/kernel_traffic.py) leaves by the socket whole and in order; a full
socket buffer keeps the rest for later turns and shows as lag; a socket that refuses is
counted and the daemon goes on. The socket here is one end of a datagram socketpair, so the
test needs no root; the multicast sockets themselves are tests/netns/test_sync_sockets.py's."""
from __future__ import annotations

import socket
import threading
import time

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


def _entries(datagrams) -> list[tuple]:
    out = []
    for data in datagrams:
        d = protocol.decode(data, syncid=3)
        assert d.ok, d.reason
        out += [(c.cport, c.vport, c.template, c.state_name) for c in d.conns]
    return out


def _listed(e, now) -> list[tuple]:
    names = {"ASSURED": "ASSURED", "NONE": "NONE", "UDP": "UDP"}
    return [(c["cport"], c["vport"], c["template"], names.get(c["state"], c["state"]))
            for c in e.conns(now)]


def _real_clock(sd, t):
    # the engine's clock at t now, running on from there (a handover waits in real time)
    m0 = time.monotonic_ns()
    sd.clock = lambda: t + (time.monotonic_ns() - m0)


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_handover_sends_every_live_conn_before_it_returns(kind):
    """Every conn and template the engine lists leaves in the handover's datagrams (the
    per-packet policy had sent only some), and the call returns once they are out."""
    e, sd, peer = _master(kind)
    try:
        t = _traffic(e)
        t = kt.run(e, [kt.c_tcp(11000 + i, 80, "S") for i in range(20)], t)   # handshakes
        sd.poll(t)
        before = _entries(_drain(peer))
        _real_clock(sd, t)
        queued, sent = sd.handover([kt.VIP])
        got = _drain(peer)
        assert sent == len(got) and sd.stats()["master_pending"] == 0
        bulk = _entries(got)[-queued:]
        assert sorted(bulk) == sorted(_listed(e, t)) and queued == len(e.conns(t))
        syn = {(11000 + i, 80, False, "SYN_RECV") for i in range(20)}
        assert syn <= set(bulk) and not syn & set(before)   # the policy had not sent them
        assert sd.handover(["10.9.9.9"])[0] == 0       # a VIP without conns: nothing
    finally:
        sd.master.close()
        peer.close()


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_handover_waits_for_room_then_gives_up_in_time(kind):
    """A full send buffer: the handover waits for the reader and gets everything out; with
    no reader at all it returns after its wait, the rest kept for the next turns."""
    e, sd, peer = _master(kind)
    out = sd.master.sock
    try:
        t = _traffic(e)
        _real_clock(sd, t)
        n_fill = 0
        while True:
            try:
                out.send(b"x" * 200)
                n_fill += 1
            except BlockingIOError:
                break
        got = []
        stop = threading.Event()

        def reader():
            time.sleep(0.2)
            end = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < end:
                got.extend(g for g in _drain(peer) if g != b"x" * 200)
                time.sleep(0.002)
        th = threading.Thread(target=reader)
        th.start()
        try:
            queued, sent = sd.handover([kt.VIP], wait=8.0)
        finally:
            time.sleep(0.1)
            stop.set()
            th.join()
        got += [g for g in _drain(peer) if g != b"x" * 200]
        assert sent == len(got) and sd.stats()["master_pending"] == 0
        assert sorted(_entries(got)[-queued:]) == sorted(_listed(e, t))
        # nobody reads now: bounded by `wait`, and the rest waits for later turns
        while True:
            try:
                out.send(b"x" * 200)
            except BlockingIOError:
                break
        t0 = time.monotonic()
        queued, sent = sd.handover([kt.VIP], wait=0.3)
        assert 0.3 <= time.monotonic() - t0 < 3.0
        assert queued == len(e.conns(t)) and sent == 0
        assert sd.stats()["master_pending"] > 0
    finally:
        out.close()
        peer.close()
