"""The daemon's settings, each declared once: name, type, range, default and help.

The daemon's command line (cli.daemon_parser), the TOML [director] table (control/config.py),
the merging of the two (daemon.py) and `fastlvs replay`'s range checks are generated from
SETTINGS. Limits and forwarding methods come from the engine's contract. Imports nothing of
fastlvs but the contract, so the CLI can build its parser without the extension.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from fastlvs.engine import contract

BACKENDS = ("auto", "xdp", "packet")        # ring backends: "auto" tries AF_XDP first
OFFLOAD_MODES = ("auto", "on", "off")         # the XDP offload (engine/dataplane/offload.pxi)


@dataclass(frozen=True)
class Setting:
    """One setting. `name` is the attribute (Options, DirectorConfig) and the [director] key;
    `flags` its command-line spellings (none: TOML only); `toml` whether [director] takes
    it. `range` is (lo, hi), inclusive. `cli_default` is what argparse fills when the option
    is absent (None: the config or `default` decides); `cli_value` maps a command-line value
    to the DirectorConfig one (--busy-poll's flag becomes 50 microseconds)."""

    name: str
    type: type
    default: object
    help: str
    flags: tuple[str, ...] = ()
    toml: bool = True
    choices: tuple[str, ...] | None = None
    range: tuple[int, int] | None = None
    metavar: str | None = None
    doc: str = ""
    cli_default: object = None
    cli_action: str | None = None
    cli_value: object = None
    cli_range: bool = True          # the daemon checks the command line's value against range
    parse: Callable | None = None   # text -> value, ValueError naming the problem (a str setting)

    @property
    def option(self) -> str:
        """The long option, as error messages name it ("--capacity")."""
        return next((f for f in self.flags if f.startswith("--")), f"--{self.name}")

    def outside(self, value: int) -> str | None:
        """"V is outside LO..HI" when `value` breaks the range, else None."""
        if self.range is None:
            return None
        lo, hi = self.range
        return None if lo <= value <= hi else f"{value} is outside {lo}..{hi}"

    def check(self, value, label: str | None = None) -> str | None:
        """The one-line refusal of `value` ("--mtu: 20 is outside 68..65535"), or None."""
        problem = self.outside(value)
        if self.parse is not None:
            try:
                self.parse(value)
            except ValueError as e:
                problem = str(e)
        return None if problem is None else f"{label or self.option}: {problem}"

    def add_to(self, parser, **override) -> None:
        """Add this setting's option to an argparse parser; `override` replaces keyword
        arguments (replay's --mtu has its own default and help)."""
        kw: dict = {"help": self.help}
        if self.cli_action:
            kw["action"] = self.cli_action
        else:
            if self.type is not str:
                kw["type"] = self.type
            if self.choices:
                kw["choices"] = self.choices
        if self.metavar:
            kw["metavar"] = self.metavar
        if self.cli_default is not None:
            kw["default"] = self.cli_default() if callable(self.cli_default) else self.cli_default
        if "dest" not in override and not any(f == f"--{self.name.replace('_', '-')}"
                                              for f in self.flags):
            kw["dest"] = self.name
        kw.update(override)
        parser.add_argument(*self.flags, **kw)


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDR:PORT` (`[ADDR]:PORT` for IPv6) -> (address, port), for a socket to listen on.
    ValueError naming what is wrong; the address must be a literal one (0.0.0.0 or [::]
    for all of them), the port 1..65535."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not port:
        raise ValueError(f"{text!r} is not ADDR:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses")
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, [ADDR]:PORT")
    if not host:
        raise ValueError(f"{text!r}: the address is missing (0.0.0.0:PORT listens on all)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: the port must be 1..65535, not {port!r}")
    return str(addr), int(port)


_CAP = (contract.CAPACITY_MIN, contract.CAPACITY_MAX)
_MTU = (contract.MTU_MIN, contract.MTU_MAX)

# In command-line order; the [director] keys are the toml ones, in this order too.
SETTINGS: tuple[Setting, ...] = (
    Setting("mode", str, "dr", flags=("--mode",), choices=contract.FWD_NAMES,
            help="forwarding method of the real servers (default dr; a config may say)",
            doc='"dr" | "nat" | "tun": the default forwarding method of dests'),
    Setting("interface", str, None, flags=("-i", "--interface"),
            help="interface where clients' packets arrive",
            doc="where clients' packets arrive (None: the daemon's -i must say)"),
    Setting("rs_interface", str, None, flags=("--rs-interface",),
            help="interface where NAT real servers' replies arrive, when not the -i one",
            doc="where the real servers' replies arrive for NAT dests (None: `interface`)"),
    Setting("backend", str, "auto", flags=("--backend",), choices=BACKENDS,
            help="auto (default): AF_XDP when it attaches, else AF_PACKET",
            doc='"auto" (AF_XDP when it attaches, else AF_PACKET) | "xdp" | "packet"'),
    Setting("offload", str, "auto", flags=("--offload",), choices=OFFLOAD_MODES,
            help="forward established connections in XDP (on|off; default: on where the "
                 "program attaches natively, not on veth; AF_PACKET has no offload)",
            doc='"on" | "off" | "auto" (on where the XDP program attaches in native mode on '
                'a NIC, not a veth); needs the AF_XDP backend'),
    Setting("vip", str, None, flags=("--vip",), toml=False, metavar="[tcp:|udp:]VIP:PORT",
            help="quick start: one virtual service"),
    Setting("rs", list, None, flags=("--rs",), toml=False, cli_action="append",
            cli_default=list, metavar="RIP:PORT[@WEIGHT]",
            help="quick start: a real server of --vip; repeatable, added in order"),
    Setting("scheduler", str, "wlc", flags=("-s", "--scheduler"), toml=False,
            cli_default="wlc", help="quick start: scheduler (default wlc)"),
    Setting("persistent", int, None, flags=("-p", "--persistent"), toml=False,
            metavar="SECONDS", help="quick start: persistence timeout"),
    Setting("rules", str, None, flags=("--rules",), toml=False, metavar="FILE",
            help="services in ipvsadm-save format (SIGHUP re-reads)"),
    Setting("config", str, None, flags=("--config",), toml=False, metavar="FILE",
            help="TOML configuration (examples/fastlvs.toml)"),
    Setting("socket", str, None, flags=("--socket",),
            help="control socket (default $FASTLVS_SOCKET or /run/fastlvs/fastlvs.sock)",
            doc="the control socket's path (None: $FASTLVS_SOCKET or the default)"),
    Setting("capacity", int, contract.CAPACITY_DEFAULT, flags=("--capacity",), range=_CAP,
            help=f"connection table entries (default {contract.CAPACITY_DEFAULT})",
            doc="connection entries (conns + persistence templates), allocated at start"),
    Setting("mtu", int, None, flags=("--mtu",), range=_MTU,
            help="MTU towards the real servers (default: the interface's)",
            doc="towards the real servers (TUN adds 20 bytes); None: the interface's MTU"),
    Setting("busy_poll", int, 0, flags=("--busy-poll",), range=(0, 10**6),
            cli_action="store_true", cli_value=lambda on: 50 if on else None, cli_range=False,
            help="busy-poll the AF_XDP rings (lower latency, a core kept busy)",
            doc="SO_BUSY_POLL microseconds on the rings, 0 = off"),
    Setting("batch", int, contract.BATCH_DEFAULT, range=(1, contract.BATCH_MAX),
            help="frames per engine batch", doc="frames per engine batch"),
    # The command line's --cpu is checked against the CPUs this process may use (napi.py).
    Setting("cpu", int, None, flags=("--cpu",), range=(0, 4095), metavar="N", cli_range=False,
            help="run on CPU N, with the interfaces' NAPI as threads on N at nice 19 "
                 "(the fastest placement under load; restored at exit)",
            doc="run on this CPU, with the interfaces' NAPI threads there at nice 19 (napi.py)"),
    Setting("keepalived_conf", str, None, flags=("--keepalived-conf",), metavar="FILE",
            help="services from a keepalived.conf (virtual_server blocks; SIGHUP re-reads)",
            doc="a keepalived.conf whose virtual servers are the services (relative: to "
                "the TOML file)"),
    Setting("metrics", str, None, flags=("--metrics",), metavar="ADDR:PORT", parse=parse_listen,
            help="serve Prometheus metrics on http://ADDR:PORT/metrics (node_exporter's "
                 "ipvs names, and fastlvs's own; off by default)",
            doc='"ADDR:PORT" ("[ADDR]:PORT" for IPv6) of the /metrics endpoint (None: off)'),
    Setting("vrrp", bool, False, flags=("--vrrp",), cli_action="store_true",
            cli_value=lambda on: True if on else None, cli_range=False,
            help="run and supervise `keepalived --vrrp` on the keepalived.conf's VRRP part "
                 "(needs --keepalived-conf)",
            doc="true: run `keepalived --vrrp` on keepalived_conf's VRRP part"),
    # BGP/ECMP (bgp/): command-line overrides of the TOML [bgp] table (bgp/announce.py).
    Setting("bird_include", str, None, flags=("--bird-include",), toml=False, metavar="FILE",
            help="announce the served VIPs through BIRD 2: the include file of static /32 "
                 "routes to write (bird.conf includes it; off by default)"),
    Setting("bird_socket", str, None, flags=("--bird-socket",), toml=False, metavar="PATH",
            help="BIRD's control socket (default /run/bird/bird.ctl)"),
    Setting("drain_timeout", float, None, flags=("--drain-timeout",), toml=False,
            metavar="SECONDS", range=(0, 86400),
            help="after a withdrawal (SIGTERM, admin --drain), forward established "
                 "connections for at most this long (default 30)"),
)

BY_NAME = {s.name: s for s in SETTINGS}
DIRECTOR_KEYS = tuple(s.name for s in SETTINGS if s.toml)
CLI_SETTINGS = tuple(s for s in SETTINGS if s.flags)


def setting(name: str) -> Setting:
    """The declaration of `name`; KeyError for an unknown one."""
    return BY_NAME[name]


def _options_default(s: Setting):
    if s.cli_default is None:
        return None if s.cli_action != "store_true" else False
    if callable(s.cli_default):
        return field(default_factory=s.cli_default)
    return s.cli_default


# What the command line says (cli.py fills it; a config file may fill the rest). None: the
# option was not given.
Options = dataclasses.make_dataclass(
    "Options", [(s.name, object, _options_default(s)) for s in CLI_SETTINGS])
Options.__module__ = __name__
Options.__doc__ = "What the command line says (cli.py fills it; a config file may fill the rest)."


# -- [sync]: the connection sync daemons the director starts by itself ----------------------------
SYNC_ROLES = ("master", "backup", "both", "auto")


@dataclass(frozen=True)
class SyncSettings:
    """The sync daemons to run without an admin command: TOML's [sync] table, or
    keepalived.conf's lvs_sync_daemon. `role` master, backup or both (started at start and
    kept), or auto: master while one of `vips` is on this host (all the services' VIPs when
    `vips` is empty), backup otherwise, switched as the VIPs come and go, as keepalived
    switches IPVS's daemon with its VRRP instance. The rest are --start-daemon's options
    (0/None: the kernel's defaults)."""

    interface: str
    role: str = "auto"
    syncid: int = 0
    maxlen: int = 0
    group: str | None = None
    port: int = 0
    ttl: int = 0
    vips: tuple = ()
    source: str = "[sync]"          # where it was read, for messages

    def options(self, state: str):
        """--start-daemon `state` with these settings (an object with
        ipvsadm.SyncDaemonOptions' fields)."""
        return _SyncOptions(state, self.interface, self.syncid, self.maxlen, self.group,
                            self.port, self.ttl)


@dataclass(frozen=True)
class _SyncOptions:
    state: str
    ifname: str
    syncid: int
    maxlen: int
    group: str | None
    port: int
    ttl: int


# [sync] key -> (type, range, what --start-daemon calls it)
SYNC_KEYS = {
    "interface": (str, None, "--mcast-interface: the interface the messages go out of and "
                             "come in on (required)"),
    "role": (str, None, '"master" | "backup" | "both" | "auto" (default): auto is master '
                        "while a VIP is on this host, backup otherwise"),
    "syncid": (int, (0, 255), "--syncid: a backup keeps only messages of its syncid (0: any)"),
    "maxlen": (int, (1, 65507), "--sync-maxlen: the largest message (default: 1472 for a "
                                "master, the interface's MTU less 28 for a backup)"),
    "group": (str, None, "--mcast-group: an IPv4 or IPv6 multicast group (default "
                         "224.0.0.81)"),
    "port": (int, (1, 65535), "--mcast-port (default 8848)"),
    "ttl": (int, (1, 255), "--mcast-ttl (default 1)"),
}


def parse_sync(data, fail) -> SyncSettings | None:
    """The [sync] table (a dict from TOML) -> SyncSettings; None when absent. `fail(key,
    what)` returns the exception to raise for a bad value (one line)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise fail(None, "must be a table ([sync])")
    for key in data:
        if key not in SYNC_KEYS:
            raise fail(key, f"unknown key (valid: {', '.join(SYNC_KEYS)})")
    out = {}
    for key, (kind, rng, _) in SYNC_KEYS.items():
        if key not in data:
            continue
        v = data[key]
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise fail(key, f"{v!r} is not an integer")
            if not rng[0] <= v <= rng[1]:
                raise fail(key, f"{v} is outside {rng[0]}..{rng[1]}")
        elif not isinstance(v, str) or not v:
            raise fail(key, f"{v!r} is not a non-empty string")
        out[key] = v
    if "interface" not in out:
        raise fail(None, 'missing "interface" (the --mcast-interface of the sync daemons)')
    if len(out["interface"].encode()) > 15:
        raise fail("interface", f"{out['interface']!r} is longer than an interface name "
                                "(15 bytes)")
    if out.get("role", "auto") not in SYNC_ROLES:
        raise fail("role", f"{out['role']!r} is not one of {', '.join(SYNC_ROLES)}")
    if "group" in out:
        try:
            ip = ipaddress.ip_address(out["group"])
        except ValueError:
            ip = None
        if ip is None or not ip.is_multicast:
            raise fail("group", f"{out['group']!r} is not a multicast address")
        out["group"] = str(ip)
    return SyncSettings(**out)


def merge(options, config) -> list[str]:
    """Copy every setting the command line gave (`options`) over `config` (a
    DirectorConfig) and return the refusals of their ranges, one line each ([] if none).
    A config file's own values were checked when it was read."""
    problems = []
    for s in CLI_SETTINGS:
        if not s.toml:
            continue
        value = getattr(options, s.name)
        if s.cli_value is not None:
            value = s.cli_value(value)
        if value is None:
            continue
        setattr(config, s.name, value)
    for s in CLI_SETTINGS:
        if s.toml and s.cli_range:
            value = getattr(config, s.name)
            if value is not None:
                problem = s.check(value)
                if problem:
                    problems.append(problem)
    return problems


__all__ = ["BACKENDS", "BY_NAME", "CLI_SETTINGS", "DIRECTOR_KEYS", "Options", "SETTINGS",
           "SYNC_KEYS", "SYNC_ROLES", "Setting", "SyncSettings", "merge", "parse_listen",
           "parse_sync", "setting"]
