"""`fastlvs --config FILE`: the daemon's TOML configuration -> DirectorConfig + ServiceTable.

Services and dests are built with the model's own operations (ServiceTable.add_service /
add_dest), in file order, so a file means exactly what the same `ipvsadm -A/-a` lines would
(each dest is inserted at the head of its service's list, as IPVS does). Every error is one
line, `FILE[:LINE]: table.path.field: what is wrong`, never a traceback. The commented
example is examples/fastlvs.toml.
"""
from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from fastlvs import settings
from fastlvs.control import ctl, sysctl
from fastlvs.control.ipvsadm import (MAX_RULE_THRESHOLD, MAX_RULE_WEIGHT, CommandError,
                                     parse_addrport)
from fastlvs.engine import contract
from fastlvs.control.model import (DEFAULT_PERSISTENT_TIMEOUT, DEFAULT_SCHEDULER, MAX_TIMEOUT,
                                   ControlError, FwdMethod, Proto, ServiceTable, fwmark_key,
                                   mark_rule, tun_settings)

MODES = contract.FWD_NAMES
BACKENDS = settings.BACKENDS
PROTOS = ("tcp", "udp", "sctp")      # what the engine forwards
_FWD_NAMES = {"dr": FwdMethod.DR, "nat": FwdMethod.NAT, "tun": FwdMethod.TUN}


class ConfigError(ValueError):
    """A configuration that cannot be used; str() is the one line the user sees."""


class _DirectorBase:
    @property
    def fwd(self) -> FwdMethod:
        """The forwarding method a dest gets when it names none."""
        return _FWD_NAMES[self.mode]

    @property
    def socket_path(self) -> str:
        return ctl.socket_path(self.socket)


# The [director] table, one field per setting that TOML takes (fastlvs.settings declares them).
DirectorConfig = make_dataclass(
    "DirectorConfig",
    [(s.name, object, s.default) for s in settings.SETTINGS if s.toml],
    bases=(_DirectorBase,))
DirectorConfig.__module__ = __name__
DirectorConfig.__doc__ = "The [director] table, with its defaults.\n\n" + "\n".join(
    f"    {s.name:<12} {s.doc}" for s in settings.SETTINGS if s.toml)


@dataclass
class Config:
    """A loaded configuration: the director's settings and the services to serve."""

    director: DirectorConfig
    table: ServiceTable
    path: str = "-"
    services: int = field(default=0)
    bgp: object = None              # the [bgp] table (bgp.announce.BgpConfig), None: absent
    sync: settings.SyncSettings | None = None     # [sync]: the sync daemons to run


# -- locating a table path's line, for messages ------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\- \t\"']+?)\s*\]\]?\s*(#.*)?$")


