"""keepalived.conf → what keepalived 2.2.7 would install into IPVS at start (a ServiceTable,
before any checker has run), the health checks of every real server (health.spec), the
global_defs that matter, and one warning line per thing fastlvs does not read (VRRP stays with
keepalived). Semantics and defaults follow keepalived 2.2.7's own parser and start-up code
(lib/parser.c, check/check_parser.c, check_data.c, ipwrapper.c, ipvswrapper.c).
"""
from __future__ import annotations

import glob
import ipaddress
import os
from dataclasses import dataclass, field

from fastlvs.control.model import (DEFAULT_PERSISTENT_TIMEOUT, MAX_TIMEOUT, MAX_WEIGHT,
                                   ControlError, FwdMethod, Proto, ServiceTable, service_key,
                                   tun_settings)
from fastlvs.health.spec import (CheckSpec, HealthConfig, ServerHealth, SorryServer, Url,
                                 VirtualHealth)
from fastlvs.settings import SyncSettings

# lvs_sched names keepalived 2.2.7 accepts (check_parser.c's list)
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed",
              "nq", "twos")
DEFAULT_SCHEDULER = "wlc"          # IPVS_DEF_SCHED
DEFAULT_DELAY_LOOP = 60.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_UINT = 2**32 - 1
DNS_TYPES = ("A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA")
# checker kind -> (default retry, default delay_before_retry; None: delay_loop)
_CHECK_DEFAULTS = {"TCP_CHECK": (1, 1.0), "HTTP_GET": (1, 3.0), "SSL_GET": (1, 3.0),
                   "MISC_CHECK": (0, 1.0), "UDP_CHECK": (1, 1.0), "DNS_CHECK": (3, None),
                   "PING_CHECK": (1, 1.0)}
_UNSUPPORTED_CHECKS = ("SMTP_CHECK", "BFD_CHECK", "FILE_CHECK")
_VRRP_BLOCKS = ("vrrp_instance", "vrrp_sync_group", "vrrp_script", "vrrp_track_process",
                "static_ipaddress", "static_routes", "static_rules", "track_file",
                "garp_group", "linkbeat_interfaces", "bfd_instance", "track_process")
_FWD = {"NAT": FwdMethod.NAT, "DR": FwdMethod.DR, "TUN": FwdMethod.TUN}
_TRUE = ("true", "on", "yes")
_FALSE = ("false", "off", "no")


class KeepalivedError(ValueError):
    """A keepalived.conf that cannot be read; str() is `FILE:LINE: what is wrong`."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


@dataclass
class KeepalivedConfig:
    """What a keepalived.conf says, as fastlvs uses it.

    `table` is the service table keepalived would install at start (what `ipvsadm -Ln`
    shows before any checker has reported), with lvs_timeouts applied; `health` the
    checkers and health settings per service; `globals` the global_defs items that matter
    (lvs_timeouts, lvs_flush, lvs_flush_onstop, script_user, enable_script_security,
    checker_log_all_failures, router_id, lvs_sync_daemon); `warnings` one line per thing
    ignored."""

    table: ServiceTable
    health: HealthConfig
    globals: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    sync: SyncSettings | None = None     # lvs_sync_daemon, resolved (sync_settings())

    @property
    def sync_daemon(self) -> "SyncDaemon | None":
        """global_defs' lvs_sync_daemon as written, or None (`sync` is what fastlvs runs)."""
        return self.globals.get("lvs_sync_daemon")


# -- reading the text: lines, comments, includes, quotes, braces ---------------------------------
@dataclass
class _Stmt:
    words: list
    where: str
    block: list | None = None
    text: str = ""          # as written, quotes kept, comment gone (the VRRP file copies it)

    @property
    def kw(self) -> str:
        return self.words[0]


def _decomment(line: str, where: str) -> str:
    """The line without its comment (`#` or `!` outside double quotes; `\\#` is a literal)."""
    out = []
    quote = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] in "#!" and not quote:
            out.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            quote = not quote
        elif c in "#!" and not quote:
            break
        out.append(c)
        i += 1
    if quote:
        raise KeepalivedError(where, "unterminated quote")
    return "".join(out).strip()


def _segments(line: str):
    """Split a decommented line at `{` and `}` outside quotes: yields words lists and braces."""
    buf = []
    quote = False
    for c in line:
        if c == '"':
            quote = not quote
            buf.append(c)
        elif c in "{}" and not quote:
            yield "".join(buf)
            yield c
            buf = []
        else:
            buf.append(c)
    yield "".join(buf)


def _words(text: str) -> list:
    """Words split on blanks; a double-quoted string is one word, without its quotes."""
    words = []
    cur: list | None = None
    quote = False
    for c in text:
        if c == '"':
            quote = not quote
            if cur is None:
                cur = []
        elif c.isspace() and not quote:
            if cur is not None:
                words.append("".join(cur))
                cur = None
        else:
            if cur is None:
                cur = []
            cur.append(c)
    if cur is not None:
        words.append("".join(cur))
    return words


