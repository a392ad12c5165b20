"""`make demo`: fastlvs as an LVS-DR director over AF_XDP, live, in network namespaces.

Builds a client, a director and three real servers on one bridged segment (fastlvs.lab.testbed),
starts `fastlvs --mode dr --backend xdp` in the director namespace with wrr weights 1, 2, 3,
sends real HTTP requests from the client (each over its own TCP connection) and a few UDP
flows, prints `fastlvs admin -Ln --stats` and the per-server counts the client saw, and
removes everything, also on Ctrl-C or failure. Root only; under a minute.

    python -m fastlvs.lab.demo_live [--requests N] [--backend xdp|packet|auto]
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import sys
import time

from fastlvs.lab.testbed import HTTP_PORT, Testbed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastlvs.lab.demo_live", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--requests", type=int, default=600,
                    help="HTTP requests, one TCP connection each (default 600)")
    ap.add_argument("--backend", default="xdp", choices=("xdp", "packet", "auto"))
    args = ap.parse_args(argv)
    if args.requests <= 0:
        ap.error("--requests must be positive")
    if os.geteuid() != 0:
        print("fastlvs demo: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    # Ctrl-C (even when started with SIGINT ignored, as background jobs are) and SIGTERM
    # raise KeyboardInterrupt, so a half-built topology still reaches the finally below
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    tb = Testbed("dr", n_rs=3, prefix="fldemo")
    t0 = time.monotonic()
    try:
        tb.build()
        weights = {"rs1": 1, "rs2": 2, "rs3": 3}
        rules = tb.write_rules(tb.rules(weights, sched="wrr"))
        print(f"topology: client {tb.client}, director {tb.director}, real servers "
              f"{', '.join(f'{n}={ip}' for n, ip in zip(tb.rs_names, tb.rips))} "
              f"({time.monotonic() - t0:.1f} s)")
        print("rules (ipvsadm-save format):")
        print("".join("  " + ln + "\n" for ln in open(rules).read().splitlines()), end="")
        d = tb.start_daemon("--rules", rules, backend=args.backend)
        for line in d.lines:
            print("  " + line)
        seen: collections.Counter = collections.Counter()
        t1 = time.monotonic()
        for _ in range(args.requests):
            seen[tb.http_get()] += 1
        dt = time.monotonic() - t1
        flows = {}
        for i in range(6):
            s = tb.socket(socket.SOCK_DGRAM)
            try:
                flows[i] = {tb.udp_ask(s, b"demo%d-%d" % (i, k)) for k in range(5)}
            finally:
                s.close()
        time.sleep(0.3)            # the last ACKs of the closes reach the director
        print(f"\n$ fastlvs admin -Ln --stats        ({args.requests} HTTP requests in "
              f"{dt:.2f} s, {args.requests / dt:.0f} connections/s)")
        print(d.admin("-Ln", "--stats").stdout, end="")
        print("\nwhat the client saw (HTTP, one TCP connection per request, wrr 1:2:3):")
        total = sum(seen.values())
        for name in tb.rs_names:
            share = weights[name] / sum(weights.values())
            print(f"  {name} {tb.rip_of(name):<12} weight {weights[name]}  {seen[name]:>5} "
                  f"requests ({seen[name] / total:.1%}, expected {share:.1%})")
        print("UDP flows (5 datagrams each, one server per flow): "
              + ", ".join(f"flow {i} -> {'/'.join(sorted(v))}" for i, v in flows.items()))
        rc = d.stop()
        left = tb.xdp_attached()
        print(f"\nfastlvs stopped (exit {rc}); XDP left attached: {left or 'none'}; "
              f"nft tables left: {'fastlvs' in tb.nft_tables() and 'yes' or 'none'}")
        ok = rc == 0 and not left and all(seen[n] for n in tb.rs_names) and all(
            len(v) == 1 for v in flows.values())
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as e:
        print(f"fastlvs demo: {e}", file=sys.stderr)
        return 1
    finally:
        tb.destroy()
        print(f"namespaces removed; {time.monotonic() - t0:.1f} s in all")


if __name__ == "__main__":
    sys.exit(main())
