"""The control-plane model: virtual services, their dests (real servers) and the table that
holds them, changed only by the operations IPVS offers (ip_vs_ctl.c), with its edge rules.

Pure Python, no fast path. A `Dest` *is* a `fastlvs.schedulers.RealServer`, so a scheduler
bound to `service.dests` reads the very objects the table edits and the engine's counters
are written into. Failures raise `ControlError` carrying ipvsadm's wording.
"""
from __future__ import annotations

import enum
import errno as _errno
import ipaddress
import os
from typing import Iterable, Iterator, NamedTuple

from fastlvs import schedulers as _schedulers
from fastlvs.engine import contract as _contract
from fastlvs.schedulers import RealServer

DEFAULT_SCHEDULER = "wlc"
# ipvsadm's `-p` without a value: libipvs' IPVS_SVC_PERSISTENT_TIMEOUT, which is 6*60. The man
# page says 300; the code (what users actually get) says 360.
DEFAULT_PERSISTENT_TIMEOUT = 360
MAX_TIMEOUT = 86400 * 31          # ipvsadm refuses longer -p and --set values
DEFAULT_TIMEOUTS = {"tcp": 900, "tcpfin": 120, "udp": 300}
MAX_WEIGHT = 2**31 - 1            # the kernel's int; ipvsadm's own -w parser stops at 65535
MAX_THRESHOLD = 2**32 - 1         # the kernel's u32; ipvsadm's -x/-y parser stops at INT_MAX

# The counters IPVS keeps per service and per dest (struct ip_vs_stats64): totals, then the
# estimator's rates. `zero` clears all of them; activeconns/inactconns are live state, not stats.
STAT_FIELDS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")


class ControlError(Exception):
    """A control operation was refused.

    `message` is what ipvsadm prints for this failure (e.g. "No such service"), `errno` the
    kernel's error number behind it where there is one, and `detail` an optional
    explanation. str() is the message, followed by the detail when there is one.
    """

    def __init__(self, message: str, errno: int | None = None, detail: str | None = None):
        self.message = message
        self.errno = errno
        self.detail = detail
        super().__init__(f"{message} ({detail})" if detail else message)


class NoRoute(Exception):
    """No next hop is known for a real server's address (the Director's `nexthop` raises it).
    `pending`: the kernel has been asked and has not answered yet (ARP under way), so the
    same request may succeed a moment later; otherwise the refusal is final."""

    def __init__(self, message: str = "", pending: bool = False):
        super().__init__(message)
        self.pending = pending


class Proto(enum.Enum):
    """A virtual service's protocol, with its IP protocol number and ipvsadm spellings."""

    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"
    FWM = "fwm"     # a firewall-mark service: its key's vport is the mark (1..2**32-1)

    @property
    def number(self) -> int:
        return _PROTO_NUMBER[self]

    @property
    def option(self) -> str:
        """The ipvsadm option that names a service of this protocol (-t, -u, --sctp-service)."""
        return _PROTO_OPTION[self]

    @property
    def label(self) -> str:
        """The protocol column of `ipvsadm -L` (TCP, UDP, SCTP, FWM)."""
        return self.name

    @classmethod
    def of(cls, value) -> "Proto":
        """Proto from a Proto, a name ("tcp", "TCP") or an IP protocol number."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            for p, n in _PROTO_NUMBER.items():
                if n == value:
                    return p
        elif isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        raise ControlError("Protocol not available", _errno.ENOPROTOOPT,
                           f"protocol {value!r} is not one of tcp, udp, sctp")


_PROTO_NUMBER = {Proto.TCP: 6, Proto.UDP: 17, Proto.SCTP: 132, Proto.FWM: 0}
_PROTO_OPTION = {Proto.TCP: "-t", Proto.UDP: "-u", Proto.SCTP: "--sctp-service",
                 Proto.FWM: "-f"}
MAX_FWMARK = 2**32 - 1


class FwdMethod(enum.Enum):
    """The LVS forwarding method of a dest, with its ipvsadm option and listing label."""

    DR = "dr"      # -g, "Route": rewrite MACs only
    NAT = "nat"    # -m, "Masq": rewrite the destination address (and back)
    TUN = "tun"    # -i, "Tunnel": IPIP-encapsulate to the dest

    @property
    def option(self) -> str:
        return _FWD_OPTION[self]

    @property
    def label(self) -> str:
        """The Forward column of `ipvsadm -L`."""
        return _FWD_LABEL[self]

    @classmethod
    def of(cls, value) -> "FwdMethod":
        """FwdMethod from a FwdMethod, "dr"/"nat"/"tun", a label ("Route") or an option ("-g")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for m in cls:
                if value.lower() in (m.value, m.label.lower()) or value == m.option:
                    return m
        raise ControlError("Invalid operation.  Possibly wrong module version, address not "
                           "unicast, ...", _errno.EINVAL,
                           f"forwarding method {value!r} is not one of dr, nat, tun")