class _Lines:
    """Where each table of the file starts and ends, by path (`service[1].dest[0]`), so an
    error about a value can name its line. Best effort: a value the scan cannot place (an
    inline table, a dotted key) is reported without a line."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.tables: dict[str, tuple[int, int]] = {}
        counts: dict[str, int] = {}       # array path -> elements seen
        resolved: dict[str, str] = {}     # header name -> path of its latest element
        starts: list[tuple[str, int]] = [("", 0)]
        for i, raw in enumerate(self.lines):
            m = _HEADER.match(raw)
            if not m:
                continue
            name = ".".join(p.strip().strip("\"'") for p in m.group(2).split("."))
            if m.group(1) == "[[":
                # An element of an array of tables, numbered under its parent's latest
                # element: the 2nd [[service.dest]] after the 2nd [[service]] is
                # service[1].dest[1].
                parent, _, last = name.rpartition(".")
                key = f"{resolved.get(parent, parent)}.{last}" if parent else last
                n = counts.get(key, 0)
                counts[key] = n + 1
                current = f"{key}[{n}]"
            else:
                current = name
            resolved[name] = current
            starts.append((current, i))
        for k, (path, start) in enumerate(starts):
            end = starts[k + 1][1] if k + 1 < len(starts) else len(self.lines)
            self.tables.setdefault(path, (start, end))

    def line_of(self, table: str, key: str | None) -> int | None:
        span = self.tables.get(table)
        if span is None:
            return None
        start, end = span
        if key is None:
            return start + 1
        pat = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, end):
            if pat.match(self.lines[i]):
                return i + 1
        return start + 1


class _Ctx:
    def __init__(self, filename: str, text: str):
        self.filename = filename
        self._lines = _Lines(text)

    def fail(self, table: str, key: str | None, what: str) -> ConfigError:
        line = self._lines.line_of(table, key)
        where = f"{self.filename}:{line}" if line else self.filename
        path = ".".join(p for p in (table, key) if p)
        return ConfigError(f"{where}: {path}: {what}" if path else f"{where}: {what}")


# -- value checks --------------------------------------------------------------------------
def _check_keys(ctx: _Ctx, table: str, data: dict, valid: tuple[str, ...]) -> None:
    for key in data:
        if key not in valid:
            raise ctx.fail(table, key, f"unknown key (valid: {', '.join(valid)})")


def _int(ctx, table, data, key, default, lo, hi):
    if key not in data:
        return default
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.fail(table, key, f"{v!r} is not an integer")
    if not lo <= v <= hi:
        raise ctx.fail(table, key, f"{v} is outside {lo}..{hi}")
    return v


def _str(ctx, table, data, key, default, choices=None):
    if key not in data:
        return default
    v = data[key]
    if not isinstance(v, str) or not v:
        raise ctx.fail(table, key, f"{v!r} is not a non-empty string")
    if choices is not None and v not in choices:
        raise ctx.fail(table, key, f"{v!r} is not one of {', '.join(choices)}")
    return v


def _tunnel(ctx, t, data, fwd):
    # a TUN dest's tun_type/tun_port/tun_flags, checked as ipvsadm checks --tun-*
    given = [k for k in ("tun_type", "tun_port", "tun_flags") if k in data]
    if not given:
        return None
    if fwd is not FwdMethod.TUN:
        raise ctx.fail(t, given[0], "only a tun dest has tunnel settings")
    kind = _str(ctx, t, data, "tun_type", "ipip", ("ipip", "gue", "gre"))
    port = _int(ctx, t, data, "tun_port", 0, 1, 65535)
    flags = _str(ctx, t, data, "tun_flags", "nocsum", ("nocsum", "csum", "remcsum"))
    try:
        return tun_settings(kind, port, flags)
    except ControlError as e:
        key = "tun_port" if "port" in e.detail else "tun_flags" if (
            "flag" in e.detail or "csum" in e.detail) else "tun_type"
        raise ctx.fail(t, key, e.detail) from None


# -- the tables ----------------------------------------------------------------------------
_DIRECTOR_KEYS = settings.DIRECTOR_KEYS
_SERVICE_KEYS = ("proto", "vip", "scheduler", "persistent", "netmask", "flags", "ops", "dest",
                 "fwmark", "family")
_MARK_KEYS = ("mark", "proto", "address", "ports")
_DEST_KEYS = ("address", "weight", "u_threshold", "l_threshold", "fwd", "tun_type", "tun_port",
              "tun_flags")
_TIMEOUT_KEYS = ("tcp", "tcpfin", "udp")
_TOP_KEYS = ("director", "service", "timeouts", "sysctl", "sync", "bgp", "mark")


def _director(ctx: _Ctx, data) -> DirectorConfig:
    if not isinstance(data, dict):
        raise ctx.fail("", "director", "must be a table ([director])")
    t = "director"
    _check_keys(ctx, t, data, _DIRECTOR_KEYS)
    d = DirectorConfig()
    for s in settings.SETTINGS:
        if not s.toml:
            continue
        if s.type is int:
            lo, hi = s.range
            setattr(d, s.name, _int(ctx, t, data, s.name, s.default, lo, hi))
        elif s.type is bool:
            value = data.get(s.name, s.default)
            if not isinstance(value, bool):
                raise ctx.fail(t, s.name, "must be true or false")
            setattr(d, s.name, value)
        else:
            value = _str(ctx, t, data, s.name, s.default, s.choices)
            if s.parse is not None and value is not None:
                try:
                    s.parse(value)
                except ValueError as e:
                    raise ctx.fail(t, s.name, str(e)) from None
            setattr(d, s.name, value)
    return d


def _service(ctx: _Ctx, i: int, data, table: ServiceTable, mode: FwdMethod) -> None:
    t = f"service[{i}]"
    if not isinstance(data, dict):
        raise ctx.fail(t, None, "must be a table ([[service]])")
    _check_keys(ctx, t, data, _SERVICE_KEYS)
    if "fwmark" in data:
        # a firewall-mark service: the [[mark]] rules say what reaches it
        for k in ("vip", "proto"):
            if k in data:
                raise ctx.fail(t, k, "a fwmark service has no vip or proto (the [[mark]] "
                               "rules say which frames get the mark)")
        try:
            key = fwmark_key(_int(ctx, t, data, "fwmark", 0, 1, 2**32 - 1),
                             _fwmark_family(ctx, t, data, mode))
        except ControlError as e:
            raise ctx.fail(t, "fwmark", str(e)) from None
        proto, ip, vport = key.proto, ipaddress.ip_address(key.vaddr), key.vport
    else:
        if "family" in data:
            raise ctx.fail(t, "family", "only a fwmark service has a family (a vip's "
                           "address gives it)")
        if "vip" not in data:
            raise ctx.fail(t, None, 'missing "vip" ("ip:port") or "fwmark"')
        proto = Proto(_str(ctx, t, data, "proto", "tcp", PROTOS))
        vip_text = _str(ctx, t, data, "vip", None)
        try:
            ip, port = parse_addrport(vip_text, proto, "")
        except CommandError as e:
            raise ctx.fail(t, "vip", str(e).strip()) from None
        vport = 0 if port is None else port
    sched = _str(ctx, t, data, "scheduler", DEFAULT_SCHEDULER)
    if "persistent" in data and data["persistent"] is True:
        timeout = DEFAULT_PERSISTENT_TIMEOUT          # ipvsadm's bare -p
    elif "persistent" in data and data["persistent"] is False:
        timeout = 0
    else:
        timeout = _int(ctx, t, data, "persistent", 0, 0, MAX_TIMEOUT)
    netmask = data.get("netmask")
    if netmask is not None and ip.version == 4 and not isinstance(netmask, str):
        raise ctx.fail(t, "netmask", f"{netmask!r} is not a dotted IPv4 mask string")
    if netmask is not None and not timeout:
        raise ctx.fail(t, "netmask", "only a persistent service has a netmask")
    flags = data.get("flags", [])
    if isinstance(flags, str):
        flags = [f for f in flags.split(",") if f]
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ctx.fail(t, "flags", f"{flags!r} is not a list of flag names")
    ops = data.get("ops", False)
    if not isinstance(ops, bool):
        raise ctx.fail(t, "ops", f"{ops!r} is not true or false")
    try:
        svc = table.add_service(proto, str(ip), vport, sched=sched, timeout=timeout,
                                netmask=netmask, flags=flags, ops=ops)
    except ControlError as e:
        key = {"Scheduler or persistence engine not found": "scheduler",
               "Zero port specified for non-persistent service": "vip",
               "One-Packet Scheduling is only for UDP virtual services": "ops"}.get(e.message)
        if key is None and "netmask" in e.message:
            key = "netmask"
        if key is None and "flag" in e.message:
            key = "flags"
        raise ctx.fail(t, key, str(e)) from None
    dests = data.get("dest", [])
    if not isinstance(dests, list):
        raise ctx.fail(t, "dest", "must be an array of tables ([[service.dest]])")
    for j, dd in enumerate(dests):
        _dest(ctx, f"{t}.dest[{j}]", dd, table, svc, mode)


def _fwmark_family(ctx: _Ctx, t: str, data, mode: FwdMethod) -> int:
    # `family = "inet6"` (ipvsadm's -6, keepalived's ip_family); without it, as keepalived
    # decides: the first dest not forwarded by TUN, else IPv4
    if "family" in data:
        return 6 if _str(ctx, t, data, "family", "inet", ("inet", "inet6")) == "inet6" else 4
    dests = data.get("dest", [])
    for dd in dests if isinstance(dests, list) else []:
        if not isinstance(dd, dict) or not isinstance(dd.get("address"), str):
            continue
        if _FWD_NAMES.get(dd.get("fwd", mode.value)) is FwdMethod.TUN:
            continue
        return 6 if dd["address"].count(":") > 1 else 4
    return 4


def _dest(ctx: _Ctx, t: str, data, table: ServiceTable, svc, mode: FwdMethod) -> None:
    if not isinstance(data, dict):
        raise ctx.fail(t, None, "must be a table ([[service.dest]])")
    _check_keys(ctx, t, data, _DEST_KEYS)
    if "address" not in data:
        raise ctx.fail(t, None, 'missing "address" ("ip[:port]")')
    text = _str(ctx, t, data, "address", None)
    try:
        ip, port = parse_addrport(text, Proto.TCP if svc.proto is Proto.FWM else svc.proto, "")
    except CommandError as e:
        raise ctx.fail(t, "address", str(e).strip()) from None
    fwd = _FWD_NAMES[_str(ctx, t, data, "fwd", mode.value, MODES)]
    if svc.proto is Proto.FWM:
        # a mark's dest: port 0 (the default) keeps the client's destination port
        port = 0 if port is None else port
    elif fwd in (FwdMethod.DR, FwdMethod.TUN):
        # The packet keeps its destination port in DR and TUN; ipvsadm silently rewrites a
        # different -r port, a configuration file says so instead.
        if port is not None and port != svc.vport:
            raise ctx.fail(t, "address", f"port {port} differs from the service's "
                           f"{svc.vport}: {fwd.label} forwarding keeps the client's "
                           f"destination port (omit the port)")
        port = svc.vport
    elif port is None:
        port = svc.vport
    weight = _int(ctx, t, data, "weight", 1, 0, MAX_RULE_WEIGHT)
    upper = _int(ctx, t, data, "u_threshold", 0, 0, MAX_RULE_THRESHOLD)
    lower = _int(ctx, t, data, "l_threshold", 0, 0, MAX_RULE_THRESHOLD)
    tun = _tunnel(ctx, t, data, fwd)
    try:
        table.add_dest(svc, str(ip), port, fwd=fwd, weight=weight, u_threshold=upper,
                       l_threshold=lower, tun=tun)
    except ControlError as e:
        key = "l_threshold" if "l_threshold" in str(e) else \
              "fwd" if "address family" in e.message else "address"
        raise ctx.fail(t, key, str(e)) from None


def _mark(ctx: _Ctx, i: int, data, table: ServiceTable) -> None:
    t = f"mark[{i}]"
    if not isinstance(data, dict):
        raise ctx.fail(t, None, "must be a table ([[mark]])")
    _check_keys(ctx, t, data, _MARK_KEYS)
    if "mark" not in data:
        raise ctx.fail(t, None, 'missing "mark" (1..4294967295)')
    ports = data.get("ports", "any")
    if isinstance(ports, bool) or not isinstance(ports, (int, str)):
        raise ctx.fail(t, "ports", f"{ports!r} is not a port, \"N-M\" or \"any\"")
    try:
        rule = mark_rule(_int(ctx, t, data, "mark", 0, 1, 2**32 - 1),
                         _str(ctx, t, data, "proto", "any", PROTOS + ("any",)),
                         _str(ctx, t, data, "address", "any"), ports)
        table.add_mark_rule(rule)
    except ControlError as e:
        key = "ports" if "ports" in str(e) else "address" if "address" in str(e) else None
        raise ctx.fail(t, key, e.detail or str(e)) from None


def _timeouts(ctx: _Ctx, data, table: ServiceTable) -> None:
    if not isinstance(data, dict):
        raise ctx.fail("", "timeouts", "must be a table ([timeouts])")
    _check_keys(ctx, "timeouts", data, _TIMEOUT_KEYS)
    values = [_int(ctx, "timeouts", data, k, 0, 0, MAX_TIMEOUT) for k in _TIMEOUT_KEYS]
    table.set_timeouts(*values)


def parse_config(text: str, filename: str = "fastlvs.toml") -> Config:
    """The Config a TOML text describes; ConfigError (one line naming the file, the line
    where known, the table path and what is wrong) otherwise. Nothing outside the returned
    objects is touched: interfaces and addresses are checked later, by the daemon."""
    ctx = _Ctx(filename, text)
    try:
        data = tomllib.loads(text)
    except RecursionError:              # arrays or tables nested deeper than the stack
        raise ConfigError(f"{filename}: nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m:
            raise ConfigError(f"{filename}:{m.group(1)}:{m.group(2)}: "
                              f"{msg[:m.start()]}") from None
        m = re.search(r"\s*\(at end of document\)$", msg)
        if m:
            raise ConfigError(f"{filename}:{len(text.splitlines()) or 1}: "
                              f"{msg[:m.start()]} (at end of file)") from None
        raise ConfigError(f"{filename}: {msg}") from None
    _check_keys(ctx, "", data, _TOP_KEYS)
    director = _director(ctx, data.get("director", {}))
    table = ServiceTable()
    services = data.get("service", [])
    if not isinstance(services, list):
        raise ctx.fail("", "service", "must be an array of tables ([[service]])")
    marks = data.get("mark", [])
    if not isinstance(marks, list):
        raise ctx.fail("", "mark", "must be an array of tables ([[mark]])")
    for i, m in enumerate(marks):
        _mark(ctx, i, m, table)
    for i, s in enumerate(services):
        _service(ctx, i, s, table, director.fwd)
    if "timeouts" in data:
        _timeouts(ctx, data["timeouts"], table)
    table.sysctls = sysctl.parse_table(data.get("sysctl", {}),
                                       lambda key, what: ctx.fail("sysctl", key, what))
    sync = settings.parse_sync(data.get("sync"), lambda key, what: ctx.fail("sync", key, what))
    return Config(director=director, table=table, path=filename, services=len(services),
                  sync=sync, bgp=_bgp(ctx, data))


def _bgp(ctx: _Ctx, data):
    if "bgp" not in data:
        return None
    from fastlvs.bgp.announce import parse_table
    return parse_table(data["bgp"], lambda key, what: ctx.fail("bgp", key, what))


def load_config(path) -> Config:
    """parse_config() of a file; errors name the file as given (an unreadable file too)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_config(text, str(path))


__all__ = ["BACKENDS", "Config", "ConfigError", "DirectorConfig", "MODES", "PROTOS",
           "load_config", "parse_config"]
