"""Differential tests at the C/Python seam: the engine's C hash_32/hsiphash and its sh/dh/mh
lookups against fastlvs.schedulers (the Python reference), including quiesced and
overloaded servers and the fallback probes."""
import random

import pytest

import fastlvs.engine._core as core
import fastlvs.engine._testing as testing
from tests.core import packets as P
from fastlvs.schedulers import Flow, RealServer, create
from fastlvs.schedulers import hashing
from tests.core.helpers import S

KIND = {"sh": 1, "dh": 2, "mh": 3}


def test_hsiphash_matches_python():
    rng = random.Random(1)
    key = (2654435761, 2654435761)
    for _ in range(300):
        v = rng.getrandbits(32)
        k0, k1 = rng.getrandbits(64), rng.getrandbits(64)
        assert testing.py_hsiphash_u32(v, k0, k1) == hashing.hsiphash(v.to_bytes(4, "little"),
                                                                      (k0, k1))
        assert testing.py_hsiphash_u32(v, *key) == hashing.hsiphash(v.to_bytes(4, "little"), key)


def test_hash_32_matches_python():
    rng = random.Random(2)
    for _ in range(300):
        v, b = rng.getrandbits(32), rng.randint(1, 32)
        assert testing.py_hash_32(v, b) == hashing.hash_32(v, b)


@pytest.mark.parametrize("name,flags", [
    ("sh", []), ("sh", ["sh-port"]), ("sh", ["sh-fallback"]), ("sh", ["sh-fallback", "sh-port"]),
    ("dh", []), ("mh", []), ("mh", ["mh-port"]), ("mh", ["mh-fallback", "mh-port"]),
])
def test_c_hash_schedulers_match_python(name, flags):
    rng = random.Random(hash((name, tuple(flags))) & 0xFFFF)
    n = 5
    servers = [RealServer(f"192.0.2.{11 + i}", 80, weight=rng.randint(1, 4)) for i in range(n)]
    sched = create(name, servers, flags=flags)
    e = core.Engine(capacity=1 << 14, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    e.set_service(1, 17, P.VIP, 53)
    for i, rs in enumerate(servers):
        e.set_dest(i + 1, 1, rs.addr, 53, "dr", P.RS_MAC[0], ifindex=100 + i, weight=rs.weight)
    fl = (1 if any(f.endswith("fallback") for f in flags) else 0) | \
         (2 if any(f.endswith("port") for f in flags) else 0)

    def push():
        # lookup_table gives 1 + index into sched.servers; our dest ids are index + 1 too
        ids = {id(rs): k + 1 for k, rs in enumerate(servers)}
        table = [0 if t == 0 else ids[id(sched.servers[t - 1])] for t in sched.lookup_table()]
        e.set_hash_table(1, table, name, fl)

    push()
    ts = 1
    for phase in range(3):
        if phase == 1:
            # quiesce one, overload another (engine: via u_threshold; Python: flag)
            servers[0].weight = 0
            e.set_dest(1, 1, servers[0].addr, 53, "dr", P.RS_MAC[0], ifindex=100, weight=0)
            sched.update(servers)
            push()
        if phase == 2:
            servers[1].weight = 0
            e.set_dest(2, 1, servers[1].addr, 53, "dr", P.RS_MAC[0], ifindex=101, weight=0)
            sched.update(servers)
            push()
        frames, flows = [], []
        for _ in range(60):
            src = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            dst = P.VIP
            sport = rng.randint(1, 65535)
            frames.append(P.udp(src=src, sport=sport, dst=dst, dport=53))
            flows.append(Flow(src, sport, dst, 53, "udp"))
        ts += 1000 * S          # everything older has expired: each frame is a new flow
        got = e.process_verdicts(frames, ts)
        for v, flow in zip(got, flows):
            want = sched.schedule(flow)
            if want is None:
                assert v[:2] == ("drop", "no_dest"), (flow, v)
            else:
                assert v[0] == "tx" and v[2] == 100 + servers.index(want), (flow, v)


def test_dh_uses_destination_address():
    servers = [RealServer(f"192.0.2.{11 + i}", 80) for i in range(3)]
    sched = create("dh", servers)
    e = core.Engine(capacity=64, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC)
    e.set_service(1, 6, P.VIP, 80)
    for i, rs in enumerate(servers):
        e.set_dest(i + 1, 1, rs.addr, 80, "dr", P.RS_MAC[0], ifindex=100 + i)
    e.set_hash_table(1, list(sched.lookup_table()), "dh")
    out = e.process([P.tcp("S", sport=s) for s in range(1, 20)], S)
    want = sched.schedule(Flow(P.CLIENT, 1, P.VIP, 80, "tcp"))
    assert {o[1] for o in out} == {100 + servers.index(want)}