_FWD_OPTION = {m: _contract.FWD_METHODS[m.value][1] for m in FwdMethod}
_FWD_LABEL = {m: _contract.FWD_METHODS[m.value][2] for m in FwdMethod}


class ServiceKey(NamedTuple):
    """What identifies a virtual service: protocol, canonical address text and port."""

    proto: Proto
    vaddr: str
    vport: int

    @property
    def af(self) -> int:
        return ipaddress.ip_address(self.vaddr).version

    def option_text(self) -> str:
        """As ipvsadm writes it in a rule: `-t 10.0.0.1:80`, `-u [2001:db8::1]:53`, `-f 1`."""
        if self.proto is Proto.FWM:
            return f"-f {fwmark_text(self.vport)}" + (" -6" if self.af == 6 else "")
        return f"{self.proto.option} {addrport(self.vaddr, self.vport)}"


def fwmark_text(mark: int) -> str:
    """A mark as ipvsadm prints it (a signed 32-bit integer: 4294967295 is -1)."""
    return str(mark - 2**32 if mark >= 2**31 else mark)


def fwmark_key(mark, af: int = 4) -> ServiceKey:
    """The ServiceKey of firewall-mark service `mark` (1..2**32-1) of address family `af`."""
    if isinstance(mark, bool) or not isinstance(mark, int) or not 1 <= mark <= MAX_FWMARK:
        raise ControlError(f"invalid fwmark value `{mark}' specified", _errno.EINVAL,
                           f"a mark is 1..{MAX_FWMARK}")
    return ServiceKey(Proto.FWM, "0.0.0.0" if af == 4 else "::", mark)


class MarkRule(NamedTuple):
    """One firewall-mark match rule: frames to `prefix` (an IPv4 or IPv6 network) of protocol
    `proto` ("tcp", "udp", "sctp" or "any") with a destination port in port_lo..port_hi get
    mark `mark`. Rules are tried in order; the first that matches gives the mark (as one nft
    chain of `meta mark set ...` rules that each end the chain would). A rule matches frames
    of its prefix's family only; a mark may have rules of both, and a marked frame goes to
    the mark's service of the frame's family (`-f N` or `-f N -6`), as in IPVS."""

    mark: int
    proto: str
    prefix: str
    port_lo: int
    port_hi: int

    def text(self) -> str:
        """The one-token form the admin command and rules files use:
        `MARK,PROTO,PREFIX,PORTS` (`1,tcp,10.0.1.100/32,8000-8010`)."""
        ports = "any" if (self.port_lo, self.port_hi) == (0, 65535) else (
            str(self.port_lo) if self.port_lo == self.port_hi
            else f"{self.port_lo}-{self.port_hi}")
        return f"{fwmark_text(self.mark)},{self.proto},{self.prefix},{ports}"

    def engine_row(self) -> tuple:
        """(mark, proto number or 0, prefix, port_lo, port_hi) as Engine.set_marks takes."""
        return (self.mark, 0 if self.proto == "any" else Proto(self.proto).number,
                self.prefix, self.port_lo, self.port_hi)

    @property
    def af(self) -> int:
        """The address family of the frames this rule matches (4 or 6)."""
        return 6 if ":" in self.prefix else 4


