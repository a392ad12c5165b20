"""ipvsadm's command language: one command line (argv) -> `Command` (`parse_command`), and a
table-changing Command -> ServiceTable (`apply_command`). Shared by rules files (rules.py),
`fastlvs admin` and the control socket.

The parser accepts what ipvsadm 1.31 accepts (short and long options, clustered short
options, `--opt=value`) with ipvsadm's defaults (scheduler wlc, -g, weight 1, -p = 360 s)
and checks, including the sync daemon's commands (--start-daemon, --stop-daemon); what fastlvs
does not implement (fwmark services, --pe, GUE/GRE tunnels) is refused by name rather than
ignored.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import NamedTuple

from fastlvs import schedulers as _schedulers
from fastlvs.control.model import (DEFAULT_PERSISTENT_TIMEOUT, DEFAULT_SCHEDULER, MAX_TIMEOUT,
                           ControlError, FwdMethod, Proto, ServiceKey, ServiceTable, addrport,
                           MarkRule, check_sched_flags, fwmark_key, parse_mark_rule)

MAX_RULE_WEIGHT = 65535          # ipvsadm's -w range is 0..65535 (the kernel takes more)
MAX_RULE_THRESHOLD = 2**31 - 1   # ipvsadm's -x/-y range is 0..INT_MAX


class CommandError(ValueError):
    """A command line refused before it reaches the table (what ipvsadm refuses itself)."""


# -- the option table ------------------------------------------------------------------------
class _Opt(NamedTuple):
    short: str | None
    long: str
    arg: int         # 0: none, 1: required, 2: optional (only -p)
    slot: str        # the command name ("cmd:...") or ipvsadm's option name used in messages
    value: str = ""  # which of several options sharing a slot this is (-t/-u, -g/-m/-i)


_NONE, _REQ, _OPT = 0, 1, 2
_OPTIONS = [
    _Opt("A", "add-service", _NONE, "cmd:add-service"),
    _Opt("E", "edit-service", _NONE, "cmd:edit-service"),
    _Opt("D", "delete-service", _NONE, "cmd:delete-service"),
    _Opt("C", "clear", _NONE, "cmd:flush"),
    _Opt("L", "list", _NONE, "cmd:list"),
    _Opt("l", "list", _NONE, "cmd:list"),
    _Opt("Z", "zero", _NONE, "cmd:zero"),
    _Opt("a", "add-server", _NONE, "cmd:add-server"),
    _Opt("e", "edit-server", _NONE, "cmd:edit-server"),
    _Opt("d", "delete-server", _NONE, "cmd:delete-server"),
    _Opt(None, "set", _NONE, "cmd:set"),
    _Opt("h", "help", _NONE, "cmd:help"),
    _Opt("v", "version", _NONE, "cmd:version"),
    _Opt("R", "restore", _NONE, "cmd:restore"),
    _Opt("S", "save", _NONE, "cmd:save"),
    _Opt(None, "start-daemon", _REQ, "cmd:start-daemon"),
    _Opt(None, "stop-daemon", _REQ, "cmd:stop-daemon"),
    # fastlvs' own: the firewall-mark match rules (MARK,PROTO,PREFIX,PORTS), as no netfilter
    # marks the frames fastlvs sees
    _Opt(None, "mark-rule", _REQ, "cmd:mark-rule"),
    _Opt(None, "del-mark-rules", _REQ, "cmd:del-mark-rules"),
    _Opt("t", "tcp-service", _REQ, "service-address", "tcp"),
    _Opt("u", "udp-service", _REQ, "service-address", "udp"),
    _Opt(None, "sctp-service", _REQ, "service-address", "sctp"),
    _Opt("f", "fwmark-service", _REQ, "service-address", "fwmark"),
    _Opt("s", "scheduler", _REQ, "scheduler"),
    _Opt("p", "persistent", _OPT, "persistent"),
    _Opt("M", "netmask", _REQ, "netmask"),
    _Opt("r", "real-server", _REQ, "real-server"),
    _Opt("g", "gatewaying", _NONE, "forwarding-method", "dr"),
    _Opt("m", "masquerading", _NONE, "forwarding-method", "nat"),
    _Opt("i", "ipip", _NONE, "forwarding-method", "tun"),
    _Opt("w", "weight", _REQ, "weight"),
    _Opt("x", "u-threshold", _REQ, "u-threshold"),
    _Opt("y", "l-threshold", _REQ, "l-threshold"),
    _Opt("n", "numeric", _NONE, "numeric"),
    _Opt("c", "connection", _NONE, "connection"),
    _Opt(None, "mcast-interface", _REQ, "mcast-interface"),
    _Opt(None, "syncid", _REQ, "syncid"),
    _Opt(None, "timeout", _NONE, "timeout"),
    _Opt(None, "daemon", _NONE, "daemon"),
    _Opt(None, "stats", _NONE, "stats"),
    _Opt(None, "rate", _NONE, "rate"),
    _Opt(None, "thresholds", _NONE, "thresholds"),
    _Opt(None, "persistent-conn", _NONE, "persistent-conn"),
    _Opt(None, "nosort", _NONE, "nosort"),
    _Opt(None, "sort", _NONE, ""),             # a no-op ipvsadm keeps for compatibility
    _Opt("X", "exact", _NONE, "exact"),
    _Opt("6", "ipv6", _NONE, "", "ipv6"),       # only meaningful with -f
    _Opt("o", "ops", _NONE, "ops"),
    _Opt(None, "pe", _REQ, "pe"),
    _Opt("b", "sched-flags", _REQ, "sched-flags"),
    _Opt(None, "mcast-group", _REQ, "mcast-group"),
    _Opt(None, "mcast-port", _REQ, "mcast-port"),
    _Opt(None, "mcast-ttl", _REQ, "mcast-ttl"),
    _Opt(None, "sync-maxlen", _REQ, "sync-maxlen"),
    _Opt(None, "tun-info", _NONE, "tun-info"),
    _Opt(None, "tun-type", _REQ, "tun-type"),
    _Opt(None, "tun-port", _REQ, "tun-port"),
    _Opt(None, "tun-nocsum", _NONE, "tun-nocsum"),
    _Opt(None, "tun-csum", _NONE, "tun-csum"),
    _Opt(None, "tun-remcsum", _NONE, "tun-remcsum"),
]
_BY_SHORT = {o.short: o for o in _OPTIONS if o.short}

# What each option does, for `fastlvs-admin(8)` (manpages.py), keyed by the long name above;
# tests/unit/test_manpages.py holds every option of _OPTIONS to having its line here.
OPTION_HELP = {
    "add-service": "add a virtual service",
    "edit-service": "change a virtual service's scheduler, persistence, netmask or flags",
    "delete-service": "delete a virtual service and its real servers",
    "clear": "delete every virtual service",
    "list": "list the table (with -c the connections, --timeout the timeouts, --daemon the "
            "sync daemons); without -n, names are looked up as ipvsadm does",
    "zero": "zero the counters of one service, or of all",
    "add-server": "add a real server to a service",
    "edit-server": "change a real server's forwarding method, weight or thresholds",
    "delete-server": "delete a real server from a service",
    "set": "set the tcp, tcpfin and udp timeouts in seconds (0 keeps one)",
    "help": "print the usage",
    "version": "print the version",
    "restore": "add the rules read from stdin (ipvsadm-save format) to the table",
    "save": "print the table as ipvsadm-save rules",
    "start-daemon": "start the connection sync daemon as master or backup",
    "stop-daemon": "stop the master or backup connection sync daemon",
    "mark-rule": "fastlvs's own: frames matching PROTO, PREFIX and PORTS get MARK, which "
                 "-f MARK services serve",
    "del-mark-rules": "fastlvs's own: delete the match rules of MARK",
    "tcp-service": "a TCP service, ADDR:PORT ([V6]:PORT)",
    "udp-service": "a UDP service, ADDR:PORT ([V6]:PORT)",
    "sctp-service": "an SCTP service, ADDR:PORT ([V6]:PORT)",
    "fwmark-service": "a firewall-mark service: every frame the mark rules give MARK",
    "scheduler": "the scheduler: rr wrr lc wlc lblc lblcr dh sh sed nq fo ovf mh twos "
                 "(default wlc)",
    "persistent": "persistence, with its timeout in seconds (default 360)",
    "netmask": "the persistence granularity: a dotted mask (IPv4) or a prefix length (IPv6)",
    "real-server": "the real server, ADDR[:PORT]",
    "gatewaying": "forward by direct routing (the default)",
    "masquerading": "forward by NAT",
    "ipip": "forward by tunnelling (IPIP, IPv6-in-IPv6)",
    "weight": "the real server's weight, 0..65535 (0: no new connections)",
    "u-threshold": "upper connection threshold: no new connections above it",
    "l-threshold": "lower connection threshold: new connections again below it",
    "numeric": "print addresses and ports as numbers",
    "connection": "list the connection entries",
    "mcast-interface": "the interface the sync daemon sends or listens on",
    "syncid": "the sync daemon's id, 0..255 (a backup with 0 takes every id)",
    "timeout": "list the tcp, tcpfin and udp timeouts",
    "daemon": "list the running sync daemons",
    "stats": "list with the counters",
    "rate": "list with the rates",
    "thresholds": "list with the thresholds",
    "persistent-conn": "list with the persistent connection counts",
    "nosort": "list in the table's own order",
    "sort": "accepted and ignored, as ipvsadm does",
    "exact": "print counters unscaled",
    "ipv6": "with -f: an IPv6 firewall-mark service",
    "ops": "one-packet scheduling (UDP): every datagram scheduled alone",
    "pe": "the persistence engine (sip)",
    "sched-flags": "scheduler flags: flag-1..flag-3, sh-fallback, sh-port, mh-fallback, mh-port",
    "mcast-group": "the sync multicast group (default 224.0.0.81)",
    "mcast-port": "the sync UDP port (default 8848)",
    "mcast-ttl": "the sync multicast TTL, 1..255 (default 1)",
    "sync-maxlen": "the largest sync message",
    "tun-info": "list with the tunnel settings",
    "tun-type": "the tunnel type of a TUN real server: ipip (default), gue or gre",
    "tun-port": "GUE's UDP destination port, 1..65535 (needed with gue, refused otherwise)",
    "tun-nocsum": "GUE/GRE without an outer checksum (the default)",
    "tun-csum": "GUE/GRE with an outer checksum (UDP's or GRE's)",
    "tun-remcsum": "GUE with remote checksum offload (forwarded packets: an outer UDP checksum)",
}
_BY_LONG: dict[str, _Opt] = {}
for _o in _OPTIONS:
    _BY_LONG.setdefault(_o.long, _o)

# ipvsadm's option names in its checking order: the first offending one is reported.
_SLOT_ORDER = (
    "numeric", "connection", "service-address", "scheduler", "persistent", "netmask",
    "real-server", "forwarding-method", "weight", "u-threshold", "l-threshold",
    "mcast-interface", "timeout", "daemon", "stats", "rate", "thresholds", "persistent-conn",
    "nosort", "syncid", "exact", "ops", "pe", "sched-flags", "mcast-group", "mcast-port",
    "mcast-ttl", "sync-maxlen", "tun-info", "tun-type", "tun-port", "tun-nocsum", "tun-csum",
    "tun-remcsum",
)
_SERVICE_OPTS = frozenset({"scheduler", "persistent", "netmask", "ops", "pe", "sched-flags"})
_DEST_OPTS = frozenset({"forwarding-method", "weight", "u-threshold", "l-threshold",
                        "tun-type", "tun-port", "tun-nocsum", "tun-csum", "tun-remcsum"})
_LIST_ONE_OF = frozenset({"connection", "service-address", "timeout", "daemon"})
# command -> (required option names, allowed option names); what ipvsadm's table permits.
_COMMAND_OPTIONS: dict[str, tuple[frozenset, frozenset]] = {
    "add-service": (frozenset({"service-address"}), _SERVICE_OPTS),
    "edit-service": (frozenset({"service-address"}), _SERVICE_OPTS),
    "delete-service": (frozenset({"service-address"}), frozenset()),
    "flush": (frozenset(), frozenset()),
    "list": (frozenset(), _LIST_ONE_OF | {"numeric", "stats", "rate", "thresholds",
                                          "persistent-conn", "nosort", "syncid", "exact",
                                          "tun-info"}),
    "add-server": (frozenset({"service-address", "real-server"}), _DEST_OPTS),
    "edit-server": (frozenset({"service-address", "real-server"}), _DEST_OPTS),
    "delete-server": (frozenset({"service-address", "real-server"}), frozenset()),
    "set": (frozenset(), frozenset()),
    "start-daemon": (frozenset(), frozenset({"mcast-interface", "syncid", "mcast-group",
                                             "mcast-port", "mcast-ttl", "sync-maxlen"})),
    "stop-daemon": (frozenset(), frozenset({"syncid"})),
    "restore": (frozenset(), frozenset()),
    "save": (frozenset(), frozenset({"numeric"})),
    "zero": (frozenset(), frozenset({"service-address"})),
    "mark-rule": (frozenset(), frozenset()),
    "del-mark-rules": (frozenset(), frozenset()),
}
# The short form of each command, as messages and dumps spell it.
COMMAND_FLAGS = {
    "add-service": "-A", "edit-service": "-E", "delete-service": "-D", "flush": "-C",
    "list": "-L", "add-server": "-a", "edit-server": "-e", "delete-server": "-d",
    "set": "--set", "start-daemon": "--start-daemon", "stop-daemon": "--stop-daemon",
    "restore": "-R", "save": "-S", "zero": "-Z", "help": "-h", "version": "-v",
    "mark-rule": "--mark-rule", "del-mark-rules": "--del-mark-rules",
}
# Commands that change a ServiceTable: the ones a rules file may hold.
TABLE_COMMANDS = frozenset({"add-service", "edit-service", "delete-service", "flush",
                            "add-server", "edit-server", "delete-server", "zero", "set",
                            "mark-rule", "del-mark-rules"})
_UNSUPPORTED = {
    "ipv6": "-6 (it only applies to firewall-mark services)",
    "pe": "persistence engines (--pe)",
}


@dataclass(frozen=True)
class SyncDaemonOptions:
    """--start-daemon/--stop-daemon's state and options as given; 0 or None: not given
    (the sync daemon fills the kernel's defaults: group 224.0.0.81, port 8848, ttl 1, and
    the sync message length from the interface)."""

    state: str                      # "master" | "backup"
    ifname: str = ""                # --mcast-interface
    syncid: int = 0                 # --syncid 0..255
    maxlen: int = 0                 # --sync-maxlen 1..65507
    group: str | None = None        # --mcast-group, an IPv4 or IPv6 multicast address
    port: int = 0                   # --mcast-port 1..65535
    ttl: int = 0                    # --mcast-ttl 1..255


@dataclass
class Command:
    """One ipvsadm command line, parsed and checked, with ipvsadm's defaults filled in.

    `name` is ipvsadm's command name (add-service, edit-service, delete-service, flush,
    add-server, edit-server, delete-server, zero, set, list, save, restore, help, version);
    `options` the ipvsadm option names that were given. Service fields apply to -A/-E,
    dest fields to -a/-e/-d (`dest_port` already resolved as ipvsadm does: the service's
    port when omitted, and forced to it for -g and -i), `timeouts` to --set, and the
    list fields to -L/-S.
    """

    name: str
    options: frozenset = frozenset()
    service: ServiceKey | None = None
    sched: str = DEFAULT_SCHEDULER
    timeout: int = 0
    netmask: str | int | None = None
    sched_flags: tuple = ()
    ops: bool = False
    dest_addr: str | None = None
    dest_port: int = 0
    fwd: FwdMethod = FwdMethod.DR
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    timeouts: tuple | None = None
    numeric: bool = False
    connection: bool = False
    list_timeout: bool = False
    daemon: bool = False
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    nosort: bool = False
    exact: bool = False
    tun_info: bool = False
    tun: tuple | None = None              # a -i dest's (tun_type, tun_port, tun_flags)
    mark_rule: MarkRule | None = None     # --mark-rule
    mark: int = 0                         # --del-mark-rules
    sync: SyncDaemonOptions | None = None     # --start-daemon / --stop-daemon

    @property
    def flag(self) -> str:
        """The command's short option (-A, -a, ...)."""
        return COMMAND_FLAGS[self.name]


