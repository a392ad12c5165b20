"""The `fastlvs` command: argument parsing, exit codes and printing only.

Subcommands: `demo` (the scheduler library over weighted servers). The daemon, `admin` and
`replay` arrive with the fast path. This module never imports the compiled engine.
"""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from fastlvs.demo import run_scheduler_demo

    run_scheduler_demo(flows=args.flows, seed=args.seed, out=sys.stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastlvs", description="Linux Virtual Server director in user space")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run every scheduler over weighted servers and print the shares")
    d.add_argument("--flows", type=int, default=10_000, help="flows per scheduler (default 10000)")
    d.add_argument("--seed", type=int, default=1, help="seed for the random flows (default 1)")
    d.set_defaults(func=_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "flows", 1) <= 0:
        print("fastlvs demo: --flows must be positive", file=sys.stderr)
        return 2
    return args.func(args)