def mark_rule(mark, proto="any", prefix="any", ports="any") -> MarkRule:
    """A checked MarkRule. `proto`: tcp|udp|sctp|any; `prefix`: an IPv4 or IPv6 address or
    network ("10.0.1.96/30", "2001:db8::/126"; host bits are refused) or "any" (every IPv4
    address); `ports`: N, "N-M", or "any". IPv6 rules match TCP and UDP ("any": those
    two), as the engine forwards no SCTP over IPv6.
    ControlError names what is wrong."""
    def bad(detail):
        return ControlError("invalid mark rule", _errno.EINVAL, detail)
    if isinstance(mark, str):
        t = mark.strip()
        if not t.lstrip("-").isdigit() or not -2**31 <= int(t) <= MAX_FWMARK:
            raise bad(f"mark {mark!r} is not a number 1..{MAX_FWMARK}")
        mark = int(t) % 2**32
    if isinstance(mark, bool) or not isinstance(mark, int) or not 1 <= mark <= MAX_FWMARK:
        raise bad(f"mark {mark!r} is not a number 1..{MAX_FWMARK}")
    proto = str(proto).lower()
    if proto not in ("tcp", "udp", "sctp", "any"):
        raise bad(f"protocol {proto!r} is not one of tcp, udp, sctp, any")
    if str(prefix).lower() in ("any", ""):
        prefix = "0.0.0.0/0"
    text = str(prefix)
    if text.startswith("[") and "]" in text:
        # [2001:db8::1] or [2001:db8::]/64, as ipvsadm brackets a v6 address
        inner, _, rest = text[1:].partition("]")
        text = inner + rest
    addr_text, slash, plen = text.partition("/")
    if slash and plen.isdigit():
        top = 128 if ":" in addr_text else 32
        if int(plen) > top:
            raise bad(f"address {prefix!r}: prefix length {plen} is outside 0..{top}")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise bad(f"address {prefix!r}: {e}") from None
    if net.version == 6 and proto == "sctp":
        raise bad(f"address {prefix!r}: IPv6 marks match tcp and udp only (fastlvs does "
                  f"not forward SCTP over IPv6)")
    if net.version == 6 and int(net.network_address) >> 32 == 0 and net.prefixlen >= 96:
        raise bad(f"address {prefix!r}: IPv6 addresses in ::/96 are not forwarded")
    if isinstance(ports, int) and not isinstance(ports, bool):
        lo = hi = ports
    else:
        t = str(ports).strip().lower()
        if t == "any":
            lo, hi = 0, 65535
        else:
            a, dash, b = t.partition("-")
            if not a.isdigit() or (dash and not b.isdigit()):
                raise bad(f"ports {ports!r}: want N, N-M or any")
            lo, hi = int(a), int(b) if dash else int(a)
    if not 0 <= lo <= hi <= 65535:
        raise bad(f"ports {ports!r}: want 0 <= N <= M <= 65535")
    return MarkRule(mark, proto, str(net), lo, hi)


def parse_mark_rule(text: str) -> MarkRule:
    """MarkRule from its one-token form `MARK,PROTO,PREFIX,PORTS` (MarkRule.text)."""
    parts = str(text).split(",")
    if len(parts) != 4:
        raise ControlError("invalid mark rule", _errno.EINVAL,
                           f"{text!r}: want MARK,PROTO,ADDRESS[/LEN],PORTS "
                           f"(e.g. 1,tcp,10.0.1.100/32,8000-8010)")
    return mark_rule(*parts)


