"""The IPVS sysctls that change forwarding, declared once: the kernel's names
(/proc/sys/net/ipv4/vs/NAME), value ranges, defaults and meanings as Linux 6.1 has them,
with what differs in fastlvs said in `meaning`. The director applies them to the engine; the
TOML `[sysctl]` table, `fastlvs admin --sysctl` and the control socket's "sysctl" op all
check values here. A name not declared here is refused by name.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastlvs.engine import contract


class SysctlError(ValueError):
    """A sysctl name or value fastlvs does not take; str() is the one line the user sees."""


@dataclass(frozen=True)
class Sysctl:
    """One sysctl: `kind` "bool" (0/1) or "int" (lo..hi); `supported` lists the values
    fastlvs implements when that is not the whole range (None: all of it)."""

    name: str
    kind: str
    lo: int
    hi: int
    default: int
    meaning: str
    supported: tuple[int, ...] | None = None
    engine: bool = True            # applied by the engine (else kept by the director only)


def _engine(name: str, kind: str, meaning: str) -> Sysctl:
    """A sysctl the engine applies: its default and range are the engine contract's."""
    default, lo, hi = contract.ENGINE_SYSCTLS[name]
    return Sysctl(name, kind, lo, hi, default, meaning)


_DEFENCE_MODES = ("0 off; 1 automatic: in force while fewer than amemthresh conn entries are "
                  "free (then reads 2, back to 1 when not); 3 always")

SYSCTLS: dict[str, Sysctl] = {s.name: s for s in (
    _engine("expire_nodest_conn", "bool",
            "0: packets of a connection whose real server was deleted are dropped and the "
            "entry is left to time out (re-adding the server revives it); 1: such entries "
            "end at once (when the server is deleted, or on their next packet, which is then "
            "handled as a new connection), and with conn_reuse_mode a SYN over a connection "
            "of a weight-0 server is scheduled afresh"),
    _engine("expire_quiescent_template", "bool",
            "1: a persistence template whose real server has weight 0 is not followed; the "
            "client is scheduled afresh (0: persistent clients keep a quiesced server)"),
    _engine("conn_reuse_mode", "int",
            "port reuse: bit 1, a SYN over an entry in TIME_WAIT or CLOSE is scheduled as a "
            "new connection (not over one a persistence template controls); bit 2, also over "
            "FIN_WAIT when no reply was seen (DR/TUN); 0, the SYN follows the old entry"),
    _engine("sloppy_tcp", "bool",
            "1: any TCP packet without RST may open a connection, not only a SYN"),
    _engine("nat_icmp_send", "bool",
            "1: a packet from a NAT real server's address and port that belongs to no "
            "connection (a TCP RST aside) is dropped and the real server gets ICMP port "
            "unreachable (0: it is left to the host, as any other packet)"),
    _engine("pmtu_disc", "bool",
            "1: a TUN packet with DF too big for the tunnel is refused with ICMP "
            "fragmentation needed; 0: the tunnel header never carries DF and a packet too "
            "big is sent in fragments (DR and NAT are not affected)"),
    _engine("drop_entry", "int",
            "flood defence: drop connection entries still in SYN_RECV/SYNACK (a spoofed "
            "SYN's): when the table is full an older such entry of the new connection's "
            "hash chain, else the oldest one, makes room for it, and every second (while "
            "the table has room) a random 1/32 of the table (at most 1024 entries) is "
            "looked at; established entries are never dropped. " + _DEFENCE_MODES),
    _engine("drop_packet", "int",
            "flood defence: drop 1 of every `rate` packets that would open a connection; "
            "automatic rate amemthresh / (amemthresh - free entries), so all of them when "
            "the table is full; always mode uses am_droprate. " + _DEFENCE_MODES),
    _engine("secure_tcp", "int",
            "flood defence: the kernel's stricter TCP state table (a NAT connection becomes "
            "ESTABLISHED only after the server's SYN-ACK; DR/TUN ones open in SYNACK). "
            + _DEFENCE_MODES),
    _engine("amemthresh", "int",
            "free connection entries below which the automatic defences engage (the "
            "kernel counts free memory pages; fastlvs's table is allocated once)"),
    _engine("am_droprate", "int",
            "drop_packet's rate in always mode (3): 1 of every am_droprate"),
    _engine("sync_threshold", "int",
            "connection sync (master): a conn is sent on its packet number sync_threshold "
            "(then every sync_period packets); the kernel's sync_threshold is the pair "
            "\"threshold period\", written here as two names; it must stay below "
            "sync_period unless that is 0"),
    _engine("sync_period", "int",
            "connection sync (master): a conn is sent again every sync_period packets "
            "(0: only once, at sync_threshold, and on the TCP state changes that force a "
            "sync; a template goes with every sent conn unless sync_refresh_period is set)"),
    _engine("sync_refresh_period", "int",
            "connection sync (master), seconds: when set, a conn already sent is sent again "
            "only once its timeout moved by this much (or by half of it, at least 10 s), "
            "with sync_retries repeats an eighth of the period apart; 0 = off"),
    _engine("sync_retries", "int",
            "connection sync (master): repeats of a message under sync_refresh_period (0-3)"),
    _engine("sync_persist_mode", "int",
            "connection sync (master): not 0, conns under a persistence template are not "
            "sent, only their template"),
    _engine("sync_qlen_max", "int",
            "connection sync (master): messages waiting to be sent at most; more are "
            "dropped and counted (queue_overflow). The kernel's default is a share of free "
            "memory; fastlvs's is 4096 messages (6 MB of 1472-byte messages at most)"),
    Sysctl("sync_sock_size", "int", 0, 2**31 - 1, 0,
           "connection sync: SO_SNDBUF of a master's socket, SO_RCVBUF of a backup's, in "
           "bytes (doubled and capped by net.core.wmem_max/rmem_max as setsockopt does); 0 "
           "keeps the system's default. Read when a sync daemon starts", engine=False),
)}


