"""`fastlvs admin ARGS`: ipvsadm's command line against the running daemon.

The command is parsed here first (rules.parse_command, ipvsadm's checks and wording), so a
syntax error never needs the daemon; then it goes over the control socket as a "command"
request and the daemon's answer is printed as ipvsadm would print it: the listing text on
stdout byte for byte, an error as one line on stderr, with ipvsadm's exit status (2 for what
ipvsadm refuses itself, 255 for what the kernel would refuse, 1 for a listing of an absent
service).
"""
from __future__ import annotations

import json
import sys

from fastlvs import __version__
from fastlvs.control import ctl, sysctl
from fastlvs.control.health import format_status
from fastlvs.control.listing import IPVS_VERSION
from fastlvs.control.names import Resolver, named_conns, named_listing, named_save
from fastlvs.control.ipvsadm import CommandError, parse_command
from fastlvs.control.rules import RulesError, iter_rules

PROG = "fastlvs admin"

USAGE = f"""\
fastlvs {__version__}: ipvsadm 1.31's syntax against the running fastlvs daemon
Usage:
  {PROG} [--socket PATH] COMMAND [options]
  {PROG} -A|E -t|u|f service-address [-s scheduler] [-p [timeout]] [-M netmask] [-b sched-flags]
  {PROG} -D -t|u|f service-address
  {PROG} -C
  {PROG} -R                    (rules from stdin, added to the current table)
  {PROG} -S [-n]
  {PROG} -a|e -t|u|f service-address -r server-address [-g|-m|-i] [-w weight] [-x upper] [-y lower]
  {PROG} -d -t|u|f service-address -r server-address
  {PROG} --mark-rule MARK,PROTO,PREFIX,PORTS  (fastlvs's own: frames that get MARK, for -f MARK)
  {PROG} --del-mark-rules MARK
  {PROG} -L|l [-n] [-t|u|f service-address] [-c] [--stats|--rate|--thresholds|--persistent-conn] [--exact] [--timeout]
  {PROG} -Z [-t|u|f service-address]
  {PROG} --set tcp tcpfin udp
  {PROG} --start-daemon {{master|backup}} --mcast-interface IF [--syncid N] [--sync-maxlen N]
        [--mcast-group ADDR] [--mcast-port P] [--mcast-ttl T]
  {PROG} --stop-daemon {{master|backup}}
  {PROG} -L|l --daemon       (the running connection sync daemons)
  {PROG} --counters            (fastlvs's own: every counter as one JSON object)
  {PROG} --health              (fastlvs's own: quorum, real servers and their checkers)
  {PROG} --sysctl [NAME=VALUE ...]  (IPVS sysctls: set these, or list them all)
  {PROG} --drain [--drain-timeout S] | --undrain | --bgp
                               (BGP: withdraw every VIP and drain, announce again, or list)
  {PROG} -h | -v

A service-address is -t|--tcp-service, -u|--udp-service or --sctp-service ADDR:PORT, or
-f|--fwmark-service MARK [-6].
The socket is --socket PATH, else ${ctl.SOCKET_ENV}, else {ctl.DEFAULT_SOCKET}.
Exit status: 0 done, 2 refused by the command line checks (or no daemon), 255 refused by the
daemon, 1 a listing of a service that does not exist.
"""


# fastlvs's own options beside ipvsadm's (ipvsadm.OPTION_HELP), for fastlvs-admin(8).
OWN_OPTIONS = (
    ("--socket PATH", "the daemon's control socket (before the command)"),
    ("--counters", "print every counter as one JSON object"),
    ("--health", "print each service's quorum, real servers and their health checkers"),
    ("--sysctl [NAME=VALUE ...]", "set IPVS sysctls, or list them all"),
    ("--drain [--drain-timeout S]", "withdraw every VIP from BGP and drain established "
                                    "connections (at most S seconds), staying up"),
    ("--undrain", "announce the VIPs again"),
    ("--bgp", "list each VIP's announcement and why one is withheld"),
)


