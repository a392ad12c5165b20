"""Engine throughput: established flows (DR at 1k and 1M conns, NAT, TUN) with the baseline
loop (restore + touch headers) measured in the same run, new connections per second with
sh/mh tables in C and with rr/wlc through the Python callback, ICMP errors about established
conns (DR forwarded, NAT rewritten), IPv6 established flows (DR, NAT66, IPv6-in-IPv6 TUN)
beside the v4 ones, the cost of completing
partial checksums (frames from senders with checksum offload) against complete ones of the
same size, and bytes per entry.

Each round runs FRAMES frames in 64-frame batches from engine memory, so ns/packet =
round time / FRAMES. Run:
    .venv/bin/python -m pytest benchmarks/test_engine_bench.py --benchmark-only
"""
import pytest

from benchmarks.bench_engine_common import (S, FIRST_SRC, engine, establish,
                                            established_frames, with_l4_csum)
from fastlvs.engine._testing import Loaded
from tests.core import packets as P
from fastlvs.schedulers import Flow, RealServer, create

FRAMES = 65536


def _report(benchmark, frames, **extra):
    benchmark.extra_info.update(extra)
    benchmark.extra_info["frames"] = frames


@pytest.fixture(scope="module")
def dr_1k():
    e = engine("dr", 1 << 12)
    establish(e, 1000)
    return Loaded(e, established_frames(1000, FRAMES))


@pytest.fixture(scope="module")
def dr_1m():
    e = engine("dr", 1 << 21)
    establish(e, 1_000_000)
    return Loaded(e, established_frames(1_000_000, FRAMES))


@pytest.mark.benchmark(group="established")
def test_baseline_loop(benchmark, dr_1k):
    n = benchmark(dr_1k.baseline)
    assert n == FRAMES
    _report(benchmark, FRAMES, mode="baseline")


@pytest.mark.benchmark(group="established")
@pytest.mark.parametrize("which", ["dr_1k", "dr_1m"])
def test_dr_established(benchmark, which, request):
    loaded = request.getfixturevalue(which)
    tx = benchmark(loaded.process, 2 * S)
    assert tx == FRAMES
    _report(benchmark, FRAMES, mode=which, conns=loaded.engine.conn_count())


@pytest.mark.benchmark(group="established")
@pytest.mark.parametrize("fwd", ["nat", "tun"])
def test_nat_tun_established(benchmark, fwd):
    e = engine(fwd, 1 << 12)
    establish(e, 1000)
    loaded = Loaded(e, established_frames(1000, FRAMES))
    tx = benchmark(loaded.process, 2 * S)
    assert tx == FRAMES
    _report(benchmark, FRAMES, mode=f"{fwd}_1k")


@pytest.mark.benchmark(group="icmp")
@pytest.mark.parametrize("quote", [28, 548])
@pytest.mark.parametrize("fwd", ["dr", "nat"])
def test_icmp_errors_established(benchmark, fwd, quote):
    """Frag-needed from clients about what 1000 established conns sent them: forwarded
    (DR) or rewritten for the server (NAT, the ICMP checksum computed afresh)."""
    import random
    from ipaddress import IPv4Address
    e = engine(fwd, 1 << 12)
    establish(e, 1000)
    per_client = [P.icmp_about_reply(3, 4, 1400, quote=quote, payload=b"e" * 600,
                                     src=str(IPv4Address(FIRST_SRC + k)),
                                     client=str(IPv4Address(FIRST_SRC + k)))
                  for k in range(1000)]
    rng = random.Random(1)
    loaded = Loaded(e, [rng.choice(per_client) for _ in range(FRAMES)])
    tx = benchmark(loaded.process, 2 * S)
    assert tx == FRAMES
    _report(benchmark, FRAMES, mode=f"{fwd}_icmp_{quote}")