def addrport(addr: str, port: int) -> str:
    """`addr:port`, with IPv6 addresses in brackets, as ipvsadm prints them."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def service_key(proto, vaddr, vport) -> ServiceKey:
    """Normalize (proto, vaddr, vport) into a ServiceKey; ControlError if any part is invalid."""
    p = Proto.of(proto)
    if p is Proto.FWM:
        # (vaddr names only the address family: "0.0.0.0" or "::")
        af = 6 if vaddr is not None and ":" in str(vaddr) else 4
        return fwmark_key(vport, af)
    try:
        ip = ipaddress.ip_address(vaddr)
    except (ValueError, TypeError):
        raise ControlError("illegal virtual server address[:port] specified", _errno.EINVAL,
                           f"not an IPv4 or IPv6 address: {vaddr!r}") from None
    _check_range(vport, "port", 0, 65535, "illegal virtual server address[:port] specified")
    return ServiceKey(p, str(ip), vport)


def _check_range(value, field: str, lo: int, hi: int, message: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(message, _errno.EINVAL, f"{field}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ControlError(message, _errno.EINVAL, f"{field}: {value} is outside {lo}..{hi}")
    return value


def _erange(detail: str) -> ControlError:
    # The kernel answers ERANGE and libipvs has no text of its own for it: ipvsadm prints
    # strerror(ERANGE).
    return ControlError(os.strerror(_errno.ERANGE), _errno.ERANGE, detail)


def tun_settings(tun_type="ipip", tun_port=0, tun_flags="nocsum") -> tuple[str, int, str]:
    """A TUN dest's (tun_type, tun_port, tun_flags) checked as the kernel takes them: type
    ipip, gue or gre; gue needs a UDP port 1..65535 and only gue has a port; flags nocsum,
    csum (gue, gre) or remcsum (gue). ControlError (EINVAL) naming what is wrong otherwise."""
    try:
        t, port, flags = _contract.tun_args(tun_type, tun_port, tun_flags)
    except ValueError as e:
        raise ControlError("Invalid argument", _errno.EINVAL, str(e)) from None
    names = {v: k for k, v in _contract.TUN_TYPES.items()}
    fnames = {v: k for k, v in _contract.TUN_FLAG_NAMES.items()}
    return names[t], port, fnames[flags]


class Dest(RealServer):
    """A real server of one virtual service: a RealServer plus its forwarding method and the
    per-dest counters `ipvsadm -L --stats/--rate` show.

    Identity inside a service is (address family, address, port). The counters are plain
    attributes written by whoever owns the connection table (the engine in the director).
    """

    __slots__ = ("fwd", "tun_type", "tun_port", "tun_flags") + STAT_FIELDS + RATE_FIELDS

    def __init__(self, addr, port: int, fwd=FwdMethod.DR, weight: int = 1,
                 u_threshold: int = 0, l_threshold: int = 0, tun=None):
        super().__init__(addr, port, weight=weight, u_threshold=u_threshold,
                         l_threshold=l_threshold)
        self.fwd = FwdMethod.of(fwd)
        # a TUN dest's encapsulation: "ipip", "gue" (UDP to tun_port) or "gre", and its
        # checksum flag "nocsum", "csum" or "remcsum" (see tun_settings)
        self.tun_type, self.tun_port, self.tun_flags = tun or ("ipip", 0, "nocsum")
        for f in STAT_FIELDS + RATE_FIELDS:
            setattr(self, f, 0)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.af, self.addr, self.port)

    def __repr__(self) -> str:
        return (f"Dest({addrport(self.addr, self.port)} {self.fwd.label} w={self.weight} "
                f"act={self.activeconns} inact={self.inactconns})")


class Service:
    """One virtual service: its key, scheduler settings and dests in the kernel's list order.

    `dests[0]` is the most recently added dest (IPVS inserts at the head). `timeout` is the
    persistence timeout in seconds, 0 when the service is not persistent. `netmask` is the
    persistence granularity: a dotted mask ("255.255.255.0") for IPv4, a prefix length
    (1..128) for IPv6. `flags` are the scheduler flags by the scheduler's own names
    ("sh-port"). `ops` is one-packet scheduling (UDP only).
    """

    def __init__(self, key: ServiceKey, sched_name: str, timeout: int, netmask, flags,
                 ops: bool):
        self.proto, self.vaddr, self.vport = key
        self.af = key.af
        self.sched_name = sched_name
        self.timeout = timeout
        self.netmask = netmask
        self.flags: frozenset[str] = flags
        self.ops = ops
        self.dests: list[Dest] = []
        for f in STAT_FIELDS + RATE_FIELDS:
            setattr(self, f, 0)

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.proto, self.vaddr, self.vport)

    @property
    def persistent(self) -> bool:
        return self.timeout > 0

    @property
    def netmask_int(self) -> int:
        """The persistence mask as an integer of the service's address width."""
        if self.af == 4:
            return int(ipaddress.IPv4Address(self.netmask))
        return ((1 << 128) - 1) ^ ((1 << (128 - self.netmask)) - 1)

    def find_dest(self, addr, port: int) -> Dest | None:
        """The dest with this address and port, or None."""
        try:
            ip = ipaddress.ip_address(addr)
        except (ValueError, TypeError):
            return None
        key = (ip.version, str(ip), port)
        for d in self.dests:
            if d.key == key:
                return d
        return None

    def __repr__(self) -> str:
        return (f"Service({self.key.option_text()} {self.sched_name} "
                f"dests={len(self.dests)})")


