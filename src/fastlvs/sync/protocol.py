"""IPVS sync protocol version 1 on the wire: SyncConn (one connection or persistence template
in the kernel's units), encode_conn()/SyncPacker (what a master multicasts, packed as the
kernel packs it) and decode() (what a backup accepts, with the kernel's checks, in the same
order, and a drop reason instead of an exception). Version 0 datagrams are recognised and
dropped, not read. All numbers on the wire are big-endian; addresses are text here.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from fastlvs.engine import contract

# -- constants of the protocol (ip_vs_sync.c, include/uapi/linux/ip_vs.h, include/net/ip_vs.h) --
SYNC_PROTO_VER = 1
SYNC_GROUP = "224.0.0.81"          # default multicast group and port
SYNC_PORT = 8848

HEADER = struct.Struct("!BBHBbH")  # reserved(0) syncid size nr_conns version spare(0)
HEADER_V0_LEN = 4                  # a version 0 header: nr_conns syncid size
_ENTRY_HEAD = "!BBHIHHHHII"        # type protocol ver_size flags state cport vport dport fwmark timeout
ENTRY_V4 = struct.Struct(_ENTRY_HEAD + "4s4s4s")
ENTRY_V6 = struct.Struct(_ENTRY_HEAD + "16s16s16s")
SEQ = struct.Struct("!6I")         # in_seq (init_seq delta previous_delta), out_seq (same)

STYPE_F_INET6 = 1                  # entry type bit: IPv6 addresses follow
SVER_SHIFT = 12                    # entry ver_size: version in the top 4 bits, size below
SVER_MASK = 0x0FFF

IPVS_OPT_SEQ_DATA = 1
IPVS_OPT_PE_DATA = 2
IPVS_OPT_PE_NAME = 3
IPVS_OPT_F_PARAM = 1 << 6          # set in an option type: a receiver may skip it if unknown
IP_VS_PENAME_MAXLEN = 16
IP_VS_PEDATA_MAXLEN = 255

# connection flags (IP_VS_CONN_F_*)
IP_VS_CONN_F_FWD_MASK = 0x0007
IP_VS_CONN_F_MASQ = 0x0000
IP_VS_CONN_F_LOCALNODE = 0x0001
IP_VS_CONN_F_TUNNEL = 0x0002
IP_VS_CONN_F_DROUTE = 0x0003
IP_VS_CONN_F_BYPASS = 0x0004
IP_VS_CONN_F_SYNC = 0x0020
IP_VS_CONN_F_HASHED = 0x0040
IP_VS_CONN_F_NOOUTPUT = 0x0080
IP_VS_CONN_F_INACTIVE = 0x0100
IP_VS_CONN_F_OUT_SEQ = 0x0200
IP_VS_CONN_F_IN_SEQ = 0x0400
IP_VS_CONN_F_SEQ_MASK = 0x0600
IP_VS_CONN_F_NO_CPORT = 0x0800
IP_VS_CONN_F_TEMPLATE = 0x1000
IP_VS_CONN_F_ONE_PACKET = 0x2000
IP_VS_CONN_F_BACKUP_MASK = (IP_VS_CONN_F_FWD_MASK | IP_VS_CONN_F_NOOUTPUT | IP_VS_CONN_F_INACTIVE
                            | IP_VS_CONN_F_SEQ_MASK | IP_VS_CONN_F_NO_CPORT
                            | IP_VS_CONN_F_TEMPLATE)
IP_VS_CONN_F_BACKUP_UPD_MASK = IP_VS_CONN_F_INACTIVE | IP_VS_CONN_F_SEQ_MASK

# protocols and their states, numbered as IPVS numbers them
IPPROTO_IP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ESP, IPPROTO_AH, IPPROTO_SCTP = 0, 6, 17, 50, 51, 132
TCP_STATES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT", "CLOSE",
              "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")
UDP_STATES = ("UDP",)
SCTP_STATES = ("NONE", "INIT1", "INIT", "C-SENT", "C-REPLIED", "C-WAIT", "COOKIE", "C-ECHOED",
               "ESTABLISHED", "S-SENT", "S-RECEIVED", "S-ACK-SENT", "REJECTED", "CLOSED")
AH_ESP_STATES = ("NONE",)
TEMPLATE_STATES = ("NONE", "ASSURED")     # IP_VS_CTPL_S_*
STATES = {IPPROTO_TCP: TCP_STATES, IPPROTO_UDP: UDP_STATES, IPPROTO_SCTP: SCTP_STATES,
          IPPROTO_AH: AH_ESP_STATES, IPPROTO_ESP: AH_ESP_STATES}
PROTO_NAMES = {IPPROTO_IP: "IP", IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP",
               IPPROTO_AH: "AH", IPPROTO_ESP: "ESP"}
KNOWN_PE = ("sip",)                       # persistence engines a receiver can look up

# the forwarding method in a conn's flags <-> the engine's fwd ids
FWD_FROM_FLAGS = {IP_VS_CONN_F_MASQ: contract.FWD_NAT, IP_VS_CONN_F_TUNNEL: contract.FWD_TUN,
                  IP_VS_CONN_F_DROUTE: contract.FWD_DR}
FLAGS_FROM_FWD = {v: k for k, v in FWD_FROM_FLAGS.items()}

# -- why a datagram (or one entry of it) was dropped: the names of the drop counters ----------
# whole datagram, nothing of it read
DROP_SHORT = "short"                    # shorter than a version 0 header
DROP_SIZE = "size_mismatch"             # header's size is not the datagram's length
DROP_SYNCID = "foreign_syncid"          # another director pair's syncid
DROP_VERSION = "not_v1"                 # a version 0 (or unknown) header
# the rest of the datagram, from the failing entry on (the kernel keeps earlier entries)
DROP_TRUNCATED = "truncated"            # fewer bytes left than an entry's fixed part
DROP_ENTRY_OVERRUN = "entry_overrun"    # an entry's size runs past the datagram
DROP_ENTRY_VERSION = "entry_version"    # an entry version other than 0
DROP_ENTRY_TYPE = "entry_type"          # neither IPv4 (0) nor IPv6 (bit 0)
DROP_ENTRY_SIZE = "entry_size"          # an entry's size smaller than its fixed part
DROP_OPT_TRUNCATED = "option_truncated"  # an option's type/length cut off
DROP_OPT_LENGTH = "option_length"       # an option of length 0 or past the entry
DROP_OPT_SEQ = "option_seq"             # sequence data of the wrong length, or twice
DROP_OPT_PE_DATA = "option_pe_data"     # persistence-engine data twice
DROP_OPT_PE_NAME = "option_pe_name"     # persistence-engine name too long, or twice
# one entry; the next is read
SKIP_OPTION = "unknown_option"          # an unknown option not marked skippable
SKIP_PROTOCOL = "unknown_protocol"      # a protocol IPVS has no handler for
SKIP_STATE = "bad_state"                # a state number past the protocol's states
SKIP_PE = "bad_pe"                      # pe data without a name, or an unknown engine
DROP_INTERNAL = "internal_error"        # a decoder bug; never expected (the fuzz test checks)
DROP_REASONS = (DROP_SHORT, DROP_SIZE, DROP_SYNCID, DROP_VERSION, DROP_TRUNCATED,
                DROP_ENTRY_OVERRUN, DROP_ENTRY_VERSION, DROP_ENTRY_TYPE, DROP_ENTRY_SIZE,
                DROP_OPT_TRUNCATED, DROP_OPT_LENGTH, DROP_OPT_SEQ, DROP_OPT_PE_DATA,
                DROP_OPT_PE_NAME, DROP_INTERNAL)
SKIP_REASONS = (SKIP_OPTION, SKIP_PROTOCOL, SKIP_STATE, SKIP_PE)


def sync_maxlen(mtu: int = 1500, master: bool = True, requested: int = 0,
                ipv6_group: bool = False) -> int:
    """The largest sync message, as start_sync_thread() computes it: a master without
    --sync-maxlen sends at most 1500 - IP - UDP bytes whatever the interface's MTU; a backup
    reads up to its MTU (1500..65535) less the headers. A requested length is clamped to
    1..65535-headers for a master and 1024..65535-headers for a backup."""
    hlen = (40 if ipv6_group else 20) + 8
    if requested:
        low = 1 if master else 1024
        return max(low, min(requested, 65535 - hlen))
    mtu = 1500 if master else max(1500, min(mtu, 65535))
    return mtu - hlen


@dataclass
class SyncConn:
    """One connection or persistence template as a sync message carries it.

    Units are the kernel's: `flags` are IP_VS_CONN_F_* bits as the master sent them (the
    forwarding method in the low 3 bits), `state` an IPVS state number of `protocol` (a
    template's is IP_VS_CTPL_S_*), `timeout` the full timeout in seconds (0: the receiver
    takes its own for the state). Sequence data travels only when flags has IN_SEQ or
    OUT_SEQ; `pe_name` only with `pe_data`. Addresses are text, all of one family.
    """

    protocol: int
    caddr: str
    cport: int
    vaddr: str
    vport: int
    daddr: str
    dport: int
    flags: int
    state: int
    timeout: int
    fwmark: int = 0
    in_seq: tuple[int, int, int] | None = None      # (init_seq, delta, previous_delta)
    out_seq: tuple[int, int, int] | None = None
    pe_data: bytes | None = None
    pe_name: str | None = None
    skipped_options: tuple[int, ...] = field(default=(), compare=False)

    @property
    def ipv6(self) -> bool:
        return ipaddress.ip_address(self.caddr).version == 6

    @property
    def template(self) -> bool:
        return bool(self.flags & IP_VS_CONN_F_TEMPLATE)

    @property
    def inactive(self) -> bool:
        """Counted as InActConn (not established) by the receiver."""
        return bool(self.flags & IP_VS_CONN_F_INACTIVE)

    @property
    def fwd(self) -> int | None:
        """The engine's forwarding id (contract.FWD_*), None for local node or bypass."""
        return FWD_FROM_FLAGS.get(self.flags & IP_VS_CONN_F_FWD_MASK)

    @property
    def backup_flags(self) -> int:
        """The flags a backup gives the conn it installs: the master's, masked to the bits a
        backup may take, with SYNC set."""
        return (self.flags & IP_VS_CONN_F_BACKUP_MASK) | IP_VS_CONN_F_SYNC

    @property
    def state_name(self) -> str:
        """The state as `ipvsadm -Lnc` (and fastlvs's listing) names it."""
        names = TEMPLATE_STATES if self.template else STATES.get(self.protocol, ())
        return names[self.state] if self.state < len(names) else "ERR!"

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.protocol, str(self.protocol))


