"""`fastlvs demo`: the scheduler library over weighted real servers, printed as a table of
shares. Connections open and close while the flows arrive, so the connection-counting
schedulers (lc, wlc, sed, nq, ...) see live counters, as they would inside the director."""
from __future__ import annotations

import heapq
import random

from fastlvs.schedulers import Flow, RealServer, create, names

VIPS = "203.0.113.0/24"
# Added in this order with `ipvsadm -a`; IPVS lists the newest first.
SERVERS = [("192.0.2.11", 1), ("192.0.2.12", 2), ("192.0.2.13", 3), ("192.0.2.14", 4)]


def _flows(count: int, rng: random.Random) -> list[Flow]:
    # Clients come from a /16 with repeats, as real traffic does: repeats are what
    # source-hashing and locality schedulers are about.
    out = []
    for _ in range(count):
        saddr = (198 << 24) | (18 << 16) | rng.randrange(4096)
        # dh, lblc and lblcr key on the destination (a cache cluster's origin servers), so
        # the flows go to the 256 addresses of 203.0.113.0/24.
        daddr = 0xCB007100 | rng.randrange(256)
        out.append(Flow.from_ints(4, saddr, rng.randrange(1024, 65536), daddr, 80, "tcp"))
    return out


def simulate(name: str, flows: list[Flow], seed: int) -> list[int]:
    """Schedule `flows` with `name`; each connection stays active for a random number of
    later arrivals. Returns the picks per server, in SERVERS order."""
    servers = [RealServer(a, 80, weight=w) for a, w in SERVERS]
    sched = create(name, list(reversed(servers)), rng=random.Random(seed), clock=lambda: 0.0)
    rng = random.Random(seed)
    open_conns: list[tuple[int, int, RealServer]] = []
    picks = {id(s): 0 for s in servers}
    for t, flow in enumerate(flows):
        while open_conns and open_conns[0][0] <= t:
            _, _, rs = heapq.heappop(open_conns)
            rs.activeconns -= 1
        dest = sched.schedule(flow)
        if dest is None:
            continue
        picks[id(dest)] += 1
        dest.activeconns += 1
        heapq.heappush(open_conns, (t + rng.randrange(1, 200), t, dest))
    return [picks[id(s)] for s in servers]


def run_scheduler_demo(flows: int = 10_000, seed: int = 1, out=None) -> None:
    """Print, for every scheduler, the share of `flows` new connections each server got."""
    rng = random.Random(seed)
    flow_list = _flows(flows, rng)
    total_w = sum(w for _, w in SERVERS)
    head = f"{'sched':<6}" + "".join(f"{a + ' w=' + str(w):>18}" for a, w in SERVERS) + f"{'none':>8}"
    print(f"{flows} new TCP connections from 4096 clients to {VIPS} port 80, each open for "
          f"1-199 later arrivals; 'none' = the scheduler found no server available", file=out)
    print(head, file=out)
    print(f"{'weight':<6}" + "".join(f"{100 * w / total_w:>17.1f}%" for _, w in SERVERS), file=out)
    for name in names():
        counts = simulate(name, flow_list, seed)
        none = flows - sum(counts)
        print(f"{name:<6}" + "".join(f"{100 * c / flows:>17.1f}%" for c in counts) + f"{none:>8}",
              file=out)