def _tokens(path: str, stack: tuple, warnings: list):
    """Yield (kind, payload, where, text) for one file, includes expanded in place: kind "w"
    with a words list and the text they came from, or "{" / "}"."""
    real = os.path.realpath(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise KeepalivedError(path, f"not UTF-8 text (byte {e.start})") from None
    stack = stack + (real,)
    base = os.path.dirname(path)
    for lineno, raw in enumerate(lines, 1):
        where = f"{path}:{lineno}"
        line = _decomment(raw, where)
        if not line:
            continue
        if line[0] == "@" or (line[0] == "$" and "=" in line.split()[0]):
            warnings.append(f"{where}: conditional and parameter lines (@, $) are not read "
                            "by fastlvs; ignored")
            continue
        first = line.split(None, 1)
        if first[0] == "include":
            if len(first) < 2:
                raise KeepalivedError(where, "include needs a file name or pattern")
            pattern = first[1].strip().strip('"')
            # keepalived changes into the including file's directory while reading it
            full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
            matches = sorted(glob.glob(full))
            if not matches and not glob.has_magic(pattern):
                raise KeepalivedError(where, f"include {pattern}: no such file")
            for m in matches:
                if os.path.isdir(m):
                    raise KeepalivedError(where, f"include {pattern}: {m} is a directory")
                if os.path.realpath(m) in stack:
                    raise KeepalivedError(where, f"include {pattern}: include loop ({m} is "
                                          "already being read)")
                try:
                    yield from _tokens(m, stack, warnings)
                except OSError as e:
                    raise KeepalivedError(where, f"include {m}: {e.strerror}") from None
            continue
        for seg in _segments(line):
            if seg in ("{", "}"):
                yield seg, None, where, seg
            else:
                words = _words(seg)
                if words:
                    yield "w", words, where, seg.strip()


def _parse_tree(path: str, warnings: list) -> list:
    """The file as nested statements; a brace that does not balance is an error."""
    root: list = []
    levels = [(root, None)]
    last = None
    for kind, words, where, text in _tokens(path, (), warnings):
        if kind == "w":
            last = _Stmt(words, where, text=text)
            levels[-1][0].append(last)
        elif kind == "{":
            if last is None or last.block is not None:
                raise KeepalivedError(where, "'{' without a keyword before it")
            last.block = []
            levels.append((last.block, last))
            last = None
        else:
            if len(levels) == 1:
                raise KeepalivedError(where, "'}' without a matching '{'")
            levels.pop()
            last = None
    if len(levels) > 1:
        opener = levels[-1][1]
        raise KeepalivedError(opener.where, f"the block of {opener.kw} is never closed "
                              "(missing '}')")
    return root


# -- values ---------------------------------------------------------------------------------------
def _arg(s: _Stmt, i: int = 1) -> str:
    if len(s.words) <= i:
        raise KeepalivedError(s.where, f"{s.kw} needs a value")
    return s.words[i]


def _int(s: _Stmt, lo: int, hi: int, i: int = 1) -> int:
    text = _arg(s, i)
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise KeepalivedError(s.where, f"{s.kw} {text}: not a number in {lo}..{hi}")
    return int(text)


def _timer(s: _Stmt, lo: float = 0.0) -> float:
    text = _arg(s)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not text[:1].isdigit() or value < lo or value > MAX_UINT:
        raise KeepalivedError(s.where, f"{s.kw} {text}: not a time in seconds"
                              + (f" (at least {lo:g})" if lo else ""))
    return value


def _bool(s: _Stmt) -> bool:
    if len(s.words) < 2:
        return True
    v = s.words[1]
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise KeepalivedError(s.where, f"{s.kw} {v}: not one of yes/no, on/off, true/false")


def _addr(s: _Stmt, text: str, what: str = "address"):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise KeepalivedError(s.where, f"{s.kw}: bad {what} {text!r}") from None


def _port(s: _Stmt, i: int) -> int:
    """An optional port word; absent or 0 is 0 (keepalived: no port)."""
    if len(s.words) <= i:
        return 0
    return _int(s, 0, 65535, i)


def _fwd(s: _Stmt, tunnels: bool = False):
    """The FwdMethod of an lvs_method/lb_kind statement; with `tunnels`, (method, tun): tun
    the (tun_type, tun_port, tun_flags) of `TUN type gue port N [nocsum|csum|remcsum]` or
    `TUN type gre [nocsum|csum]` (keepalived 2.2.7's syntax), None for plain ipip."""
    text = _arg(s)
    if text not in _FWD:
        raise KeepalivedError(s.where, f"{s.kw} {text}: unknown forwarding method "
                              "(NAT, DR or TUN)")
    rest = s.words[2:]
    if text != "TUN" and rest:
        raise KeepalivedError(s.where, f"{s.kw} {text}: unexpected {' '.join(rest)}")
    tun = None
    if rest and rest != ["type", "ipip"]:
        if not tunnels:
            raise KeepalivedError(s.where, f"{s.kw} TUN {' '.join(rest)}: fastlvs tunnels "
                                  "a sorry server with ipip only")
        tun = _tun(s, rest)
    return (_FWD[text], tun) if tunnels else _FWD[text]


def _tun(s: _Stmt, rest: list) -> tuple:
    words = list(rest)
    bad = f"{s.kw} TUN {' '.join(rest)}"
    if len(words) < 2 or words[0] != "type" or words[1] not in ("ipip", "gue", "gre"):
        raise KeepalivedError(s.where, f"{bad}: expected type ipip, gue port NUM or gre")
    kind, words = words[1], words[2:]
    port = 0
    if kind == "gue":
        if len(words) < 2 or words[0] != "port" or not words[1].isdigit():
            raise KeepalivedError(s.where, f"{bad}: a gue tunnel needs port NUM")
        port, words = int(words[1]), words[2:]
    flags = "nocsum"
    if words:
        flags, words = words[0], words[1:]
    if words or flags not in ("nocsum", "csum", "remcsum"):
        raise KeepalivedError(s.where, f"{bad}: unexpected {' '.join([flags] + words)}")
    try:
        return tun_settings(kind, port, flags)
    except ControlError as e:
        raise KeepalivedError(s.where, f"{bad}: {e.detail}") from None


def _need_block(s: _Stmt) -> list:
    if s.block is None:
        raise KeepalivedError(s.where, f"{s.kw} needs a {{ }} block")
    return s.block


def _no_block(s: _Stmt) -> None:
    if s.block is not None:
        raise KeepalivedError(s.where, f"{s.kw} takes no {{ }} block")


def _hex(s: _Stmt, words: list, wildcards: bool = False) -> bytes | tuple[bytes, bytes]:
    """keepalived's free-form hex: each word read two digits at a time, a last odd digit
    standing for one byte (`Ab12f 3` is AB 12 0F 03). With `wildcards` (require_reply), an
    `x` digit matches anything: (value, mask) is returned, the mask's 1-bits not compared."""
    out, mask = bytearray(), bytearray()
    for w in words:
        if not wildcards and any(c in "xX" for c in w):
            raise KeepalivedError(s.where, f"{s.kw}: wildcard digits (x) are only for "
                                  "require_reply")
        try:
            for i in range(0, len(w), 2):
                pair = w[i:i + 2]
                out.append(int(pair.replace("x", "0").replace("X", "0"), 16))
                m = 0
                for j, c in enumerate(reversed(pair)):
                    if c in "xX":
                        m |= 0xF << (4 * j)
                mask.append(m)
        except ValueError:
            raise KeepalivedError(s.where, f"{s.kw}: bad hex {w!r}") from None
    return (bytes(out), bytes(mask)) if wildcards else bytes(out)


@dataclass(frozen=True)
class SyncDaemon:
    """global_defs' `lvs_sync_daemon IF [[inst] VRRP_INSTANCE] [id N] [maxlen N] [port N]
    [ttl N] [group ADDR]`, as written; None: keepalived's default (syncid: the instance's
    virtual_router_id; port 8848; group 224.0.0.81; maxlen and ttl the kernel's)."""

    interface: str
    instance: str | None = None
    syncid: int | None = None
    maxlen: int | None = None
    port: int | None = None
    ttl: int | None = None
    group: str | None = None


_SYNC_OPTS = {"id": ("syncid", 0, 255), "maxlen": ("maxlen", 1, 65507),
              "port": ("port", 1, 65535), "ttl": ("ttl", 1, 255)}


def _sync_daemon(s: _Stmt) -> SyncDaemon:
    w = s.words
    kw: dict = {"interface": _arg(s)}
    i = 2
    if i < len(w) and w[i] == "inst":
        kw["instance"] = _arg(s, i + 1)
        i += 2
    elif i < len(w) and w[i] not in _SYNC_OPTS and w[i] != "group":
        kw["instance"] = w[i]
        i += 1
    while i < len(w):
        name = w[i]
        if name == "group":
            kw["group"] = str(_addr(s, _arg(s, i + 1), "group address"))
        elif name in _SYNC_OPTS:
            attr, lo, hi = _SYNC_OPTS[name]
            kw[attr] = _int(s, lo, hi, i + 1)
        else:
            raise KeepalivedError(s.where, f"lvs_sync_daemon: unknown {name!r} (inst, id, "
                                  "maxlen, port, ttl, group)")
        i += 2
    return SyncDaemon(**kw)


def _script(s: _Stmt, warnings: list) -> str:
    if len(s.words) > 2:
        warnings.append(f"{s.where}: {s.kw}: the user/group after the script are not read by "
                        "fastlvs; it runs as script_user")
    return _arg(s)


# -- the configuration as keepalived keeps it ------------------------------------------------------
@dataclass
class _Check:
    kind: str
    where: str
    own: dict = field(default_factory=dict)      # keywords given in the block


@dataclass
class _Real:
    addr: object
    port: int                 # as written (0: none)
    where: str
    own: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)