class EncodeError(ValueError):
    """A SyncConn that cannot be put on the wire (out-of-range field, mixed families)."""


def _addr(text: str, version: int) -> bytes:
    a = ipaddress.ip_address(text)
    if a.version != version:
        raise EncodeError(f"address {text} is not IPv{version} like the client address")
    return a.packed


def encode_conn(c: SyncConn) -> bytes:
    """One connection entry, unpadded, with its options in the kernel's order (sequence
    data, then pe data, then pe name). Raises EncodeError for a conn that does not fit."""
    v6 = ipaddress.ip_address(c.caddr).version == 6
    version = 6 if v6 else 4
    opts = b""
    if c.flags & IP_VS_CONN_F_SEQ_MASK:
        seq = tuple(c.in_seq or (0, 0, 0)) + tuple(c.out_seq or (0, 0, 0))
        opts += bytes((IPVS_OPT_SEQ_DATA, SEQ.size)) + SEQ.pack(*seq)
    if c.pe_data:
        if len(c.pe_data) > IP_VS_PEDATA_MAXLEN:
            raise EncodeError(f"pe_data of {len(c.pe_data)} bytes (at most {IP_VS_PEDATA_MAXLEN})")
        opts += bytes((IPVS_OPT_PE_DATA, len(c.pe_data))) + c.pe_data
        if c.pe_name:
            name = c.pe_name.encode("ascii")
            if len(name) > IP_VS_PENAME_MAXLEN:
                raise EncodeError(f"pe_name {c.pe_name!r} (at most {IP_VS_PENAME_MAXLEN} bytes)")
            opts += bytes((IPVS_OPT_PE_NAME, len(name))) + name
    fixed = ENTRY_V6 if v6 else ENTRY_V4
    size = fixed.size + len(opts)
    try:
        head = fixed.pack(STYPE_F_INET6 if v6 else 0, c.protocol, size & SVER_MASK,
                          c.flags & ~IP_VS_CONN_F_HASHED, c.state, c.cport, c.vport, c.dport,
                          c.fwmark, c.timeout, _addr(c.caddr, version), _addr(c.vaddr, version),
                          _addr(c.daddr, version))
    except struct.error as e:
        raise EncodeError(f"conn {c.caddr}:{c.cport}: {e}") from None
    return head + opts


