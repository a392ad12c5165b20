"""The `fastlvs` command: argument parsing, exit codes and printing only.

    fastlvs --mode dr|nat|tun -i IFACE ...   the director (daemon.py), in the foreground
    fastlvs demo      the scheduler library over weighted servers
    fastlvs replay    a pcap through the engine, as the director would forward it
    fastlvs admin     ipvsadm's syntax against the running daemon (over its control socket)
    fastlvs vrrp-conf the VRRP part of a keepalived.conf, for `keepalived --vrrp`

`fastlvs --help` shows the daemon's options and the subcommands, `fastlvs --version` the
installed version; a bare `fastlvs` says how to start (exit 2). Errors are one line on
stderr and exit status 2. This module never imports the compiled engine itself; the
subcommand modules it calls do, when they run.
"""
from __future__ import annotations

import argparse
import sys

from fastlvs import settings


# The subcommands, each with its one-line help: build_parser() and the daemon's --help both
# list them from here.
SUBCOMMANDS = (
    ("admin", "ipvsadm's syntax against the running daemon (fastlvs admin [--socket PATH] -h)"),
    ("replay", "run a pcap through the engine, write what it transmits"),
    ("demo", "run every scheduler over weighted servers and print the shares"),
)
_HELP = dict(SUBCOMMANDS)

DAEMON_USAGE = ("fastlvs [--mode dr|nat|tun] -i IFACE (--vip VIP:PORT --rs RIP:PORT ... | "
                "--rules FILE | --config FILE) [options]\n"
                "       fastlvs admin|replay|demo ...")

# What a bare `fastlvs` prints (exit 2): how to start, in two lines.
START_HINT = ("fastlvs: nothing to do: start the director with `fastlvs -i IFACE --vip VIP:PORT "
              "--rs RIP:PORT` (or --rules FILE, --config FILE)\n"
              "fastlvs: or run a subcommand: admin, replay, demo; `fastlvs --help` lists every "
              "option")


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("fastlvs")
    except metadata.PackageNotFoundError:       # run from a checkout that was never installed
        from fastlvs import __version__
        return __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's own usage dump is two lines; we promise one.
        self.exit(2, f"{self.prog}: {message}\n")


def _demo(args) -> int:
    from fastlvs.demo import run_scheduler_demo

    if args.flows <= 0:
        print("fastlvs demo: --flows must be positive", file=sys.stderr)
        return 2
    run_scheduler_demo(flows=args.flows, seed=args.seed, out=sys.stdout)
    return 0


def _replay(args) -> int:
    from fastlvs.replay import ReplayError, ReplayOptions, RulesError, parse_neighbor, run

    try:
        neighbors = dict(parse_neighbor(n) for n in args.neighbor)
        opts = ReplayOptions(rules=args.rules, input=args.input, output=args.output,
                             local_ip=args.local_ip, local_mac=args.local_mac,
                             neighbors=neighbors, gateway=args.gateway, mtu=args.mtu,
                             stats=args.stats, list_file=args.list, capacity=args.capacity)
        run(opts, out=sys.stdout)
    except RulesError as e:
        print(e, file=sys.stderr)
        return 2
    except (ReplayError, OSError) as e:
        print(f"fastlvs replay: {e}", file=sys.stderr)
        return 2
    return 0