@dataclass
class _Virtual:
    where: str
    addr: object = None
    port: int = 0
    group: str | None = None
    own: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    reals: list = field(default_factory=list)
    sorry: dict | None = None
    fwmark: int = 0              # virtual_server fwmark N
    # what decides a fwmark service's family, in file order: ("ip_family", 4|6, where),
    # ("granularity", 4|6, where), ("real", _Real, where)
    family_events: list = field(default_factory=list)


class _Reader:
    def __init__(self):
        self.warnings: list[str] = []
        self.globals: dict = {}
        self.groups: dict[str, list] = {}
        self.virtuals: list[_Virtual] = []
        self.instances: dict[str, tuple] = {}    # vrrp_instance -> (where, vrid, VIPs)
        self.sync_where = ""                     # where lvs_sync_daemon is

    def ignore(self, s: _Stmt, why: str = "not read by fastlvs") -> None:
        self.warnings.append(f"{s.where}: {s.kw} ignored ({why})")

    # -- top level
    def top(self, stmts: list) -> None:
        for s in stmts:
            kw = s.kw
            if kw == "global_defs":
                self.global_defs(_need_block(s))
            elif kw == "virtual_server_group":
                self.group(s)
            elif kw == "virtual_server":
                self.virtual(s)
            elif kw in _VRRP_BLOCKS or kw.startswith("vrrp_"):
                if kw == "vrrp_instance" and s.block is not None and len(s.words) > 1:
                    self.instance(s)
                self.ignore(s, "VRRP stays with keepalived")
            elif kw == "SSL":
                ssl = {}
                for t in _need_block(s):
                    if t.kw in ("password", "ca", "certificate", "key"):
                        ssl[t.kw] = _arg(t)
                    else:
                        self.ignore(t)
                self.globals["ssl"] = ssl
            else:
                self.ignore(s)

    def instance(self, s: _Stmt) -> None:
        """What lvs_sync_daemon needs of a vrrp_instance: its virtual_router_id (the default
        syncid) and its addresses (on this host exactly while it is MASTER). The rest is
        keepalived's; a value it would refuse is left for it to report."""
        vrid, vips = None, []
        for t in s.block:
            if t.kw == "virtual_router_id" and len(t.words) > 1 and t.words[1].isdigit():
                vrid = int(t.words[1])
            elif t.kw in ("virtual_ipaddress", "virtual_ipaddress_excluded") and t.block:
                for a in t.block:
                    try:
                        vips.append(str(ipaddress.ip_interface(a.kw).ip))
                    except ValueError:
                        pass
        self.instances.setdefault(s.words[1], (s.where, vrid, tuple(vips)))

    def global_defs(self, stmts: list) -> None:
        g = self.globals
        for s in stmts:
            kw = s.kw
            if kw == "lvs_timeouts":
                if len(s.words) < 3:
                    raise KeepalivedError(s.where, "lvs_timeouts needs tcp, tcpfin or udp "
                                          "with a value")
                t = g.setdefault("lvs_timeouts", {})
                i = 1
                while i < len(s.words):
                    name = s.words[i]
                    if name not in ("tcp", "tcpfin", "udp"):
                        raise KeepalivedError(s.where, f"lvs_timeouts: unknown {name!r} "
                                              "(tcp, tcpfin, udp)")
                    t[name] = _int(s, 0, MAX_TIMEOUT, i + 1)
                    i += 2
            elif kw in ("lvs_flush", "enable_script_security"):
                _no_block(s)
                g[kw] = True
            elif kw in ("lvs_flush_onstop", "lvs_flush_on_stop"):
                g["lvs_flush_onstop"] = True
            elif kw == "script_user":
                g["script_user"] = _arg(s)
                if len(s.words) > 2:
                    g["script_group"] = s.words[2]
            elif kw == "checker_log_all_failures":
                g[kw] = _bool(s)
            elif kw == "router_id":
                g[kw] = _arg(s)
            elif kw == "lvs_sync_daemon":
                if kw in g:     # keepalived keeps the first and reports the others
                    self.warnings.append(f"{s.where}: lvs_sync_daemon given again; the "
                                         "first one stands")
                else:
                    g[kw] = _sync_daemon(s)
                    self.sync_where = s.where
            elif kw.startswith("vrrp_"):
                self.ignore(s, "VRRP stays with keepalived")
            else:
                self.ignore(s)

    def group(self, s: _Stmt) -> None:
        name = _arg(s)
        entries = []
        for e in _need_block(s):
            _no_block(e)
            if e.kw == "fwmark":
                self.warnings.append(f"{e.where}: fwmark entry of group {name} ignored "
                                     "(fwmark services are not read yet)")
                continue
            entries.append((self.vsg_addrs(e), _port(e, 1), e.where))
        if name in self.groups:
            raise KeepalivedError(s.where, f"virtual_server_group {name} is defined twice")
        self.groups[name] = entries

    def vsg_addrs(self, e: _Stmt) -> list:
        """The addresses of a group entry: one address, A-N (last byte, or last 16 bits of
        IPv6, up to N), A-B (two full addresses) or A/LEN (the whole block)."""
        text = e.kw
        limit = 65536
        if "/" in text:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError:
                raise KeepalivedError(e.where, f"bad address block {text!r} (host bits "
                                      "set, or not an address/length)") from None
            if net.num_addresses > limit:
                raise KeepalivedError(e.where, f"{text}: more than {limit} addresses")
            return [str(a) for a in net]
        if "-" in text:
            first, last = text.split("-", 1)
            a = _addr(e, first)
            if ("." in last) if a.version == 4 else (":" in last):
                b = _addr(e, last)
                if b.version != a.version:
                    raise KeepalivedError(e.where, f"{text}: mixed address families")
            else:
                try:
                    end = int(last, 10 if a.version == 4 else 16)
                except ValueError:
                    raise KeepalivedError(e.where, f"bad address range {text!r}") from None
                step = 0xFF if a.version == 4 else 0xFFFF
                start = int(a) & step
                if end > step or end <= start:
                    raise KeepalivedError(e.where, f"{text}: the range end is not above "
                                          "its start")
                b = ipaddress.ip_address((int(a) & ~step) | end)
            if int(b) < int(a):
                raise KeepalivedError(e.where, f"{text}: the range end is below its start")
            # keepalived 2.2.7 steps through a range by adding 1 to the last byte (IPv6: the
            # last 16 bits) without carrying, so a range across that boundary wraps around
            # and never reaches its end: refused rather than guessed
            bits = 8 if a.version == 4 else 16
            if int(a) >> bits != int(b) >> bits:
                raise KeepalivedError(e.where, f"{text}: the range crosses a "
                                      f"{'/24' if a.version == 4 else '/112'} boundary, "
                                      "which keepalived does not step across; split it")
            if int(b) - int(a) >= limit:
                raise KeepalivedError(e.where, f"{text}: more than {limit} addresses")
            return [str(ipaddress.ip_address(i)) for i in range(int(a), int(b) + 1)]
        return [str(_addr(e, text))]

    # -- virtual_server
    def virtual(self, s: _Stmt) -> None:
        vs = _Virtual(s.where)
        first = _arg(s)
        if first == "fwmark":
            vs.fwmark = _fwmark(s)
        elif first == "group":
            vs.group = _arg(s, 2)
        else:
            vs.addr = _addr(s, first, "virtual server address")
            vs.port = _port(s, 2)
        own = vs.own
        for t in _need_block(s):
            kw = t.kw
            if kw == "real_server":
                vs.reals.append(self.real(t))
                vs.family_events.append(("real", vs.reals[-1], t.where))
                continue
            _no_block(t)
            if kw in ("lb_algo", "lvs_sched"):
                name = _arg(t)
                if name not in SCHEDULERS:
                    raise KeepalivedError(t.where, f"{kw} {name}: unknown scheduler")
                own["sched"] = name
            elif kw in ("ops", "flag-1", "flag-2", "flag-3"):
                vs.flags.append(kw)
            elif kw in ("sh-port", "sh-fallback", "mh-port", "mh-fallback"):
                # keepalived looks at the scheduler named so far
                if own.get("sched") == kw[:2]:
                    vs.flags.append(kw)
                else:
                    self.warnings.append(f"{t.where}: {kw} ignored, as keepalived does: it "
                                         f"only applies after lvs_sched {kw[:2]}")
            elif kw in ("lb_kind", "lvs_method"):
                own["fwd"], own["tun"] = _fwd(t, tunnels=True)
            elif kw == "persistence_timeout":
                own["timeout"] = (DEFAULT_PERSISTENT_TIMEOUT if len(t.words) < 2
                                  else _int(t, 1, MAX_TIMEOUT))
            elif kw == "persistence_granularity":
                own["granularity"] = (_arg(t), t)
                vs.family_events.append(("granularity", 4 if "." in _arg(t) else 6, t.where))
            elif kw == "protocol":
                p = _arg(t).upper()
                if p not in ("TCP", "UDP", "SCTP"):
                    raise KeepalivedError(t.where, f"protocol {_arg(t)}: not TCP, UDP or SCTP")
                own["proto"] = Proto.of(p)
            elif kw == "virtualhost":
                own["virtualhost"] = _arg(t)
            elif kw in ("alpha", "omega", "inhibit_on_failure"):
                own[kw] = True
            elif kw == "quorum":
                own[kw] = _int(t, 1, MAX_UINT)
            elif kw == "hysteresis":
                own[kw] = _int(t, 0, MAX_UINT)
            elif kw in ("quorum_up", "quorum_down"):
                own[kw] = _script(t, self.warnings)
            elif kw == "weight":
                own[kw] = _int(t, 1, MAX_WEIGHT)
            elif kw in ("connect_timeout", "delay_loop"):
                own[kw] = _timer(t, 1e-6)
            elif kw in ("delay_before_retry", "warmup"):
                own[kw] = _timer(t)
            elif kw == "retry":
                own[kw] = _int(t, 1, MAX_UINT)
            elif kw == "sorry_server":
                vs.sorry = {"addr": _addr(t, _arg(t), "sorry server address"),
                            "port": _port(t, 2), "inhibit": False, "fwd": None}
            elif kw == "sorry_server_inhibit":
                if vs.sorry is None:
                    self.warnings.append(f"{t.where}: sorry_server_inhibit before or without "
                                         "sorry_server ignored, as keepalived does")
                else:
                    vs.sorry["inhibit"] = True
            elif kw == "sorry_server_lvs_method":
                if vs.sorry is None:
                    self.warnings.append(f"{t.where}: sorry_server_lvs_method before or "
                                         "without sorry_server ignored, as keepalived does")
                else:
                    vs.sorry["fwd"] = _fwd(t)
            elif kw == "ip_family":
                if _arg(t) not in ("inet", "inet6"):
                    raise KeepalivedError(t.where, f"ip_family {_arg(t)}: not inet or inet6")
                vs.family_events.append(("ip_family", 6 if _arg(t) == "inet6" else 4, t.where))
            else:
                self.ignore(t)
        self.virtuals.append(vs)

    def real(self, s: _Stmt) -> _Real:
        rs = _Real(_addr(s, _arg(s), "real server address"), _port(s, 2), s.where)
        own = rs.own
        for t in _need_block(s):
            kw = t.kw
            if kw in _CHECK_DEFAULTS:
                rs.checks.append(self.check(t))
                continue
            if kw in _UNSUPPORTED_CHECKS:
                self.ignore(t, "this checker is not supported by fastlvs")
                continue
            _no_block(t)
            if kw == "weight":
                own[kw] = _int(t, 0, MAX_WEIGHT)
            elif kw == "lvs_method":
                own["fwd"], own["tun"] = _fwd(t, tunnels=True)
            elif kw in ("uthreshold", "lthreshold"):
                own[kw] = _int(t, 0, MAX_UINT)
            elif kw in ("inhibit_on_failure", "alpha"):
                own[kw] = _bool(t)
            elif kw in ("notify_up", "notify_down"):
                if kw in own:
                    self.warnings.append(f"{t.where}: second {kw} ignored, as keepalived does")
                else:
                    own[kw] = _script(t, self.warnings)
            elif kw in ("connect_timeout", "delay_loop"):
                own[kw] = _timer(t, 1e-6)
            elif kw in ("delay_before_retry", "warmup"):
                own[kw] = _timer(t)
            elif kw == "retry":
                own[kw] = _int(t, 1, MAX_UINT)
            elif kw == "virtualhost":
                own[kw] = _arg(t)
            else:
                self.ignore(t)
        return rs

    def check(self, s: _Stmt) -> _Check:
        c = _Check(s.kw, s.where)
        own = c.own
        net = s.kw != "MISC_CHECK"       # MISC_CHECK has no connection keywords
        for t in _need_block(s):
            kw = t.kw
            if kw == "url" and s.kw in ("HTTP_GET", "SSL_GET"):
                own.setdefault("urls", []).append(self.url(t))
                continue
            _no_block(t)
            if net and kw in ("connect_ip", "bindto"):
                own[kw] = str(_addr(t, _arg(t)))
            elif net and kw in ("connect_port", "bind_port"):
                own[kw] = _int(t, 1, 65535)
            elif net and kw == "connect_timeout":
                own[kw] = _timer(t, 1e-6)
            elif kw == "delay_loop":
                own[kw] = _timer(t, 1e-6)
            elif kw in ("delay_before_retry", "warmup"):
                own[kw] = _timer(t)
            elif kw == "retry" or (kw == "nb_get_retry" and s.kw in ("HTTP_GET", "SSL_GET")):
                own["retry"] = _int(t, 0, MAX_UINT)
            elif kw == "alpha":
                own[kw] = _bool(t)
            elif s.kw in ("HTTP_GET", "SSL_GET") and kw == "virtualhost":
                own[kw] = _arg(t)
            elif s.kw == "SSL_GET" and kw == "enable_sni":
                own["sni"] = True
            elif s.kw == "MISC_CHECK" and kw == "misc_path":
                own[kw] = _arg(t)
            elif s.kw == "MISC_CHECK" and kw == "misc_timeout":
                own[kw] = float(_int(t, 0, MAX_UINT))
            elif s.kw == "MISC_CHECK" and kw == "misc_dynamic":
                own[kw] = True
            elif s.kw == "UDP_CHECK" and kw == "payload":
                own[kw] = _hex(t, t.words[1:])
            elif s.kw == "UDP_CHECK" and kw == "require_reply":
                own[kw], mask = _hex(t, t.words[1:], wildcards=True)
                own["reply_mask"] = mask if any(mask) else None
            elif s.kw == "UDP_CHECK" and kw in ("min_reply_length", "max_reply_length"):
                own[kw] = _int(t, 0, 65535)
            elif s.kw == "DNS_CHECK" and kw == "type":
                v = _arg(t).upper()
                if v not in DNS_TYPES:
                    raise KeepalivedError(t.where, f"type {_arg(t)}: not one of "
                                          f"{', '.join(DNS_TYPES)}")
                own["dns_type"] = v
            elif s.kw == "DNS_CHECK" and kw == "name":
                own["dns_name"] = _arg(t)
            else:
                self.ignore(t)
        if s.kw == "MISC_CHECK" and not own.get("misc_path"):
            raise KeepalivedError(s.where, "MISC_CHECK needs misc_path")
        return c

    def url(self, s: _Stmt) -> dict:
        u: dict = {}
        for t in _need_block(s):
            _no_block(t)
            if t.kw == "path":
                u["path"] = _arg(t)
            elif t.kw == "digest":
                d = _arg(t).lower()
                if len(d) != 32 or any(c not in "0123456789abcdef" for c in d):
                    raise KeepalivedError(t.where, f"digest {_arg(t)}: not an MD5 in hex")
                u["digest"] = d
            elif t.kw == "status_code":
                codes = []
                for w in t.words[1:]:
                    lo, _, hi = w.partition("-")
                    if not lo.isdigit() or (hi and not hi.isdigit()) or \
                            not 100 <= int(lo) <= int(hi or lo) <= 999:
                        raise KeepalivedError(t.where, f"status_code {w}: not a code or a "
                                              "range of codes (100..999)")
                    codes.extend(range(int(lo), int(hi or lo) + 1))
                if not codes:
                    raise KeepalivedError(t.where, "status_code needs a value")
                u["status_codes"] = tuple(codes)
            elif t.kw == "virtualhost":
                u["virtualhost"] = _arg(t)
            else:
                self.ignore(t)
        if "path" not in u:
            raise KeepalivedError(s.where, "url needs a path")
        return u