def encode_message(syncid: int, conns, maxlen: int | None = None) -> bytes:
    """One datagram holding every conn given (padded between entries as the kernel pads).
    Raises EncodeError when they do not fit in `maxlen` (default: no limit but the 16-bit
    size and the 255-entry count); SyncPacker splits a stream into datagrams instead."""
    p = SyncPacker(syncid, maxlen or 65535)
    out = []
    for c in conns:
        out += p.add(c)
    out += p.flush()
    if len(out) != 1:
        raise EncodeError(f"{len(conns)} conns need {len(out)} messages")
    return out[0]


class SyncPacker:
    """Fills messages as the kernel's master does (ip_vs_sync_conn with sb_queue_tail): each
    entry starts on a 4-byte boundary (padding goes before an entry, never after the last),
    and a message is closed when the next entry would pass `maxlen`; an entry larger than
    `maxlen` gets a message of its own. add() returns the messages it closed, flush() the
    one in progress."""

    def __init__(self, syncid: int, maxlen: int = 1472):
        if not 0 <= syncid <= 255:
            raise EncodeError(f"syncid {syncid} (0-255)")
        self.syncid = syncid
        self.maxlen = maxlen
        self._entries: list[bytes] = []
        self._len = 0            # bytes used, header included
        self._end = 0            # capacity of the message in progress

    def add(self, c: SyncConn) -> list[bytes]:
        entry = encode_conn(c)
        done = []
        pad = 0
        if self._entries:
            pad = -self._len & 3
            # the kernel's count is one byte and wraps; it never reaches 255 entries of >= 36
            # bytes in a 16-bit message, but a caller's maxlen could: close at 255 too
            if self._len + pad + len(entry) > self._end or len(self._entries) == 255:
                done = self.flush()
                pad = 0
        if not self._entries:
            self._len = HEADER.size
            self._end = max(len(entry) + HEADER.size, self.maxlen)
            if self._end > 65535:
                raise EncodeError(f"message of {self._end} bytes")
        self._entries.append(b"\0" * pad + entry)
        self._len += pad + len(entry)
        return done

    def flush(self) -> list[bytes]:
        if not self._entries:
            return []
        body = b"".join(self._entries)
        msg = HEADER.pack(0, self.syncid, HEADER.size + len(body), len(self._entries),
                          SYNC_PROTO_VER, 0) + body
        self._entries = []
        self._len = 0
        return [msg]