def check_sync_pair(threshold: int, period: int) -> None:
    """The kernel's rule for its sync_threshold pair (proc_do_sync_threshold): threshold
    below period, unless period is 0; SysctlError otherwise."""
    if period and threshold >= period:
        raise SysctlError(f"sysctl sync_threshold: {threshold} must be below sync_period "
                          f"({period}) unless sync_period is 0")


def check(name: str, value) -> int:
    """The value `name` is set to by `value` (an int, or its decimal text); SysctlError
    naming the sysctl for an unknown name, a value outside its range or one not
    implemented. Booleans take 0 or 1, as the kernel's do."""
    s = SYSCTLS.get(name)
    if s is None:
        raise SysctlError(f"sysctl {name!r} is not supported (supported: "
                          f"{', '.join(SYSCTLS)})")
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise SysctlError(f"sysctl {name}: {value!r} is not an integer") from None
    if not isinstance(value, int):
        raise SysctlError(f"sysctl {name}: {value!r} is not an integer")
    if not s.lo <= value <= s.hi:
        raise SysctlError(f"sysctl {name}: {value} is outside {s.lo}..{s.hi}")
    if s.supported is not None and value not in s.supported:
        raise SysctlError(f"sysctl {name}={value} is not supported by fastlvs (only "
                          f"{', '.join(map(str, s.supported))})")
    return value


def parse_assignment(text: str) -> tuple[str, int]:
    """`NAME=VALUE` (as `sysctl -w` takes it; a `net.ipv4.vs.` prefix is allowed) ->
    (name, value); SysctlError otherwise."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise SysctlError(f"sysctl: {text!r} is not NAME=VALUE")
    if name.startswith("net.ipv4.vs."):
        name = name[len("net.ipv4.vs."):]
    return name, check(name, value)


def parse_table(data, fail=None) -> dict[str, int]:
    """The `[sysctl]` table of a TOML file -> {name: value}, every name checked.
    `fail(key, what)` builds the exception to raise (config.py's, naming file and line);
    without it SysctlError is raised."""
    def _fail(key, what):
        return fail(key, what) if fail is not None else SysctlError(
            f"sysctl.{key}: {what}" if key else f"sysctl: {what}")
    if not isinstance(data, dict):
        raise _fail(None, "must be a table ([sysctl])")
    out = {}
    for key, value in data.items():
        if key not in SYSCTLS:
            raise _fail(key, f"not supported (supported: {', '.join(SYSCTLS)})")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int):
            raise _fail(key, f"{value!r} is not an integer")
        try:
            out[key] = check(key, value)
        except SysctlError as e:
            raise _fail(key, str(e).split(": ", 1)[-1]) from None
    return out


def defaults() -> dict[str, int]:
    """{name: default} of every declared sysctl."""
    return {s.name: s.default for s in SYSCTLS.values()}


def format_values(values: dict[str, int]) -> str:
    """`NAME = VALUE` lines, in declaration order (what `admin --sysctl` prints)."""
    return "".join(f"{n} = {values[n]}\n" for n in SYSCTLS if n in values)


__all__ = ["SYSCTLS", "Sysctl", "SysctlError", "check", "check_sync_pair", "defaults",
           "format_values",
           "parse_assignment", "parse_table"]