# -- what keepalived installs at start -------------------------------------------------------------
def _granularity(vs: _Virtual, af: int):
    text, t = vs.own["granularity"]
    if af == 6:
        if not text.isdigit() or not 1 <= int(text) <= 128:
            raise KeepalivedError(t.where, f"persistence_granularity {text}: not a prefix "
                                  "length 1..128")
        return int(text)
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise KeepalivedError(t.where, f"persistence_granularity {text}: not a dotted "
                              "netmask") from None


def _build(r: _Reader) -> KeepalivedConfig:
    table = ServiceTable()
    health = HealthConfig()
    warnings = r.warnings
    t = r.globals.get("lvs_timeouts")
    if t:
        table.set_timeouts(t.get("tcp", 0), t.get("tcpfin", 0), t.get("udp", 0))
    for vs in r.virtuals:
        _install(vs, r, table, health, warnings)
    sync = sync_settings(r.globals.get("lvs_sync_daemon"), r.instances,
                         r.sync_where, warnings)
    return KeepalivedConfig(table, health, r.globals, warnings, sync)


def sync_settings(sd: SyncDaemon | None, instances: dict, where: str,
                  warnings: list) -> SyncSettings | None:
    """What keepalived does with lvs_sync_daemon, as fastlvs runs it. With a VRRP instance
    (keepalived's VRRP process): the daemon is a backup until the instance is MASTER, a
    master while it is, and a backup again when it leaves MASTER, the syncid defaulting to
    the instance's virtual_router_id; fastlvs sees MASTER as the instance's addresses on
    this host (role auto, `vips` the instance's). An instance that the file does not define
    clears the setting, with a warning, as keepalived does. Without an instance
    (keepalived's checker process): a master and a backup both run, syncid 0 unless given."""
    if sd is None:
        return None
    common = dict(interface=sd.interface, maxlen=sd.maxlen or 0, group=sd.group,
                  port=sd.port or 0, ttl=sd.ttl or 0, source=f"{where}: lvs_sync_daemon")
    if sd.instance is None:
        return SyncSettings(role="both", syncid=sd.syncid or 0, **common)
    if sd.instance not in instances:
        warnings.append(f"{where}: lvs_sync_daemon: no vrrp_instance {sd.instance} in the "
                        "file; no sync daemon runs (as keepalived clears it)")
        return None
    _, vrid, vips = instances[sd.instance]
    syncid = sd.syncid if sd.syncid is not None else (vrid or 0)
    if not vips:
        warnings.append(f"{where}: lvs_sync_daemon: vrrp_instance {sd.instance} has no "
                        "virtual_ipaddress; its sync daemon stays a backup")
    return SyncSettings(role="auto", syncid=syncid, vips=vips, **common)