def _default_netmask(af: int):
    return "255.255.255.255" if af == 4 else 128


def _check_netmask(af: int, netmask):
    if netmask is None:
        return _default_netmask(af)
    if af == 4:
        try:
            return str(ipaddress.IPv4Address(netmask))
        except (ValueError, TypeError):
            raise ControlError("illegal virtual server persistent mask specified",
                               _errno.EINVAL, f"not a dotted IPv4 mask: {netmask!r}") from None
    if isinstance(netmask, bool) or not isinstance(netmask, int) or not 1 <= netmask <= 128:
        raise ControlError("illegal ipv6 netmask specified", _errno.EINVAL,
                           f"prefix length {netmask!r} is outside 1..128")
    return netmask


def check_sched_flags(sched_name: str, flags) -> frozenset[str]:
    """Resolve ipvsadm -b names into the scheduler library's names, as ipvsadm checks them:
    the generic `flag-1`..`flag-3` go with every scheduler (those it has no meaning for are
    kept and ignored, as the kernel keeps the bits); sh's and mh's own names only with that
    scheduler ("incompatible scheduler flag"); anything else is "invalid scheduler flag"
    (both ControlError). Recorded: tests/fixtures/kernel/names.json."""
    if flags is None:
        return frozenset()
    if isinstance(flags, str):
        flags = [f for f in flags.split(",") if f]
    flags = list(flags)
    if not flags:
        return frozenset()
    # Only services that ask for flags need the scheduler's module: the table stays usable
    # when a scheduler module is missing or broken.
    try:
        cls = _schedulers.get(sched_name)
    except ImportError as e:
        raise ControlError("Scheduler or persistence engine not found", _errno.ENOENT,
                           f"scheduler {sched_name} cannot be loaded: {e}") from None
    out = set()
    for f in flags:
        name = cls.flag_aliases.get(f, f)
        if name in cls.valid_flags or name in cls.generic_flags:
            out.add(name)
            continue
        owner = next((n for n in ("sh", "mh") if f.startswith(n + "-")
                      and f in _schedulers.get(n).valid_flags), None)
        if owner is not None:
            raise ControlError(f"incompatible scheduler flag `{f}'", _errno.EINVAL,
                               f"{f} is a flag of the {owner} scheduler, not of {sched_name}")
        valid = ", ".join(sorted(cls.valid_flags | cls.generic_flags))
        raise ControlError(f"invalid scheduler flag `{f}'", _errno.EINVAL,
                           f"unknown flag {f!r} for scheduler {sched_name}; valid: {valid}")
    return frozenset(out)


def flag_bits(sched_name: str, flags: Iterable[str]) -> list[tuple[int, str]]:
    """(bit number 1..3, flag name) for each flag, in ipvsadm's printing order.

    The number is the IP_VS_SVC_F_SCHEDn bit the flag stands for (from the scheduler's
    `flag_aliases`, or the generic name itself); a flag with no bit sorts after them, by
    name, with bit 0.
    """
    aliases: dict[str, str] = {}
    try:
        aliases = dict(_schedulers.get(sched_name).flag_aliases)
    except (ImportError, ValueError):
        pass
    bit_of = {name: int(alias.split("-")[1]) for alias, name in aliases.items()
              if alias.startswith("flag-") and alias[5:].isdigit()}

    def bit(f: str) -> int:
        if f in bit_of:
            return bit_of[f]
        return int(f[5:]) if f.startswith("flag-") and f[5:].isdigit() else 0
    return sorted(((bit(f), f) for f in flags), key=lambda bf: (bf[0] == 0, bf[0], bf[1]))


