"""The pure-Python reference engine: the executable specification of `fastlvs.engine._core`.

`Engine` here has the extension's public API and, frame for frame, its behaviour: the same
outputs, verdicts, counters, listings and errors. It is written to be read, not to be fast;
tests run the control plane over it without a build and check the extension against it.
One function per step (parse, lookup, state transition, one transmit function per method),
so a change to the extension is mirrored here in one place. Standard library only.
Where the extension draws random keys (the client-MAC table's sets, the conn buckets that
drop_entry's ring names, the reassembly area's per-source shares, drop_entry's random picks)
this draws its own: `neigh.key`, `seed` and `rnd`, which a test sets to the extension's.
"""
from __future__ import annotations

import collections
import ipaddress
import operator
import os
import time

from fastlvs.engine import contract as K
from fastlvs.engine import reference_sctp as SCTP
from fastlvs.engine.reference_sync import SyncMixin

# -- the extension's own sizes and layout, which its public API reports ----------------------
ENTRY_SIZE = 56                    # bytes per conn entry in the extension (entry_size)
SLOT_HEADROOM = 128                # bytes writable in front of a frame (TUN, ICMP grow there)
SLOT_DATA = 9216 + 64              # longest frame a slot holds; longer ones parse as empty
NEIGH_WAYS = 8                     # client-MAC table: entries per set (a lookup's whole window)
NEIGH_MIN_SLOTS = 64               # the table has a slot per conn entry, within these bounds
NEIGH_MAX_SLOTS = 1 << 24
NEIGH_TICK_SHIFT = 30              # entries age in ticks of 2**30 ns (about 1.07 s)
NEIGH_LEARNED_TICKS = 838          # a learned entry unused this long (about 900 s) is gone
NEIGH_MAX_SUBNETS = 16             # on-link client subnets of the learning interface
NF_USED, NF_KERNEL = 1, 2          # neighbour entry flags; KERNEL: from set_neighbor, no ageing
TTL_QUOTE = 576 - 28               # time exceeded quotes what fits in 576 bytes, as icmp_send
FRAME_CSUM_UNKNOWN, FRAME_CSUM_PARTIAL, FRAME_CSUM_FULL = 0, 1, 2
FRAG_BLOCK_BITS = 10               # reassembly holds payload in 1 KiB blocks ...
FRAG_MAX_BLOCKS = 64               # ... up to 64 KiB a datagram
FRAG_MAX_PIECES = 64               # distinct fragments of one datagram
XBUF_HEADROOM = 64                 # in front of a rebuilt datagram (TUN, ICMP grow there)
XSEG_MAX = 4096                    # output fragments of one batch
FRAG_EXPIRE_BUDGET = 64            # queues expired after one batch at most
DESTS_INITIAL = 64                 # dest slots allocated at start; doubled on demand
DEST_ID_MAX = 1 << 24
FULL_TABLE_SWEEP = 4               # entries inspected for expired ones when the table is full
EMBRYO_RESERVE = 512               # free entries drop_entry keeps (2 per frame of a full batch)
CHAIN_EVICT_MAX = 4                # embryos one insert may drop from its own chain
DEF_OFF, DEF_AUTO, DEF_AUTO_ON, DEF_ALWAYS = range(4)   # flood defence modes, as the sysctls
SVC_F_ONEPACKET = 1                # -o: every UDP datagram scheduled alone, no entry kept
SVC_F_FWMARK = 2                   # a firewall-mark service (vaddr is the mark)
# the IPVS sysctls the engine applies (the contract's ENGINE_SYSCTLS)
SYSCTL_DEFAULTS = {name: v[0] for name, v in K.ENGINE_SYSCTLS.items()}
SYSCTL_RANGE = {name: (v[1], v[2]) for name, v in K.ENGINE_SYSCTLS.items()}
SYSCTL_BOOLS = ("expire_nodest_conn", "expire_quiescent_template", "sloppy_tcp",
                "nat_icmp_send", "pmtu_disc")
NS = 1_000_000_000
GOLDEN_RATIO_32 = 0x61C88647
M32 = 0xFFFFFFFF
M64 = (1 << 64) - 1

COUNTERS = {name: i for i, name in enumerate(K.COUNTER_NAMES)}

# TCP states, numbered as ip_vs.h numbers them
(S_NONE, S_ESTABLISHED, S_SYN_SENT, S_SYN_RECV, S_FIN_WAIT, S_TIME_WAIT, S_CLOSE,
 S_CLOSE_WAIT, S_LAST_ACK, S_LISTEN, S_SYNACK) = range(11)
TCP_STATE_NAMES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT", "TIME_WAIT",
                   "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10