@pytest.mark.benchmark(group="checksum")
@pytest.mark.parametrize("payload", [0, 1400])
@pytest.mark.parametrize("csum", ["full", "partial"])
def test_checksum_completion(benchmark, csum, payload):
    """DR, 1k established conns: ACKs with `payload` bytes whose TCP checksum is complete
    (only checked against the pseudo-header sum) or partial (completed over the segment)."""
    e = engine("dr", 1 << 12)
    establish(e, 1000)
    frames = [with_l4_csum(f, csum == "partial")
              for f in established_frames(1000, FRAMES // 4, payload=payload)]
    loaded = Loaded(e, frames)
    before = e.stats()["csum_completed"]
    tx = benchmark(loaded.process, 2 * S)
    assert tx == len(frames)
    done = e.stats()["csum_completed"] - before
    assert (done > 0) == (csum == "partial")
    _report(benchmark, len(frames), mode=f"dr_1k_{csum}_{payload}B")


NEW = 16384


@pytest.mark.benchmark(group="new-conns")
@pytest.mark.parametrize("kind", ["sh", "mh"])
def test_new_conns_c_hash(benchmark, kind):
    e = engine("dr", 1 << 21)
    size = 256 if kind == "sh" else 4093
    e.set_hash_table(1, [1 + (i % 8) for i in range(size)], kind, 0)
    loaded = Loaded(e, [P.tcp("S")] * NEW)
    tx = benchmark.pedantic(loaded.process, args=(S, True), rounds=20, iterations=1)
    assert tx == NEW
    _report(benchmark, NEW, mode=kind)


@pytest.mark.benchmark(group="new-conns")
@pytest.mark.parametrize("name", ["rr", "wlc"])
def test_new_conns_python_callback(benchmark, name):
    e = engine("dr", 1 << 21)
    servers = [RealServer(f"192.0.2.{11 + i}", 80) for i in range(8)]
    sched = create(name, servers)
    ids = {id(rs): i + 1 for i, rs in enumerate(servers)}
    from_ints = Flow.from_ints

    def cb(svcs, flows):
        out = []
        for f in flows:
            rs = sched.schedule(from_ints(*f))
            out.append(ids[id(rs)] if rs is not None else 0)
        return out

    e.set_scheduler_callback(cb)
    loaded = Loaded(e, [P.tcp("S")] * NEW)
    tx = benchmark.pedantic(loaded.process, args=(S, True), rounds=20, iterations=1)
    assert tx == NEW
    _report(benchmark, NEW, mode=name)


def test_entry_size():
    e = engine("dr", 1 << 10)
    assert e.entry_size <= 48


# -- IPv6 ---------------------------------------------------------------------------------------
VIP6 = "2001:db8:1::100"


def _v6_engine(fwd: str, capacity: int, ndest: int = 8):
    import fastlvs.engine._core as core
    e = core.Engine(capacity=capacity, batch=64, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC,
                    mtu=9000)
    e.set_local(local_ip6="2001:db8:2::1")
    e.set_service(1, 6, VIP6, 80)
    for i in range(ndest):
        e.set_dest(i + 1, 1, f"2001:db8:2::{11 + i:x}", 8080 if fwd == "nat" else 80, fwd,
                   P.RS_MAC[0], ifindex=10 + i)
    e.set_gateway6_mac(P.GW_MAC, 2)
    return e


def _v6_frame(k: int, flags: str) -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    return bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC)
                 / IPv6(src=f"2001:db8:100:{k >> 16:x}:{k & 0xFFFF:x}::7", dst=VIP6)
                 / TCP(sport=40000, dport=80, flags=flags))


@pytest.mark.benchmark(group="established")
@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_v6_established(benchmark, fwd):
    """1000 established IPv6 conns, the same shape as the v4 cases (60-byte ACKs)."""
    import random
    e = _v6_engine(fwd, 1 << 12)
    e.set_hash_table(1, [1 + (i % 8) for i in range(256)], "sh", 0)
    e.process([_v6_frame(k, "S") for k in range(1000)], 1 * S)
    e.set_hash_table(1, None, 0)
    assert e.conn_count() == 1000
    acks = [_v6_frame(k, "A") for k in range(1000)]
    rng = random.Random(1)
    loaded = Loaded(e, [acks[rng.randrange(1000)] for _ in range(FRAMES)])
    tx = benchmark(loaded.process, 2 * S)
    assert tx == FRAMES
    _report(benchmark, FRAMES, mode=f"v6_{fwd}_1k")