def _install(vs: _Virtual, r: _Reader, table, health, warnings) -> None:
    own = vs.own
    where = vs.where
    # the services: one, or one per address of the group's entries (in order)
    if vs.group is not None:
        if vs.group not in r.groups:
            warnings.append(f"{where}: virtual_server group {vs.group} ignored: no such "
                            "virtual_server_group (keepalived removes it)")
            return
        endpoints = [(a, port, w) for addrs, port, w in r.groups[vs.group] for a in addrs]
        if not endpoints:
            warnings.append(f"{where}: virtual_server group {vs.group} has no address entries; "
                            "ignored")
            return
    elif vs.fwmark:
        # a firewall-mark service: the mark stands where the port would (fastlvs' mark
        # rules, not netfilter, say which frames carry it); its `protocol` does not matter
        fam = _fwmark_family(vs, own.get("fwd") or FwdMethod.NAT, warnings)
        endpoints = [("0.0.0.0" if fam == 4 else "::", vs.fwmark, where)]
        own["proto"] = Proto.FWM
    else:
        endpoints = [(str(vs.addr), vs.port, where)]
    af = ipaddress.ip_address(endpoints[0][0]).version
    proto = own.get("proto")
    if proto is None:
        warnings.append(f"{where}: no protocol: UDP, as keepalived defaults to")
        proto = Proto.UDP
    sched = own.get("sched")
    if sched is None:
        warnings.append(f"{where}: no lvs_sched: {DEFAULT_SCHEDULER}, as keepalived defaults to")
        sched = DEFAULT_SCHEDULER
    timeout = own.get("timeout", 0)
    if "granularity" in own and not timeout:
        timeout = DEFAULT_PERSISTENT_TIMEOUT
    if not timeout and any(port == 0 for _, port, _ in endpoints):
        warnings.append(f"{where}: port 0 is only for persistent services: persistent "
                        f"({DEFAULT_PERSISTENT_TIMEOUT} s), as keepalived makes it")
        timeout = DEFAULT_PERSISTENT_TIMEOUT
    netmask = _granularity(vs, af) if "granularity" in own and timeout else None
    flags = [f for f in vs.flags if f != "ops"]
    ops = "ops" in vs.flags
    if ops and proto is not Proto.UDP:
        warnings.append(f"{where}: ops is for UDP only; keepalived drops it")
        ops = False
    vfwd = own.get("fwd")
    if vfwd is None and (vs.reals or vs.sorry):
        if any("fwd" not in rs.own for rs in vs.reals) or (vs.sorry and not vs.sorry["fwd"]):
            warnings.append(f"{where}: no lb_kind: NAT, as keepalived defaults to")
    vfwd = vfwd or FwdMethod.NAT

    # the real servers as keepalived resolves them (duplicates and family mismatches dropped)
    reals = []
    for rs in vs.reals:
        if any(o.addr == rs.addr and o.port == rs.port for o in reals):
            warnings.append(f"{rs.where}: real server {rs.addr} {rs.port} is a duplicate; "
                            "ignored, as keepalived does")
            continue
        fwd = rs.own.get("fwd", vfwd)
        if fwd is not FwdMethod.TUN and rs.addr.version != af:
            warnings.append(f"{rs.where}: real server {rs.addr} is not of the virtual server's "
                            "address family; ignored, as keepalived does")
            continue
        reals.append(rs)
    if not reals:
        warnings.append(f"{where}: virtual server without real servers ignored, as keepalived "
                        "does")
        return
    weight_of = {id(rs): rs.own.get("weight", own.get("weight", 1)) for rs in reals}
    total = sum(weight_of.values())
    quorum = own.get("quorum", 1)
    if quorum > total:
        warnings.append(f"{where}: quorum {quorum} exceeds the real servers' total weight "
                        f"{total}; lowered to {total}, as keepalived does")
        quorum = total
    hysteresis = own.get("hysteresis", 0)
    if quorum and hysteresis >= quorum:
        warnings.append(f"{where}: hysteresis {hysteresis} >= quorum {quorum}; set to "
                        f"{quorum - 1}, as keepalived does")
        hysteresis = quorum - 1

    for vaddr, vport, ewhere in endpoints:
        try:
            key = service_key(proto, vaddr, vport)
            svc = table.add_service(proto, vaddr, vport, sched=sched, timeout=timeout,
                                    netmask=netmask, flags=flags, ops=ops)
        except ControlError as e:
            raise KeepalivedError(ewhere, f"virtual server {vaddr} {vport}: {e}") from None
        sorry = None
        if vs.sorry:
            s = vs.sorry
            sfwd = s["fwd"] or vfwd
            sport = s["port"] if sfwd is FwdMethod.NAT else vport
            sorry = SorryServer(str(s["addr"]), sport, fwd=sfwd.value, weight=1,
                                inhibit=s["inhibit"])
        vh = VirtualHealth(quorum=quorum, hysteresis=hysteresis,
                           quorum_up=own.get("quorum_up"), quorum_down=own.get("quorum_down"),
                           sorry_server=sorry, alpha=own.get("alpha", False),
                           omega=own.get("omega", False))
        alive_weight = 0
        alive = []                                 # dests keepalived marks alive
        for rs in reals:
            fwd = rs.own.get("fwd", vfwd)
            # a mark service's port is 0: its DR/TUN servers get 0 (the client's port is
            # kept), its NAT ones their own (recorded: tests/fixtures/keepalived/fwmark6.conf);
            # keepalived says nothing of it, and its checkers still probe the given port
            port = _dest_port(rs.port, fwd, 0 if vs.fwmark else vport, rs.where, warnings,
                              first=not vs.fwmark and (vaddr, vport) == endpoints[0][:2])
            weight = weight_of[id(rs)]
            checks = tuple(_spec(c, rs, vs, port) for c in rs.checks)
            inhibit = rs.own.get("inhibit_on_failure", own.get("inhibit_on_failure", False))
            vh.servers[(str(rs.addr), port)] = ServerHealth(
                checks=checks, inhibit_on_failure=inhibit,
                notify_up=rs.own.get("notify_up"), notify_down=rs.own.get("notify_down"))
            vh.weights[(str(rs.addr), port)] = weight
            failed = sum(1 for c in checks if c.alpha)   # alpha checkers start failed
            if failed and not inhibit:
                continue
            tun = rs.own.get("tun") if "fwd" in rs.own else own.get("tun")
            _add_dest(table, key, rs, port, fwd, 0 if failed else weight, tun)
            if not failed:
                alive.append((rs, port, inhibit))
                alive_weight += weight
        # keepalived's start: quorum is judged once every real server is in
        up = quorum + hysteresis == 0
        if not up and alive_weight >= quorum + hysteresis:
            up = True
        elif (up and alive_weight == 0) or (not up and sorry is not None):
            up = False
            if sorry is not None:
                for rs, port, inhibit in alive:
                    if inhibit:
                        d = svc.find_dest(str(rs.addr), port)
                        table.edit_dest(key, str(rs.addr), port, d.fwd, 0,
                                        rs.own.get("uthreshold", 0),
                                        rs.own.get("lthreshold", 0),
                                        tun=(d.tun_type, d.tun_port, d.tun_flags))
                    else:
                        table.delete_dest(key, str(rs.addr), port)
                _add_sorry(table, key, sorry, sorry.weight, vs.where)
                sorry = None
        if sorry is not None and sorry.inhibit:
            _add_sorry(table, key, sorry, 0, vs.where)
        health.services[key] = vh