def _split_socket_option(argv: list[str]):
    """Leading fastlvs options (--socket PATH, --socket=PATH, then an optional "--")
    -> (path or None, the ipvsadm arguments)."""
    path = None
    argv = list(argv)
    while argv:
        if argv[0] == "--socket":
            if len(argv) < 2:
                raise CommandError("--socket: missing argument")
            path = argv[1]
            del argv[:2]
        elif argv[0].startswith("--socket="):
            path = argv[0].partition("=")[2]
            del argv[0]
        elif argv[0] == "--":
            del argv[0]
            break
        else:
            break
    return path, argv


def main(argv: list[str], stdin=None, stdout=None, stderr=None) -> int:
    """Run one admin command (the arguments after `fastlvs admin`); return the exit status.
    Never raises for bad input or an absent daemon: every failure is one line on stderr."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        path, argv = _split_socket_option(argv)
        if not argv:
            argv = ["-L"]                # ipvsadm with no argument lists the table
        if "--counters" in argv:         # ours, not ipvsadm's: kept out of its parser
            if argv != ["--counters"]:
                raise CommandError("--counters takes no other options")
            return _counters(path, stdout, stderr)
        if "--health" in argv:           # ours as well: the health checks' state
            if argv != ["--health"]:
                raise CommandError("--health takes no other options")
            return _health(path, stdout, stderr)
        if argv[0] in ("--drain", "--undrain", "--bgp"):   # ours: BGP announcements
            return _bgp(path, argv, stdout, stderr)
        if argv[0] == "--sysctl":        # ours too: /proc/sys/net/ipv4/vs as IPVS has it
            values = dict(sysctl.parse_assignment(a) for a in argv[1:] if a != "--sysctl")
            return _sysctl(path, values, stdout, stderr)
        cmd = parse_command(argv)
    except (CommandError, sysctl.SysctlError) as e:
        print(e, file=stderr)
        return ctl.EXIT_SYNTAX
    if cmd.name == "help":
        stdout.write(USAGE)
        return ctl.EXIT_OK
    if cmd.name == "version":
        stdout.write(f"fastlvs {__version__} (ipvsadm 1.31 syntax, IPVS v{IPVS_VERSION})\n")
        return ctl.EXIT_OK
    args = {"argv": argv}
    if cmd.name == "restore":
        text = stdin.read()
        try:
            for _ in iter_rules(text, "-"):    # the whole text is checked before sending
                pass
        except RulesError as e:
            print(e, file=stderr)
            return ctl.EXIT_SYNTAX
        if len(text.encode()) > ctl.MAX_LINE - 4096:
            print(f"{PROG}: -R: rules text larger than {ctl.MAX_LINE // 1024} KiB; restore it "
                  f"in parts", file=stderr)
            return ctl.EXIT_SYNTAX
        args["stdin"] = text
    names = _namer(cmd)
    try:
        if cmd.name == "list" and cmd.connection:
            answer = _stream(path, args, stdout, names)
        else:
            answer = ctl.call("command", path, **args)
    except ctl.Unreachable as e:
        print(f"{PROG}: {e}", file=stderr)
        return ctl.EXIT_SYNTAX
    if answer["ok"]:
        stdout.write(names(answer.get("result") or ""))
        return ctl.EXIT_OK
    for line in answer.get("errors") or [answer.get("error", "unknown error")]:
        print(line, file=stderr)
    code = answer.get("code")
    return code if isinstance(code, int) and 0 < code < 256 else ctl.EXIT_REFUSED


def _namer(cmd):
    """What turns the daemon's numbers into ipvsadm's names for this command: plain -L, -Lc
    and -S look names up (here, never in the daemon: a look-up may wait on DNS)."""
    if cmd.numeric or cmd.name not in ("list", "save"):
        return lambda text: text
    resolver = Resolver()
    if cmd.name == "save":
        return lambda text: named_save(text, resolver)
    if cmd.connection:
        return lambda text: named_conns(text, resolver)
    if cmd.list_timeout or cmd.daemon:
        return lambda text: text
    return lambda text: named_listing(text, cmd.stats or cmd.rate, resolver)


def _stream(path, args, stdout, names) -> dict:
    # -Lc can be a million lines: print each chunk as it comes, keep none of it
    with ctl.Client(path) as client:
        for answer in client.stream("command", **args):
            if "chunk" in answer:
                stdout.write(names(answer["chunk"]))
                stdout.flush()
    return answer


def _ask(op, path, stderr, **args):
    """The daemon's result for `op`, or the exit status after printing why there is none."""
    try:
        answer = ctl.call(op, path, **args)
    except ctl.Unreachable as e:
        print(f"{PROG}: {e}", file=stderr)
        return None, ctl.EXIT_SYNTAX
    if not answer["ok"]:
        print(answer.get("error", "unknown error"), file=stderr)
        return None, ctl.EXIT_REFUSED
    return answer, ctl.EXIT_OK