# ip_vs_proto_tcp.c's next-state tables. Rows: event (syn, fin, ack, rst) of one direction
# table; columns: current state NO ES SS SR FW TW CL CW LA LI SA.
TCP_NEXT = {
    "input": ([3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3],
              [6, 7, 2, 5, 5, 5, 6, 7, 8, 9, 5],
              [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
              [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 3]),
    "output": ([2, 1, 2, 3, 2, 2, 2, 2, 2, 9, 3],
               [5, 4, 2, 5, 4, 5, 6, 5, 8, 9, 5],
               [1, 1, 2, 1, 4, 5, 6, 7, 8, 1, 1],
               [6, 6, 2, 6, 6, 5, 6, 6, 6, 6, 6]),
    # DR/TUN: replies bypass the director, so the input side alone drives the state
    "input_only": ([3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3],
                   [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5],
                   [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
                   [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6]),
}
# tcp_states_dos, in force with the secure_tcp defence: a NAT conn reaches ESTABLISHED only
# once the server's SYN-ACK was seen; an input-only (DR/TUN) conn opens in SYNACK
TCP_NEXT_DOS = {
    "input": ([3, 1, 1, 3, 3, 3, 3, 3, 3, 3, 10],
              [6, 7, 2, 5, 5, 5, 6, 7, 8, 9, 10],
              [1, 1, 2, 3, 4, 5, 6, 7, 6, 9, 10],
              [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6]),
    "output": ([2, 1, 2, 10, 2, 2, 2, 2, 2, 9, 10],
               [5, 4, 2, 5, 4, 5, 6, 5, 8, 9, 5],
               [1, 1, 2, 1, 4, 5, 6, 7, 8, 1, 1],
               [6, 6, 2, 6, 6, 5, 6, 6, 6, 6, 6]),
    "input_only": ([10, 1, 1, 3, 10, 10, 10, 10, 10, 10, 10],
                   [6, 4, 2, 5, 4, 5, 6, 7, 8, 9, 5],
                   [1, 1, 2, 1, 4, 5, 6, 7, 6, 9, 1],
                   [6, 6, 6, 3, 6, 6, 6, 6, 8, 9, 6]),
}
TCP_ACTIVE = {S_SYN_SENT, S_SYN_RECV, S_ESTABLISHED, S_SYNACK}   # tcp_state_active_table
TCP_DEFAULT_TIMEOUTS = (2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 2)
UDP_DEFAULT_TIMEOUT = 300
NEW_CONN_TIMEOUT = 3               # a conn's timer before its first state change

MH_KEY = (2654435761, 2654435761)  # ip_vs_mh.c generate_hash_secret()
SH_TAB_BITS = 8

_FWD_BY_NAME = {name: fid for name, (fid, _, _) in K.FWD_METHODS.items()}
_FWD_BY_NAME.update({opt.lstrip("-"): fid for fid, opt, _ in K.FWD_METHODS.values()})
_FWD_BY_NAME.update({"route": K.FWD_DR, "masq": K.FWD_NAT, "ipip": K.FWD_TUN})
_FWD_TEXT = {fid: name for name, (fid, _, _) in K.FWD_METHODS.items()}
_PROTO_TEXT = {num: name.upper() for name, num in K.PROTOCOLS.items()}
_VERDICT_TEXT = {K.VERDICT_DROP: "drop", K.VERDICT_TX: "tx", K.VERDICT_PASS: "pass",
                 K.VERDICT_PENDING: "drop"}

# conn flags (IPVS's IP_VS_CONN_F_* meanings)
CF_TEMPLATE, CF_INACTIVE, CF_NOOUTPUT, CF_INVALID = 1, 2, 4, 8


# ---------------------------------------------------------------------------------------------
# Bytes and checksums
# ---------------------------------------------------------------------------------------------

def rd16(b, o):
    return (b[o] << 8) | b[o + 1]


def rd32(b, o):
    return int.from_bytes(b[o:o + 4], "big")


def wr16(b, o, v):
    b[o:o + 2] = (v & 0xFFFF).to_bytes(2, "big")


def wr32(b, o, v):
    b[o:o + 4] = (v & M32).to_bytes(4, "big")


def csum_fold(s):
    s = (s & 0xFFFF) + (s >> 16)
    return ((s & 0xFFFF) + (s >> 16)) & 0xFFFF


def csum_sum(b, o, n, s=0):
    """Ones' complement partial sum of b[o:o+n] (an odd tail padded with zero)."""
    data = bytes(b[o:o + n]) + (b"\0" if n & 1 else b"")
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    return s


def csum_of(b, o, n):
    """The value for a checksum field covering b[o:o+n], the field zeroed beforehand."""
    return ~csum_fold(csum_sum(b, o, n)) & 0xFFFF


def _fold_words(a):
    # a 32- or 128-bit address as the xor of its 32-bit words (the extension's p.saddr[0..3])
    return (a ^ (a >> 32) ^ (a >> 64) ^ (a >> 96)) & M32


def gue_sport(p, b, inner):
    """GUE's UDP source port for the inner flow p whose packet is b[inner:] (tunnel.pxi's
    gue_sport, bit for bit: a v6 flow label stands for the ports)."""
    ports = (p.sport << 16) | p.dport
    if p.v6 and rd32(b, inner) & 0xFFFFF:
        ports = rd32(b, inner) & 0xFFFFF
    h = _fold_words(p.saddr)
    h = ((h * 0x9E3779B1) & M32) ^ _fold_words(p.daddr)
    h = ((h * 0x85EBCA6B) & M32) ^ ports
    h = ((h * 0xC2B2AE35) & M32) ^ p.proto
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M32
    h ^= h >> 15
    return ((h * (K.GUE_PORT_MAX - K.GUE_PORT_MIN)) >> 32) + K.GUE_PORT_MIN


def tun_extra(d):
    """Bytes between a TUN dest's outer IP header and the inner packet (GUE 12, GRE 4 or 8)."""
    if d.tun_type == K.TUN_GUE:
        return 12
    if d.tun_type == K.TUN_GRE:
        return 8 if d.tun_flags & K.TUN_F_CSUM else 4
    return 0


def tun_encap(d, p, b, ip, iphl, inner_len, v6):
    """Write the GUE/GRE header after the outer IP header at b[ip] (addresses in place);
    return the outer protocol (tunnel.pxi's tun_encap)."""
    h = ip + iphl
    if d.tun_type == K.TUN_GUE:
        ulen = 12 + inner_len
        wr16(b, h, gue_sport(p, b, h + 12))
        wr16(b, h + 2, d.tun_port)
        wr16(b, h + 4, ulen)
        wr16(b, h + 6, 0)
        b[h + 8:h + 12] = bytes((0, 41 if v6 else 4, 0, 0))
        if d.tun_flags & (K.TUN_F_CSUM | K.TUN_F_REMCSUM):
            s = csum_sum(b, ip + 8, 32) if v6 else csum_sum(b, ip + 12, 8)
            s = csum_sum(b, h, ulen, s + 17 + ulen)
            ck = ~csum_fold(s) & 0xFFFF
            wr16(b, h + 6, ck or 0xFFFF)
        return 17
    csum = d.tun_flags & K.TUN_F_CSUM
    wr16(b, h, 0x8000 if csum else 0)
    wr16(b, h + 2, 0x86DD if v6 else 0x0800)
    if csum:
        wr32(b, h + 4, 0)
        wr16(b, h + 4, csum_of(b, h, 8 + inner_len))
    return 47


def csum_replace2(b, field, old, new):
    # RFC 1624: HC' = ~(~HC + ~m + m')
    s = (~rd16(b, field) & 0xFFFF) + (~old & 0xFFFF) + new
    wr16(b, field, ~csum_fold(s) & 0xFFFF)


def csum_replace4(b, field, old, new):
    s = ~rd16(b, field) & 0xFFFF
    s += (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    s += (new >> 16) + (new & 0xFFFF)
    wr16(b, field, ~csum_fold(s) & 0xFFFF)


def ttl_decrease(b, ip):
    # ip_decrease_ttl: the TTL/protocol word drops by 0x0100, the checksum rises by as much
    # with the end-around carry (0xFFFF becomes 0, as the kernel's)
    c = rd16(b, ip + 10) + 0x0100
    wr16(b, ip + 10, c + (c >= 0xFFFF))
    b[ip + 8] -= 1


def l4_csum_field(b, ip, ihl, proto):
    """(offset of the TCP/UDP checksum field, the length it covers)."""
    l4 = ip + ihl
    if proto == 17:
        return l4 + 6, rd16(b, l4 + 4)
    return l4 + 16, rd16(b, ip + 2) - ihl


def l4_csum_looks_partial(b, ip, ihl, proto):
    # a sender with checksum offload leaves the pseudo-header sum (folded, not
    # complemented) for the NIC to finish; a UDP checksum of 0 is no checksum at all
    field, l4len = l4_csum_field(b, ip, ihl, proto)
    if proto == 17 and rd16(b, field) == 0:
        return False
    ps = rd32(b, ip + 12) + rd32(b, ip + 16) + proto + l4len
    for _ in range(3):
        ps = (ps & 0xFFFF) + (ps >> 16)
    return rd16(b, field) == ps


def l4_csum_complete(b, ip, ihl, proto):
    # field = ~sum(L4 bytes, the field included); a complete checksum that only looked
    # partial comes out the same
    field, l4len = l4_csum_field(b, ip, ihl, proto)
    v = ~csum_fold(csum_sum(b, ip + ihl, l4len)) & 0xFFFF
    if proto == 17 and v == 0:
        v = 0xFFFF
    wr16(b, field, v)


def l4_csum_replace(b, field, old, new, udp, width):
    # A UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xFFFF.
    if udp and rd16(b, field) == 0:
        return
    (csum_replace4 if width == 4 else csum_replace2)(b, field, old, new)
    if udp and rd16(b, field) == 0:
        wr16(b, field, 0xFFFF)


# ---------------------------------------------------------------------------------------------
# The kernel's hash functions for sh, dh, mh
# ---------------------------------------------------------------------------------------------

def hash_32(val, bits):
    """include/linux/hash.h hash_32(): golden-ratio multiply, keep the top `bits` bits."""
    return ((val * GOLDEN_RATIO_32) & M32) >> (32 - bits)


def _rotl64(x, b):
    return ((x << b) | (x >> (64 - b))) & M64


def hsiphash_1u32(first, k0, k1):
    """hsiphash of one native u32 as a 64-bit kernel computes it (SipHash-1-3)."""
    v0 = 0x736f6d6570736575 ^ k0
    v1 = 0x646f72616e646f6d ^ k1
    v2 = 0x6c7967656e657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    b = (4 << 56) | (first & M32)
    v3 ^= b
    for r in range(4):
        if r == 1:
            v0 ^= b
            v2 ^= 0xFF
        v0 = (v0 + v1) & M64
        v1 = _rotl64(v1, 13) ^ v0
        v0 = _rotl64(v0, 32)
        v2 = (v2 + v3) & M64
        v3 = _rotl64(v3, 16) ^ v2
        v0 = (v0 + v3) & M64
        v3 = _rotl64(v3, 21) ^ v0
        v2 = (v2 + v1) & M64
        v1 = _rotl64(v1, 17) ^ v2
        v2 = _rotl64(v2, 32)
    return (v0 ^ v1 ^ v2 ^ v3) & M32


def sh_hashkey(addr, port, offset):
    return (offset + hash_32((port + addr) & M32, SH_TAB_BITS)) & ((1 << SH_TAB_BITS) - 1)


# ---------------------------------------------------------------------------------------------
# State: frames, parsed packets, conns, dests, services, virtual addresses
# ---------------------------------------------------------------------------------------------

class Frame:
    """One frame in a slot: `buf` holds SLOT_HEADROOM writable bytes, then the frame."""

    def __init__(self, data, ts_ns):
        data = bytes(data)
        self.len = len(data) if len(data) <= SLOT_DATA else 0
        self.buf = bytearray(SLOT_HEADROOM) + bytearray(data[:self.len])
        self.data = SLOT_HEADROOM             # offset of the frame in buf
        self.headroom = SLOT_HEADROOM
        self.ts = ts_ns
        self.csum = FRAME_CSUM_UNKNOWN        # frames from Python carry no checksum metadata
        self.xrec = None                      # XRec once the frame completed a datagram
        self.verdict = K.VERDICT_DROP
        self.reason = 0
        self.out_ifindex = 0
        self.out_adj = 0
        self.out_len = 0

    def output(self):
        start = self.data + self.out_adj
        return bytes(self.buf[start:start + self.out_len])

    def outputs(self):
        """What a TX sends: the frame, or a rebuilt datagram's fragments."""
        return [self.output()] if self.xrec is None else list(self.xrec.segs)


class Pkt:
    """What parsing learned about a frame (addresses as 32-bit ints)."""
    __slots__ = ("saddr", "daddr", "sport", "dport", "l2len", "ihl", "tot_len", "proto",
                 "tcpflags", "vip", "icmp", "v6")


class Conn:
    """A connection or a persistence template (then cport = 0, caddr = the client's net)."""
    __slots__ = ("caddr", "cport", "vip", "vport", "proto", "dest", "fwd", "flags", "state",
                 "ctl", "timeout", "expires")

    def key(self):
        return (self.caddr, self.cport, self.proto)


class Dest:
    def __init__(self):
        self.in_use = False       # the id names a dest (maybe deleted, still referenced)
        self.available = False    # IP_VS_DEST_F_AVAILABLE: linked to its service
        self.overload = False     # IP_VS_DEST_F_OVERLOAD
        self.raddr = 0
        self.rport = 0
        self.svc = 0
        self.fwd = 0
        self.mac = bytes(6)
        self.smac = bytes(6)
        self.tun_type = self.tun_port = self.tun_flags = 0   # TUN's encapsulation
        self.ifindex = 0
        self.weight = 0
        self.u_threshold = 0
        self.l_threshold = 0
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        self.activeconns = self.inactconns = self.persistconns = 0
        self.refcnt = 0           # entries (conns + templates) bound to this dest


class Service:
    def __init__(self):
        self.in_use = False
        self.proto = 0
        self.vaddr = 0
        self.vport = 0
        self.vip = 0
        self.persist_timeout = 0
        self.netmask = M32
        self.sched = K.SCHED_CALLBACK
        self.sched_flags = 0
        self.flags = 0            # SVC_F_*
        self.table = None         # sh/dh/mh bucket table of dest ids, None = callback
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0


class Vip:
    """An interned (proto, addr, port); conns name it, so they outlive their service."""

    def __init__(self, proto, addr, port):
        self.proto, self.addr, self.port = proto, addr, port
        self.svc = 0
        self.off = False          # the address left the host: its frames are the kernel's


class Parked:
    def __init__(self, frame, svc, leader):
        self.frame = frame        # index in the batch
        self.svc = svc
        self.leader = leader      # -1, or the parked entry whose flow this frame shares
        self.dest = 0             # the scheduler's answer


class Neigh:
    """One client's next hop for NAT replies (an entry of a set of the client-MAC table)."""
    __slots__ = ("ip", "ifindex", "seen", "mac", "flags")

    def __init__(self):
        self.ip = self.ifindex = self.seen = self.flags = 0
        self.mac = bytes(6)

    def live(self, tick):
        # kernel entries stay until the control plane replaces them; learned ones age out
        if not self.flags & NF_USED:
            return False
        return bool(self.flags & NF_KERNEL) or (tick - self.seen) & M32 < NEIGH_LEARNED_TICKS

    def put(self, ip, mac, ifindex, tick, flags):
        self.ip, self.mac, self.ifindex = ip, bytes(mac), ifindex
        self.seen, self.flags = tick, flags


class NeighTable:
    """The client-MAC table: sets of NEIGH_WAYS entries, a client's set chosen by hsiphash
    under `key` (random, as the extension's; a test may copy the extension's key to get the
    same sets), a slot per conn entry. Sets are made when first touched."""

    def __init__(self, capacity):
        nslots = NEIGH_MIN_SLOTS
        while nslots < capacity and nslots < NEIGH_MAX_SLOTS:
            nslots *= 2
        self.slots = nslots
        self.set_mask = nslots // NEIGH_WAYS - 1
        self.key = (int.from_bytes(os.urandom(8), "little"),
                    int.from_bytes(os.urandom(8), "little"))
        self.sets = {}                # set index -> [Neigh] * NEIGH_WAYS
        self.subnets = []             # (addr, mask); none: every client may be on-link

    def set_of(self, ip):
        i = hsiphash_1u32(ip, *self.key) & self.set_mask
        if i not in self.sets:
            self.sets[i] = [Neigh() for _ in range(NEIGH_WAYS)]
        return self.sets[i]

    def entries(self):
        return [nb for s in self.sets.values() for nb in s]

    def on_link(self, ip):
        return not self.subnets or any(ip & m == a for a, m in self.subnets)

    def find(self, ip, tick):
        """The live entry of `ip`, marked used now, or None."""
        for nb in self.set_of(ip):
            if nb.ip == ip and nb.live(tick):
                nb.seen = tick
                return nb
        return None

    def slot(self, ip, tick, kernel):
        """Where an entry for `ip` goes: its own, else the first free or aged-out one, else
        the set's oldest learned one; a kernel entry may also take the oldest kernel one.
        None when a learned entry would have to push out a kernel one."""
        free = old = old_k = None
        for nb in self.set_of(ip):
            if nb.flags & NF_USED and nb.ip == ip:
                return nb
            if not nb.live(tick):
                if free is None:
                    free = nb
            elif nb.flags & NF_KERNEL:
                if old_k is None or (tick - nb.seen) & M32 > (tick - old_k.seen) & M32:
                    old_k = nb
            elif old is None or (tick - nb.seen) & M32 > (tick - old.seen) & M32:
                old = nb
        if free is not None:
            return free
        if old is not None:
            return old
        return old_k if kernel else None

    def learn(self, ip, mac, ifindex, tick):
        # a new NAT conn's client: its frame's source MAC is the replies' next hop, unless
        # the client is off-link or already has a live entry (one spoofed SYN must not
        # redirect a known client's replies; kernel entries are never touched)
        if not self.on_link(ip):
            return
        nb = self.slot(ip, tick, False)
        if nb is None:
            return
        if nb.flags & NF_USED and nb.ip == ip and nb.live(tick):
            if nb.mac == bytes(mac):
                nb.seen = tick
            return
        nb.put(ip, mac, ifindex, tick, NF_USED)


class FragQueue:
    """One datagram being reassembled: its pieces (sorted, disjoint), their bytes, the
    blocks they occupy, and the first fragment's L2 + IP header once it came."""

    def __init__(self, src, expires):
        self.src = src
        self.expires = expires
        self.poff, self.pend = [], []
        self.data = bytearray()
        self.blocks = set()           # indices of the 1 KiB blocks of the datagram held
        self.received = self.total = self.frag_max = 0
        self.first = self.last = False
        self.hdr = b""
        self.l2len = 0


class FragArea:
    """The reassembly area sized from frag_mem, as the extension allocates it; queues in
    arrival order (all share one timeout, so the first is the oldest)."""

    def __init__(self, mem):
        self.nblocks = min(mem >> FRAG_BLOCK_BITS, 65535)
        self.nq = self.nblocks // 4 if self.nblocks >= 64 else 16
        self.nfree = self.nblocks
        self.src_block_limit = max(self.nblocks // 4, min(self.nblocks, FRAG_MAX_BLOCKS))
        self.src_queue_limit = max(self.nq // 4, 1)
        self.xsize = max(mem // 2, 256 * 1024)
        self.queues = {}              # (saddr, daddr, ipid, proto) -> FragQueue
        self.queues6 = {}             # ("v6", saddr, daddr, id) -> FragQueue: ip6frag_time
        self.id6 = 0                  # identifications of the v6 fragments cut
        self.src_blocks = [0] * 64
        self.src_queues = [0] * 64
        self.vset = set()             # VIP addresses: fragments to them are ours
        self.rset = set()             # NAT real servers: their reply fragments are ours
        self.rset6 = set()            # NAT66 real servers
        self.batch_start()

    def batch_start(self):
        self.xused = 0                # the batch's output arena: rebuilt datagrams, pieces
        self.nxseg = 0
        self.nxrec = 0

    def xalloc(self, n):
        n = (n + 63) & ~63
        if self.xused + n > self.xsize:
            return False
        self.xused += n
        return True

    def nqueued(self):
        return len(self.queues) + len(self.queues6)

    def free(self, key):
        q = (self.queues6 if key[0] == "v6" else self.queues).pop(key)
        self.nfree += len(q.blocks)
        self.src_blocks[q.src] -= len(q.blocks)
        self.src_queues[q.src] -= 1


class XRec:
    """A reassembled datagram standing in for the frame that completed it."""

    def __init__(self, l2len, frag_max, ends6=()):
        self.l2len, self.frag_max = l2len, frag_max
        self.ends6 = list(ends6)      # v6: where the datagram's pieces ended
        self.segs = []


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------

def parse_frame(f):
    """A Pkt, or the counter name explaining why the frame is not handled."""
    b, o, n = f.buf, f.data, f.len
    l2 = 14
    if n < 14:
        return "malformed"
    etype = rd16(b, o + 12)
    if etype == 0x8100:
        if n < 18:
            return "malformed"
        etype = rd16(b, o + 16)
        l2 = 18
    if etype != 0x0800:
        if etype == 0x86DD:
            return parse_frame_v6(f, l2)
        return "not_ip"
    if n < l2 + 20:
        return "malformed"
    ip = o + l2
    if b[ip] >> 4 != 4:
        return "malformed"
    ihl = (b[ip] & 0x0F) * 4
    if ihl < 20 or n < l2 + ihl:
        return "malformed"
    tot = rd16(b, ip + 2)
    if tot < ihl or tot > n - l2:
        return "malformed"
    if csum_fold(csum_sum(b, ip, ihl)) != 0xFFFF:
        return "bad_checksum"
    if rd16(b, ip + 6) & 0x3FFF:               # MF set or a fragment offset
        return "fragment"
    p = Pkt()
    p.v6 = False
    p.proto = b[ip + 9]
    l4 = ip + ihl
    l4len = tot - ihl
    if p.proto == 6:
        if l4len < 20:
            return "malformed"
        doff = (b[l4 + 12] >> 4) * 4
        if doff < 20 or doff > l4len:
            return "malformed"
        p.tcpflags = b[l4 + 13]
    elif p.proto == 17:
        if l4len < 8:
            return "malformed"
        ulen = rd16(b, l4 + 4)
        if ulen < 8 or ulen > l4len:
            return "malformed"
        p.tcpflags = 0
    elif p.proto == 132:
        ev = SCTP.parse_event(b, l4, l4len)
        if ev is None:
            return "malformed"
        p.tcpflags = ev                         # the SCTP event
    elif p.proto == 1:
        # ICMP: what it quotes is read by Engine._icmp_parse
        p.icmp = True
        p.saddr = rd32(b, ip + 12)
        p.daddr = rd32(b, ip + 16)
        p.l2len, p.ihl, p.tot_len = l2, ihl, tot
        return p
    else:
        return "no_service"
    p.sport = rd16(b, l4)
    p.dport = rd16(b, l4 + 2)
    p.saddr = rd32(b, ip + 12)
    p.daddr = rd32(b, ip + 16)
    p.l2len, p.ihl, p.tot_len = l2, ihl, tot
    p.vip = 0
    p.icmp = False
    return p


# IPv6 (the extension's parse6.pxi): addresses are 128-bit ints, ihl the fixed 40 bytes and
# tot_len 40 + the payload length; extension headers are not walked (dropped when to a VIP).
V6_EXTHDRS = (0, 43, 44, 51, 60, 135, 139, 140, 253, 254)
ICMP6_QUOTE = 1280 - 48             # icmpv6_send quotes what fits in the minimum MTU


def addr_fold(a):
    """The kernel's fold of an address for hashing: v4 itself, v6 the xor of its words."""
    return (a ^ (a >> 32) ^ (a >> 64) ^ (a >> 96)) & M32


def parse_frame_v6(f, l2):
    """A Pkt of an IPv6 frame, a counter name, or ("v6_exthdr", daddr) for one with an
    extension header (dropped if to a VIP, else the host's)."""
    b, o, n = f.buf, f.data, f.len
    if n < l2 + 40:
        return "malformed"
    ip = o + l2
    if b[ip] >> 4 != 6:
        return "malformed"
    plen = rd16(b, ip + 4)
    if plen > n - l2 - 40 or plen > 65535 - 40:
        return "malformed"
    p = Pkt()
    p.v6 = True
    p.icmp = False
    p.vip = 0
    p.saddr = int.from_bytes(b[ip + 8:ip + 24], "big")
    p.daddr = int.from_bytes(b[ip + 24:ip + 40], "big")
    p.l2len, p.ihl, p.tot_len = l2, 40, 40 + plen
    nh = p.proto = b[ip + 6]
    l4 = ip + 40
    if nh == 6:
        if plen < 20:
            return "malformed"
        doff = (b[l4 + 12] >> 4) * 4
        if doff < 20 or doff > plen:
            return "malformed"
        p.tcpflags = b[l4 + 13]
    elif nh == 17:
        if plen < 8:
            return "malformed"
        ulen = rd16(b, l4 + 4)
        if ulen < 8 or ulen > plen:
            return "malformed"
        p.tcpflags = 0
    elif nh == 58:
        p.icmp = True                   # Engine._icmp6_parse: errors about conns
        return p
    elif nh == 44:
        # a Fragment header right after the fixed one: Engine._frag6_input
        return "malformed" if plen < 8 else "fragment6"
    elif nh in V6_EXTHDRS:
        return ("v6_exthdr", p.daddr)
    else:
        return "no_service"
    p.sport = rd16(b, l4)
    p.dport = rd16(b, l4 + 2)
    return p


def _addr_words16(a):
    return [(a >> s) & 0xFFFF for s in range(112, -16, -16)]


def l4_csum_looks_partial_v6(b, ip, proto):
    l4 = ip + 40
    if proto == 17:
        field = rd16(b, l4 + 6)
        if field == 0:
            return False
        l4len = rd16(b, l4 + 4)
    else:
        field = rd16(b, l4 + 16)
        l4len = rd16(b, ip + 4)
    return field == csum_fold(csum_sum(b, ip + 8, 32) + proto + l4len)


def l4_csum_complete_v6(b, ip, proto):
    l4 = ip + 40
    field, l4len = (l4 + 6, rd16(b, l4 + 4)) if proto == 17 else (l4 + 16, rd16(b, ip + 4))
    v = ~csum_fold(csum_sum(b, l4, l4len)) & 0xFFFF
    if proto == 17 and v == 0:
        v = 0xFFFF
    wr16(b, field, v)


def l4_csum_replace16(b, field, old, new, udp):
    # RFC 1624 over the eight 16-bit words of an address; UDP's 0 (none) stays 0
    if udp and rd16(b, field) == 0:
        return
    s = ~rd16(b, field) & 0xFFFF
    for w in _addr_words16(old):
        s += ~w & 0xFFFF
    for w in _addr_words16(new):
        s += w
    wr16(b, field, ~csum_fold(s) & 0xFFFF)
    if udp and rd16(b, field) == 0:
        wr16(b, field, 0xFFFF)


class NeighTable6(NeighTable):
    """The client-MAC table of v6 clients: a quarter of the slots, 128-bit keys, the set
    chosen by hsiphash chained over the four words (as neigh6.pxi); all clients on-link."""

    def __init__(self, capacity, key):
        super().__init__(capacity)
        self.slots = max(NEIGH_MIN_SLOTS, self.slots // 4)
        self.set_mask = self.slots // NEIGH_WAYS - 1
        self.key = key

    def set_of(self, ip):
        h = 0
        for s in (96, 64, 32, 0):
            h = hsiphash_1u32(((ip >> s) & M32) ^ h, *self.key)
        i = h & self.set_mask
        if i not in self.sets:
            self.sets[i] = [Neigh() for _ in range(NEIGH_WAYS)]
        return self.sets[i]

    def on_link(self, ip):
        return True


# ---------------------------------------------------------------------------------------------
# Argument conversions shared by the configuration methods
# ---------------------------------------------------------------------------------------------

def _addr(value):
    # an int: v4 as itself, v6 as its 128 bits (so ::/96 cannot be a v6 address)
    ip = ipaddress.ip_address(value)
    if ip.version == 6 and int(ip) >> 32 == 0:
        raise ValueError(f"IPv6 address in ::/96 (unspecified or IPv4-compatible) "
                         f"cannot be used: {value!r}")
    return int(ip)


def _mark_key(mark, v6):
    # the address a mark's service is interned at (as fwmark.pxi's mark_key): the mark
    # itself (v4, 0.0.0.m), or in the first 32 bits (v6), where IPVS puts it in a v6 mark's
    # persistence templates
    return mark << 96 if v6 else mark


def _mac_bytes(mac):
    if mac is None or mac == "" or mac == b"":
        return bytes(6)
    if isinstance(mac, str):
        b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    else:
        b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"MAC address must be 6 bytes: {mac!r}")
    return b


def _proto_num(proto):
    if isinstance(proto, str):
        proto = K.PROTOCOLS.get(proto.lower(), proto)
    if proto not in K.PROTOCOLS.values():
        raise ValueError(f"protocol must be 6 (tcp) or 17 (udp), got {proto!r}")
    return proto


def _ip_text(v):
    return str(ipaddress.IPv4Address(v) if v <= M32 else ipaddress.IPv6Address(v))


def _c_int(v):
    """v as the extension's C `int` arguments take it (floats are truncated, as there)."""
    v = int(v) if isinstance(v, float) else _index(v)
    if not -(1 << 31) <= v < (1 << 31):
        raise OverflowError("value too large to convert to int")
    return v


def _u32(v):
    """v as the extension's uint32_t arguments take it."""
    v = int(v) if isinstance(v, float) else _index(v)
    if v < 0:
        raise OverflowError("can't convert negative value to uint32_t")
    if v > M32:
        raise OverflowError("value too large to convert to uint32_t")
    return v


def _index(v):
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError("an integer is required") from None


def _check_mtu(mtu):
    if mtu < K.MTU_MIN or mtu > K.MTU_MAX:
        raise ValueError(f"mtu must be {K.MTU_MIN}..{K.MTU_MAX}, got {mtu}")


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------

class Engine(SyncMixin):
    """One data-plane instance: conn table, services, dests, counters (reference version).

    Engine(capacity=1<<20, batch=64, local_ip="", local_mac="", mtu=1500, frag_mem=4 MiB),
    as the extension.
    Entries are allocated from a free list of `capacity` slots (lowest index first, freed
    ones reused first), so listings come in the extension's order.
    """

    def __init__(self, capacity=K.CAPACITY_DEFAULT, batch=K.BATCH_DEFAULT, local_ip="",
                 local_mac="", mtu=1500, frag_mem=K.FRAG_MEM_DEFAULT):
        if capacity < 1 or capacity > 0xFFFFFFF0:
            raise ValueError(f"capacity must be 1..{0xFFFFFFF0}, got {capacity}")
        if batch < 1 or batch > K.BATCH_MAX:
            raise ValueError(f"batch must be 1..{K.BATCH_MAX}, got {batch}")
        _check_mtu(mtu)
        if frag_mem < K.FRAG_MEM_MIN or frag_mem > K.FRAG_MEM_MAX:
            raise ValueError(f"frag_mem must be {K.FRAG_MEM_MIN}..{K.FRAG_MEM_MAX}, "
                             f"got {frag_mem}")
        self.frag = FragArea(frag_mem)
        # keys the per-source shares of the reassembly area, as the extension's seed does (a
        # test may copy the extension's to get the same shares)
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.rnd = int.from_bytes(os.urandom(8), "little") | 1   # drop_entry's random picks
        self._capacity = int(capacity)
        self.batch = int(batch)
        bits = 4
        while (1 << bits) < capacity:
            bits += 1
        self._bucket_bits = bits
        # the conn table: slots by index, a free list, and the hash chains as lists per key
        # (newest first, as the extension links new entries at the head of their chain)
        self.conn_table = {}          # index -> Conn
        self.chains = {}              # (caddr, cport, proto) -> [index, ...]
        self.bucket_chains = {}       # the extension's bucket -> [index, ...], oldest first
        self.free = []                # freed indices, the last one is handed out next
        self.used_end = 0             # no index at or past this was ever handed out
        self.sweep_pos = 0
        self.sweep_clock = 0
        self.sweep_budget = 64
        self.now = 0
        self.dests = [Dest() for _ in range(DESTS_INITIAL)]   # id 0 = none
        self.svcs = {}                # id -> Service
        self.vips = [None]            # index -> Vip, 0 = none
        self.vip_index = {}           # (proto, addr, port) -> index
        self.n_port0 = 0              # services on port 0: a second lookup only while > 0
        self.mark_rules = []          # (mark, proto, addr, mask, lo, hi, v6): set_marks
        self.neigh = NeighTable(self._capacity)
        self.neigh6 = NeighTable6(self._capacity, self.neigh.key)
        self.gw = None                # (mac, ifindex) for NAT replies without a neighbour
        self.gw6 = None               # the same for v6 clients (the v6 default router)
        self.local_ip6 = 0
        self.vset6 = set()
        self.learn_ifindex = 0
        self.local_ip = 0
        if local_ip:
            self.set_local(local_ip=local_ip)
        self.local_mac = _mac_bytes(local_mac)
        self.mtu = mtu
        self.ip_id = 0
        self.tcp_timeouts = list(TCP_DEFAULT_TIMEOUTS)
        self.udp_timeout = UDP_DEFAULT_TIMEOUT
        self.counters = [0] * len(K.COUNTER_NAMES)
        self.callback = None
        self.error = None
        self.parked = []              # this batch's frames waiting for the scheduler
        self.pkts = []                # this batch's parsed packets (None: not handled)
        # the flood defences: in force now, drop_packet's rate and count, the clock
        self.dropentry_on = self.secure_tcp_on = False
        self.drop_rate = self.drop_counter = 0
        self.defense_clock = 0
        self.embryo = None            # (index, bucket) of TCP entries opened embryonic, oldest
        self.vict = []                # first; made when drop_entry is first set
        self.evict_horizon = 0        # last-packet time of the ring's middle embryo (ns)
        self.sysctl = {}
        self._sync_init()
        for name, value in SYSCTL_DEFAULTS.items():
            self.set_sysctl(name, value)

    # -- sizes --------------------------------------------------------------------------------
    @property
    def entry_size(self):
        """Bytes per connection entry in the extension (buckets add 4 per power-of-two slot)."""
        return ENTRY_SIZE

    @property
    def capacity(self):
        return self._capacity

    @property
    def hash_size(self):
        """Buckets of the connection hash table (the -L banner's size=)."""
        return 1 << self._bucket_bits

    def memory_bytes(self):
        """Bytes the extension allocates for the conn table and its buckets."""
        per_bucket = 4 if self.embryo is None else 12
        return (self._capacity * ENTRY_SIZE + (1 << self._bucket_bits) * per_bucket
                + (self._capacity * 16 if self.sync_meta is not None else 0))

    def conn_count(self):
        """Entries in use (conns and persistence templates), expired-but-unswept included."""
        return len(self.conn_table)

    # -- local addresses, neighbours, timeouts -------------------------------------------------
    def set_local(self, local_ip=None, local_mac=None, mtu=None, local_ip6=None):
        """Change the director's own IP (TUN outer source), MAC or the MTU towards the RSs;
        an IPv6 local_ip sets the v6 one (as local_ip6 does), each family keeps its own."""
        if local_ip and ipaddress.ip_address(local_ip).version == 6:
            local_ip6, local_ip = local_ip, None
        if local_ip6 is not None:
            if local_ip6 and ipaddress.ip_address(local_ip6).version != 6:
                raise ValueError(f"local_ip6 must be an IPv6 address: {local_ip6!r}")
            self.local_ip6 = _addr(local_ip6) if local_ip6 else 0
        if local_ip is not None:
            self.local_ip = int(ipaddress.IPv4Address(local_ip)) if local_ip else 0
        if local_mac is not None:
            self.local_mac = _mac_bytes(local_mac)
        if mtu is not None:
            _check_mtu(mtu)
            self.mtu = mtu

    def _client_hop(self, ip: str):
        """(MAC, ifindex) of the next hop towards a client: its neighbour entry when it is
        on a client subnet, else the gateway; None when neither is known (no_route)."""
        nb = self.neigh.find(ip, self._tick()) if self.neigh.on_link(ip) else None
        if nb is not None:
            return nb.mac, nb.ifindex
        return self.gw

    def _tick(self):
        return (self.now >> NEIGH_TICK_SHIFT) & M32

    def set_neighbor(self, ip, mac, ifindex=0):
        """Next-hop MAC (and interface) for NAT replies to client `ip`, from the kernel's
        neighbour table: replaces a learned entry, never ages; mac=None removes it. IPv6
        clients have their own table."""
        a = _addr(ip)
        table = self.neigh6 if a > M32 else self.neigh
        tick = self._tick()
        if mac is None:
            nb = table.find(a, tick)
            if nb is not None:
                nb.flags = 0
            return
        mac = _mac_bytes(mac)
        table.slot(a, tick, True).put(a, mac, ifindex, tick, NF_USED | NF_KERNEL)

    def set_gateway6_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT66 replies to v6 clients without a neighbour entry (None:
        none, such replies are dropped and counted no_route)."""
        self.gw6 = None if mac is None else (_mac_bytes(mac), ifindex)

    @property
    def neighbor_slots(self):
        """Entries of the client-MAC table (one per conn entry, within bounds)."""
        return self.neigh.slots

    def set_gateway_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT replies to off-link clients and clients without a neighbour
        entry (None: none); learned entries that had the old gateway's MAC follow it."""
        old = None if self.gw is None else self.gw[0]
        if mac is None:
            self.gw = None
            return
        new = _mac_bytes(mac)
        if old is not None and old != new:
            for nb in self.neigh.entries():
                if nb.flags & (NF_USED | NF_KERNEL) == NF_USED and nb.mac == old:
                    nb.mac, nb.ifindex = new, ifindex
        self.gw = (new, ifindex)

    def set_learn_ifindex(self, ifindex):
        """NAT: learn a new conn's client MAC as its replies' next hop, out of `ifindex`."""
        self.learn_ifindex = _c_int(ifindex)

    def set_client_subnets(self, subnets):
        """The on-link subnets of the learning interface, at most 16: replies to clients
        outside them go to the gateway MAC and their frames teach nothing ([]: all on-link)."""
        nets = [ipaddress.IPv4Network(n, strict=False) for n in subnets]
        if len(nets) > NEIGH_MAX_SUBNETS:
            raise ValueError(f"at most {NEIGH_MAX_SUBNETS} client subnets, got {len(nets)}")
        self.neigh.subnets = [(int(n.network_address), int(n.netmask)) for n in nets]

    def set_timeouts(self, tcp=0, tcpfin=0, udp=0):
        """ipvsadm --set: tcp ESTABLISHED, tcp FIN_WAIT and udp timeouts; 0 keeps a value."""
        for v in (tcp, tcpfin, udp):
            if v < 0 or v > M32 // NS * NS:
                raise ValueError(f"timeout out of range: {v}")
        if tcp:
            self.tcp_timeouts[S_ESTABLISHED] = tcp
        if tcpfin:
            self.tcp_timeouts[S_FIN_WAIT] = tcpfin
        if udp:
            self.udp_timeout = udp

    def get_timeouts(self):
        """(tcp, tcpfin, udp) as ipvsadm -L --timeout shows them."""
        return (self.tcp_timeouts[S_ESTABLISHED], self.tcp_timeouts[S_FIN_WAIT],
                self.udp_timeout)

    def set_sweep_budget(self, entries):
        """Most entries the incremental expiry inspects after one batch (default 64)."""
        self.sweep_budget = _u32(entries)

    # -- sysctls and flood defences ----------------------------------------------------------
    def set_sysctl(self, name, value):
        """Set an IPVS sysctl by its kernel name (ValueError for another name or a value out
        of range); the flood defences are re-evaluated at once."""
        if name not in SYSCTL_RANGE:
            raise ValueError(f"unknown sysctl {name!r}")
        lo, hi = SYSCTL_RANGE[name]
        v = int(value)
        if name in SYSCTL_BOOLS:
            v = 1 if v else 0
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be {lo}..{hi}, got {value!r}")
        if name in ("sync_threshold", "sync_period"):
            self._sync_check_pair(name, v)
        if name == "drop_entry" and v and self.embryo is None:
            self.embryo = collections.deque(maxlen=1 << self._bucket_bits)
        self.sysctl[name] = v
        self._defense_update()

    def sysctls(self):
        """{name: value} of the sysctls, as they read now (an automatic defence reads 2
        while in force, 1 while not)."""
        return dict(self.sysctl)

    def defense_state(self):
        """The flood defences in force now."""
        return {"drop_entry": self.dropentry_on, "drop_rate": self.drop_rate,
                "secure_tcp": self.secure_tcp_on}

    def _defense_mode(self, name, nomem):
        # an automatic mode is in force while memory is short and reads 2 then, 1 otherwise
        v = self.sysctl.get(name, DEF_OFF)
        if v in (DEF_OFF, DEF_ALWAYS):
            return v == DEF_ALWAYS
        self.sysctl[name] = DEF_AUTO_ON if nomem else DEF_AUTO
        return nomem

    def _defense_update(self):
        # update_defense_level: short of memory = fewer free entries than amemthresh
        if len(self.sysctl) < len(SYSCTL_DEFAULTS):
            return                          # still being set up
        thresh = self.sysctl["amemthresh"]
        avail = self._capacity - len(self.conn_table)
        nomem = avail < thresh
        self.dropentry_on = self._defense_mode("drop_entry", nomem)
        dp = self.sysctl["drop_packet"]
        if dp == DEF_OFF:
            self.drop_rate = 0
        elif dp == DEF_ALWAYS:
            self.drop_rate = self.sysctl["am_droprate"]   # the count runs on
        else:
            if nomem:
                # amemthresh / (amemthresh - free): 1 (drop all) as the table runs out
                self.drop_rate = self.drop_counter = thresh // (thresh - avail)
            else:
                self.drop_rate = 0
            self.sysctl["drop_packet"] = DEF_AUTO_ON if nomem else DEF_AUTO
        self.secure_tcp_on = self._defense_mode("secure_tcp", nomem)

    def _defense_todrop(self):
        # ip_vs_todrop: drop_rate - 1 new conns through, then one dropped
        if self.drop_rate == 0:
            return False
        if self.drop_counter > 1:
            self.drop_counter -= 1
            return False
        self.drop_counter = self.drop_rate
        return True

    def _rnd_next(self):
        x = self.rnd
        x ^= (x << 13) & M64
        x ^= x >> 7
        x ^= (x << 17) & M64
        self.rnd = x
        return x

    def _dropentry_random(self, budget):
        # ip_vs_random_dropentry: random entries in SYN_RECV/SYNACK are dropped
        if self.used_end == 0:
            return
        for _ in range(budget):
            i = self._rnd_next() % self.used_end
            c = self.conn_table.get(i)
            if c is not None and self._embryonic(c):
                self._conn_free(i)
                self._count("drop_entry")

    @staticmethod
    def _embryonic(c):
        return (c.proto == 6 and not c.flags & CF_TEMPLATE
                and c.state in (S_SYN_RECV, S_SYNACK))

    def _defense_tick(self, now):
        # defense_work, once a second of frame time
        if now < self.defense_clock + NS:
            return
        self.defense_clock = now
        self._defense_update()
        # not while the inserts are dropping their chains' embryos (fewer than the reserve free)
        if self.dropentry_on and self._capacity - len(self.conn_table) >= self._embryo_want():
            self._dropentry_random(min(self.used_end >> 5, 1024))

    def _conn_bucket(self, key):
        # the extension's bucket of a (caddr, cport, proto) key: its chains are per bucket,
        # and a drop_entry reference names an entry by index and bucket
        caddr, cport, proto = key
        x = ((addr_fold(caddr) << 32) | (cport << 8) | proto) ^ self.seed
        x = (x * 0x9E3779B97F4A7C15) & M64
        x ^= x >> 29
        x = (x * 0xBF58476D1CE4E5B9) & M64
        return (x >> 32) & ((1 << self._bucket_bits) - 1)

    def _embryo_evict(self, ref, now):
        # drop the entry `ref` (index, bucket) names if it is still embryonic in that
        # bucket (else it moved on, or was freed and reused elsewhere); counted unless it
        # had expired
        i, bucket = ref
        c = self.conn_table.get(i)
        if c is None or not self._embryonic(c) or self._conn_bucket(c.key()) != bucket:
            return False
        if c.expires > now:
            self._count("drop_entry")
        self._conn_free(i)
        return True

    def _embryo_reserve(self, now):
        # while drop_entry is in force keep EMBRYO_RESERVE entries free (an eighth of a
        # small table): the victims chosen after the last batch go, the next are chosen;
        # first the age from which an insert may drop its chain's embryos (the ring's
        # middle one, if it still names an embryo)
        if self.embryo:
            i, _ = self.embryo[len(self.embryo) // 2]
            c = self.conn_table.get(i)
            if c is not None and self._embryonic(c) and c.expires >= c.timeout * NS:
                self.evict_horizon = c.expires - c.timeout * NS
        for ref in self.vict:
            self._embryo_evict(ref, now)
        self.vict = []
        want = EMBRYO_RESERVE if self._capacity >= 8 * EMBRYO_RESERVE else self._capacity >> 3
        avail = self._capacity - len(self.conn_table)
        if avail >= want:
            return
        need = min(want - avail, K.BATCH_MAX)
        while len(self.vict) < need and self.embryo:
            self.vict.append(self.embryo.popleft())

    def _conn_reclaim(self, now):
        # the table is full: the oldest entry still embryonic since its first packet goes
        # if it has expired or drop_entry is on, else a few expired ones from the sweep
        tries = 32
        while self.embryo and tries > 0:
            tries -= 1
            i, _ = self.embryo[0]
            c = self.conn_table.get(i)
            if (not self.dropentry_on and c is not None and c.expires > now
                    and c.state in (S_SYN_RECV, S_SYNACK)):
                break
            if self._embryo_evict(self.embryo.popleft(), now):
                return True
        self._conn_sweep(now, FULL_TABLE_SWEEP)
        return bool(self.free)

    def _conn_flush_nodest(self, dest):
        # expire_nodest_conn: a deleted dest's entries end at once; a template goes with
        # the last conn it controls
        for i in range(self.used_end):
            c = self.conn_table.get(i)
            if c is None or c.dest != dest or (c.flags & CF_TEMPLATE and c.ctl > 0):
                continue
            t = 0 if c.flags & CF_TEMPLATE else c.ctl
            self._conn_free(i)
            if t != 0 and (t - 1) in self.conn_table and self.conn_table[t - 1].ctl == 0:
                self._conn_free(t - 1)

    # -- services ------------------------------------------------------------------------------
    def _vip_intern(self, proto, addr, port):
        v = self.vip_index.get((proto, addr, port))
        if v is not None:
            return v
        if len(self.vips) >= K.MAX_VIPS:
            raise ValueError("too many distinct virtual addresses")
        v = len(self.vips)
        self.vips.append(Vip(proto, addr, port))
        self.vip_index[(proto, addr, port)] = v
        return v

    def _svc(self, svc_id):
        """The live service `svc_id`, or None."""
        s = self.svcs.get(svc_id)
        return s if s is not None and s.in_use else None

    def set_service(self, svc_id, proto, vaddr, vport, persist_timeout=0, netmask=None,
                    sched=0, sched_flags=0, ops=False):
        """Add or edit service `svc_id` = proto vaddr:vport (see the extension's docstring)."""
        svc_id, vport = _c_int(svc_id), _c_int(vport)
        if svc_id < 1 or svc_id > K.MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{K.MAX_SERVICES}, got {svc_id}")
        if vport < 0 or vport > 65535:
            raise ValueError(f"vport out of range: {vport}")
        if persist_timeout < 0 or persist_timeout > M32:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        p = _proto_num(proto)
        if isinstance(sched, str):
            sched = K.HASH_KINDS[sched]
        if sched not in (K.SCHED_CALLBACK, K.SCHED_SH, K.SCHED_DH, K.SCHED_MH):
            raise ValueError(f"sched must be 0..3, got {sched}")
        a = _addr(vaddr)
        if a > M32:
            # -M of a v6 service is a prefix length, as the kernel keeps it
            if netmask is None:
                mask = 128
            else:
                try:
                    mask = int(netmask)
                except (TypeError, ValueError):
                    raise ValueError(f"an IPv6 service's netmask is a prefix length 1..128, "
                                     f"got {netmask!r}") from None
                if not 1 <= mask <= 128:
                    raise ValueError(f"prefix length must be 1..128, got {netmask}")
        elif netmask is None:
            mask = M32
        elif isinstance(netmask, int):
            if not 0 <= netmask <= 32:
                raise ValueError(f"prefix length must be 0..32, got {netmask}")
            mask = (M32 << (32 - netmask)) & M32
        else:
            mask = int(ipaddress.IPv4Address(netmask))
        v = self._vip_intern(p, a, vport)
        if self.vips[v].svc not in (0, svc_id):
            raise ValueError(f"{vaddr}:{vport}/{p} already belongs to service "
                             f"{self.vips[v].svc}")
        s = self.svcs.get(svc_id)
        if s is not None and s.in_use and s.vip != v:
            self.vips[s.vip].svc = 0
        if s is None or not s.in_use:
            s = self.svcs[svc_id] = Service()
        # an edit keeps the service's counters (and, for a hash scheduler, its table)
        s.in_use = True
        s.proto, s.vaddr, s.vport, s.vip = p, a, vport, v
        s.persist_timeout = persist_timeout
        s.netmask = mask
        s.sched = sched
        s.sched_flags = sched_flags & 0xFF
        s.flags = SVC_F_ONEPACKET if ops and p == 17 else 0
        if sched == K.SCHED_CALLBACK:
            s.table = None          # back to the Python scheduler: no stale table
        self.vips[v].svc = svc_id
        self._count_port0()
        self._frag_addrs()

    def _count_port0(self):
        self.n_port0 = sum(1 for s in self.svcs.values()
                           if s.in_use and s.vport == 0 and not s.flags & SVC_F_FWMARK)

    # -- firewall-mark services (dataplane/fwmark.pxi) ------------------------------------------
    def set_fwm_service(self, svc_id, mark, persist_timeout=0, netmask=None, sched=0,
                        sched_flags=0, af=4):
        """Service `svc_id` as the firewall-mark service of `mark` for frames of family
        `af` (see the extension's)."""
        if not 1 <= mark <= M32:
            raise ValueError(f"mark must be 1..{M32}, got {mark}")
        svc_id = _c_int(svc_id)
        if svc_id < 1 or svc_id > K.MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{K.MAX_SERVICES}, got {svc_id}")
        if persist_timeout < 0 or persist_timeout > M32:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        if isinstance(sched, str):
            sched = K.HASH_KINDS[sched]
        if sched not in (K.SCHED_CALLBACK, K.SCHED_SH, K.SCHED_DH, K.SCHED_MH):
            raise ValueError(f"sched must be 0..3, got {sched}")
        if af not in (4, 6):
            raise ValueError(f"af must be 4 or 6, got {af!r}")
        if af == 6:
            # -M of a v6 service is a prefix length, as the kernel keeps it
            if netmask is None:
                mask = 128
            else:
                try:
                    mask = int(netmask)
                except (TypeError, ValueError):
                    raise ValueError(f"an IPv6 service's netmask is a prefix length 1..128, "
                                     f"got {netmask!r}") from None
                if not 1 <= mask <= 128:
                    raise ValueError(f"prefix length must be 1..128, got {netmask}")
        elif netmask is None:
            mask = M32
        elif isinstance(netmask, int):
            if not 0 <= netmask <= 32:
                raise ValueError(f"prefix length must be 0..32, got {netmask}")
            mask = (M32 << (32 - netmask)) & M32
        else:
            mask = int(ipaddress.IPv4Address(netmask))
        v = self._vip_intern(0, _mark_key(mark, af == 6), 0)
        if self.vips[v].svc not in (0, svc_id):
            raise ValueError(f"mark {mark} already belongs to service {self.vips[v].svc}")
        s = self.svcs.get(svc_id)
        if s is not None and s.in_use and s.vip != v:
            self.vips[s.vip].svc = 0
        if s is None or not s.in_use:
            s = self.svcs[svc_id] = Service()
        s.in_use = True
        s.proto, s.vaddr, s.vport, s.vip = 0, _mark_key(mark, af == 6), 0, v
        s.persist_timeout = persist_timeout
        s.netmask = mask
        s.sched = sched
        s.sched_flags = sched_flags & 0xFF
        s.flags = SVC_F_FWMARK
        if sched == K.SCHED_CALLBACK:
            s.table = None
        self.vips[v].svc = svc_id
        self._count_port0()

    def set_marks(self, rules):
        """Replace the firewall-mark match rules (see the extension's)."""
        rows = []
        for mark, proto, prefix, lo, hi in rules:
            if not 1 <= mark <= M32:
                raise ValueError(f"mark must be 1..{M32}, got {mark}")
            pnum = 0 if proto in (None, 0, "any") else _proto_num(proto)
            net = ipaddress.IPv4Network("0.0.0.0/0") if prefix is None else \
                ipaddress.ip_network(prefix, strict=False)
            if not 0 <= lo <= hi <= 65535:
                raise ValueError(f"port range must be 0 <= lo <= hi <= 65535, got {lo}-{hi}")
            rows.append((mark, pnum, int(net.network_address), int(net.netmask), lo, hi,
                         net.version == 6))
        self.mark_rules = rows

    def marks(self):
        """The match rules as set_marks took them: [(mark, proto, prefix, lo, hi)]."""
        return [(m, p, str((ipaddress.IPv6Network if v6 else ipaddress.IPv4Network)(
                    (a, bin(k).count("1")))), lo, hi)
                for m, p, a, k, lo, hi, v6 in self.mark_rules]

    def _mark_match(self, p):
        # a rule matches frames of its own family only
        for mark, proto, addr, mask, lo, hi, v6 in self.mark_rules:
            if (v6 == p.v6 and (p.daddr & mask) == addr and proto in (0, p.proto)
                    and lo <= p.dport <= hi):
                return mark
        return 0

    def _mark_svc_of(self, mark, v6=False):
        v = self.vip_index.get((0, _mark_key(mark, v6), 0), 0)
        return self.vips[v].svc if v else 0

    def _mark_vip(self, p):
        # the VIP (proto, daddr, 0) a marked frame's conns are keyed by; interned only while
        # the mark has a service (0 when every VIP slot is taken)
        m = self._mark_match(p)
        if m == 0:
            return 0
        v = self.vip_index.get((p.proto, p.daddr, 0), 0)
        if v == 0 and self._mark_svc_of(m, p.v6) != 0 and len(self.vips) < K.MAX_VIPS:
            v = self._vip_intern(p.proto, p.daddr, 0)
        return v

    def _svc_for_new(self, p):
        # ip_vs_service_find's order: the mark's service, then the address's (port, port 0)
        if self.mark_rules:
            m = self._mark_match(p)
            if m:
                s = self._mark_svc_of(m, p.v6)
                if s:
                    return s
        return self.vips[p.vip].svc

    def set_vip_served(self, proto, vaddr, vport, served):
        """Not `served`: every frame to (proto, vaddr, vport) passes to the kernel
        (no_service), conns kept; as Engine.set_vip_served."""
        if not 0 <= vport <= 65535:
            raise ValueError(f"vport out of range: {vport}")
        self.vips[self._vip_intern(_proto_num(proto), _addr(vaddr), vport)].off = not served

    def del_service(self, svc_id):
        """Remove a service and its dests; their conns continue until they expire."""
        svc_id = _c_int(svc_id)
        s = self._svc(svc_id)
        if s is None:
            return
        for d in range(1, len(self.dests)):
            if self.dests[d].available and self.dests[d].svc == svc_id:
                self.del_dest(d)
        self.vips[s.vip].svc = 0
        s.table = None
        s.in_use = False
        self._count_port0()
        self._frag_addrs()

    def set_hash_table(self, svc_id, table, kind, flags=0):
        """Hand the service a sh/dh/mh bucket table of dest ids (0 = empty bucket); None
        returns it to the Python callback."""
        svc_id, flags = _c_int(svc_id), _c_int(flags)
        s = self._svc(svc_id)
        if s is None:
            raise ValueError(f"no service {svc_id}")
        if table is None:
            s.table = None
            s.sched = K.SCHED_CALLBACK
            return
        if isinstance(kind, str):
            kind = K.HASH_KINDS[kind]
        if kind not in K.HASH_KINDS.values():
            raise ValueError(f"kind must be sh, dh or mh, got {kind!r}")
        vals = [int(x) & M32 for x in table]
        if not vals:
            raise ValueError("empty hash table")
        s.table = vals
        s.sched = kind
        s.sched_flags = flags & 0xFF

    # -- dests ---------------------------------------------------------------------------------
    def set_dest(self, dest_id, svc_id, raddr, rport, fwd="dr", mac=None, ifindex=0,
                 weight=1, u_threshold=0, l_threshold=0, src_mac=None, tun_type="ipip",
                 tun_port=0, tun_flags=0):
        """Add or edit dest `dest_id` of service `svc_id` (see the extension's docstring:
        edits in place, re-adding a deleted-but-referenced dest revives it, any other use of
        its id raises ValueError until its conns expire)."""
        dest_id, svc_id, rport = _c_int(dest_id), _c_int(svc_id), _c_int(rport)
        ifindex = _c_int(ifindex)
        if dest_id < 1 or dest_id > DEST_ID_MAX:
            raise ValueError(f"dest_id must be 1..{DEST_ID_MAX}, got {dest_id}")
        if self._svc(svc_id) is None:
            raise ValueError(f"no service {svc_id}")
        if rport < 0 or rport > 65535:
            raise ValueError(f"rport out of range: {rport}")
        if isinstance(fwd, str):
            if fwd.lower() not in _FWD_BY_NAME:
                raise ValueError(f"fwd must be dr, nat or tun, got {fwd!r}")
            fwd = _FWD_BY_NAME[fwd.lower()]
        if fwd not in (K.FWD_DR, K.FWD_NAT, K.FWD_TUN):
            raise ValueError(f"fwd must be 1 (dr), 2 (nat) or 3 (tun), got {fwd!r}")
        if weight < 0 or weight > 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {weight}")
        if not (0 <= u_threshold <= M32 and 0 <= l_threshold <= M32):
            raise ValueError("thresholds must be 0..2**32-1")
        mac = _mac_bytes(mac)
        tun = K.tun_args(tun_type, tun_port, tun_flags)
        a = _addr(raddr)
        n = len(self.dests)
        while n <= dest_id:
            n *= 2
        self.dests.extend(Dest() for _ in range(n - len(self.dests)))
        d = self.dests[dest_id]
        same = d.svc == svc_id and d.rport == rport and d.raddr == a
        if d.in_use and not same and (d.available or d.refcnt != 0):
            raise ValueError(
                f"dest id {dest_id} is in use by {_ip_text(d.raddr)}:{d.rport} of "
                f"service {d.svc} ({d.refcnt} conns); delete it and wait for them")
        if not (d.in_use and same):
            d = self.dests[dest_id] = Dest()
        d.in_use = d.available = True
        d.raddr, d.rport, d.svc, d.fwd = a, rport, svc_id, fwd
        d.mac = mac
        # frames to this dest leave by `ifindex`, from our MAC there
        d.smac = self.local_mac if src_mac is None else _mac_bytes(src_mac)
        d.ifindex = ifindex & M32       # a C int stored as uint32_t
        d.weight = weight
        d.tun_type, d.tun_port, d.tun_flags = tun
        if u_threshold == 0 or u_threshold > d.u_threshold:
            d.overload = False                 # __ip_vs_update_dest
        d.u_threshold = u_threshold
        d.l_threshold = l_threshold
        self._frag_addrs()

    def del_dest(self, dest_id):
        """Unlink a dest: never chosen again, its conns go on until they expire, its id
        stays reserved while they exist. Removing an absent dest is a no-op."""
        dest_id = _c_int(dest_id)
        if dest_id < 1 or dest_id >= len(self.dests):
            return
        d = self.dests[dest_id]
        if not d.in_use:
            return
        d.available = False
        if self.sysctl["expire_nodest_conn"] and d.refcnt != 0:
            self._conn_flush_nodest(dest_id)
        if d.refcnt == 0:
            self.dests[dest_id] = Dest()
        self._frag_addrs()

    def _frag_addrs(self):
        # which fragments are ours: to a virtual address (any port: only the first fragment
        # has one) or from a NAT real server; kept as the configuration changes
        F = self.frag
        F.vset = {v.addr for v in self.vips[1:] if v.addr <= M32} - {0}
        F.rset = {d.raddr for d in self.dests if d.available and d.fwd == K.FWD_NAT
                  and d.raddr <= M32} - {0}
        # v6 VIP addresses: frames to them with extension headers are dropped, not passed
        self.vset6 = {v.addr for v in self.vips[1:] if v.addr > M32}
        F.rset6 = {d.raddr for d in self.dests if d.available and d.fwd == K.FWD_NAT
                   and d.raddr > M32}

    def frag_stats(self):
        """The reassembly area: queues and blocks in use and in all, the per-source shares."""
        F = self.frag
        return {"queues": F.nqueued(), "queues_max": F.nq,
                "blocks": F.nblocks - F.nfree, "blocks_max": F.nblocks,
                "block_size": 1 << FRAG_BLOCK_BITS, "src_queue_limit": F.src_queue_limit,
                "src_block_limit": F.src_block_limit, "timeout": K.FRAG_TIMEOUT,
                "timeout6": K.FRAG6_TIMEOUT}

    def _dest_valid_for(self, dest, svc_id):
        return (0 < dest < len(self.dests) and self.dests[dest].available
                and self.dests[dest].svc == svc_id)

    # -- the scheduler callback -----------------------------------------------------------------
    def set_scheduler_callback(self, fn):
        """fn(svc_ids, flows) -> dest ids, once per batch with the batch's new flows of
        Python-scheduled services; errors are re-raised once the batch is finished."""
        self.callback = fn

    # -- counters ------------------------------------------------------------------------------
    def _count(self, name, n=1):
        self.counters[COUNTERS[name]] += n

    def _drop(self, f, reason):
        f.verdict = K.VERDICT_DROP
        f.reason = COUNTERS[reason]
        self._count(reason)

    def _pass(self, f, reason):
        f.verdict = K.VERDICT_PASS
        f.reason = COUNTERS[reason]
        self._count(reason)
        self._count("passed")

    # -- the conn table ------------------------------------------------------------------------
    def _embryo_want(self):
        return EMBRYO_RESERVE if self._capacity >= 8 * EMBRYO_RESERVE else self._capacity >> 3

    def _link(self, i, c, now):
        # while drop_entry is in force and fewer than its reserve are free, the insert drops
        # the oldest embryos of its own bucket's chain (at most CHAIN_EVICT_MAX) no younger
        # than evict_horizon, as the extension's conn_link does on the walk to the chain's end
        self.conn_table[i] = c
        b = self._conn_bucket(c.key())
        if self.dropentry_on:
            avail = self._capacity - len(self.conn_table)
            budget = min(self._embryo_want() - avail, CHAIN_EVICT_MAX)
            for j in list(self.bucket_chains.get(b, ())):
                if budget <= 0:
                    break
                v = self.conn_table[j]
                if self._embryonic(v) and v.expires <= self.evict_horizon + v.timeout * NS:
                    budget -= 1
                    if v.expires > now:
                        self._count("drop_entry")
                    self._conn_free(j)
        self.bucket_chains.setdefault(b, []).append(i)
        self.chains.setdefault(c.key(), []).append(i)     # a chain runs oldest first

    def _unlink(self, i):
        c = self.conn_table.pop(i)
        chain = self.chains[c.key()]
        chain.remove(i)
        if not chain:
            del self.chains[c.key()]
        b = self._conn_bucket(c.key())
        bchain = self.bucket_chains[b]
        bchain.remove(i)
        if not bchain:
            del self.bucket_chains[b]
        return c

    def _conn_alloc(self, now):
        """A free index, reclaiming expired entries first; None when the table is full."""
        if not self.free and self.used_end >= self._capacity:
            if DEF_AUTO in (self.sysctl["drop_entry"], self.sysctl["drop_packet"],
                            self.sysctl["secure_tcp"]):
                self._defense_update()      # no free entry: engage now, not at the tick
            if not self._conn_reclaim(now):
                return None
        if self.free:
            return self.free.pop()
        self.used_end += 1
        return self.used_end - 1

    def _dest_bind(self, c):
        # ip_vs_bind_dest: count the entry, then set the overload flag at -x
        d = self.dests[c.dest]
        d.refcnt += 1
        if c.flags & CF_TEMPLATE:
            d.persistconns += 1
        elif c.flags & CF_INACTIVE:
            d.inactconns += 1
        else:
            d.activeconns += 1
        if d.u_threshold != 0 and d.activeconns + d.inactconns >= d.u_threshold:
            d.overload = True

    def _dest_unbind(self, c):
        # ip_vs_unbind_dest: uncount, then clear the overload flag with its -y hysteresis
        d = self.dests[c.dest]
        if c.flags & CF_TEMPLATE:
            d.persistconns -= 1
        elif c.flags & CF_INACTIVE:
            d.inactconns -= 1
        else:
            d.activeconns -= 1
        total = d.activeconns + d.inactconns
        if d.l_threshold != 0:
            if total < d.l_threshold:
                d.overload = False
        elif d.u_threshold != 0:
            if total * 4 < d.u_threshold * 3:
                d.overload = False
        else:
            d.overload = False
        d.refcnt -= 1
        c.dest = 0

    def _conn_new(self, caddr, cport, vip, proto, dest, flags, now):
        """ip_vs_conn_new + ip_vs_bind_dest: a hashed entry in state NONE; its index or None."""
        d = self.dests[dest]
        i = self._conn_alloc(now)
        if i is None:
            return None
        c = Conn()
        c.caddr, c.cport, c.vip, c.proto = caddr, cport, vip, proto
        c.vport = self.vips[vip].port
        c.state = S_NONE
        c.ctl = 0           # conn: 1 + template index (0 = none); template: n_control
        c.dest = dest
        c.fwd = d.fwd
        c.flags = flags
        if not flags & CF_TEMPLATE:
            # the dest's conn_flags: new conns start inactive; DR/TUN never see output
            c.flags |= CF_INACTIVE
            if d.fwd != K.FWD_NAT:
                c.flags |= CF_NOOUTPUT
        c.timeout = NEW_CONN_TIMEOUT
        c.expires = now + NEW_CONN_TIMEOUT * NS
        self._sync_meta_new(i, now)
        self._link(i, c, now)
        self._dest_bind(c)
        return i

    def _conn_free(self, i):
        # unhash, release the template's control, unbind, return the slot to the free list
        c = self._unlink(i)
        if not c.flags & CF_TEMPLATE and c.ctl != 0:
            t = self.conn_table.get(c.ctl - 1)
            if t is not None and t.ctl > 0:
                t.ctl -= 1
            c.ctl = 0
        if c.dest != 0:
            self._dest_unbind(c)
        self.free.append(i)
        self._count("conns_expired")

    def _conn_expire(self, i, now):
        """The timer fired: a template still controlling conns is re-armed, anything else is
        freed. True when freed."""
        c = self.conn_table[i]
        if c.flags & CF_TEMPLATE and c.ctl > 0:
            c.expires = now + c.timeout * NS
            return False
        self._conn_free(i)
        return True

    def _conn_sweep(self, now, budget):
        """Inspect up to `budget` entries from the sweep cursor; how many were freed."""
        freed = 0
        for _ in range(min(budget, self.used_end)):
            i = self.sweep_pos
            self.sweep_pos += 1
            if self.sweep_pos >= self.used_end:
                self.sweep_pos = 0
            c = self.conn_table.get(i)
            if c is not None and c.expires <= now and self._conn_expire(i, now):
                freed += 1
        return freed

    def _conn_sweep_batch(self, now):
        # paced by frame time: the used part of the table once a second, at most
        # sweep_budget entries per batch; what is not paid for is owed to the next batch
        self._defense_tick(now)
        if self.dropentry_on:
            self._embryo_reserve(now)
        if self.used_end == 0 or now <= self.sweep_clock:
            return
        dt = now - self.sweep_clock
        if dt > NS:
            dt = NS
            self.sweep_clock = now - NS
        due = self.used_end * dt // NS
        if due == 0:
            return
        due = min(due, self.sweep_budget)
        self.sweep_clock += due * NS // self.used_end
        self._conn_sweep(now, due)

    def _chain(self, key):
        return list(self.chains.get(key, ()))

    def _lookup_in(self, p, now):
        """Index of the live conn of a client->VIP packet, None (an expired one is freed)."""
        for i in self._chain((p.saddr, p.sport, p.proto)):
            c = self.conn_table[i]
            if c.vip == p.vip and c.vport == p.dport and not c.flags & CF_TEMPLATE:
                if c.expires <= now:
                    self._conn_expire(i, now)
                    return None
                return i
        return None

    def _rport(self, c):
        """The conn's real-server port: a port-0 service's conns keep the client's port
        whatever the dest's (recorded on 6.1), and so does a dest on port 0."""
        d = self.dests[c.dest]
        r = d.rport
        fwm = self.svcs.get(d.svc) is not None and self.svcs[d.svc].flags & SVC_F_FWMARK
        return r if r and (self.vips[c.vip].port or fwm) else c.vport

    def _vip_find_in(self, proto, addr, port):
        """ip_vs_service_find's order: the VIP of that port, else a port-0 service's VIP."""
        v = self.vip_index.get((proto, addr, port), 0)
        if v == 0 and self.n_port0 and port != 0:
            v = self.vip_index.get((proto, addr, 0), 0)
        return v

    def _lookup_out(self, p, now):
        """Index of the NAT conn a RS->client reply belongs to, None."""
        for i in self._chain((p.daddr, p.dport, p.proto)):
            c = self.conn_table[i]
            if c.fwd == K.FWD_NAT and not c.flags & CF_TEMPLATE:
                d = self.dests[c.dest]
                if self._rport(c) == p.sport and d.raddr == p.saddr:
                    if c.expires <= now:
                        self._conn_expire(i, now)
                        return None
                    return i
        return None

    def _tmpl_lookup(self, snet, vip, proto, now):
        """Index of the persistence template <proto, client net, 0, vip>, None."""
        for i in self._chain((snet, 0, proto)):
            c = self.conn_table[i]
            if c.flags & (CF_TEMPLATE | CF_INVALID) == CF_TEMPLATE and c.vip == vip:
                if c.expires <= now and self._conn_expire(i, now):
                    return None
                return i
        return None

    def _template_usable(self, ti):
        # ip_vs_check_template (expire_quiescent_template = 0): its dest must still be
        # linked; an unusable template stops matching and lives until its timer fires
        t = self.conn_table[ti]
        d = self.dests[t.dest]
        if (t.dest != 0 and d.available
                and not (self.sysctl["expire_quiescent_template"] and d.weight == 0)):
            return True
        t.flags |= CF_INVALID
        return False

    # -- TCP states ----------------------------------------------------------------------------
    def _tcp_set_state(self, c, output, flags):
        table = "output" if output else "input"
        if c.flags & CF_NOOUTPUT:
            if output:
                c.flags &= ~CF_NOOUTPUT
            else:
                table = "input_only"
        # the event, by priority rst > syn > fin > ack; no such flag closes
        event = (3 if flags & TH_RST else 0 if flags & TH_SYN else 1 if flags & TH_FIN
                 else 2 if flags & TH_ACK else None)
        tables = TCP_NEXT_DOS if self.secure_tcp_on else TCP_NEXT
        new = S_CLOSE if event is None else tables[table][event][c.state]
        if new != c.state and c.dest != 0:
            d = self.dests[c.dest]
            if not c.flags & CF_INACTIVE and new not in TCP_ACTIVE:
                d.activeconns -= 1
                d.inactconns += 1
                c.flags |= CF_INACTIVE
            elif c.flags & CF_INACTIVE and new in TCP_ACTIVE:
                d.activeconns += 1
                d.inactconns -= 1
                c.flags &= ~CF_INACTIVE
        c.state = new
        c.timeout = self.tcp_timeouts[new]

    def _sctp_set_state(self, c, output, event):
        new, c.flags = SCTP.next_state(c, output, event, CF_NOOUTPUT)
        if new != c.state and c.dest != 0:
            d = self.dests[c.dest]
            if not c.flags & CF_INACTIVE and new != SCTP.S_ESTABLISHED:
                d.activeconns -= 1
                d.inactconns += 1
                c.flags |= CF_INACTIVE
            elif c.flags & CF_INACTIVE and new == SCTP.S_ESTABLISHED:
                d.activeconns += 1
                d.inactconns -= 1
                c.flags &= ~CF_INACTIVE
        c.state = new
        c.timeout = SCTP.TIMEOUTS[new]

    # -- transmit: one function per method; each returns a drop reason or None ----------------
    @staticmethod
    def _tx(f, ifindex, adj, length):
        f.verdict = K.VERDICT_TX
        f.out_ifindex = ifindex
        f.out_adj = adj
        f.out_len = length

    def xmit_dr(self, f, p, c):
        d = self.dests[c.dest]
        f.buf[f.data:f.data + 12] = d.mac + d.smac
        self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)

    def xmit_nat(self, f, p, c):
        # client -> VIP:vport becomes client -> RIP:rport
        d = self.dests[c.dest]
        b = f.buf
        ip = f.data + p.l2len
        l4 = ip + p.ihl
        udp = p.proto == 17
        ck = l4 + (6 if udp else 16)
        if p.proto == 132:
            # no pseudo-header in SCTP's CRC: only a port change needs a new one
            r = SCTP.nat_ports(b, l4, p.tot_len - p.ihl, 2, p.dport, self._rport(c),
                               f.csum == FRAME_CSUM_PARTIAL)
            if r is not None:
                return r
            wr32(b, ip + 16, d.raddr)
            csum_replace4(b, ip + 10, p.daddr, d.raddr)
            b[f.data:f.data + 12] = d.mac + d.smac
            self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)
            return None
        wr32(b, ip + 16, d.raddr)
        csum_replace4(b, ip + 10, p.daddr, d.raddr)
        l4_csum_replace(b, ck, p.daddr, d.raddr, udp, 4)
        rport = self._rport(c)
        if p.dport != rport:
            wr16(b, l4 + 2, rport)
            l4_csum_replace(b, ck, p.dport, rport, udp, 2)
        b[f.data:f.data + 12] = d.mac + d.smac
        self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)

    def xmit_nat_out(self, f, p, c):
        # RS reply RIP:rport -> client becomes VIP:vport -> client, to the client's next hop
        v = self.vips[c.vip]
        b = f.buf
        ip = f.data + p.l2len
        l4 = ip + p.ihl
        udp = p.proto == 17
        ck = l4 + (6 if udp else 16)
        if p.proto == 132:
            r = SCTP.nat_ports(b, l4, p.tot_len - p.ihl, 0, p.sport, c.vport,
                               f.csum == FRAME_CSUM_PARTIAL)
            if r is not None:
                return r
        hop = self._client_hop(p.daddr)
        if hop is None:
            return "no_route"
        mac, ifindex = hop
        b[f.data:f.data + 12] = mac + self.local_mac
        self._tx(f, ifindex, 0, p.l2len + p.tot_len)
        wr32(b, ip + 12, v.addr)
        csum_replace4(b, ip + 10, p.saddr, v.addr)
        if p.proto == 132:
            return None
        l4_csum_replace(b, ck, p.saddr, v.addr, udp, 4)
        if p.sport != c.vport:
            wr16(b, l4, c.vport)
            l4_csum_replace(b, ck, p.sport, c.vport, udp, 2)

    def _next_ip_id(self):
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        return self.ip_id

    def icmp_error(self, f, p, typ, code, info, saddr, quote):
        # an ICMP error back to the frame's sender from `saddr`, quoting `quote` bytes of its
        # IP packet, out of the interface it came by; the new headers go 28 bytes in front
        # of the quoted bytes
        quote = min(quote, p.tot_len)
        if f.headroom < 28:
            return "no_headroom"
        b, d = f.buf, f.data
        tos = b[d + p.l2len + 1]
        o = d - 28
        l2 = bytearray(b[d:d + p.l2len])
        l2[0:12] = l2[6:12] + l2[0:6]          # back to the sender, from where it sent to
        hdr = bytearray(20)
        hdr[0] = 0x45
        hdr[1] = (tos & 0x1E) | 0xC0
        wr16(hdr, 2, 28 + quote)
        wr16(hdr, 4, self._next_ip_id())
        hdr[8] = 64
        hdr[9] = 1
        wr32(hdr, 12, saddr)
        wr32(hdr, 16, p.saddr)
        wr16(hdr, 10, csum_of(hdr, 0, 20))
        icmp = bytearray([typ, code, 0, 0]) + info.to_bytes(4, "big")
        quoted = b[d + p.l2len:d + p.l2len + quote]
        wr16(icmp, 2, csum_of(icmp + quoted, 0, 8 + quote))
        b[o:o + p.l2len + 28] = l2 + hdr + icmp
        self._tx(f, 0, -28, p.l2len + 28 + quote)
        return None

    def icmp_frag_needed(self, f, p, mtu):
        # unreachable / fragmentation needed from the VIP, quoting what fits in 576 bytes
        reason = self.icmp_error(f, p, 3, 4, mtu, p.daddr, TTL_QUOTE)
        if reason is None:
            self._count("frag_needed_sent")
        return reason

    def icmp_time_exceeded(self, f, p, saddr):
        # a packet that arrived with TTL <= 1 is answered, not forwarded: time exceeded in
        # transit, quoting what fits in 576 bytes (as the 6.1 kernel); counted either way
        if saddr == 0:
            return "ttl_exceeded"           # no address to answer from: the drop counts it
        self._count("ttl_exceeded")
        return self.icmp_error(f, p, 11, 0, 0, saddr, TTL_QUOTE)

    def xmit_tun(self, f, p, c):
        # IPIP: an outer header (local IP -> RIP, TOS/TTL/DF copied from the inner one; id 0
        # with DF, as the kernel's ip_select_ident gives) in front of the untouched packet;
        # a GUE/GRE dest's header goes between them and narrows the tunnel's MTU
        d = self.dests[c.dest]
        b = f.buf
        inner = f.data + p.l2len
        df = bool(b[inner + 6] & 0x40) and bool(self.sysctl["pmtu_disc"])
        hl = 20 + tun_extra(d)
        if p.tot_len + hl > self.mtu and f.xrec is None:     # a reassembled one is cut later
            # too big: with DF (pmtu_disc) refused, never an ICMP error
            # (ensure_mtu_is_adequate); else the tunnel packet is cut as ip_fragment does
            # (an ICMP error's with DF too: id 0, no piece with DF)
            if df and b[inner + 9] != 1:
                return self.icmp_frag_needed(f, p, self.mtu - hl)
            if self.frag.nxrec >= K.BATCH_MAX:
                return "frag_no_room"
            self.frag.nxrec += 1
            f.xrec = XRec(p.l2len, 0)
            self._count("oversize")
        if f.headroom < hl:
            return "no_headroom"
        o = f.data - hl
        l2 = bytearray(d.mac + d.smac) + b[f.data + 12:f.data + p.l2len]
        hdr = bytearray(20)
        hdr[0] = 0x45
        hdr[1] = b[inner + 1]
        wr16(hdr, 2, p.tot_len + hl)
        if df:
            wr16(hdr, 6, 0x4000)
        else:
            wr16(hdr, 4, self._next_ip_id())
        hdr[8] = b[inner + 8]
        hdr[9] = 4
        wr32(hdr, 12, self.local_ip)
        wr32(hdr, 16, d.raddr)
        b[o:o + p.l2len + 20] = l2 + hdr
        if hl != 20:
            b[o + p.l2len + 9] = tun_encap(d, p, b, o + p.l2len, 20, p.tot_len, False)
        wr16(b, o + p.l2len + 10, csum_of(b, o + p.l2len, 20))
        self._tx(f, d.ifindex, -hl, p.l2len + hl + p.tot_len)

    # -- IPv6 (the extension's xmit6.pxi) -------------------------------------------------------
    def icmp6_error(self, f, p, typ, code, info, saddr):
        # an ICMPv6 error back to the frame's sender from `saddr`, quoting what fits in 1280
        # bytes; the new headers go 48 bytes in front of the quoted bytes
        quote = min(ICMP6_QUOTE, p.tot_len)
        if f.headroom < 48:
            return "no_headroom"
        b, d = f.buf, f.data
        o = d - 48
        l2 = bytearray(b[d:d + p.l2len])
        l2[0:12] = l2[6:12] + l2[0:6]
        hdr = bytearray(40)
        hdr[0] = 0x60
        wr16(hdr, 4, 8 + quote)
        hdr[6] = 58
        hdr[7] = 64
        hdr[8:24] = saddr.to_bytes(16, "big")
        hdr[24:40] = p.saddr.to_bytes(16, "big")
        icmp = bytearray([typ, code, 0, 0]) + info.to_bytes(4, "big")
        quoted = b[d + p.l2len:d + p.l2len + quote]
        pseudo = csum_sum(hdr, 8, 32) + 8 + quote + 58
        wr16(icmp, 2, ~csum_fold(csum_sum(icmp + quoted, 0, 8 + quote, pseudo)) & 0xFFFF)
        b[o:o + p.l2len + 48] = l2 + hdr + icmp
        self._tx(f, 0, -48, p.l2len + 48 + quote)
        return None

    def icmp6_time_exceeded(self, f, p, saddr):
        if saddr == 0:
            return "ttl_exceeded"
        self._count("ttl_exceeded")
        return self.icmp6_error(f, p, 3, 0, 0, saddr)

    def xmit_nat_v6(self, f, p, c):
        d = self.dests[c.dest]
        b = f.buf
        ip = f.data + p.l2len
        l4 = ip + 40
        udp = p.proto == 17
        ck = l4 + (6 if udp else 16)
        b[ip + 24:ip + 40] = d.raddr.to_bytes(16, "big")
        l4_csum_replace16(b, ck, p.daddr, d.raddr, udp)
        rport = self._rport(c)
        if p.dport != rport:
            wr16(b, l4 + 2, rport)
            l4_csum_replace(b, ck, p.dport, rport, udp, 2)
        b[f.data:f.data + 12] = d.mac + d.smac
        self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)

    def xmit_nat_out_v6(self, f, p, c):
        v = self.vips[c.vip]
        b = f.buf
        ip = f.data + p.l2len
        l4 = ip + 40
        udp = p.proto == 17
        ck = l4 + (6 if udp else 16)
        nb = self.neigh6.find(p.daddr, self._tick())
        hop = (nb.mac, nb.ifindex) if nb is not None else self.gw6
        if hop is None:
            return "no_route"
        b[f.data:f.data + 12] = hop[0] + self.local_mac
        self._tx(f, hop[1], 0, p.l2len + p.tot_len)
        b[ip + 8:ip + 24] = v.addr.to_bytes(16, "big")
        l4_csum_replace16(b, ck, p.saddr, v.addr, udp)
        if p.sport != c.vport:
            wr16(b, l4, c.vport)
            l4_csum_replace(b, ck, p.sport, c.vport, udp, 2)

    def xmit_tun_v6(self, f, p, c):
        # IPv6-in-IPv6: outer header (local v6 -> RIP, next header 41, traffic class and hop
        # limit copied, flow label 0); too big for the tunnel: packet too big, unless ICMPv6
        # (a GUE/GRE dest's header after the outer one)
        d = self.dests[c.dest]
        b = f.buf
        inner = f.data + p.l2len
        hl = 40 + tun_extra(d)
        if p.tot_len + hl > self.mtu and f.xrec is None:     # reassembled: _frag6_toobig
            if b[inner + 6] == 58 or self.mtu < 1280 + hl:
                return "oversize"
            self._count("frag_needed_sent")
            return self.icmp6_error(f, p, 2, 0, self.mtu - hl, p.daddr)
        if self.local_ip6 == 0:
            return "no_route"
        if f.headroom < hl:
            return "no_headroom"
        o = f.data - hl
        l2 = bytearray(d.mac + d.smac) + b[f.data + 12:f.data + p.l2len]
        hdr = bytearray(36 + 4)
        wr32(hdr, 0, rd32(b, inner) & 0xFFF00000)     # flow label 0, as recorded on 6.1
        wr16(hdr, 4, p.tot_len + hl - 40)
        hdr[6] = 41
        hdr[7] = b[inner + 7]
        hdr[8:24] = self.local_ip6.to_bytes(16, "big")
        hdr[24:40] = d.raddr.to_bytes(16, "big")
        b[o:o + p.l2len + 40] = l2 + hdr
        if hl != 40:
            b[o + p.l2len + 6] = tun_encap(d, p, b, o + p.l2len, 40, p.tot_len, True)
        self._tx(f, d.ifindex, -hl, p.l2len + hl + p.tot_len)

    def _forward_in_v6(self, f, p, c):
        # decrement_ttl for v6, then the conn's transmit; hop limit 1 answered from the VIP
        ip = f.data + p.l2len
        if f.buf[ip + 7] <= 1:
            return self.icmp6_time_exceeded(f, p, p.daddr)
        f.buf[ip + 7] -= 1
        if f.xrec is not None:
            r = self._frag6_toobig(f, p, c)
            if r != 0:
                return r
        return {K.FWD_DR: self.xmit_dr, K.FWD_NAT: self.xmit_nat_v6,
                K.FWD_TUN: self.xmit_tun_v6}[c.fwd](f, p, c)

    def _forward_out_v6(self, f, p, c, d, s, now):
        ip = f.data + p.l2len
        if f.buf[ip + 7] <= 1:
            reason = self.icmp6_time_exceeded(f, p, self.local_ip6)
            if reason is not None:
                self._drop(f, reason)
            return
        f.buf[ip + 7] -= 1
        d.outpkts += 1
        d.outbytes += p.tot_len
        s.outpkts += 1
        s.outbytes += p.tot_len
        if p.proto == 6:
            self._tcp_set_state(c, True, p.tcpflags)
        else:
            c.timeout = self.udp_timeout
        reason = self.xmit_nat_out_v6(f, p, c)
        if reason is not None:
            self._drop(f, reason)
        c.expires = now + c.timeout * NS
        if self.sync_meta is not None:
            self._sync_out_conn(c)          # a reply assures a UDP conn's template

    def _xmit(self, fwd):
        return {K.FWD_DR: self.xmit_dr, K.FWD_NAT: self.xmit_nat,
                K.FWD_TUN: self.xmit_tun}[fwd]

    # -- forwarding a packet of a known conn ----------------------------------------------------
    def _forward_in(self, f, p, ci, now):
        # ip_vs_in for a known conn: stats, state, transmit, re-arm the timer
        c = self.conn_table[ci]
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        d.inpkts += 1
        d.inbytes += p.tot_len
        s.inpkts += 1
        s.inbytes += p.tot_len
        if p.proto == 6:
            self._tcp_set_state(c, False, p.tcpflags)
        elif p.proto == 132:
            self._sctp_set_state(c, False, p.tcpflags)
        else:
            c.timeout = self.udp_timeout
        # as IPVS's decrement_ttl: at TTL 1 the packet is answered, not forwarded (its conn
        # stands, counted and stated as any other)
        if p.v6:
            reason = self._forward_in_v6(f, p, c)
        elif f.buf[f.data + p.l2len + 8] <= 1:
            reason = self.icmp_time_exceeded(f, p, p.daddr)
        else:
            ttl_decrease(f.buf, f.data + p.l2len)
            reason = self._xmit(c.fwd)(f, p, c)
        if reason is not None:
            self._drop(f, reason)
        c.expires = now + c.timeout * NS
        if self.sync_meta is not None:
            self._sync_in_packet(ci, now)

    def _forward_out(self, f, p, ci, now):
        # ip_vs_out / handle_response for a NAT reply
        c = self.conn_table[ci]
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        if p.v6:
            self._forward_out_v6(f, p, c, d, s, now)
            return
        if f.buf[f.data + p.l2len + 8] <= 1:
            # the kernel's ip_forward drops it before IPVS sees it: no stats, no state
            # change; the real server hears from the director's own address
            reason = self.icmp_time_exceeded(f, p, self.local_ip)
            if reason is not None:
                self._drop(f, reason)
            return
        ttl_decrease(f.buf, f.data + p.l2len)
        d.outpkts += 1
        d.outbytes += p.tot_len
        s.outpkts += 1
        s.outbytes += p.tot_len
        if p.proto == 6:
            self._tcp_set_state(c, True, p.tcpflags)
        elif p.proto == 132:
            self._sctp_set_state(c, True, p.tcpflags)
        else:
            c.timeout = self.udp_timeout
        reason = self.xmit_nat_out(f, p, c)
        if reason is not None:
            self._drop(f, reason)
        c.expires = now + c.timeout * NS
        if self.sync_meta is not None:
            self._sync_out_packet(ci)

    # -- new connections -----------------------------------------------------------------------
    @staticmethod
    def _persist_net(s, p):
        if p.v6:
            # -M of a v6 service is a prefix length (the kernel keeps it in svc->netmask)
            return p.saddr & (((1 << 128) - 1) ^ ((1 << (128 - s.netmask)) - 1))
        return p.saddr & s.netmask

    def _create_forward(self, f, p, svc_id, dest, ti, now):
        # make the conn (and, for a persistent service without a usable template, the
        # template), count it, and forward the packet that opened it
        s = self.svcs[svc_id]
        if s.persist_timeout != 0 and ti is None:
            ti = self._conn_new(self._persist_net(s, p), 0, s.vip, s.proto, dest,
                                CF_TEMPLATE, now)
            if ti is None:
                self._drop(f, "table_full")
                return
            self.conn_table[ti].timeout = s.persist_timeout
        ci = self._conn_new(p.saddr, p.sport, p.vip, p.proto, dest, 0, now)
        if ti is not None:
            # ip_vs_conn_put(ct): using the template re-arms its timer
            t = self.conn_table[ti]
            t.expires = now + t.timeout * NS
        if ci is None:
            self._drop(f, "table_full")
            return
        c = self.conn_table[ci]
        c.vport = p.dport
        if ti is not None:
            c.ctl = ti + 1
            self.conn_table[ti].ctl += 1
        d = self.dests[dest]
        d.conns += 1
        self.svcs[d.svc].conns += 1
        self._count("conns_created")
        if self.learn_ifindex != 0 and d.fwd == K.FWD_NAT:
            (self.neigh6 if p.v6 else self.neigh).learn(p.saddr, f.buf[f.data + 6:f.data + 12], self.learn_ifindex,
                             self._tick())
        self._forward_in(f, p, ci, now)
        if p.proto == 6:
            if c.state in (S_SYN_RECV, S_SYNACK) and self.embryo is not None:
                self.embryo.append((ci, self._conn_bucket(c.key())))
        elif s.flags & SVC_F_ONEPACKET:
            self._conn_free(ci)         # -o: the entry served this one datagram

    def _sched_hash(self, s, p):
        """The dest id the service's hash table gives this new flow, 0 = none."""
        n = len(s.table)
        if s.sched == K.SCHED_DH:
            d = s.table[hash_32(addr_fold(p.daddr), SH_TAB_BITS) % n]
            return 0 if self._hash_unavailable(d) else d
        port = p.sport if s.sched_flags & K.SCHED_F_PORT else 0
        if s.sched == K.SCHED_SH:
            ihash = sh_hashkey(addr_fold(p.saddr), port, 0) % n
        else:
            ihash = hsiphash_1u32((addr_fold(p.saddr) + port) & M32, *MH_KEY) % n
        d = s.table[ihash]
        if d == 0:
            return 0
        if not self._hash_unavailable(d):
            return d
        if not s.sched_flags & K.SCHED_F_FALLBACK:
            return 0
        for off in range(n):
            roff = (off + ihash) % n
            if s.sched == K.SCHED_SH:
                h = sh_hashkey(addr_fold(p.saddr), port, roff) % n
            else:
                h = hsiphash_1u32((roff + port + addr_fold(p.saddr)) & M32, *MH_KEY) % n
            d = s.table[h]
            if d == 0:
                return 0
            if not self._hash_unavailable(d):
                return d
        return 0

    def _hash_unavailable(self, d):
        # is_unavailable()/is_overloaded() of sh/dh/mh: weight <= 0 or overloaded (or gone)
        if d == 0 or d >= len(self.dests):
            return True
        dp = self.dests[d]
        return not dp.available or dp.weight <= 0 or dp.overload

    def _new_flow(self, f, p, idx, svc_id, now):
        # ip_vs_schedule: persistence template first, then the hash table, else park the
        # frame for the Python scheduler
        s = self.svcs[svc_id]
        if self._defense_todrop():
            # drop_packet: a share of new conns is refused while the table runs out
            self._drop(f, "drop_packet")
            return
        if s.persist_timeout != 0:
            ti = self._tmpl_lookup(self._persist_net(s, p), s.vip, s.proto, now)
            if ti is not None and self._template_usable(ti):
                self._create_forward(f, p, svc_id, self.conn_table[ti].dest, ti, now)
                return
        if s.table is not None:
            dest = self._sched_hash(s, p)
            if dest == 0 or not self._dest_valid_for(dest, svc_id):
                self._drop(f, "no_dest")
                return
            self._create_forward(f, p, svc_id, dest, None, now)
            return
        if not self._park_follower(f, p, idx):
            f.verdict = K.VERDICT_PENDING
            self.parked.append(Parked(idx, svc_id, -1))

    def _park_follower(self, f, p, idx):
        # a later frame of a flow already parked in this batch waits behind it
        for j, pk in enumerate(self.parked):
            if pk.leader < 0 and not self.svcs[pk.svc].flags & SVC_F_ONEPACKET:
                q = self.pkts[pk.frame]
                if ((q.sport, q.vip, q.dport, q.proto, q.saddr)
                        == (p.sport, p.vip, p.dport, p.proto, p.saddr)):
                    f.verdict = K.VERDICT_PENDING
                    self.parked.append(Parked(idx, pk.svc, j))
                    return True
        return False

    # -- fragments: reassembly as ip_defrag before IPVS, and cutting the result again --------
    def _frag_src(self, saddr):
        # the per-source share a source address counts against (keyed by the seed)
        return (((saddr ^ (self.seed >> 17)) * 0x9E3779B97F4A7C15) & M64) >> 58

    def _frag_expire(self, now, budget):
        """Expire queues whose time is up, oldest first; how many."""
        F, n = self.frag, 0
        for queues in (F.queues, F.queues6):        # v4's, then v6's
            while n < budget and queues:
                key = next(iter(queues))
                if queues[key].expires > now:
                    break
                F.free(key)
                self._count("frag_timeout")
                n += 1
        return n

    def _frag_queue(self, key, saddr, now):
        """The queue of `key`, a new one, or the counter name saying why there is none."""
        F = self.frag
        q = (F.queues6 if key[0] == "v6" else F.queues).get(key)
        if q is not None and q.expires <= now:
            F.free(key)
            self._count("frag_timeout")
            q = None
        if q is not None:
            return q
        if F.nqueued() >= F.nq:
            self._frag_expire(now, 1)
        src = self._frag_src(saddr)
        if F.nqueued() >= F.nq or F.src_queues[src] >= F.src_queue_limit:
            return "frag_no_room"
        if key[0] == "v6":
            q = F.queues6[key] = FragQueue(src, now + K.FRAG6_TIMEOUT * NS)
        else:
            q = F.queues[key] = FragQueue(src, now + K.FRAG_TIMEOUT * NS)
        F.src_queues[src] += 1
        return q

    def _frag_input(self, f, now):
        """A fragment: "fragment" (not ours: to the host), "frag_held", another counter name
        (dropped), or the Pkt of the datagram it completed (now in the frame)."""
        F = self.frag
        b = f.buf
        l2 = 18 if rd16(b, f.data + 12) == 0x8100 else 14
        ip = f.data + l2
        ihl = (b[ip] & 0x0F) * 4
        tot = rd16(b, ip + 2)
        proto = b[ip + 9]
        saddr, daddr = rd32(b, ip + 12), rd32(b, ip + 16)
        fo = rd16(b, ip + 6)
        off, mf = (fo & 0x1FFF) * 8, bool(fo & 0x2000)
        if proto not in (6, 17, 1):             # ICMP: an error may quote a conn's
            return "fragment"
        if daddr not in F.vset and saddr not in F.rset:
            return "fragment"
        ln = tot - ihl
        end = off + ln
        # no options (they would be split between fragments), whole 8-byte units before
        # the last piece, and the datagram within 64 KiB
        if ihl != 20 or ln == 0 or (mf and ln & 7) or end + 20 > 65535:
            return "frag_bad"
        key = (saddr, daddr, rd16(b, ip + 4), proto)
        q = self._frag_queue(key, saddr, now)
        if isinstance(q, str):
            return q
        # lo: first piece ending after off; hi: first starting at or after end
        lo = 0
        while lo < len(q.poff) and q.pend[lo] <= off:
            lo += 1
        hi = lo
        while hi < len(q.poff) and q.poff[hi] < end:
            hi += 1
        if hi > lo:
            # inside one contiguous run of what is held: a duplicate, ignored; any other
            # overlap discards the datagram (as ip_frag_queue)
            if q.poff[lo] <= off and q.pend[hi - 1] >= end:
                i = lo
                while i + 1 < hi and q.pend[i] == q.poff[i + 1]:
                    i += 1
                if i + 1 == hi:
                    return "frag_bad"
            F.free(key)
            return "frag_bad"
        if not mf:
            if (q.last and end != q.total) or (q.poff and q.pend[-1] > end):
                F.free(key)
                return "frag_bad"
        elif q.last and end > q.total:
            F.free(key)
            return "frag_bad"
        if len(q.poff) >= FRAG_MAX_PIECES:
            F.free(key)
            return "frag_no_room"
        blocks = set(range(off >> FRAG_BLOCK_BITS, ((end - 1) >> FRAG_BLOCK_BITS) + 1))
        need = len(blocks - q.blocks)
        if need > F.nfree or F.src_blocks[q.src] + need > F.src_block_limit:
            return "frag_no_room"
        q.blocks |= blocks
        F.nfree -= need
        F.src_blocks[q.src] += need
        if len(q.data) < end:
            q.data.extend(bytes(end - len(q.data)))
        q.data[off:end] = b[ip + 20:ip + 20 + ln]
        q.poff.insert(lo, off)
        q.pend.insert(lo, end)
        q.received += ln
        q.frag_max = max(q.frag_max, tot)
        if off == 0:
            q.first = True
            q.l2len = l2
            q.hdr = bytes(b[f.data:f.data + l2 + 20])
        if not mf:
            q.last = True
            q.total = end
        if q.first and q.last and q.received == q.total:
            return self._frag_complete(f, key, q)
        return "frag_held"

    def _frag_complete(self, f, key, q):
        # the datagram rebuilt in the batch's arena stands in for the frame, parsed again
        F = self.frag
        n = q.l2len + 20 + q.total
        if F.nxrec >= K.BATCH_MAX or not F.xalloc(XBUF_HEADROOM + n):
            F.free(key)
            return "frag_no_room"
        hdr = bytearray(q.hdr)
        ip = q.l2len
        wr16(hdr, ip + 2, 20 + q.total)
        wr16(hdr, ip + 6, 0)
        wr16(hdr, ip + 10, 0)
        wr16(hdr, ip + 10, csum_of(hdr, ip, 20))
        F.nxrec += 1
        F.free(key)
        self._count("frag_reasm")
        f.buf = bytearray(XBUF_HEADROOM) + hdr + q.data[:q.total]
        f.data = f.headroom = XBUF_HEADROOM
        f.len = n
        f.xrec = XRec(q.l2len, q.frag_max)
        return parse_frame(f)

    def _frag_cut(self, f):
        """Cut a reassembled datagram's (or a too big TUN packet's) output into fragments of at most min(mtu, largest
        fragment received) bytes, as ip_do_fragment; False: no room, the frame dropped."""
        F, rec = self.frag, f.xrec
        out = f.output()
        l2 = rec.l2len
        if out[l2] >> 4 == 6:
            return self._frag6_cut(f)
        hlen = (out[l2] & 0x0F) * 4
        payload = f.out_len - l2 - hlen
        mtu = self.mtu
        if rec.frag_max != 0 and rec.frag_max < mtu:
            mtu = rec.frag_max
        mtu = max(mtu, hlen + 8)
        room = (mtu - hlen) & ~7
        # every piece but the last is `room` bytes; the last takes what is left once that
        # fits in mtu - hlen
        nseg, left = 1, payload
        while left > mtu - hlen:
            left -= room
            nseg += 1
        if F.nxseg + nseg > XSEG_MAX:
            self._drop(f, "frag_no_room")
            return False
        if nseg == 1:
            F.nxseg += 1
            rec.segs = [out]          # fits whole: sent as it is
            return True
        if F.xused + payload + nseg * (l2 + hlen + 63) > F.xsize:
            self._drop(f, "frag_no_room")
            return False
        fo = 0                  # ip_do_fragment: no piece carries DF (recorded)
        off, left = 0, payload
        while left > 0:
            ln = room if left > mtu - hlen else left
            F.xalloc(l2 + hlen + ln)
            piece = bytearray(out[:l2 + hlen])
            wr16(piece, l2 + 2, hlen + ln)
            wr16(piece, l2 + 6, fo | (off >> 3) | (0x2000 if ln < left else 0))
            wr16(piece, l2 + 10, 0)
            wr16(piece, l2 + 10, csum_of(piece, l2, hlen))
            rec.segs.append(bytes(piece + out[l2 + hlen + off:l2 + hlen + off + ln]))
            F.nxseg += 1
            off += ln
            left -= ln
        self._count("frag_out", nseg)
        return True

    # -- IPv6 fragments: reassembly as nf_defrag_ipv6, cutting as ip6_fragment (frag6.pxi) ------
    def _frag6_input(self, f, now):
        """A v6 fragment: as _frag_input answers, or ("v6_exthdr", daddr) for one of
        anything but TCP, UDP or ICMPv6."""
        F = self.frag
        b = f.buf
        l2 = 18 if rd16(b, f.data + 12) == 0x8100 else 14
        ip = f.data + l2
        fh = ip + 40
        saddr = int.from_bytes(b[ip + 8:ip + 24], "big")
        daddr = int.from_bytes(b[ip + 24:ip + 40], "big")
        nh = b[fh]
        fo = rd16(b, fh + 2)
        off, mf = fo & 0xFFF8, bool(fo & 1)
        ident = rd32(b, fh + 4)
        tot = 40 + rd16(b, ip + 4)
        ln = tot - 48
        end = off + ln
        if daddr not in self.vset6 and saddr not in F.rset6:
            return "fragment"
        if nh not in (6, 17, 58):
            return ("v6_exthdr", daddr)
        # dropped alone: empty, past 64 KiB, a first piece without its whole TCP header
        if ln == 0 or end > 65535 or (off == 0 and nh == 6 and ln < 20):
            return "frag_bad"
        key = ("v6", saddr, daddr, ident)
        # the share of the source's /64
        q = self._frag_queue(key, ((saddr >> 96) ^ (saddr >> 64)) & M32, now)
        if isinstance(q, str):
            return q
        if mf:
            if end & 7:
                F.free(key)             # not whole 8-byte units before the last: all goes
                return "frag_bad"
            if q.last and end > q.total:
                return "frag_bad"
        elif (q.last and end != q.total) or (q.poff and q.pend[-1] > end):
            return "frag_bad"
        lo = 0
        while lo < len(q.poff) and q.pend[lo] <= off:
            lo += 1
        hi = lo
        while hi < len(q.poff) and q.poff[hi] < end:
            hi += 1
        if hi > lo:
            # inside one contiguous run: a duplicate, ignored; any other overlap discards
            # the datagram (RFC 5722)
            if q.poff[lo] <= off and q.pend[hi - 1] >= end:
                i = lo
                while i + 1 < hi and q.pend[i] == q.poff[i + 1]:
                    i += 1
                if i + 1 == hi:
                    return "frag_bad"
            F.free(key)
            return "frag_bad"
        if len(q.poff) >= FRAG_MAX_PIECES:
            F.free(key)
            return "frag_no_room"
        blocks = set(range(off >> FRAG_BLOCK_BITS, ((end - 1) >> FRAG_BLOCK_BITS) + 1))
        need = len(blocks - q.blocks)
        if need > F.nfree or F.src_blocks[q.src] + need > F.src_block_limit:
            return "frag_no_room"
        q.blocks |= blocks
        F.nfree -= need
        F.src_blocks[q.src] += need
        if len(q.data) < end:
            q.data.extend(bytes(end - len(q.data)))
        q.data[off:end] = b[fh + 8:fh + 8 + ln]
        q.poff.insert(lo, off)
        q.pend.insert(lo, end)
        q.received += ln
        q.frag_max = max(q.frag_max, tot)
        if off == 0:
            q.first = True
            q.l2len = l2
            hdr = bytearray(b[f.data:f.data + l2 + 40])
            hdr[l2 + 6] = nh
            q.hdr = bytes(hdr)
        if not mf:
            q.last = True
            q.total = end
        if q.first and q.last and q.received == q.total:
            return self._frag6_complete(f, key, q)
        return "frag_held"

    def _frag6_complete(self, f, key, q):
        F = self.frag
        n = q.l2len + 40 + q.total
        if F.nxrec >= K.BATCH_MAX or not F.xalloc(XBUF_HEADROOM + n + 2 + 2 * len(q.poff)):
            F.free(key)
            return "frag_no_room"
        hdr = bytearray(q.hdr)
        wr16(hdr, q.l2len + 4, q.total)
        F.nxrec += 1
        F.free(key)
        self._count("frag_reasm")
        f.buf = bytearray(XBUF_HEADROOM) + hdr + q.data[:q.total]
        f.data = f.headroom = XBUF_HEADROOM
        f.len = n
        f.xrec = XRec(q.l2len, q.frag_max, q.pend)
        return parse_frame(f)

    def _frag6_toobig(self, f, p, c):
        # the largest fragment, not the datagram, must fit the MTU (less TUN's headers)
        mtu = self.mtu
        if c.fwd == K.FWD_TUN:
            mtu -= 40 + tun_extra(self.dests[c.dest])
        if mtu < 1280:
            return "oversize"
        if f.xrec.frag_max <= mtu:
            return 0
        if p.proto == 58:
            return "oversize"
        self._count("frag_needed_sent")
        return self.icmp6_error(f, p, 2, 0, mtu, p.daddr)

    def _frag6_ident(self, ip_hdr):
        # a new identification per datagram cut: a counter folded with the addresses
        self.frag.id6 = (self.frag.id6 + 1) & M32
        x = self.seed ^ ((self.frag.id6 * 0xD6E8FEB86659FD93) & M64)
        for i in range(8):
            x = ((x ^ rd32(ip_hdr, 8 + 4 * i)) * 0x9E3779B97F4A7C15) & M64
            x ^= x >> 29
        return x >> 32

    def _frag6_cut(self, f):
        """A reassembled v6 datagram's output: whole when it fits the MTU and its largest
        fragment, else in Fragment-headed pieces: those it came in (the first grown by
        what TUN put in front) when they fit, else pieces of the MTU."""
        F, rec = self.frag, f.xrec
        out = f.output()
        l2 = rec.l2len
        plen = f.out_len - l2 - 40
        mtu = self.mtu
        if (f.out_adj == -48 and out[l2 + 6] == 58) or (
                40 + plen <= mtu and (rec.frag_max == 0 or 40 + plen <= rec.frag_max)):
            if F.nxseg + 1 > XSEG_MAX:
                self._drop(f, "frag_no_room")
                return False
            F.nxseg += 1
            rec.segs = [out]
            return True
        if rec.frag_max != 0 and rec.frag_max <= mtu:
            mtu = min(max(rec.frag_max, 1280), self.mtu)
        mtu = max(mtu, 40 + 8 + 8)
        room = mtu - 48
        ends = rec.ends6
        fast = len(ends) > 1
        if fast:
            grow = plen - ends[-1]
            if (grow + ends[0]) & 7 or grow + ends[0] > room:
                fast = False
            for i in range(1, len(ends)):
                if ends[i] - ends[i - 1] > room:
                    fast = False
        if fast:
            sizes = [grow + ends[0]] + [ends[i] - ends[i - 1] for i in range(1, len(ends))]
        else:
            sizes, left = [], plen
            while left > room:
                sizes.append(room & ~7)
                left -= room & ~7
            sizes.append(left)
        nseg = len(sizes)
        if F.nxseg + nseg > XSEG_MAX or F.xused + plen + nseg * (l2 + 48 + 63) > F.xsize:
            self._drop(f, "frag_no_room")
            return False
        ident = self._frag6_ident(out[l2:l2 + 40])
        off = 0
        for ln in sizes:
            F.xalloc(l2 + 48 + ln)
            piece = bytearray(out[:l2 + 40])
            wr16(piece, l2 + 4, 8 + ln)
            piece[l2 + 6] = 44
            fh = bytearray(8)
            fh[0] = out[l2 + 6]
            wr16(fh, 2, off | (1 if off + ln < plen else 0))
            wr32(fh, 4, ident)
            rec.segs.append(bytes(piece + fh + out[l2 + 40 + off:l2 + 40 + off + ln]))
            F.nxseg += 1
            off += ln
        self._count("frag_out", nseg)
        return True

    def _conn_reuse_expected(self, c):
        # is_new_conn_expected (6.1): a SYN may open a new conn over an entry in TIME_WAIT
        # or CLOSE, with bit 2 also FIN_WAIT without replies seen, unless a template rules it
        if c.ctl != 0 or c.proto != 6:
            return False
        return (c.state in (S_TIME_WAIT, S_CLOSE)
                or (self.sysctl["conn_reuse_mode"] & 2 and c.state == S_FIN_WAIT
                    and c.flags & CF_NOOUTPUT))

    def _conn_check_in(self, f, p, ci):
        """ip_vs_in between lookup and transmit (6.1): 1 forward on the entry, 0 the entry
        ended (schedule the packet afresh), -1 dropped."""
        c = self.conn_table[ci]
        d = self.dests[c.dest]
        nodest = self.sysctl["expire_nodest_conn"]
        if self.sysctl["conn_reuse_mode"] and p.proto == 6 and p.tcpflags & TH_SYN:
            if (nodest and c.dest != 0 and d.weight == 0) or self._conn_reuse_expected(c):
                self._conn_free(ci)
                return 0
        if c.dest != 0 and not d.available:
            # the real server was deleted: dropped, the entry left to time out (or ended
            # with expire_nodest_conn)
            if nodest:
                self._conn_free(ci)
                return 0
            self._drop(f, "dest_unavailable")
            return -1
        return 1

    # -- ICMP errors about a conn (ip_vs_in_icmp, ip_vs_out_icmp) ------------------------------
    def _icmp_parse(self, f, p):
        """p as the reverse of the packet an ICMP error quotes (saddr:sport its destination,
        daddr:dport its source): the key of both lookups, as a client -> VIP packet and as a
        NAT server's reply; or the counter name of a drop (malformed) or a pass (not an
        error, or not one that can name a conn)."""
        if p.v6:
            return self._icmp6_parse(f, p)
        b = f.buf
        ic = f.data + p.l2len + p.ihl
        n = p.tot_len - p.ihl
        if n < 8:
            return "malformed"          # the kernel drops a truncated ICMP header
        if b[ic] not in (3, 4, 11):
            return "no_service"         # not an error IPVS relates to a conn
        q = ic + 8
        n -= 8
        # the quoted header and its ports are needed; a later fragment has no ports
        if n < 20 or b[q] >> 4 != 4:
            return "icmp_no_conn"
        qihl = (b[q] & 0x0F) * 4
        if qihl < 20 or n < qihl + 4 or rd16(b, q + 6) & 0x1FFF:
            return "icmp_no_conn"
        if b[q + 9] == 4:
            return self._icmp_parse_tun(f, p, q, qihl, n)
        if b[q + 9] in (17, 47) and self.local_ip != 0 \
                and rd32(b, f.data + p.l2len + 16) == self.local_ip:
            # one about a GUE or GRE packet we sent: as IPIP's, past its header
            r = self._tun_quoted_encap(b, q, qihl, n)
            if r > 0:
                return self._icmp_parse_tun(f, p, q, qihl + r, n)
        if b[q + 9] not in (6, 17):
            return "icmp_no_conn"
        p.proto = b[q + 9]
        p.tcpflags = 0
        p.icmp = "icmp"
        p.saddr, p.sport = rd32(b, q + 16), rd16(b, q + qihl + 2)
        p.daddr, p.dport = rd32(b, q + 12), rd16(b, q + qihl)
        p.vip = self._vip_find_in(p.proto, p.daddr, p.dport)
        return p

    def _tun_quoted_encap(self, b, q, qihl, n):
        # ipvs_udp_decap / ipvs_gre_decap: the GUE/GRE header's length after the quoted
        # header when it is ours (a TUN dest of that address and tunnel port, of that type,
        # IPIP inside: ip_vs_find_tunnel), else -1 (tunnel.pxi's tun_quoted_encap)
        h = q + qihl
        raddr = rd32(b, q + 16)
        if b[q + 9] == 17:
            if n < qihl + 8:
                return -1
            port, kind = rd16(b, h + 2), K.TUN_GUE
        elif b[q + 9] == 47:
            if n < qihl + 4:
                return -1
            port, kind = 0, K.TUN_GRE
        else:
            return -1
        # 6.1 finds a GRE dest only under port 0 (it files it under its own port): recorded
        d = next((d for d in self.dests[1:] if d.available and d.fwd == K.FWD_TUN
                  and d.tun_port == port and d.raddr == raddr
                  and (kind == K.TUN_GUE or d.rport == 0)), None)
        if d is None or d.tun_type != kind:
            return -1
        if kind == K.TUN_GUE:
            if n < qihl + 12 or b[h + 8] & 0xE0 or b[h + 9] != 4:
                return -1
            return 12 + (b[h + 8] & 0x1F) * 4
        flags = rd16(b, h)
        if flags & 0x7FFF or rd16(b, h + 2) != 0x0800:
            return -1
        return 8 if flags & 0x8000 else 4

    def _icmp_parse_tun(self, f, p, q, qihl, n):
        # ip_vs_in_icmp's tunnel case: the quoted IPIP packet must be addressed to the
        # director (only ours are), and the client's request inside it is looked up as sent
        b = f.buf
        t = q + qihl
        if self.local_ip == 0 or rd32(b, f.data + p.l2len + 16) != self.local_ip:
            return "icmp_no_conn"
        n -= qihl
        if n < 20 or b[t] >> 4 != 4:
            return "icmp_no_conn"
        tihl = (b[t] & 0x0F) * 4
        if tihl < 20 or n < tihl + 4 or rd16(b, t + 6) & 0x1FFF:
            return "icmp_no_conn"
        if b[t + 9] not in (6, 17):
            return "icmp_no_conn"
        p.proto = b[t + 9]
        p.tcpflags = 0
        p.saddr, p.sport = rd32(b, t + 12), rd16(b, t + tihl)
        p.daddr, p.dport = rd32(b, t + 16), rd16(b, t + tihl + 2)
        p.vip = self._vip_find_in(p.proto, p.daddr, p.dport)
        if p.vip == 0:
            return "icmp_no_conn"
        p.icmp = "tun"
        return p

    @staticmethod
    def _icmp_csum_ok(f, p):
        ic = f.data + p.l2len + p.ihl
        return csum_fold(csum_sum(f.buf, ic, p.tot_len - p.ihl)) == 0xFFFF

    @staticmethod
    def _icmp_nat_rewrite(b, ip, ihl, tot, addr, inout, port):
        # ip_vs_nat_icmp: out -> in the outer destination and the quoted source address and
        # port become the real server's; in -> out the outer source and the quoted
        # destination become the VIP's. The quoted IP checksum is recomputed, its TCP/UDP
        # checksum left alone (as the kernel); the ICMP checksum is computed afresh.
        ic = ip + ihl
        q = ic + 8
        qihl = (b[q] & 0x0F) * 4
        if inout:
            old = rd32(b, ip + 12)
            wr32(b, ip + 12, addr)
            wr32(b, q + 16, addr)
            wr16(b, q + qihl + 2, port)
        else:
            old = rd32(b, ip + 16)
            wr32(b, ip + 16, addr)
            wr32(b, q + 12, addr)
            wr16(b, q + qihl, port)
        csum_replace4(b, ip + 10, old, addr)
        wr16(b, q + 10, 0)
        wr16(b, q + 10, csum_of(b, q, qihl))
        wr16(b, ic + 2, 0)
        wr16(b, ic + 2, csum_of(b, ic, tot - ihl))

    def _icmp_forward_in(self, f, p, c):
        # an error quoting what a client was sent goes to the conn's real server; the conn's
        # state and timer stay, the error counts as an incoming packet
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        ip = f.data + p.l2len
        if not self._icmp_csum_ok(f, p):
            self._drop(f, "icmp_bad_checksum")
            return
        d.inpkts += 1
        d.inbytes += p.tot_len
        s.inpkts += 1
        s.inbytes += p.tot_len
        if f.buf[ip + 8] <= 1:
            self._drop(f, "ttl_exceeded")   # no ICMP is sent about an ICMP error
            return
        ttl_decrease(f.buf, ip)
        if c.fwd == K.FWD_NAT:
            self._icmp_nat_rewrite(f.buf, ip, p.ihl, p.tot_len, d.raddr, False, self._rport(c))
            f.buf[f.data:f.data + 12] = d.mac + d.smac
            self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)
            reason = None
        else:
            reason = self._xmit(c.fwd)(f, p, c)
        if reason is not None:
            self._drop(f, reason)
        else:
            self._count("icmp_related")

    def _icmp_forward_out(self, f, p, c):
        # an error quoting a request a NAT server got, on its way to the client, leaves from
        # the VIP and about a packet sent to VIP:vport
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        v = self.vips[c.vip]
        b = f.buf
        ip = f.data + p.l2len
        dst = rd32(b, ip + 16)
        if b[ip + 8] <= 1:
            self._drop(f, "ttl_exceeded")   # ip_forward drops it first, silently
            return
        if not self._icmp_csum_ok(f, p):
            self._drop(f, "icmp_bad_checksum")
            return
        hop = self._client_hop(dst)
        if hop is None:
            self._drop(f, "no_route")
            return
        mac, ifindex = hop
        b[f.data:f.data + 12] = mac + self.local_mac
        self._tx(f, ifindex, 0, p.l2len + p.tot_len)
        ttl_decrease(b, ip)
        self._icmp_nat_rewrite(b, ip, p.ihl, p.tot_len, v.addr, True, c.vport)
        d.outpkts += 1
        d.outbytes += p.tot_len
        s.outpkts += 1
        s.outbytes += p.tot_len
        self._count("icmp_related")

    def _icmp_answer_tun(self, f, p, c):
        # the error about our IPIP packet goes to the client as icmp_send makes it: same
        # type and code, from the VIP, TTL 64, quoting the request as far as it was quoted
        # (576 bytes in all at most); frag-needed says the MTU towards the server less
        # IPIP's 20 bytes, and is not sent for a request without DF
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        b = f.buf
        ip = f.data + p.l2len
        ic = ip + p.ihl
        q = ic + 8
        t = q + (b[q] & 0x0F) * 4
        if b[q + 9] != 4:                   # past a GUE/GRE header (parse found it)
            t += self._tun_quoted_encap(b, q, (b[q] & 0x0F) * 4, p.tot_len - p.ihl - 8)
        tlen = p.tot_len - (t - ip)
        quote = min(tlen, 576 - 28)
        info = rd32(b, ic + 4)
        typ, code, tos = b[ic], b[ic + 1], b[t + 1]
        client = p.saddr
        if not self._icmp_csum_ok(f, p):
            self._drop(f, "icmp_bad_checksum")
            return
        if typ == 3 and code == 4:
            if not b[t + 6] & 0x40:
                self._drop(f, "icmp_related")   # consumed: no PMTU discovery there
                return
            info = self.mtu - 20 if self.mtu > 68 + 20 else self.mtu
        hop = self._client_hop(client)
        if hop is None:
            self._drop(f, "no_route")
            return
        mac, ifindex = hop
        b[f.data:f.data + 12] = mac + self.local_mac
        self._tx(f, ifindex, 0, p.l2len + 28 + quote)
        quoted = bytes(b[t:t + quote])
        hdr = bytearray(20)
        hdr[0] = 0x45
        hdr[1] = (tos & 0x1E) | 0xC0
        wr16(hdr, 2, 28 + quote)
        wr16(hdr, 4, self._next_ip_id())
        hdr[8] = 64
        hdr[9] = 1
        wr32(hdr, 12, p.daddr)
        wr32(hdr, 16, client)
        wr16(hdr, 10, csum_of(hdr, 0, 20))
        icmp = bytearray([typ, code, 0, 0]) + info.to_bytes(4, "big")
        wr16(icmp, 2, csum_of(icmp + quoted, 0, 8 + quote))
        b[ip:ip + 28 + quote] = hdr + icmp + quoted
        # out stats on the request as quoted, and on the error made of it, which passes
        # IPVS's output hook and matches the conn there (a DR/TUN conn's VIP side)
        d.outpkts += 2
        d.outbytes += tlen + 28 + quote
        s.outpkts += 2
        s.outbytes += tlen + 28 + quote
        self._count("icmp_related")

    # -- ICMPv6 errors about conns (the extension's icmp6.pxi) ----------------------------------
    def _icmp6_parse(self, f, p):
        b = f.buf
        ip = f.data + p.l2len
        ic, q = ip + 40, ip + 48
        n = p.tot_len - 40
        if n < 8:
            return "malformed"
        if b[ic] >= 128 or b[ic] == 0:
            return "no_service"
        if n < 8 + 40 + 4 or b[q] >> 4 != 6 or b[q + 6] not in (6, 17):
            return "icmp_no_conn"
        p.proto = b[q + 6]
        p.tcpflags = 0
        p.saddr = int.from_bytes(b[q + 24:q + 40], "big")
        p.daddr = int.from_bytes(b[q + 8:q + 24], "big")
        p.sport = rd16(b, q + 42)
        p.dport = rd16(b, q + 40)
        p.vip = self._vip_find_in(p.proto, p.daddr, p.dport)
        return p

    @staticmethod
    def _icmp6_sum(b, ip, n):
        return csum_fold(csum_sum(b, ip + 40, n, csum_sum(b, ip + 8, 32) + n + 58))

    def _icmp6_csum_set(self, b, ip, n):
        wr16(b, ip + 42, 0)
        wr16(b, ip + 42, ~self._icmp6_sum(b, ip, n) & 0xFFFF)

    def _icmp6_forward_in(self, f, p, c):
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        b = f.buf
        ip = f.data + p.l2len
        q = ip + 48
        n = p.tot_len - 40
        if self._icmp6_sum(b, ip, n) != 0xFFFF:
            self._drop(f, "icmp_bad_checksum")
            return
        d.inpkts += 1
        d.inbytes += p.tot_len
        s.inpkts += 1
        s.inbytes += p.tot_len
        if b[ip + 7] <= 1:
            self._drop(f, "ttl_exceeded")
            return
        b[ip + 7] -= 1
        if c.fwd == K.FWD_NAT:
            raddr = d.raddr.to_bytes(16, "big")
            b[ip + 24:ip + 40] = raddr
            b[q + 8:q + 24] = raddr
            wr16(b, q + 40, self._rport(c))
            self._icmp6_csum_set(b, ip, n)
            b[f.data:f.data + 12] = d.mac + d.smac
            self._tx(f, d.ifindex, 0, p.l2len + p.tot_len)
            reason = None
        elif c.fwd == K.FWD_TUN:
            reason = self.xmit_tun_v6(f, p, c)
        else:
            reason = self.xmit_dr(f, p, c)
        if reason is not None:
            self._drop(f, reason)
        else:
            self._count("icmp_related")

    def _icmp6_forward_out(self, f, p, c):
        d = self.dests[c.dest]
        s = self.svcs[d.svc]
        v = self.vips[c.vip]
        b = f.buf
        ip = f.data + p.l2len
        q = ip + 48
        n = p.tot_len - 40
        if b[ip + 7] <= 1:
            self._drop(f, "ttl_exceeded")
            return
        if self._icmp6_sum(b, ip, n) != 0xFFFF:
            self._drop(f, "icmp_bad_checksum")
            return
        nb = self.neigh6.find(int.from_bytes(b[ip + 24:ip + 40], "big"), self._tick())
        hop = (nb.mac, nb.ifindex) if nb is not None else self.gw6
        if hop is None:
            self._drop(f, "no_route")
            return
        b[f.data:f.data + 12] = hop[0] + self.local_mac
        self._tx(f, hop[1], 0, p.l2len + p.tot_len)
        b[ip + 7] -= 1
        vaddr = v.addr.to_bytes(16, "big")
        b[ip + 8:ip + 24] = vaddr
        b[q + 24:q + 40] = vaddr
        wr16(b, q + 42, c.vport)
        self._icmp6_csum_set(b, ip, n)
        d.outpkts += 1
        d.outbytes += p.tot_len
        s.outpkts += 1
        s.outbytes += p.tot_len
        self._count("icmp_related")

    def _icmp6_handle(self, f, p, now):
        if p.vip != 0:
            ci = self._lookup_in(p, now)
            if ci is not None:
                self._icmp6_forward_in(f, p, self.conn_table[ci])
                return
        ci = self._lookup_out(p, now)
        if ci is not None:
            self._icmp6_forward_out(f, p, self.conn_table[ci])
            return
        self._pass(f, "icmp_no_conn")

    def _icmp_handle(self, f, p, idx):
        # the quoted packet's conn: as sent to a client (VIP:vport -> client), else as a
        # request sent to a NAT server (client -> RIP:rport); neither: the host's
        now = f.ts
        if p.v6:
            self._icmp6_handle(f, p, now)
            return
        if p.icmp == "tun":
            ci = self._lookup_in(p, now)
            if ci is not None:
                # ip_vs_find_tunnel: the IPIP packet went to this conn's TUN server
                c = self.conn_table[ci]
                q = f.data + p.l2len + p.ihl + 8
                if c.fwd == K.FWD_TUN and self.dests[c.dest].raddr == rd32(f.buf, q + 16):
                    self._icmp_answer_tun(f, p, c)
                    return
            self._pass(f, "icmp_no_conn")
            return
        if p.vip != 0:
            ci = self._lookup_in(p, now)
            if ci is not None:
                self._icmp_forward_in(f, p, self.conn_table[ci])
                return
        ci = self._lookup_out(p, now)
        if ci is not None:
            self._icmp_forward_out(f, p, self.conn_table[ci])
            return
        self._pass(f, "icmp_no_conn")

    # -- one frame, one batch --------------------------------------------------------------------
    def _handle(self, f, p, idx):
        now = f.ts
        if p.vip != 0:
            if self.vips[p.vip].off:
                self._pass(f, "no_service")
                return
            ci = self._lookup_in(p, now)
            if ci is not None:
                r = self._conn_check_in(f, p, ci)
                if r > 0:
                    self._forward_in(f, p, ci, now)
                    return
                if r < 0:
                    return
            if self.parked and self._park_follower(f, p, idx):
                return
            svc_id = self._svc_for_new(p)
            if svc_id == 0:
                self._pass(f, "no_service")
                return
            if p.proto == 132 and p.tcpflags != SCTP.EV_INIT:
                self._pass(f, "sctp_not_init")      # only an INIT opens an SCTP conn
                return
            if p.proto == 6 and (p.tcpflags & TH_RST
                                 or not (p.tcpflags & TH_SYN or self.sysctl["sloppy_tcp"])):
                # tcp_conn_schedule schedules on a SYN without RST (with sloppy_tcp, any
                # packet without RST)
                self._pass(f, "tcp_not_syn")
                return
            self._new_flow(f, p, idx, svc_id, now)
            return
        ci = self._lookup_out(p, now)
        if ci is not None:
            self._forward_out(f, p, ci, now)
            return
        if self.sysctl["nat_icmp_send"] and not p.v6 and self._nat_icmp_send(f, p):
            return
        self._pass(f, "no_service")

    def _nat_icmp_send(self, f, p):
        # ip_vs_out with nat_icmp_send: a packet of no conn from a NAT dest's address and
        # port, not a TCP RST, is dropped and its sender told port unreachable; after
        # ip_forward (TTL 1 is the host's, the quote shows the TTL decremented), except one
        # to the director's own address (LOCAL_IN: answered from it). False: not such.
        if p.proto == 6 and p.tcpflags & TH_RST:
            return False
        if p.saddr not in self.frag.rset or not any(
                d.available and d.fwd == K.FWD_NAT and d.raddr == p.saddr
                and d.rport == p.sport and self.svcs[d.svc].proto == p.proto
                for d in self.dests[1:]):
            return False
        if self.local_ip != 0 and p.daddr == self.local_ip:
            pass
        elif f.buf[f.data + p.l2len + 8] <= 1:
            return False
        else:
            ttl_decrease(f.buf, f.data + p.l2len)
        if self.local_ip == 0:
            return False
        reason = self.icmp_error(f, p, 3, 3, 0, self.local_ip, TTL_QUOTE)
        if reason is not None:
            self._drop(f, reason)
        else:
            self._count("nat_icmp_sent")
        return True

    def _csum_complete(self, f, p):
        # a partial (offloaded) TCP/UDP checksum, known from the ring or detected, finished
        ip = f.data + p.l2len
        if f.csum != FRAME_CSUM_FULL and (
                f.csum == FRAME_CSUM_PARTIAL
                or (l4_csum_looks_partial_v6(f.buf, ip, p.proto) if p.v6
                    else l4_csum_looks_partial(f.buf, ip, p.ihl, p.proto))):
            if p.v6:
                l4_csum_complete_v6(f.buf, ip, p.proto)
            else:
                l4_csum_complete(f.buf, ip, p.ihl, p.proto)
            self._count("csum_completed")

    def _rx_batch(self, frames):
        """Parse and handle a batch; new flows of callback services are left parked."""
        self.parked = []
        self.pkts = []
        self.frag.batch_start()
        now = self.now
        for f in frames:
            now = max(now, f.ts)
            p = parse_frame(f)
            if p == "fragment":
                # held, or the datagram it completes now stands in for the frame
                p = self._frag_input(f, now)
            elif p == "fragment6":
                p = self._frag6_input(f, now)
            if isinstance(p, tuple):            # ("v6_exthdr", daddr)
                p = "v6_exthdr" if p[1] in self.vset6 else "no_service"
            if not isinstance(p, str) and p.icmp:
                p = self._icmp_parse(f, p)
            if isinstance(p, str):
                (self._pass if p in ("not_ip", "no_service", "fragment", "icmp_no_conn")
                 else self._drop)(f, p)
                p = None
            elif p.icmp:
                pass                # its lookup key is set; handled in order below
            else:
                if p.proto != 132:
                    self._csum_complete(f, p)
                p.vip = self._vip_find_in(p.proto, p.daddr, p.dport)
                if self.mark_rules and p.vip == 0:
                    p.vip = self._mark_vip(p)
            self.pkts.append(p)
        self._count("rx", len(frames))
        self.now = now
        for idx, f in enumerate(frames):
            p = self.pkts[idx]
            if p is not None:
                (self._icmp_handle if p.icmp else self._handle)(f, p, idx)
                if f.verdict == K.VERDICT_TX:
                    if f.xrec is not None and not self._frag_cut(f):
                        continue
                    self._count("tx")
        self._conn_sweep_batch(now)
        if self.frag.queues or self.frag.queues6:
            self._frag_expire(now, FRAG_EXPIRE_BUDGET)

    def _schedule_parked(self, frames):
        # one callback for the batch's new flows; an error is kept for after the batch and
        # the parked frames are dropped
        leaders = [k for k, pk in enumerate(self.parked) if pk.leader < 0]
        svc_ids = [self.parked[k].svc for k in leaders]
        flows = []
        for k in leaders:
            p = self.pkts[self.parked[k].frame]
            flows.append((6 if p.v6 else 4, p.saddr, p.sport, p.daddr, p.dport,
                          {6: "tcp", 132: "sctp"}.get(p.proto, "udp")))
        try:
            if self.callback is None:
                raise RuntimeError("new flow for a service scheduled in Python, "
                                   "but no scheduler callback is set")
            res = self.callback(svc_ids, flows)
            if len(res) != len(leaders):
                raise ValueError(f"scheduler callback returned {len(res)} dest ids "
                                 f"for {len(leaders)} flows")
            for k, r in zip(leaders, res):
                self.parked[k].dest = 0 if r is None else _u32(r)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            for pk in self.parked:
                if frames[pk.frame].verdict == K.VERDICT_PENDING:
                    self._drop(frames[pk.frame], "callback_error")

    def _bind_parked(self, frames):
        """Bind and forward the parked frames, in frame order."""
        for pk in self.parked:
            f = frames[pk.frame]
            p = self.pkts[pk.frame]
            ci = self._lookup_in(p, f.ts)
            if ci is not None:
                # made by an earlier parked frame of the same flow
                self._forward_in(f, p, ci, f.ts)
            elif f.verdict != K.VERDICT_PENDING:
                pass
            elif pk.leader >= 0:
                lead = self.parked[pk.leader].dest
                syn_like = (p.proto == 17 or (p.proto == 6 and p.tcpflags & (TH_SYN | TH_RST)
                                              == TH_SYN)
                            or (p.proto == 132 and p.tcpflags == SCTP.EV_INIT))
                if lead != 0 and syn_like and self._dest_valid_for(lead, pk.svc):
                    # the leader's conn expired by this frame's own time (a replayed capture
                    # spanning a timeout in one batch): open a new conn to the same server
                    self._create_forward(f, p, pk.svc, lead, None, f.ts)
                else:
                    self._drop(f, "tcp_not_syn" if p.proto == 6 else "no_dest")
            else:
                self._bind_leader(f, p, pk)
            if f.verdict == K.VERDICT_TX:
                if f.xrec is not None and not self._frag_cut(f):
                    continue
                self._count("tx")
        self.parked = []

    def _bind_leader(self, f, p, pk):
        s = self._svc(pk.svc)
        dest, ti = pk.dest, None
        if s is not None and s.persist_timeout != 0:
            # a template made earlier in this batch wins, as it would have in sequence
            ti = self._tmpl_lookup(self._persist_net(s, p), s.vip, s.proto, f.ts)
            if ti is not None and self._template_usable(ti):
                dest = self.conn_table[ti].dest
            else:
                ti = None
        if s is None or (ti is None and not self._dest_valid_for(dest, pk.svc)):
            self._drop(f, "no_dest")
        else:
            self._create_forward(f, p, pk.svc, dest, ti, f.ts)

    def _run(self, frames):
        self._rx_batch(frames)
        if self.parked:
            self._schedule_parked(frames)
            self._bind_parked(frames)

    def _raise_pending(self):
        err, self.error = self.error, None
        if err is not None:
            raise err

    def _batches(self, frames, timestamps):
        """(start, [Frame]) per batch, run through the engine; stops after a callback error."""
        if timestamps is None:
            timestamps = time.monotonic_ns()
        single = isinstance(timestamps, int)
        start = 0
        while start < len(frames):
            n = min(self.batch, len(frames) - start)
            batch = [Frame(frames[start + j], timestamps if single else timestamps[start + j])
                     for j in range(n)]
            self._run(batch)
            yield start, batch
            start += n
            if self.error is not None:
                break

    # -- frames from Python --------------------------------------------------------------------
    def process(self, frames, timestamps=None):
        """Run `frames` through the engine in batches; [(index, out_ifindex, bytes)] of the
        frames to transmit, in input order. timestamps: one int (ns), one per frame, or None
        (monotonic clock)."""
        out = []
        for start, batch in self._batches(frames, timestamps):
            out.extend((start + j, f.out_ifindex, data)
                       for j, f in enumerate(batch) if f.verdict == K.VERDICT_TX
                       for data in f.outputs())
        self._raise_pending()
        return out

    def process_verdicts(self, frames, timestamps=None):
        """One (verdict, reason, out_ifindex, bytes|None) per frame: "tx" | "drop" | "pass"
        and the counter name that decided a drop or pass."""
        res = [None] * len(frames)
        for start, batch in self._batches(frames, timestamps):
            for j, f in enumerate(batch):
                tx = f.verdict == K.VERDICT_TX
                data = None
                if tx:
                    data = f.output() if f.xrec is None else f.outputs()
                res[start + j] = (_VERDICT_TEXT[f.verdict],
                                  "" if tx else K.COUNTER_NAMES[f.reason],
                                  f.out_ifindex, data)
        self._raise_pending()
        return res

    # -- timers --------------------------------------------------------------------------------
    def run_timers(self, now_ns=None, budget=None):
        """Expire entries whose timeout passed by `now_ns` (default: the latest frame time),
        inspecting `budget` entries from the sweep cursor (default: the whole table)."""
        now = self.now if now_ns is None else now_ns
        b = self._capacity if budget is None else _u32(budget)
        if now > self.now:
            self.now = now
        freed = self._conn_sweep(now, b)
        self._frag_expire(now, M32)
        return freed

    # -- counters and listings -----------------------------------------------------------------
    def stats(self):
        """Global counters by name."""
        return dict(zip(K.COUNTER_NAMES, self.counters))

    def service_stats(self, svc_id):
        """conns, inpkts, outpkts, inbytes, outbytes of a service (bytes = IP lengths)."""
        svc_id = _c_int(svc_id)
        s = self._svc(svc_id)
        if s is None:
            raise KeyError(svc_id)
        return {"conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
                "inbytes": s.inbytes, "outbytes": s.outbytes}

    def dest_stats(self, dest_id):
        """Counters of a dest (also of a deleted one its conns still reference)."""
        dest_id = _c_int(dest_id)
        if dest_id < 1 or dest_id >= len(self.dests) or not self.dests[dest_id].in_use:
            raise KeyError(dest_id)
        d = self.dests[dest_id]
        return {"conns": d.conns, "inpkts": d.inpkts, "outpkts": d.outpkts,
                "inbytes": d.inbytes, "outbytes": d.outbytes,
                "activeconns": d.activeconns, "inactconns": d.inactconns,
                "persistconns": d.persistconns, "overloaded": d.overload,
                "weight": d.weight, "available": d.available, "refcnt": d.refcnt}

    def dest_counters(self, dest_id):
        """(activeconns, inactconns, persistconns, overloaded): what lc/wlc/... read."""
        dest_id = _c_int(dest_id)
        if dest_id < 1 or dest_id >= len(self.dests):
            raise KeyError(dest_id)
        d = self.dests[dest_id]
        return (d.activeconns, d.inactconns, d.persistconns, d.overload)

    def conns(self, now_ns=None):
        """Entries for ipvsadm -Lnc, in table order; entries already expired are left out
        (a template still controlling conns is kept)."""
        return self.conns_slice(0, None, now_ns)[0]

    def conns_slice(self, start=0, limit=None, now_ns=None):
        """(entries, next_start): the live entries among slots start .. start+limit-1 of
        the part of the table ever handed out (limit=None: to its end), as conns()
        describes them; next_start is None once the walk reached the end."""
        now = self.now if now_ns is None else now_ns
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        end = self.used_end
        if start >= end:
            return [], None
        if limit is not None and limit < end - start:
            end = start + limit
        out = []
        for i in range(start, end):
            c = self.conn_table.get(i)
            if c is None:
                continue
            tmpl = bool(c.flags & CF_TEMPLATE)
            if c.expires <= now and not (tmpl and c.ctl):
                continue
            v = self.vips[c.vip]
            d = self.dests[c.dest]
            if tmpl:
                state = "ASSURED" if c.state & 1 else "NONE"    # IP_VS_CTPL_S_*
            elif c.proto == 17:
                state = "UDP"
            elif c.proto == 132:
                state = SCTP.STATE_NAMES[c.state] if c.state < SCTP.S_LAST else "ERR!"
            else:
                state = TCP_STATE_NAMES[c.state]
            out.append({"proto": _PROTO_TEXT.get(c.proto, "IP"), "state": state,
                        "expires": (c.expires - now) // NS if c.expires > now else 0,
                        "caddr": _ip_text(c.caddr), "cport": c.cport,
                        "vaddr": _ip_text(v.addr), "vport": c.vport,
                        "raddr": _ip_text(d.raddr),
                        # a port-0 template is <caddr, 0, vaddr, 0, raddr, 0> as in IPVS
                        "rport": (d.rport if c.vport else 0) if tmpl else self._rport(c),
                        "template": tmpl, "fwd": _FWD_TEXT.get(c.fwd, "")})
        return out, (end if end < self.used_end else None)