class ServiceTable:
    """All virtual services, keyed by (proto, vaddr, vport), plus the connection timeouts.

    The operations are IPVS's, with the kernel's and ipvsadm's checks; every refusal is a
    ControlError worded as ipvsadm prints it, and leaves the table unchanged. Iteration
    yields services in the order they were added.
    """

    def __init__(self):
        self._services: dict[ServiceKey, Service] = {}
        self.timeouts = dict(DEFAULT_TIMEOUTS)
        # firewall-mark match rules (MarkRule), tried in order; fastlvs marks frames itself
        self.marks: list[MarkRule] = []
        # IPVS sysctls (control/sysctl.py) a loaded file sets; None: leave them as they are
        self.sysctls: dict[str, int] | None = None

    # -- looking things up -------------------------------------------------------------------
    def __iter__(self) -> Iterator[Service]:
        return iter(list(self._services.values()))

    def __len__(self) -> int:
        return len(self._services)

    def __contains__(self, key) -> bool:
        return self._lookup(key) is not None

    def get(self, key) -> Service | None:
        """The service for `key` (a ServiceKey, a (proto, vaddr, vport) tuple or a Service)."""
        return self._lookup(key)

    def _lookup(self, key) -> Service | None:
        if isinstance(key, Service):
            key = key.key
        try:
            return self._services.get(service_key(*key))
        except ControlError:
            return None

    def _need(self, key, message: str) -> Service:
        if isinstance(key, Service):
            key = key.key
        k = service_key(*key)
        svc = self._services.get(k)
        if svc is None:
            raise ControlError(message, _errno.ESRCH, k.option_text())
        return svc

    # -- services ----------------------------------------------------------------------------
    def _service_settings(self, key: ServiceKey, sched, timeout, netmask, flags, ops):
        if sched not in _schedulers.names():
            raise ControlError("Scheduler or persistence engine not found", _errno.ENOENT,
                               f"unknown scheduler {sched!r}; valid: "
                               f"{', '.join(_schedulers.names())}")
        if timeout != 0:
            _check_range(timeout, "timeout", 1, MAX_TIMEOUT,
                         f"invalid timeout value `{timeout}' specified")
        if key.vport == 0 and timeout == 0:
            raise ControlError("Zero port specified for non-persistent service", _errno.EINVAL)
        if ops and key.proto is not Proto.UDP:
            raise ControlError("One-Packet Scheduling is only for UDP virtual services",
                               _errno.EINVAL)
        mask = _check_netmask(key.af, netmask)
        return sched, timeout, mask, check_sched_flags(sched, flags), bool(ops)

    def add_service(self, proto, vaddr, vport: int, sched: str = DEFAULT_SCHEDULER,
                    timeout: int = 0, netmask=None, flags=None, ops: bool = False) -> Service:
        """Add a virtual service with no dests and return it.

        `timeout` > 0 makes it persistent (1..MAX_TIMEOUT seconds); port 0 is only allowed
        for a persistent service (it then matches any port). `netmask` defaults to the
        host mask (255.255.255.255 / 128). Refused if the service exists ("Service already
        exists"), the scheduler is unknown, or a flag is not the scheduler's.
        """
        key = service_key(proto, vaddr, vport)
        settings = self._service_settings(key, sched, timeout, netmask, flags, ops)
        if key in self._services:
            raise ControlError("Service already exists", _errno.EEXIST, key.option_text())
        svc = Service(key, *settings)
        self._services[key] = svc
        return svc

    def edit_service(self, proto, vaddr, vport: int, sched: str = DEFAULT_SCHEDULER,
                     timeout: int = 0, netmask=None, flags=None, ops: bool = False) -> Service:
        """Replace a service's scheduler, flags, persistence and netmask; keep its dests.

        Like the kernel's edit, every setting is replaced, not merged: an edit without
        `timeout` makes the service non-persistent and one without `sched` sets wlc
        (exactly what `ipvsadm -E` does). Refused with "No such service" if it is absent.
        The caller rebuilds the service's scheduler when `sched_name` or `flags` changed.
        """
        key = service_key(proto, vaddr, vport)
        svc = self._services.get(key)
        if svc is None:
            raise ControlError("No such service", _errno.ESRCH, key.option_text())
        (svc.sched_name, svc.timeout, svc.netmask, svc.flags,
         svc.ops) = self._service_settings(key, sched, timeout, netmask, flags, ops)
        return svc

    def delete_service(self, proto, vaddr, vport: int) -> Service:
        """Remove a service with all its dests and return it; "No such service" if absent."""
        key = service_key(proto, vaddr, vport)
        svc = self._services.pop(key, None)
        if svc is None:
            raise ControlError("No such service", _errno.ESRCH, key.option_text())
        return svc

    def clear(self) -> None:
        """Remove every service (ipvsadm -C). The timeouts are kept. Clearing an empty table
        is not an error."""
        self._services.clear()

    def zero(self, key=None) -> None:
        """Zero the packet, byte, connection-count and rate counters of one service and its
        dests, or of all services when `key` is None (ipvsadm -Z). Active/inactive
        connection counts are live state and stay. "No such service" if `key` is absent.
        """
        targets = list(self._services.values()) if key is None else [
            self._need(key, "No such service")]
        for svc in targets:
            for obj in [svc, *svc.dests]:
                for f in STAT_FIELDS + RATE_FIELDS:
                    setattr(obj, f, 0)

    # -- dests -------------------------------------------------------------------------------
    @staticmethod
    def _dest_settings(svc: Service, af: int, fwd, weight, u_threshold, l_threshold):
        fwd = FwdMethod.of(fwd)
        if isinstance(weight, bool) or not isinstance(weight, int) or not \
                0 <= weight <= MAX_WEIGHT:
            raise _erange(f"weight {weight!r} is outside 0..{MAX_WEIGHT}")
        for name, v in (("u_threshold", u_threshold), ("l_threshold", l_threshold)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_THRESHOLD:
                raise _erange(f"{name} {v!r} is outside 0..{MAX_THRESHOLD}")
        if l_threshold > u_threshold:
            raise _erange(f"l_threshold {l_threshold} is above u_threshold {u_threshold}")
        if af != svc.af and fwd is not FwdMethod.TUN:
            raise ControlError("Different address family is allowed only for tunneling servers",
                               _errno.EINVAL)
        return fwd

    @staticmethod
    def _dest_addr(addr, port):
        try:
            ip = ipaddress.ip_address(addr)
        except (ValueError, TypeError):
            raise ControlError("illegal real server address[:port] specified", _errno.EINVAL,
                               f"not an IPv4 or IPv6 address: {addr!r}") from None
        _check_range(port, "port", 0, 65535, "illegal real server address[:port] specified")
        return ip

    def add_dest(self, key, addr, port: int, fwd=FwdMethod.DR, weight: int = 1,
                 u_threshold: int = 0, l_threshold: int = 0, tun=None) -> Dest:
        """Add a dest to service `key` at the HEAD of its list (as IPVS does) and return it.

        `key` is a ServiceKey, (proto, vaddr, vport) or a Service. Weight 0 adds a quiesced
        dest. Refused with "Service not defined" if the service is absent, "Destination
        already exists" for the same address and port, "Numerical result out of range" for
        a negative weight or l_threshold > u_threshold (0 = no upper limit, so a lower
        threshold needs an upper one), and when the address family differs from the
        service's unless `fwd` is TUN. The port is kept as given (ipvsadm forces it to the
        service's for DR and TUN before calling; see fastlvs.control.ipvsadm). `tun` is a
        TUN dest's (tun_type, tun_port, tun_flags), see tun_settings; None is plain ipip.
        """
        svc = self._need(key, "Service not defined")
        ip = self._dest_addr(addr, port)
        fwd = self._dest_settings(svc, ip.version, fwd, weight, u_threshold, l_threshold)
        tun = tun_settings(*(tun or ("ipip", 0, "nocsum")))
        if svc.find_dest(ip, port) is not None:
            raise ControlError("Destination already exists", _errno.EEXIST,
                               addrport(str(ip), port))
        dest = Dest(ip, port, fwd=fwd, weight=weight, u_threshold=u_threshold,
                    l_threshold=l_threshold, tun=tun)
        svc.dests.insert(0, dest)
        return dest

    def edit_dest(self, key, addr, port: int, fwd=FwdMethod.DR, weight: int = 1,
                  u_threshold: int = 0, l_threshold: int = 0, tun=None) -> Dest:
        """Replace a dest's forwarding method, weight and thresholds in place; return it.

        As in the kernel every setting is replaced (an `ipvsadm -e` without -w sets weight
        1), the dest keeps its place in the list, its counters and its identity (so the
        scheduler sees an upd_dest). Its overload mark is cleared when the new upper
        threshold is 0 or higher than before. Refused with "Service not defined" or "No
        such destination" when absent, and with the range checks of `add_dest`.
        """
        svc = self._need(key, "Service not defined")
        ip = self._dest_addr(addr, port)
        fwd = self._dest_settings(svc, ip.version, fwd, weight, u_threshold, l_threshold)
        tun = tun_settings(*(tun or ("ipip", 0, "nocsum")))
        dest = svc.find_dest(ip, port)
        if dest is None:
            raise ControlError("No such destination", _errno.ENOENT, addrport(str(ip), port))
        if u_threshold == 0 or u_threshold > dest.u_threshold:
            dest.overloaded = False
        dest.fwd = fwd
        dest.tun_type, dest.tun_port, dest.tun_flags = tun
        dest.weight = weight
        dest.u_threshold = u_threshold
        dest.l_threshold = l_threshold
        return dest

    def delete_dest(self, key, addr, port: int) -> Dest:
        """Unlink a dest from its service and return it. Deleting an absent dest is an error
        ("No such destination"), as is an absent service ("Service not defined"); the other
        dests keep their order."""
        svc = self._need(key, "Service not defined")
        ip = self._dest_addr(addr, port)
        dest = svc.find_dest(ip, port)
        if dest is None:
            raise ControlError("No such destination", _errno.ENOENT, addrport(str(ip), port))
        svc.dests.remove(dest)
        return dest

    # -- firewall-mark rules -----------------------------------------------------------------
    def add_mark_rule(self, rule: MarkRule) -> MarkRule:
        """Append a match rule (tried after the ones before it). The same rule twice is
        refused ("Rule already exists"): it could never match."""
        if rule in self.marks:
            raise ControlError("Rule already exists", _errno.EEXIST, rule.text())
        self.marks.append(rule)
        return rule

    def delete_mark_rules(self, mark: int) -> list[MarkRule]:
        """Remove every rule giving `mark` and return them; none is an error ("No such
        rule"). A mark service stays; without rules no frame reaches it."""
        gone = [r for r in self.marks if r.mark == mark]
        if not gone:
            raise ControlError("No such rule", _errno.ESRCH, f"no rule gives mark {mark}")
        self.marks = [r for r in self.marks if r.mark != mark]
        return gone

    # -- timeouts ----------------------------------------------------------------------------
    def set_timeouts(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> dict[str, int]:
        """Set the TCP established, TCP FIN-wait and UDP connection timeouts in seconds
        (ipvsadm --set). A value of 0 keeps the current one, as in the kernel. Values
        outside 0..MAX_TIMEOUT are refused and nothing changes. Returns the new timeouts."""
        values = {"tcp": tcp, "tcpfin": tcpfin, "udp": udp}
        for v in values.values():
            _check_range(v, "timeout", 0, MAX_TIMEOUT, f"invalid timeout value `{v}' specified")
        for name, v in values.items():
            if v:
                self.timeouts[name] = v
        return dict(self.timeouts)


__all__ = [
    "ControlError", "DEFAULT_PERSISTENT_TIMEOUT", "DEFAULT_SCHEDULER", "DEFAULT_TIMEOUTS", "Dest",
    "FwdMethod", "MAX_TIMEOUT", "Proto", "RATE_FIELDS", "STAT_FIELDS", "Service", "ServiceKey",
    "MarkRule", "ServiceTable", "addrport", "check_sched_flags", "flag_bits", "fwmark_key",
    "fwmark_text", "mark_rule", "parse_mark_rule", "service_key",
]