def _counters(path, stdout, stderr) -> int:
    answer, status = _ask("counters", path, stderr)
    if answer is not None:
        stdout.write(json.dumps(answer["result"], indent=2, sort_keys=True) + "\n")
    return status


def _health(path, stdout, stderr) -> int:
    answer, status = _ask("health", path, stderr)
    if answer is not None:
        stdout.write(format_status(answer["result"]))
    return status


def _sysctl(path, values, stdout, stderr) -> int:
    # Set `values` (already checked here) or, without any, list every sysctl.
    answer, status = _ask("sysctl", path, stderr, **({"set": values} if values else {}))
    if answer is not None and not values:
        stdout.write(sysctl.format_values(answer["result"]))
    return status


def _bgp_args(argv: list[str]) -> tuple[str, float | None]:
    """(action, timeout) of `--drain [--drain-timeout S]`, `--undrain` or `--bgp`;
    CommandError naming what is wrong."""
    action = {"--drain": "drain", "--undrain": "undrain", "--bgp": "status"}[argv[0]]
    rest = argv[1:]
    timeout = None
    if rest[:1] == ["--drain-timeout"] or (rest and rest[0].startswith("--drain-timeout=")):
        if action != "drain":
            raise CommandError("--drain-timeout goes with --drain")
        if "=" in rest[0]:
            text, rest = rest[0].partition("=")[2], rest[1:]
        elif len(rest) < 2:
            raise CommandError("--drain-timeout: missing argument")
        else:
            text, rest = rest[1], rest[2:]
        try:
            timeout = float(text)
        except ValueError:
            raise CommandError(f"--drain-timeout: {text!r} is not a number of seconds") \
                from None
        if not 0 <= timeout <= 86400:
            raise CommandError(f"--drain-timeout: {text} is outside 0..86400")
    if rest:
        raise CommandError(f"{argv[0]}: unexpected argument {rest[0]!r}")
    return action, timeout


def format_bgp(status: dict) -> str:
    """The `--bgp` listing: one line per VIP, announced or withheld and why."""
    state = ("drained: " + status["drain_reason"] if status["drained"] else
             "draining" if status["draining"] else "ready" if status["ready"] else "starting")
    lines = [f"BGP via {status['socket']} (include {status['include']}): {state}"]
    if status.get("bird_error"):
        lines.append(f"  BIRD not up to date: {status['bird_error']}")
    for vip in status["announced"]:
        lines.append(f"  {vip:<16} announced")
    for vip, why in status["withheld"].items():
        lines.append(f"  {vip:<16} withheld: {why}")
    return "\n".join(lines) + "\n"


def _bgp(path, argv, stdout, stderr) -> int:
    try:
        action, timeout = _bgp_args(argv)
    except CommandError as e:
        print(e, file=stderr)
        return ctl.EXIT_SYNTAX
    answer, status = _ask("bgp", path, stderr, action=action,
                          **({"timeout": timeout} if timeout is not None else {}))
    if answer is not None:
        stdout.write(format_bgp(answer["result"]))
    return status


__all__ = ["USAGE", "format_bgp", "main"]