def _fwmark_family(vs: _Virtual, vfwd: FwdMethod, warnings: list) -> int:
    """The address family keepalived gives `virtual_server fwmark N`: in file order,
    `ip_family`, `persistence_granularity` (a dotted mask is IPv4) or the first real server
    not forwarded by TUN set it, if still unset; then a non-TUN sorry server; then the TUN
    real servers when they are all of one family; else IPv4. An `ip_family` against the
    family already set is ignored (warned), as keepalived ignores it."""
    af = 0
    for kind, value, where in vs.family_events:
        if kind == "ip_family":
            if af and af != value:
                warnings.append(f"{where}: ip_family {'inet6' if value == 6 else 'inet'} "
                                f"conflicts with the real servers' family; ignored, as "
                                "keepalived does")
            else:
                af = value
        elif kind == "granularity":
            af = af or value
        elif not af and value.own.get("fwd", vfwd) is not FwdMethod.TUN:
            af = value.addr.version
    if not af and vs.sorry and (vs.sorry["fwd"] or vfwd) is not FwdMethod.TUN:
        af = vs.sorry["addr"].version
    if not af:
        fams = {rs.addr.version for rs in vs.reals}
        if vs.sorry:
            fams.add(vs.sorry["addr"].version)
        af = fams.pop() if len(fams) == 1 else 4
    return af