def _vrrp_conf(args) -> int:
    from fastlvs.control.keepalived import KeepalivedError
    from fastlvs.control.vrrp import vrrp_conf

    warnings: list = []
    try:
        text = vrrp_conf(args.file, warnings)
    except KeepalivedError as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fastlvs vrrp-conf: {e.filename or args.file}: {e.strerror}", file=sys.stderr)
        return 2
    for line in warnings:           # lines the derived file does not carry
        print(line, file=sys.stderr)
    sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastlvs", description="Linux Virtual Server director in user space")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help=_HELP["demo"])
    d.add_argument("--flows", type=int, default=10_000, help="flows per scheduler (default 10000)")
    d.add_argument("--seed", type=int, default=1, help="seed for the random flows (default 1)")
    d.set_defaults(func=_demo)

    r = sub.add_parser("replay", help=_HELP["replay"])
    r.add_argument("--rules", required=True, metavar="RULES", help="ipvsadm-save -n rules file")
    r.add_argument("--in", dest="input", required=True, metavar="IN.pcap",
                   help="frames as the director receives them (pcap or pcapng, Ethernet)")
    r.add_argument("--out", dest="output", required=True, metavar="OUT.pcap",
                   help="frames the director transmits, stamped with their cause's time")
    r.add_argument("--local-ip", required=True, action="append", metavar="IP",
                   help="the director's address, IPv4 or IPv6; give it twice for one of each")
    r.add_argument("--local-mac", required=True, metavar="MAC", help="the director's MAC")
    r.add_argument("--neighbor", action="append", default=[], metavar="IP=MAC",
                   help="MAC of a next hop (real server, client or gateway); repeatable")
    r.add_argument("--gateway", action="append", metavar="IP",
                   help="next hop for addresses without --neighbor (IPv4 or IPv6; "
                        "once per family)")
    settings.setting("mtu").add_to(r, default=1500, help="MTU towards the real servers (TUN)")
    r.add_argument("--stats", action="store_true", help="print the counters as one JSON object")
    r.add_argument("--list", metavar="FILE", help="write `ipvsadm -Ln` of the final state to FILE")
    settings.setting("capacity").add_to(r, default=settings.setting("capacity").default)
    r.set_defaults(func=_replay)

    # Shown in --help only: main() hands `admin`'s arguments to admin.main untouched, since
    # ipvsadm's options (-A, -t, --set ...) are not argparse's to interpret.
    a = sub.add_parser("admin", help=_HELP["admin"])
    a.add_argument("ipvsadm_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="an ipvsadm command line: -A -E -D -C -a -e -d -L -Z -S -R --set")
    a.set_defaults(func=lambda args: _admin(args.ipvsadm_args))

    v = sub.add_parser("vrrp-conf", help="print the VRRP part of a keepalived.conf, the file "
                                         "for `keepalived --vrrp` beside fastlvs")
    v.add_argument("file", metavar="KEEPALIVED.CONF")
    v.set_defaults(func=_vrrp_conf)
    return p


def daemon_parser() -> argparse.ArgumentParser:
    """`fastlvs --mode dr|nat|tun ...`: the director itself (no subcommand word). Its --help
    is `fastlvs --help`: the daemon's options, then the subcommands."""
    epilog = "subcommands (fastlvs SUBCOMMAND -h for their options):\n" + "\n".join(
        f"  {name:<8} {text}" for name, text in SUBCOMMANDS)
    p = _Parser(prog="fastlvs", usage=DAEMON_USAGE, epilog=epilog,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Linux Virtual Server director in user space: without a "
                            "subcommand, run the director in the foreground.")
    p.add_argument("-V", "--version", action="version", version=f"fastlvs {version()}")
    for setting in settings.CLI_SETTINGS:
        setting.add_to(p)
    return p


def _daemon(argv) -> int:
    from fastlvs.daemon import main as daemon_main

    a = daemon_parser().parse_args(argv)
    opts = settings.Options(**{st.name: getattr(a, st.name) for st in settings.CLI_SETTINGS})
    opts.mode = a.mode or ("dr" if not a.config else None)
    return daemon_main(opts)


def _admin(argv) -> int:
    from fastlvs.admin import main as admin_main

    return admin_main(list(argv))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "admin":
        return _admin(argv[1:])
    if not argv:
        print(START_HINT, file=sys.stderr)
        return 2
    if argv[0].startswith("-"):        # the daemon's options, --help and --version included
        return _daemon(argv)
    args = build_parser().parse_args(argv)
    return args.func(args)