@dataclass
class Decoded:
    """What a backup takes from one datagram: the conns accepted, the reason for each entry
    skipped, and `error`, the reason the datagram (or its rest) was dropped, else None.
    Conns decoded before an error are kept, as the kernel keeps them."""

    syncid: int | None = None
    conns: list[SyncConn] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


def decode(data: bytes, syncid: int = 0, known_pe=KNOWN_PE) -> Decoded:
    """Read one sync datagram as a version 1 backup with `syncid` does (0 accepts any).
    Never raises: every reason to drop is in the result (see DROP_* and SKIP_*)."""
    try:
        return _decode(bytes(data), syncid, known_pe)
    except Exception:   # a bug here must cost one datagram, not the receiver
        return Decoded(error=DROP_INTERNAL)


def _decode(buf: bytes, want_syncid: int, known_pe) -> Decoded:
    n = len(buf)
    if n < HEADER_V0_LEN:
        return Decoded(error=DROP_SHORT)
    if n != int.from_bytes(buf[2:4], "big"):
        return Decoded(error=DROP_SIZE)
    res = Decoded(syncid=buf[1])
    if want_syncid and buf[1] != want_syncid:
        res.error = DROP_SYNCID
        return res
    if n < HEADER.size:
        res.error = DROP_VERSION
        return res
    reserved, _sid, _size, nr_conns, version, spare = HEADER.unpack_from(buf)
    if version != SYNC_PROTO_VER or reserved or spare:
        res.error = DROP_VERSION
        return res
    end = HEADER.size
    for _ in range(nr_conns):
        p = end
        if p + ENTRY_V4.size > n:
            res.error = DROP_TRUNCATED
            return res
        ver_size = int.from_bytes(buf[p + 2:p + 4], "big")
        size = ver_size & SVER_MASK
        end = p + size
        if end > n:
            res.error = DROP_ENTRY_OVERRUN
            return res
        if ver_size >> SVER_SHIFT:
            res.error = DROP_ENTRY_VERSION
            return res
        conn, reason, fatal = _entry(buf, p, end, known_pe)
        if fatal:
            res.error = reason
            return res
        if reason:
            res.skipped.append(reason)
        else:
            res.conns.append(conn)
        end = p + ((size + 3) & ~3)
    return res