def _fwmark(s: _Stmt) -> int:
    """The N of `virtual_server fwmark N` (1..2**32-1)."""
    text = _arg(s, 2)
    if not text.isdigit() or not 1 <= int(text) <= 2**32 - 1:
        raise KeepalivedError(s.where, f"virtual_server fwmark {text}: not a mark "
                              "1..4294967295")
    return int(text)


def _dest_port(port: int, fwd: FwdMethod, vport: int, where: str, warnings: list,
               first: bool) -> int:
    """The port IPVS gets: NAT keeps its own (none: the service's); DR and TUN always get the
    service's port."""
    if fwd is FwdMethod.NAT:
        return port or vport
    if port and port != vport and first:
        warnings.append(f"{where}: real server port {port} differs from the virtual server's "
                        f"{vport}; {vport} is used, as keepalived does for {fwd.name}")
    return vport


def _add_dest(table, key, rs: _Real, port: int, fwd: FwdMethod, weight: int,
              tun=None) -> None:
    try:
        table.add_dest(key, str(rs.addr), port, fwd=fwd, weight=weight,
                       u_threshold=rs.own.get("uthreshold", 0),
                       l_threshold=rs.own.get("lthreshold", 0),
                       tun=tun if fwd is FwdMethod.TUN else None)
    except ControlError as e:
        raise KeepalivedError(rs.where, f"real server {rs.addr} {port}: {e}") from None


