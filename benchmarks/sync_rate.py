"""Connection sync cost, engine only (no rings), in one run:

    .venv/bin/python -m benchmarks.sync_rate [--conns 65536] [--repeat 5]

- master, default policy (sync_threshold 3, sync_period 50): ACKs of established DR conns
  through the engine with the master on vs off, packets/s of each and their ratio;
- master, every packet sent (sync_period 1, sync_threshold 0): entries encoded per second,
  and packets/s against the master off;
- master, whole connections: 3-packet TCP connections (SYN, ACK, data; the third is the one
  sent) opened in C through an sh table, conns/s with the master on vs off;
- backup: conns installed per second by sync_receive (C) from 1472-byte messages, against
  fastlvs.sync.protocol.decode (Python, decoding only) on the same messages; and the same
  for IPv6 DR conns (72-byte entries, 20 to a message), against IPv4 in back-to-back pairs;
- bytes per synced conn in the messages, and with the IPv4+UDP headers, and the sync
  bandwidth that makes at 50,000 new conns/s.
Each figure is the median of --repeat runs (the master's packet rates of 8 * --repeat rounds, its
ratio the median of back-to-back pairs on vs off); every ratio compares figures of one run.
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.bench_engine_common import (FIRST_SRC, P, S, engine, establish,
                                             established_frames, with_src)
import fastlvs.engine._core as core
from fastlvs.engine._testing import Loaded
from fastlvs.sync import protocol as SP


def _median_rate(fn, count, repeat):
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def master_pps(nconns, repeat, nframes=65536, every_packet=False):
    """(pps off, pps on, entries/s on, median ratio on/off of back-to-back pairs) for ACKs
    of established conns; the two engines are measured in turn, 8 * repeat rounds."""
    setups = []
    for on in (False, True):
        e = engine("dr", capacity=nconns * 2)
        e.set_sysctl("sync_qlen_max", 1 << 24)
        if every_packet:
            e.set_sysctl("sync_threshold", 0)
            e.set_sysctl("sync_period", 1)
        establish(e, nconns)
        if on:
            e.sync_start_master(1, SP.sync_maxlen())
        loaded = Loaded(e, established_frames(nconns, nframes))
        loaded.process(2 * S)                        # warm up
        e.sync_take(5 * S)
        setups.append((e, loaded, []))
    clock = 2 * S
    sent = 0
    ratios = []
    for _ in range(repeat * 8):
        for e, loaded, rates in setups:
            clock += 1000
            before = e.sync_stats()["sent_conns"]
            t0 = time.perf_counter()
            loaded.process(clock)
            e.sync_take(clock + 3 * S)
            rates.append(nframes / (time.perf_counter() - t0))
            sent += e.sync_stats()["sent_conns"] - before
        # the pair's ratio: the machine is shared, and a pair measured back to back
        # shares its load
        ratios.append(setups[1][2][-1] / setups[0][2][-1])
    off, on = (statistics.median(r) for _, _, r in setups)
    return off, on, sent / (repeat * 8 * nframes) * on, statistics.median(ratios)


def master_conns(repeat, nconns=65536):
    """(conns/s off, conns/s on): SYN, ACK, data of new conns, the flows made in C."""
    rates = {False: [], True: []}
    ack_t, data_t = P.tcp("A", payload=b""), P.tcp("PA", payload=b"x" * 32)
    for _ in range(repeat):
        for on in (False, True):
            e = engine("dr", capacity=nconns * 2)
            e.set_sysctl("sync_qlen_max", 1 << 24)
            e.set_hash_table(1, [1 + (i % 8) for i in range(256)], "sh", 0)
            if on:
                e.sync_start_master(1, SP.sync_maxlen())
            syn = Loaded(e, [P.tcp("S", payload=b"")] * nconns)
            # the same sources again, in the same order
            ack = Loaded(e, [with_src(ack_t, FIRST_SRC + i) for i in range(nconns)])
            data = Loaded(e, [with_src(data_t, FIRST_SRC + i) for i in range(nconns)])
            t0 = time.perf_counter()
            syn.process(S, new_flows=True)
            for follow in (ack, data):
                follow.process(S + 1000)
            msgs = e.sync_take(4 * S)
            rates[on].append(nconns / (time.perf_counter() - t0))
            if on:
                assert sum(len(SP.decode(m).conns) for m in msgs) == nconns
    return statistics.median(rates[False]), statistics.median(rates[True])


VIP6, RIP6 = "2001:db8::1", "2001:db8:2::11"


def _engine6(capacity):
    e = core.Engine(capacity=capacity, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC, mtu=9000)
    e.set_service(1, 6, VIP6, 80)
    for i in range(8):          # as engine()'s v4 service: the dest walk is as long
        e.set_dest(i + 1, 1, f"2001:db8:2::{11 + i}", 80, "dr", P.RS_MAC[0], ifindex=10 + i)
    return e


def _messages(nconns, v6):
    c = SP.SyncConn(protocol=6, caddr="0.0.0.0", cport=40000, vaddr=VIP6 if v6 else P.VIP,
                    vport=80, daddr=RIP6 if v6 else "192.0.2.11", dport=80, flags=0x83,
                    state=1, timeout=900)
    packer = SP.SyncPacker(1, SP.sync_maxlen())
    msgs = []
    for i in range(nconns):
        if v6:
            c.caddr = f"2001:db8:11::{(i >> 16) & 0xFFFF:x}:{i & 0xFFFF:x}"
        else:
            c.caddr = f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        msgs += packer.add(c)
    return msgs + packer.flush()


def _install(nconns, msgs, v6):
    e = _engine6(nconns * 2) if v6 else engine("dr", capacity=nconns * 2)
    e.sync_start_backup(1)
    t0 = time.perf_counter()
    for m in msgs:
        e.sync_receive(m, S)
    rate = nconns / (time.perf_counter() - t0)
    assert e.sync_stats()["installed"] == nconns
    return rate


def backup(nconns, repeat, v6=False):
    """(installs/s in C, Python decode conns/s, bytes of messages, messages)."""
    msgs = _messages(nconns, v6)
    rates = [_install(nconns, msgs, v6) for _ in range(repeat)]
    py = _median_rate(lambda: [SP.decode(m, 1) for m in msgs], nconns, max(1, repeat // 2))
    return statistics.median(rates), py, sum(map(len, msgs)), len(msgs)


def backup_v6_ratio(nconns, repeat):
    """Median ratio of v6 to v4 install rates, measured in back-to-back pairs."""
    m4, m6 = _messages(nconns, False), _messages(nconns, True)
    return statistics.median(_install(nconns, m6, True) / _install(nconns, m4, False)
                             for _ in range(2 * repeat + 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=65536)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    off, on, ent, ratio = master_pps(a.conns, a.repeat)
    print(f"master, default policy: {off / 1e6:.2f} Mpps off, {on / 1e6:.2f} Mpps on "
          f"(ratio of pairs {ratio:.3f}), {ent / 1e3:.1f} k entries/s")
    off, on, ent, ratio = master_pps(a.conns, a.repeat, every_packet=True)
    print(f"master, every packet sent: {off / 1e6:.2f} Mpps off, {on / 1e6:.2f} Mpps on "
          f"(ratio of pairs {ratio:.3f}), {ent / 1e6:.2f} M entries/s encoded")
    coff, con = master_conns(a.repeat)
    print(f"master, 3-packet conns made in C: {coff / 1e3:.0f} k conns/s off, "
          f"{con / 1e3:.0f} k conns/s on (ratio {con / coff:.3f})")
    inst, py, nbytes, nmsg = backup(a.conns, a.repeat)
    print(f"backup: {inst / 1e6:.2f} M conns/s installed by sync_receive; protocol.decode "
          f"(Python, no install) {py / 1e3:.0f} k conns/s (ratio {inst / py:.1f})")
    per = nbytes / a.conns
    wire = (nbytes + nmsg * 28) / a.conns
    print(f"bytes per synced conn: {per:.2f} in the messages, {wire:.2f} with IPv4+UDP "
          f"headers ({nmsg} messages of at most {SP.sync_maxlen()} bytes); at 50,000 new "
          f"conns/s: {50000 * wire * 8 / 1e6:.1f} Mbit/s, {50000 / (a.conns / nmsg):.0f} "
          f"messages/s")
    inst6, py6, nbytes6, nmsg6 = backup(a.conns, a.repeat, v6=True)
    print(f"backup, IPv6 DR conns: {inst6 / 1e6:.2f} M conns/s installed (to IPv4: ratio of "
          f"pairs {backup_v6_ratio(a.conns, a.repeat):.3f}); protocol.decode "
          f"{py6 / 1e3:.0f} k conns/s; {nbytes6 / a.conns:.2f} bytes per conn in {nmsg6} "
          f"messages")


if __name__ == "__main__":
    main()