def _entry(buf: bytes, p: int, end: int, known_pe):
    """(conn, reason, fatal) for the entry at buf[p:end], checked in ip_vs_proc_sync_conn's
    order."""
    etype = buf[p]
    if etype & STYPE_F_INET6:
        fixed, family = ENTRY_V6, 6
    elif etype == 0:
        fixed, family = ENTRY_V4, 4
    else:
        return None, DROP_ENTRY_TYPE, True
    if p + fixed.size > end:
        return None, DROP_ENTRY_SIZE, True
    (_t, proto, _vs, flags, state, cport, vport, dport, fwmark, timeout,
     caddr, vaddr, daddr) = fixed.unpack_from(buf, p)
    q = p + fixed.size
    seq = pe_data = pe_name = None
    unknown = []
    skip = None
    while q < end:
        if q + 2 > end:
            return None, DROP_OPT_TRUNCATED, True
        ptype, plen = buf[q], buf[q + 1]
        q += 2
        if not plen or q + plen > end:
            return None, DROP_OPT_LENGTH, True
        kind = ptype & ~IPVS_OPT_F_PARAM
        if kind == IPVS_OPT_SEQ_DATA:
            if plen != SEQ.size or seq is not None:
                return None, DROP_OPT_SEQ, True
            seq = SEQ.unpack_from(buf, q)
        elif kind == IPVS_OPT_PE_DATA:
            if pe_data is not None:
                return None, DROP_OPT_PE_DATA, True
            pe_data = buf[q:q + plen]
        elif kind == IPVS_OPT_PE_NAME:
            if plen > IP_VS_PENAME_MAXLEN or pe_name is not None:
                return None, DROP_OPT_PE_NAME, True
            pe_name = buf[q:q + plen].decode("latin-1")
        elif ptype & IPVS_OPT_F_PARAM:
            unknown.append(ptype)
        else:
            # the kernel stops reading this entry's options here: a later malformed option
            # of the same entry no longer matters
            skip = SKIP_OPTION
            break
        q += plen
    if skip:
        return None, skip, False
    if not flags & IP_VS_CONN_F_TEMPLATE:
        states = STATES.get(proto)
        if states is None:
            return None, SKIP_PROTOCOL, False
        if state >= len(states):
            return None, SKIP_STATE, False
    if pe_data is not None and (pe_name is None or pe_name not in known_pe):
        return None, SKIP_PE, False
    ip = ipaddress.IPv6Address if family == 6 else ipaddress.IPv4Address
    conn = SyncConn(protocol=proto, caddr=str(ip(caddr)), cport=cport, vaddr=str(ip(vaddr)),
                    vport=vport, daddr=str(ip(daddr)), dport=dport, flags=flags, state=state,
                    timeout=timeout, fwmark=fwmark,
                    in_seq=tuple(seq[:3]) if seq else None,
                    out_seq=tuple(seq[3:]) if seq else None,
                    pe_data=pe_data, pe_name=pe_name if pe_data is not None else None,
                    skipped_options=tuple(unknown))
    return conn, None, False