def _add_sorry(table, key, sorry: SorryServer, weight: int, where: str) -> None:
    svc = table.get(key)
    existing = svc.find_dest(sorry.addr, sorry.port)
    try:
        if existing is not None:       # the sorry server is also a real server
            table.edit_dest(key, sorry.addr, sorry.port, FwdMethod.of(sorry.fwd), weight)
        else:
            table.add_dest(key, sorry.addr, sorry.port, fwd=FwdMethod.of(sorry.fwd),
                           weight=weight)
    except ControlError as e:
        raise KeepalivedError(where, f"sorry server {sorry.addr} {sorry.port}: {e}") from None


def _spec(c: _Check, rs: _Real, vs: _Virtual, port: int) -> CheckSpec:
    """A checker with keepalived's inheritance resolved: checker, then real server, then
    virtual server, then the checker kind's default."""
    o, ro, vo = c.own, rs.own, vs.own

    def pick(name, default):
        for src in (o, ro, vo):
            if name in src:
                return src[name]
        return default

    default_retry, default_dbr = _CHECK_DEFAULTS[c.kind]
    delay_loop = pick("delay_loop", DEFAULT_DELAY_LOOP)
    dbr = pick("delay_before_retry", default_dbr)
    urls = tuple(Url(path=u["path"], digest=u.get("digest"),
                     status_codes=u.get("status_codes", ()), virtualhost=u.get("virtualhost"))
                 for u in o.get("urls", ()))
    return CheckSpec(
        kind=c.kind,
        connect_ip=o.get("connect_ip", str(rs.addr)),
        connect_port=o.get("connect_port", rs.port or port),
        bindto=o.get("bindto"),
        bind_port=o.get("bind_port", 0),
        connect_timeout=pick("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        delay_loop=delay_loop,
        retry=pick("retry", default_retry),
        delay_before_retry=delay_loop if dbr is None else dbr,
        warmup=pick("warmup", delay_loop),
        alpha=pick("alpha", False),
        urls=urls,
        virtualhost=pick("virtualhost", None),
        sni=o.get("sni", False),
        misc_path=o.get("misc_path", ""),
        misc_timeout=o.get("misc_timeout") or vo.get("delay_loop", DEFAULT_DELAY_LOOP),
        misc_dynamic=o.get("misc_dynamic", False),
        payload=o.get("payload"),
        require_reply=o.get("require_reply"),
        reply_mask=o.get("reply_mask"),
        min_reply_length=o.get("min_reply_length", 0),
        max_reply_length=o.get("max_reply_length", 255),
        dns_type=o.get("dns_type", "SOA"),
        dns_name=o.get("dns_name", "."),
    )


def load_keepalived(path) -> KeepalivedConfig:
    """Read a keepalived.conf (and the files it includes) into a KeepalivedConfig.

    Raises KeepalivedError (`FILE:LINE: what is wrong`) for a file keepalived would not
    read as meant: unbalanced braces, a bad address or number, an unknown lb_kind or
    scheduler, an include loop or a missing include file (a glob that matches nothing is
    fine, as in keepalived). Keywords fastlvs does not read, VRRP blocks among them, are
    one warning line each. OSError if the top file cannot be read."""
    path = os.fspath(path)
    with open(path, "rb"):
        pass                           # the top file's own errors surface as OSError
    r = _Reader()
    r.top(_parse_tree(path, r.warnings))
    return _build(r)


__all__ = ["KeepalivedConfig", "KeepalivedError", "SCHEDULERS", "SyncDaemon", "load_keepalived",
           "sync_settings"]