# -- tokens -> (command, options) ------------------------------------------------------------
_NUMBER = re.compile(r"[+-]?[0-9]+\Z")


def _looks_like_option(tok: str) -> bool:
    return tok.startswith("-") and len(tok) > 1 and not _NUMBER.match(tok)


def _tokenize(argv: list[str]):
    """Yield (option, spelled, value) and ("arg", None, token) for positional arguments."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok.startswith("--") and len(tok) > 2:
            name, eq, inline = tok[2:].partition("=")
            opt = _BY_LONG.get(name)
            if opt is None:
                raise CommandError(f"unknown option '--{name}'")
            spelled = f"--{name}"
            if opt.arg == _NONE:
                if eq:
                    raise CommandError(f"{spelled}: takes no argument")
                yield opt, spelled, None
            elif eq:
                yield opt, spelled, inline
            elif opt.arg == _REQ:
                if i >= len(argv) or _looks_like_option(argv[i]):
                    raise CommandError(f"{spelled}: missing argument")
                yield opt, spelled, argv[i]
                i += 1
            else:
                if i < len(argv) and not argv[i].startswith("-"):
                    yield opt, spelled, argv[i]
                    i += 1
                else:
                    yield opt, spelled, None
        elif tok.startswith("-") and len(tok) > 1 and tok != "--":
            # A cluster of short options (-Ln, -At VIP): an option that takes an argument
            # takes the rest of the cluster, or else the next token.
            j = 1
            while j < len(tok):
                ch = tok[j]
                j += 1
                opt = _BY_SHORT.get(ch)
                if opt is None:
                    raise CommandError(f"unknown option '-{ch}'")
                spelled = f"-{ch}"
                if opt.arg == _NONE:
                    yield opt, spelled, None
                    continue
                rest = tok[j:]
                j = len(tok)
                if rest:
                    yield opt, spelled, rest
                elif opt.arg == _REQ:
                    if i >= len(argv) or _looks_like_option(argv[i]):
                        raise CommandError(f"{spelled}: missing argument")
                    yield opt, spelled, argv[i]
                    i += 1
                elif i < len(argv) and not argv[i].startswith("-"):
                    yield opt, spelled, argv[i]
                    i += 1
                else:
                    yield opt, spelled, None
        elif tok == "--":
            continue
        else:
            yield "arg", None, tok


# -- value parsers ---------------------------------------------------------------------------
def _number(text: str, what: str, lo: int, hi: int) -> int:
    if text is None or not _NUMBER.match(text.strip()):
        raise CommandError(f"{what}: {text!r} is not an integer")
    value = int(text.strip())
    if not lo <= value <= hi:
        raise CommandError(f"{what}: {value} is outside {lo}..{hi}")
    return value


def _port(text: str, proto: Proto, spelled: str, whole: str) -> int:
    if _NUMBER.match(text):
        value = int(text)
        if not 0 <= value <= 65535:
            raise CommandError(f"{spelled} {whole}: port {value} is outside 0..65535")
        return value
    # ipvsadm also takes a service name from the services database (what ipvsadm-save
    # without -n writes, e.g. ":http").
    if text:
        try:
            return socket.getservbyname(text, proto.value)
        except OSError:
            pass
    raise CommandError(f"{spelled} {whole}: {text!r} is neither a port number nor a "
                       f"{proto.value} service name")


def parse_addrport(text: str, proto: Proto, spelled: str = "-t"):
    """Parse ipvsadm's `host[:port]`: `A.B.C.D[:PORT]`, `[IPV6]:PORT` or a bare IPv6
    address. Returns (ipaddress object, port or None when omitted). Host names are not
    resolved (CommandError)."""
    if not text or text.isdigit():
        raise CommandError(f"{spelled} {text!r}: not an address[:port]")
    host, port = text, None
    if text.startswith("["):
        inner, bracket, after = text[1:].partition("]")
        if not bracket or not after.startswith(":"):
            # ipvsadm takes a bracketed address only with its port (fwmark6.json)
            what = "real" if spelled in ("-r", "--real-server") else "virtual"
            raise CommandError(f"{spelled} {text}: want [IPV6]:PORT (illegal {what} server "
                               f"address[:port] specified)")
        host, port = inner, after[1:]
    elif text.count(":") > 1:
        host = text                      # a bare IPv6 address: no port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise CommandError(f"{spelled} {text}: {host!r} is not an IP address (host names "
                           f"are not looked up)") from None
    if text.startswith("[") and ip.version != 6:
        raise CommandError(f"{spelled} {text}: brackets are for IPv6 addresses")
    return ip, (None if port is None else _port(port, proto, spelled, text))


def _netmask(text: str, af: int):
    if af == 4:
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise CommandError(f"netmask: {text!r} is not a dotted IPv4 mask "
                               f"(illegal virtual server persistent mask specified)") from None
    if not text.isdigit() or not 1 <= int(text) <= 128:
        raise CommandError(f"netmask: {text!r} is not a prefix length 1..128 (illegal ipv6 "
                           f"netmask specified)")
    return int(text)


# -- argv -> Command -------------------------------------------------------------------------
def parse_command(argv: list[str]) -> Command:
    """Parse one ipvsadm command line (its arguments, without the program name; a leading
    "ipvsadm" is skipped) into a checked Command. CommandError says what is wrong.

    Checks are ipvsadm's: one command, each option at most once, the options the command
    needs and allows, value ranges (-w 0..65535, -x/-y 0..2**31-1, -p 1..31 days),
    "Zero port specified for non-persistent service", one-packet scheduling only for UDP,
    mixed address families only for -i, and the scheduler flags against the scheduler.
    """
    argv = list(argv)
    if argv and argv[0] == "ipvsadm":
        argv = argv[1:]
    cmd_name = None
    given: dict[str, tuple[_Opt, str, str | None]] = {}
    positional: list[str] = []
    ipv6_flag = None
    mark_arg = None
    daemon_state = None
    for opt, spelled, value in _tokenize(argv):
        if opt == "arg":
            positional.append(value)
            continue
        if opt.slot.startswith("cmd:"):
            if cmd_name is not None:
                raise CommandError("multiple commands specified")
            cmd_name = opt.slot[4:]
            daemon_state = value           # --start-daemon/--stop-daemon master|backup
            mark_arg = value               # --mark-rule / --del-mark-rules
            continue
        if opt.value == "ipv6":
            # ipvsadm reads -6 as "the -f just given is IPv6": anything else first is
            # refused in its words (tests/fixtures/kernel/fwmark6.json)
            if given.get("service-address", (None,))[0] is None or \
                    given["service-address"][0].value != "fwmark":
                raise CommandError("-6 used before -f")
            ipv6_flag = spelled
            continue
        if not opt.slot:
            continue                     # --sort
        if opt.slot in given:
            raise CommandError(f"multiple '{opt.slot}' options specified")
        given[opt.slot] = (opt, spelled, value)
    if cmd_name is None:
        raise CommandError("no command given (one of -A -E -D -C -a -e -d -L -Z -S -R --set)")
    cmd = Command(cmd_name)
    if cmd_name in ("help", "version"):
        return cmd
    if cmd_name in ("mark-rule", "del-mark-rules"):
        return _mark_command(cmd, mark_arg, given, positional)

    # Which options this command needs and allows, in ipvsadm's order and words.
    required, allowed = _COMMAND_OPTIONS[cmd_name]
    names = set(given)
    seen_one_of = None
    for slot in _SLOT_ORDER:
        if slot not in names:
            if slot in required:
                raise CommandError(f"You need to supply the '{slot}' option for the "
                                   f"'{cmd_name}' command")
            continue
        if slot not in required and slot not in allowed:
            raise CommandError(f"Illegal '{slot}' option with the '{cmd_name}' command")
        if cmd_name == "list" and slot in _LIST_ONE_OF:
            if seen_one_of is not None:
                raise CommandError(f"The option '{slot}' conflicts with the '{seen_one_of}' "
                                   f"option in the '{cmd_name}' command")
            seen_one_of = slot
    cmd.options = frozenset(names)

    # What fastlvs does not do, refused by name.
    if cmd_name in _UNSUPPORTED:
        raise CommandError(f"--{cmd_name}: fastlvs does not support {_UNSUPPORTED[cmd_name]}")
    for slot in sorted(names):
        opt, spelled, _ = given[slot]
        what = _UNSUPPORTED.get(opt.value or slot)
        if what:
            raise CommandError(f"{spelled}: fastlvs does not support {what}")
    fwmark = "service-address" in given and given["service-address"][0].value == "fwmark"
    if ipv6_flag and not fwmark:
        raise CommandError(f"{ipv6_flag}: fastlvs does not support {_UNSUPPORTED['ipv6']}")

    # Positional arguments: only --set has them.
    if cmd_name == "set":
        if len(positional) < 3:
            raise CommandError("--set option requires 3 timeout values")
        cmd.timeouts = tuple(_number(v, "timeout", 0, MAX_TIMEOUT) for v in positional[:3])
        positional = positional[3:]
    if positional:
        raise CommandError(f"unexpected argument {positional[0]}")

    def value(slot):
        return given[slot][2] if slot in given else None

    if fwmark:
        cmd.service = _fwmark_service(given["service-address"], ipv6_flag)
    elif "service-address" in given:
        opt, spelled, text = given["service-address"]
        proto = Proto(opt.value)
        ip, port = parse_addrport(text, proto, spelled)
        cmd.service = ServiceKey(proto, str(ip), port or 0)

    if cmd_name in ("start-daemon", "stop-daemon"):
        cmd.sync = _sync_options(cmd_name, daemon_state, value)
    elif cmd_name in ("add-service", "edit-service"):
        _service_options(cmd, given, value)
    elif cmd_name in ("add-server", "edit-server", "delete-server"):
        _dest_options(cmd, given, value)
    elif cmd_name in ("list", "save"):
        cmd.numeric = "numeric" in names
        cmd.connection = "connection" in names
        cmd.list_timeout = "timeout" in names
        cmd.daemon = "daemon" in names
        cmd.stats = "stats" in names
        cmd.rate = "rate" in names
        cmd.thresholds = "thresholds" in names
        cmd.persistent_conn = "persistent-conn" in names
        cmd.nosort = "nosort" in names
        cmd.exact = "exact" in names
        cmd.tun_info = "tun-info" in names
        if ((cmd.connection or cmd.list_timeout or cmd.daemon)
                and (cmd.stats or cmd.rate or cmd.thresholds)) or \
                ((cmd.list_timeout or cmd.daemon) and cmd.persistent_conn):
            raise CommandError("options conflicts in the list command")
    return cmd


def _mark_command(cmd: Command, arg, given, positional) -> Command:
    if given or positional:
        extra = next(iter(given)) if given else positional[0]
        raise CommandError(f"--{cmd.name} takes one argument and no options, got {extra!r}")
    try:
        if cmd.name == "mark-rule":
            cmd.mark_rule = parse_mark_rule(arg)
        else:
            cmd.mark = parse_mark_rule(f"{arg},any,any,any").mark
    except ControlError as e:
        raise CommandError(f"--{cmd.name} {arg}: {e.detail}") from None
    return cmd


def _fwmark_service(given_opt, ipv6_flag) -> ServiceKey:
    # -f MARK [-6]: ipvsadm reads the mark as an unsigned 32-bit number and prints it
    # signed, so what its -S wrote (-1 for 4294967295) comes back as the same mark
    opt, spelled, text = given_opt
    t = (text or "").strip()
    if not _NUMBER.match(t) or not -2**31 <= int(t) <= 2**32 - 1:
        raise CommandError(f"invalid fwmark value `{text}' specified")
    mark = int(t) % 2**32
    if mark == 0:
        raise CommandError(f"invalid fwmark value `{text}' specified")
    return fwmark_key(mark, 6 if ipv6_flag else 4)


def _sync_options(cmd_name: str, state: str | None, value) -> SyncDaemonOptions:
    """The sync daemon's options, checked in ipvsadm's order and words."""
    if state not in ("master", "backup"):
        raise CommandError(_SYNC_STATE_ERROR[cmd_name])
    out = {"state": state}
    ifname = value("mcast-interface")
    if ifname is not None:
        out["ifname"] = ifname
    for slot, attr, lo, hi in _SYNC_NUMBERS:
        text = value(slot)
        if text is not None:
            if not _NUMBER.match(text.strip()) or not lo <= int(text) <= hi:
                raise CommandError(f"illegal {slot} specified")
            out[attr] = int(text)
    group = value("mcast-group")
    if group is not None:
        family = "IPv6" if ":" in group else "IPv4"
        try:
            ip = ipaddress.ip_address(group)
        except ValueError:
            ip = None
        if ip is None or ip.version != (6 if family == "IPv6" else 4) or not ip.is_multicast:
            raise CommandError(f"invalid {family} mcast-group `{group}'")
        out["group"] = str(ip)
    return SyncDaemonOptions(**out)


# ipvsadm's ranges for the sync daemon's numbers (its message when one is outside)
_SYNC_NUMBERS = (("syncid", "syncid", 0, 255), ("mcast-port", "port", 1, 65535),
                 ("mcast-ttl", "ttl", 1, 255), ("sync-maxlen", "maxlen", 1, 65535 - 20 - 8))
_SYNC_STATE_ERROR = {"start-daemon": "illegal start-daemon parameter specified",
                     "stop-daemon": "illegal start_daemon specified"}   # sic, ipvsadm 1.31


def _service_options(cmd: Command, given, value) -> None:
    sched = value("scheduler")
    if sched is not None:
        if sched not in _schedulers.names():
            raise CommandError(f"unknown scheduler {sched!r}; valid: "
                               f"{', '.join(_schedulers.names())}")
        cmd.sched = sched
    if "persistent" in given:
        text = value("persistent")
        cmd.timeout = DEFAULT_PERSISTENT_TIMEOUT if text is None else \
            _number(text, "persistent", 1, MAX_TIMEOUT)
    if "netmask" in given:
        cmd.netmask = _netmask(value("netmask"), cmd.service.af)
    cmd.ops = "ops" in given
    if "sched-flags" in given:
        flags = tuple(f for f in value("sched-flags").split(",") if f)
        if not flags:
            raise CommandError("sched-flags: no flag given")
        try:
            check_sched_flags(cmd.sched, flags)
        except ControlError as e:
            # ipvsadm's own words first (tests/fixtures/kernel/names.json), then why
            raise CommandError(f"sched-flags: {e.message} ({e.detail})") from None
        cmd.sched_flags = flags
    if cmd.service.vport == 0 and not cmd.timeout:
        raise CommandError("Zero port specified for non-persistent service")
    if cmd.ops and cmd.service.proto is not Proto.UDP:
        raise CommandError("One-Packet Scheduling is only for UDP virtual services")


def _dest_options(cmd: Command, given, value) -> None:
    opt, spelled, text = given["real-server"]
    ip, port = parse_addrport(text, cmd.service.proto, spelled)
    cmd.dest_addr = str(ip)
    # ipvsadm: a real server without a port gets the service's port (0 for a mark's).
    fwm = cmd.service.proto is Proto.FWM
    cmd.dest_port = (0 if fwm else cmd.service.vport) if port is None else port
    if cmd.name == "delete-server":
        return
    if "forwarding-method" in given:
        cmd.fwd = FwdMethod(given["forwarding-method"][0].value)
    if "weight" in given:
        cmd.weight = _number(value("weight"), "weight", 0, MAX_RULE_WEIGHT)
    if "u-threshold" in given:
        cmd.u_threshold = _number(value("u-threshold"), "u-threshold", 0, MAX_RULE_THRESHOLD)
    if "l-threshold" in given:
        cmd.l_threshold = _number(value("l-threshold"), "l-threshold", 0, MAX_RULE_THRESHOLD)
    _tunnel_options(cmd, given, value)
    # With DR and TUN the packet keeps its destination port, so ipvsadm makes the real
    # server's port the service's whatever was written.
    if cmd.fwd in (FwdMethod.DR, FwdMethod.TUN) and not fwm:
        cmd.dest_port = cmd.service.vport
    if ip.version != cmd.service.af and cmd.fwd is not FwdMethod.TUN:
        raise CommandError("Different address family is allowed only for tunneling servers")


# the checksum flags in the order ipvsadm reports a clash: the later one named first
_TUN_FLAG_OPTS = ("tun-nocsum", "tun-csum", "tun-remcsum")
# what each tunnel type takes besides --tun-type (ipvsadm's table; recorded in
# tests/fixtures/kernel/tunnels.json, as are the wordings below)
_TUN_TYPE_OPTS = {"ipip": (), "gue": ("tun-port",) + _TUN_FLAG_OPTS,
                  "gre": ("tun-nocsum", "tun-csum")}


def _tunnel_options(cmd: Command, given, value) -> None:
    tunnel_opts = [s for s in ("tun-type", "tun-port") + _TUN_FLAG_OPTS if s in given]
    if not tunnel_opts:
        return
    kind = "ipip"
    if "tun-type" in given:
        kind = value("tun-type")
        if kind not in _TUN_TYPE_OPTS:
            raise CommandError("illegal tunnel type specified")
    port = 0
    if "tun-port" in given:
        text = value("tun-port") or ""
        if not _NUMBER.match(text.strip()) or not 1 <= int(text.strip()) <= 65535:
            raise CommandError("illegal tunnel port specified")
        port = int(text.strip())
    if cmd.fwd is not FwdMethod.TUN:
        raise CommandError("Tunnel options conflict with forward method")
    if kind == "gue" and "tun-port" not in given:
        raise CommandError("You need to supply the 'tun-port' option for the 'gue' tunnel type")
    for slot in tunnel_opts:
        if slot != "tun-type" and slot not in _TUN_TYPE_OPTS[kind]:
            raise CommandError(f"Illegal '{slot}' option with the '{kind}' tunnel type")
    flags = [f for f in _TUN_FLAG_OPTS if f in given]
    if len(flags) > 1:
        raise CommandError(f"The option '{flags[1]}' conflicts with the '{flags[0]}' option "
                           f"in the '{kind}' tunnel type")
    cmd.tun = (kind, port, flags[0][4:] if flags else "nocsum")


# -- Command -> ServiceTable -----------------------------------------------------------------
def apply_command(table: ServiceTable, cmd: Command):
    """Carry out a table-changing Command on `table`; return what it made or removed (the
    Service, the Dest, the timeouts dict, or None). ControlError when the table refuses
    (e.g. "Service already exists"); CommandError for a command that does not change a
    table (list, save, restore, help, version)."""
    s = cmd.service
    if cmd.name == "add-service":
        return table.add_service(s.proto, s.vaddr, s.vport, sched=cmd.sched,
                                 timeout=cmd.timeout, netmask=cmd.netmask,
                                 flags=cmd.sched_flags, ops=cmd.ops)
    if cmd.name == "edit-service":
        return table.edit_service(s.proto, s.vaddr, s.vport, sched=cmd.sched,
                                  timeout=cmd.timeout, netmask=cmd.netmask,
                                  flags=cmd.sched_flags, ops=cmd.ops)
    if cmd.name == "delete-service":
        return table.delete_service(*s)
    if cmd.name == "flush":
        return table.clear()
    if cmd.name == "add-server":
        return table.add_dest(s, cmd.dest_addr, cmd.dest_port, fwd=cmd.fwd, weight=cmd.weight,
                              u_threshold=cmd.u_threshold, l_threshold=cmd.l_threshold,
                              tun=cmd.tun)
    if cmd.name == "edit-server":
        return table.edit_dest(s, cmd.dest_addr, cmd.dest_port, fwd=cmd.fwd,
                               weight=cmd.weight, u_threshold=cmd.u_threshold,
                               l_threshold=cmd.l_threshold, tun=cmd.tun)
    if cmd.name == "delete-server":
        return table.delete_dest(s, cmd.dest_addr, cmd.dest_port)
    if cmd.name == "zero":
        return table.zero(s)
    if cmd.name == "set":
        return table.set_timeouts(*cmd.timeouts)
    if cmd.name == "mark-rule":
        return table.add_mark_rule(cmd.mark_rule)
    if cmd.name == "del-mark-rules":
        return table.delete_mark_rules(cmd.mark)
    raise CommandError(f"{cmd.flag}: does not change the table")


def describe(cmd: Command, err: ControlError) -> str:
    """One line for a command the table refused: what was asked, of what, and why."""
    svc = cmd.service.option_text() if cmd.service else ""
    if err.message in ("Service not defined", "No such service"):
        return f"{cmd.flag} for a service that was not added: {svc}"
    if err.message == "Service already exists":
        return f"{cmd.flag} for a service that was already added: {svc}"
    where = f"{cmd.flag} {svc}".rstrip()
    if cmd.dest_addr is not None:
        where += f" -r {addrport(cmd.dest_addr, cmd.dest_port)}"
    return f"{where}: {err}"


__all__ = ["OPTION_HELP", "COMMAND_FLAGS", "Command", "CommandError", "SyncDaemonOptions", "TABLE_COMMANDS",
           "apply_command", "describe", "parse_addrport", "parse_command"]
