# cython: language_level=3
"""The fast path (one extension): cdef class Engine, a user-space IPVS data plane.

Frames go through `engine_rx_batch` (C, no GIL) as fl_frame descriptors and are rewritten in
place; new flows of Python-scheduled services are parked and bound in `engine_bind_parked`
after one scheduler callback per batch (`Engine.run_frames` strings the three together for
ring code). The included dataplane/*.pxi fragments hold the parsing, checksums, connection
table, TCP states, hash schedulers and transmit functions.

Choices worth knowing:
- Conn entries are 48 bytes, chained from a power-of-two bucket array by 32-bit indices.
  Both directions hash (client addr, client port, proto), as IPVS's conn table does, so a
  NAT reply (dst = client) finds its entry in the same chain; no second index.
- An entry names its virtual address by an interned VIP index (proto, vaddr, vport) and
  its real server by dest id, so conns outlive the deletion of their service or dest.
- A dest id deleted while conns reference it stays reserved: re-adding the same service +
  address revives it (IPVS's trash); any other use raises ValueError until they expire.
- fwd ints are ours: 1 dr, 2 nat, 3 tun (strings "dr"/"nat"/"tun" are accepted too).
- Expiry is lazy on lookup plus a sweep after each batch that walks the used part of the
  table once per second of frame time (at most `sweep_budget` entries per batch); a full
  table takes the oldest expired SYN_RECV entry (with drop_entry, the oldest live one:
  spoofed SYNs make room for real clients), else drops the new flow (table_full); bounded
  work either way.
- A conn whose dest was deleted is dropped until it expires, or ended at once with
  expire_nodest_conn; conn_reuse_mode and the flood defences follow Linux 6.1 (the
  sysctls are set by name: set_sysctl).
- The scheduler is asked once per new flow per batch; if two new flows of a persistent
  service from one client net arrive in the same batch, the second follows the template the
  first made (as in sequence) even if the scheduler answered otherwise for it.
- Not yet: IPv6 forwarding (entries already hold 128-bit addresses), port-zero and fwmark
  services, ICMP errors for existing conns, FTP's template special case, fragmentation of
  TUN packets over the MTU without DF (they are sent as they are and counted oversize).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int16_t, int32_t, int64_t
from libc.stdlib cimport calloc, free, realloc, malloc
from libc.string cimport memcpy, memmove, memset
from compat cimport fl_prefetch, fl_prefetch_w, fl_likely, fl_unlikely, fl_alloc_table
cimport if_packet as pk
from xsk cimport *
from cpython.ref cimport PyObject

import ipaddress as _ipaddress
import os as _os
import time as _time

include "dataplane/types.pxi"
include "dataplane/csum.pxi"
include "dataplane/hash.pxi"
include "dataplane/parse.pxi"
include "dataplane/tcpstate.pxi"
include "dataplane/conn.pxi"
include "dataplane/xmit.pxi"


def py_hash_32(uint32_t val, unsigned int bits):
    """hash_32(val, bits) computed in C, for differential tests against the Python version."""
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1..32, got {bits}")
    return hash_32(val, bits)


def py_hsiphash_u32(uint32_t val, uint64_t k0, uint64_t k1):
    """hsiphash of the native u32 `val` with key (k0, k1), computed in C (64-bit kernel)."""
    return hsiphash_1u32(val, k0, k1)


COUNTER_NAMES = ("rx", "tx", "passed", "malformed", "not_ip", "no_service", "table_full",
                 "tcp_not_syn", "no_dest", "fragment", "bad_checksum", "frag_needed_sent",
                 "no_headroom", "callback_error", "no_route", "oversize", "conns_created",
                 "conns_expired", "dest_unavailable", "drop_packet", "drop_entry")

FWD_NAMES = {"dr": FWD_DR, "route": FWD_DR, "g": FWD_DR, "nat": FWD_NAT, "masq": FWD_NAT,
             "m": FWD_NAT, "tun": FWD_TUN, "ipip": FWD_TUN, "i": FWD_TUN}
SCHED_KINDS = {"sh": SCHED_SH, "dh": SCHED_DH, "mh": SCHED_MH}
_FWD_TEXT = {FWD_DR: "dr", FWD_NAT: "nat", FWD_TUN: "tun"}
# The IPVS sysctls the engine applies, with the kernel's defaults and ranges (amemthresh
# counts free conn entries here, pages there). control/sysctl.py declares them for users.
SYSCTL_DEFAULTS = {"expire_nodest_conn": 0, "expire_quiescent_template": 0,
                   "conn_reuse_mode": 1, "sloppy_tcp": 0, "drop_entry": 0, "drop_packet": 0,
                   "secure_tcp": 0, "amemthresh": 1024, "am_droprate": 10}
_SYSCTL_RANGE = {"expire_nodest_conn": (0, 1), "expire_quiescent_template": (0, 1),
                 "conn_reuse_mode": (0, 3), "sloppy_tcp": (0, 1), "drop_entry": (0, 3),
                 "drop_packet": (0, 3), "secure_tcp": (0, 3), "amemthresh": (0, 0xFFFFFFFF),
                 "am_droprate": (1, 0xFFFFFFFF)}
_PROTO_TEXT = {6: "TCP", 17: "UDP"}

# ---------------------------------------------------------------------------------------------
# The batch loop (no GIL)
# ---------------------------------------------------------------------------------------------

cdef inline void frame_drop(fl_engine *e, fl_frame *f, int reason) noexcept nogil:
    f.verdict = VERDICT_DROP
    f.reason = <uint8_t>reason
    e.counters[reason] += 1


cdef inline void frame_pass(fl_engine *e, fl_frame *f, int reason) noexcept nogil:
    f.verdict = VERDICT_PASS
    f.reason = <uint8_t>reason
    e.counters[reason] += 1
    e.counters[C_PASS] += 1


cdef inline void conn_forward_in(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c,
                                 uint64_t now) noexcept nogil:
    # ip_vs_in for a known conn: stats, state, transmit, then re-arm the timer.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef int r
    d.inpkts += 1
    d.inbytes += p.tot_len
    s.inpkts += 1
    s.inbytes += p.tot_len
    if p.proto == 6:
        tcp_set_state(e, c, False, p.tcpflags)
    else:
        c.timeout = e.udp_timeout
    r = XMIT[c.fwd](e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    c.expires = now + secs(c.timeout)


cdef inline void conn_forward_out(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c,
                                  uint64_t now) noexcept nogil:
    # ip_vs_out/handle_response for a NAT reply.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef int r
    d.outpkts += 1
    d.outbytes += p.tot_len
    s.outpkts += 1
    s.outbytes += p.tot_len
    if p.proto == 6:
        tcp_set_state(e, c, True, p.tcpflags)
    else:
        c.timeout = e.udp_timeout
    r = xmit_nat_out_v4(e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    c.expires = now + secs(c.timeout)


cdef inline void persist_net(fl_svc *s, fl_pkt *p, uint32_t *snet) noexcept nogil:
    snet[0] = 0
    snet[1] = 0
    snet[2] = 0
    snet[3] = p.saddr[3] & s.netmask


cdef inline bint template_usable(fl_engine *e, uint32_t ti) noexcept nogil:
    # ip_vs_check_template: the template's dest must still be linked to its service, and
    # with expire_quiescent_template also have a weight (overload does not matter). An
    # unusable template is invalidated: it stops matching and lives on only until its
    # timer fires.
    cdef fl_conn *t = &e.conns[ti - 1]
    if (t.dest != 0 and (e.dests[t.dest].flags & DF_AVAILABLE)
            and not (e.expire_quiescent_template and e.dests[t.dest].weight == 0)):
        return True
    t.flags |= CF_INVALID
    return False


cdef inline bint dest_valid_for(fl_engine *e, uint32_t d, uint16_t svc) noexcept nogil:
    return (d != 0 and d < e.ndests and (e.dests[d].flags & DF_AVAILABLE) != 0
            and e.dests[d].svc == svc)


cdef void conn_create_forward(fl_engine *e, fl_frame *f, fl_pkt *p, uint16_t svc_id,
                              uint32_t dest, uint32_t ti, uint64_t now) noexcept nogil:
    # Make the conn (and, for a persistent service without a usable template, the template),
    # count it on dest and service, and forward the packet that opened it.
    cdef fl_svc *s = &e.svcs[svc_id]
    cdef uint32_t snet[4]
    cdef uint32_t ci
    cdef fl_conn *c
    cdef fl_conn *t
    if s.persist_timeout != 0 and ti == 0:
        persist_net(s, p, snet)
        ti = conn_new(e, snet, 0, p.vip, p.proto, dest, CF_TEMPLATE, now)
        if ti == 0:
            frame_drop(e, f, C_TABLE_FULL)
            return
        e.conns[ti - 1].timeout = s.persist_timeout
    ci = conn_new(e, p.saddr, p.sport, p.vip, p.proto, dest, 0, now)
    if ti != 0:
        # ip_vs_conn_put(ct): using the template re-arms its timer
        t = &e.conns[ti - 1]
        t.expires = now + secs(t.timeout)
    if ci == 0:
        frame_drop(e, f, C_TABLE_FULL)
        return
    c = &e.conns[ci - 1]
    if ti != 0:
        c.ctl = ti
        e.conns[ti - 1].ctl += 1
    e.dests[dest].conns += 1
    e.svcs[e.dests[dest].svc].conns += 1
    e.counters[C_CONNS_CREATED] += 1
    if e.learn_ifindex != 0 and e.dests[dest].fwd == FWD_NAT:
        neigh_learn(e, p.saddr[3], f.data + 6, e.learn_ifindex)
    conn_forward_in(e, f, p, c, now)
    if p.proto == 6:
        if c.state == TCP_S_SYN_RECV or c.state == TCP_S_SYNACK:
            embryo_push(e, ci - 1, p.bucket)
    elif s.flags & SVC_F_ONEPACKET:
        # -o: the entry served this one datagram; the next is scheduled afresh
        conn_free(e, ci - 1)


cdef void new_flow(fl_engine *e, fl_frame *f, fl_pkt *p, int idx, uint16_t svc_id,
                   uint64_t now) noexcept nogil:
    # ip_vs_schedule: persistence template first, then the C hash table, else park the frame
    # for the Python scheduler (one callback per batch, flows of the batch deduplicated).
    cdef fl_svc *s = &e.svcs[svc_id]
    cdef uint32_t snet[4]
    cdef uint32_t ti
    cdef uint32_t dest
    cdef int k
    cdef fl_pkt *q
    if defense_todrop(e):
        # drop_packet (tcp/udp_conn_schedule): a share of new conns is refused while
        # the table runs out
        frame_drop(e, f, C_DROP_PACKET)
        return
    if s.persist_timeout != 0:
        persist_net(s, p, snet)
        ti = tmpl_lookup(e, snet, p.vip, p.proto, now)
        if ti != 0 and template_usable(e, ti):
            conn_create_forward(e, f, p, svc_id, e.conns[ti - 1].dest, ti, now)
            return
    if s.table != NULL:
        dest = sched_hash(e, s, p)
        if dest == 0 or not dest_valid_for(e, dest, svc_id):
            frame_drop(e, f, C_NO_DEST)
            return
        conn_create_forward(e, f, p, svc_id, dest, 0, now)
        return
    if not park_follower(e, f, p, idx):
        k = e.nparked
        e.nparked += 1
        f.verdict = VERDICT_PENDING
        e.parked[k].frame = <uint16_t>idx
        e.parked[k].svc = svc_id
        e.parked[k].dest = 0
        e.parked[k].leader = -1


cdef bint park_follower(fl_engine *e, fl_frame *f, fl_pkt *p, int idx) noexcept nogil:
    # A later frame of a flow already parked in this batch waits behind it (order kept,
    # the scheduler asked once).
    cdef int j, k = e.nparked
    cdef fl_pkt *q
    for j in range(k):
        if e.parked[j].leader < 0 and not (e.svcs[e.parked[j].svc].flags & SVC_F_ONEPACKET):
            q = &e.pkts[e.parked[j].frame]
            if (q.sport == p.sport and q.vip == p.vip and q.proto == p.proto
                    and addr_eq(q.saddr, p.saddr)):
                e.nparked += 1
                f.verdict = VERDICT_PENDING
                e.parked[k].frame = <uint16_t>idx
                e.parked[k].svc = e.parked[j].svc
                e.parked[k].dest = 0
                e.parked[k].leader = <int16_t>j
                return True
    return False


cdef inline bint conn_reuse_expected(fl_engine *e, fl_conn *c) noexcept nogil:
    # is_new_conn_expected (Linux 6.1): a SYN may open a new conn over an entry in
    # TIME_WAIT or CLOSE, and with bit 2 over one in FIN_WAIT that never saw a reply
    # (DR/TUN), unless a persistence template controls the entry.
    if c.ctl != 0 or c.proto != 6:
        return False
    return (c.state == TCP_S_TIME_WAIT or c.state == TCP_S_CLOSE
            or ((e.conn_reuse_mode & 2) and c.state == TCP_S_FIN_WAIT
                and (c.flags & CF_NOOUTPUT)))


cdef inline int conn_check_in(fl_engine *e, fl_frame *f, fl_pkt *p, uint32_t ci) noexcept nogil:
    # ip_vs_in between the lookup and the transmit (Linux 6.1, recorded). Returns 1: forward
    # on the entry; 0: the entry was ended, schedule the packet as a new one; -1: dropped.
    # Later mainline sources also end a weight-0 dest's entry for a SYN (expire_nodest_conn)
    # when conn_reuse_mode is 0; 6.1 needs conn_reuse_mode on for that, and so does this.
    cdef fl_conn *c = &e.conns[ci - 1]
    cdef fl_dest *d = &e.dests[c.dest]
    if e.conn_reuse_mode != 0 and p.proto == 6 and (p.tcpflags & TH_SYN):
        # port reuse: a SYN over an entry that is closing, or whose server was quiesced
        # while expire_nodest_conn is set, ends the entry and is scheduled afresh (only
        # templates have n_control here, so the entry always goes at once)
        if ((e.expire_nodest_conn and c.dest != 0 and d.weight == 0)
                or conn_reuse_expected(e, c)):
            conn_free(e, ci - 1)
            return 0
    if c.dest != 0 and not (d.flags & DF_AVAILABLE):
        # the real server was deleted: its conns' packets are dropped and the entry is
        # left to time out (the timer is not re-armed), or with expire_nodest_conn the
        # entry ends and the packet is handled as if there had been none
        if e.expire_nodest_conn:
            conn_free(e, ci - 1)
            return 0
        frame_drop(e, f, C_DEST_UNAVAILABLE)
        return -1
    return 1


cdef inline void handle_pkt(fl_engine *e, fl_frame *f, fl_pkt *p, int idx) noexcept nogil:
    cdef uint64_t now = f.ts_ns
    cdef uint32_t ci
    cdef int r
    cdef uint16_t svc_id
    if p.vip != 0:
        ci = conn_lookup_in(e, p, now)
        if ci != 0:
            r = conn_check_in(e, f, p, ci)
            if r > 0:
                conn_forward_in(e, f, p, &e.conns[ci - 1], now)
                return
            if r < 0:
                return
        if e.nparked != 0 and park_follower(e, f, p, idx):
            return
        svc_id = e.vips[p.vip].svc
        if svc_id == 0:
            frame_pass(e, f, C_NO_SERVICE)
            return
        if p.proto == 6 and ((p.tcpflags & TH_RST)
                             or not (p.tcpflags & TH_SYN or e.sloppy_tcp)):
            # tcp_conn_schedule schedules on a SYN without RST (any packet without RST
            # with sloppy_tcp); the rest is not ours
            frame_pass(e, f, C_TCP_NOT_SYN)
            return
        new_flow(e, f, p, idx, svc_id, now)
        return
    ci = conn_lookup_out(e, p, now)
    if ci != 0:
        conn_forward_out(e, f, p, &e.conns[ci - 1], now)
        return
    frame_pass(e, f, C_NO_SERVICE)


cdef int engine_rx_batch(fl_engine *e, fl_frame *frames, int n) noexcept nogil:
    """Process up to MAX_BATCH frames in place; returns how many were parked (PENDING).

    Parked frames wait for engine_bind_parked once e.parked[k].dest holds the decision."""
    cdef int i, j, r
    cdef fl_frame *f
    cdef fl_pkt *p
    cdef fl_conn *c
    cdef uint64_t now = e.now
    if n > MAX_BATCH:
        n = MAX_BATCH
    e.nparked = 0
    # pass 0: every frame's headers at once; the kernel copied them in a while ago (on a NIC,
    # DMA never put them in this core's cache), and one miss at a time is what the parse
    # loop would otherwise wait for
    for i in range(n):
        fl_prefetch(frames[i].data)
    # pass 1: parse, classify, hash and prefetch the bucket heads of the whole batch
    for i in range(n):
        f = &frames[i]
        p = &e.pkts[i]
        f.out_adj = 0
        f.out_len = 0
        f.out_ifindex = 0
        f.reason = 0
        f.verdict = VERDICT_DROP
        if f.ts_ns > now:
            now = f.ts_ns
        r = parse_frame(f, p)
        if fl_unlikely(r != PARSE_OK):
            p.ok = 0
            if r == C_NOT_IP or r == C_NO_SERVICE:
                frame_pass(e, f, r)
            else:
                frame_drop(e, f, r)
            continue
        p.ok = 1
        p.vip = vip_find(e, p.daddr, p.dport, p.proto)
        if p.vip != 0:
            p.bucket = conn_hash(e, p.saddr, p.sport, p.proto)
        else:
            p.bucket = conn_hash(e, p.daddr, p.dport, p.proto)
        fl_prefetch(&e.buckets[p.bucket])
    e.counters[C_RX] += <uint64_t>n
    e.now = now
    # pass 2: prefetch the chain head's entry of frame i while frame i - PREFETCH_AHEAD is
    # handled, so that every entry has that many frames' work to arrive in (a separate
    # prefetch pass is over in a few ns, and then the first frames wait for theirs)
    for i in range(n + PREFETCH_AHEAD):
        if i < n:
            p = &e.pkts[i]
            if p.ok and e.buckets[p.bucket] != 0:
                # both lines: an entry is 48 bytes, so half of them straddle two cache
                # lines, and the lookup reads both ends (caddr first, cport/vip last); for
                # writing, as forwarding re-arms the timer
                c = &e.conns[e.buckets[p.bucket] - 1]
                fl_prefetch_w(c)
                fl_prefetch_w(<char *>c + sizeof(fl_conn) - 1)
        j = i - PREFETCH_AHEAD
        if j >= 0 and e.pkts[j].ok:
            handle_pkt(e, &frames[j], &e.pkts[j], j)
            if frames[j].verdict == VERDICT_TX:
                e.counters[C_TX] += 1
    conn_sweep_batch(e, now)
    return e.nparked


cdef void engine_bind_parked(fl_engine *e, fl_frame *frames) noexcept nogil:
    """Bind and forward the parked frames of the last engine_rx_batch, in frame order."""
    cdef int k
    cdef fl_parked *pk
    cdef fl_frame *f
    cdef fl_pkt *p
    cdef uint32_t ci, ti, dest
    cdef uint32_t snet[4]
    cdef fl_svc *s
    for k in range(e.nparked):
        pk = &e.parked[k]
        f = &frames[pk.frame]
        p = &e.pkts[pk.frame]
        ci = conn_lookup_in(e, p, f.ts_ns)
        if ci != 0:
            # made by an earlier parked frame of the same flow
            conn_forward_in(e, f, p, &e.conns[ci - 1], f.ts_ns)
        elif pk.leader >= 0 or f.verdict != VERDICT_PENDING:
            if f.verdict != VERDICT_PENDING:
                pass
            elif (pk.leader >= 0 and e.parked[pk.leader].dest != 0
                    and (p.proto == 17 or (p.tcpflags & (TH_SYN | TH_RST)) == TH_SYN)
                    and dest_valid_for(e, e.parked[pk.leader].dest, pk.svc)):
                # The leader's conn already expired by this frame's own time (only a
                # replayed capture spans a timeout within one batch): the frame opens a
                # new conn, to the server the scheduler just chose for this very flow.
                conn_create_forward(e, f, p, pk.svc, e.parked[pk.leader].dest, 0, f.ts_ns)
            elif p.proto == 6:
                frame_drop(e, f, C_TCP_NOT_SYN)
            else:
                frame_drop(e, f, C_NO_DEST)
        else:
            s = &e.svcs[pk.svc]
            dest = pk.dest
            ti = 0
            if s.in_use and s.persist_timeout != 0:
                # a template made earlier in this batch wins, as it would have in sequence
                persist_net(s, p, snet)
                ti = tmpl_lookup(e, snet, p.vip, p.proto, f.ts_ns)
                if ti != 0 and template_usable(e, ti):
                    dest = e.conns[ti - 1].dest
                else:
                    ti = 0
            if not s.in_use or (ti == 0 and not dest_valid_for(e, dest, pk.svc)):
                frame_drop(e, f, C_NO_DEST)
            else:
                conn_create_forward(e, f, p, pk.svc, dest, ti, f.ts_ns)
        if f.verdict == VERDICT_TX:
            e.counters[C_TX] += 1
    e.nparked = 0


cdef void baseline_touch(fl_engine *e, fl_frame *frames, int n) noexcept nogil:
    # The reference loop for benchmarks: read what any forwarder must read (ethertype,
    # addresses, ports) and write the MACs, nothing else.
    cdef int i
    cdef uint8_t *d
    cdef uint32_t acc = 0
    for i in range(n):
        d = frames[i].data
        if rd16(d + 12) == 0x0800:
            acc += rd32(d + 26) ^ rd32(d + 30) ^ rd32(d + 34)
            memcpy(d, e.local_mac, 6)
            memcpy(d + 6, e.local_mac, 6)
            frames[i].verdict = VERDICT_TX
            frames[i].out_len = frames[i].len + (acc & 0)


# ---------------------------------------------------------------------------------------------
# Python-level helpers (control plane only)
# ---------------------------------------------------------------------------------------------

cdef _addr_words(value, uint32_t *out):
    ip = _ipaddress.ip_address(value)
    if ip.version != 4:
        raise ValueError(f"only IPv4 is forwarded for now: {value!r}")
    out[0] = 0
    out[1] = 0
    out[2] = 0
    out[3] = int(ip)


def _mac_bytes(mac):
    if mac is None or mac == "" or mac == b"":
        return b"\0" * 6
    if isinstance(mac, str):
        b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    else:
        b = bytes(mac)
    if len(b) != 6:
        raise ValueError(f"MAC address must be 6 bytes: {mac!r}")
    return b


cdef _set_mac(uint8_t *dst, mac):
    cdef bytes b = _mac_bytes(mac)
    memcpy(dst, <const uint8_t *>b, 6)


def _proto_num(proto):
    if isinstance(proto, str):
        proto = {"tcp": 6, "udp": 17}.get(proto.lower(), proto)
    if proto not in (6, 17):
        raise ValueError(f"protocol must be 6 (tcp) or 17 (udp), got {proto!r}")
    return proto


def _ip_text(uint32_t v):
    return str(_ipaddress.IPv4Address(v))


cdef enum:
    SLOT_HEADROOM = 128
    SLOT_SIZE = 128 + 9216 + 64


cdef class Engine:
    """One data-plane instance: conn table, services, dests, counters.

    Engine(capacity=1<<20, batch=64, local_ip="", local_mac="", mtu=1500). `capacity`
    entries (conns + persistence templates) are allocated once; the table never grows.
    All configuration methods are control-plane calls, never made per packet.
    """
    cdef fl_engine st
    cdef fl_frame *frames
    cdef uint8_t *slots
    cdef uint8_t *saved
    cdef uint32_t *saved_len
    cdef size_t *saved_off
    cdef int nloaded
    cdef readonly int batch
    cdef object callback
    cdef object error
    cdef readonly uint32_t new_flow_src   # last source process_loaded(new_flows) wrote

    def __cinit__(self, capacity=1 << 20, batch=64, local_ip="", local_mac="", mtu=1500):
        cdef uint32_t cap = capacity
        cdef uint32_t i
        cdef uint32_t bits = 4
        if capacity < 1 or capacity > 0xFFFFFFF0:
            raise ValueError(f"capacity must be 1..{0xFFFFFFF0}, got {capacity}")
        if batch < 1 or batch > MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if mtu < 68 or mtu > 65535:
            raise ValueError(f"mtu must be 68..65535, got {mtu}")
        memset(&self.st, 0, sizeof(fl_engine))
        while (<uint64_t>1 << bits) < cap:
            bits += 1
        self.st.capacity = cap
        self.st.bucket_bits = bits
        self.st.bucket_mask = (1u << bits) - 1 if bits < 32 else 0xFFFFFFFF
        self.st.conns = <fl_conn *>fl_alloc_table(<size_t>cap * sizeof(fl_conn))
        self.st.buckets = <uint32_t *>fl_alloc_table((<size_t>1 << bits) * sizeof(uint32_t))
        self.st.svcs = <fl_svc *>calloc(MAX_SERVICES, sizeof(fl_svc))
        self.st.vips = <fl_vip *>calloc(MAX_VIPS, sizeof(fl_vip))
        self.st.vip_index = <uint16_t *>calloc(VIP_INDEX_SIZE, sizeof(uint16_t))
        self.st.neigh = <fl_neigh *>calloc(NEIGH_SIZE, sizeof(fl_neigh))
        self.st.ndests = 64
        self.st.dests = <fl_dest *>calloc(self.st.ndests, sizeof(fl_dest))
        self.frames = <fl_frame *>calloc(MAX_BATCH, sizeof(fl_frame))
        self.slots = <uint8_t *>malloc(<size_t>MAX_BATCH * SLOT_SIZE)
        if (self.st.conns == NULL or self.st.buckets == NULL or self.st.svcs == NULL
                or self.st.vips == NULL or self.st.vip_index == NULL or self.st.neigh == NULL
                or self.st.dests == NULL or self.frames == NULL or self.slots == NULL):
            raise MemoryError("cannot allocate the engine's tables")
        # every entry starts on the free list, lowest index first
        for i in range(cap):
            self.st.conns[i].next = i + 2 if i + 1 < cap else 0
        self.st.free_head = 1
        self.st.seed = int.from_bytes(_os.urandom(8), "little")
        self.st.rnd = int.from_bytes(_os.urandom(8), "little") | 1
        for name, value in SYSCTL_DEFAULTS.items():
            self.set_sysctl(name, value)
        self.st.sweep_budget = 64
        self.st.mtu = mtu
        self.st.nvips = 1
        for i in range(TCP_S_LAST + 1):
            self.st.tcp_timeouts[i] = TCP_DEFAULT_TIMEOUTS[i]
        self.st.udp_timeout = 300
        self.batch = batch
        self.callback = None
        self.error = None
        self.new_flow_src = 0x0B000001
        if local_ip:
            self.st.local_ip = int(_ipaddress.IPv4Address(local_ip))
        _set_mac(self.st.local_mac, local_mac)

    def __dealloc__(self):
        cdef int i
        if self.st.svcs != NULL:
            for i in range(MAX_SERVICES):
                free(self.st.svcs[i].table)
        free(self.st.conns)
        free(self.st.buckets)
        free(self.st.svcs)
        free(self.st.vips)
        free(self.st.vip_index)
        free(self.st.neigh)
        free(self.st.embryo)
        free(self.st.dests)
        free(self.frames)
        free(self.slots)
        free(self.saved)
        free(self.saved_len)
        free(self.saved_off)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def entry_size(self):
        """Bytes per connection entry (the bucket array adds 4 bytes per power-of-two slot)."""
        return sizeof(fl_conn)

    @property
    def capacity(self):
        return self.st.capacity

    def memory_bytes(self):
        """Bytes allocated for the conn table, its buckets and, once drop_entry has been
        set, its ring of embryonic entries (8 bytes a bucket)."""
        return (<uint64_t>self.st.capacity * sizeof(fl_conn)
                + (<uint64_t>1 << self.st.bucket_bits) * (12 if self.st.embryo != NULL else 4))

    def conn_count(self):
        """Entries in use (conns and persistence templates), expired-but-unswept included."""
        return self.st.conn_count

    # -- local addresses, neighbours, timeouts --------------------------------------------------
    def set_local(self, local_ip=None, local_mac=None, mtu=None):
        """Change the director's own IP (TUN outer source), MAC (source of every frame we
        send) or the MTU towards the real servers (TUN's frag-needed threshold)."""
        if local_ip is not None:
            self.st.local_ip = int(_ipaddress.IPv4Address(local_ip)) if local_ip else 0
        if local_mac is not None:
            _set_mac(self.st.local_mac, local_mac)
        if mtu is not None:
            if mtu < 68 or mtu > 65535:
                raise ValueError(f"mtu must be 68..65535, got {mtu}")
            self.st.mtu = mtu

    def set_neighbor(self, ip, mac, ifindex=0):
        """Next-hop MAC (and interface) for NAT replies to client `ip`; setting it again
        replaces it. Clients without an entry go to the gateway MAC."""
        cdef uint32_t a = int(_ipaddress.IPv4Address(ip))
        cdef uint32_t s = (a * <uint32_t>GOLDEN_RATIO_32) >> 20
        cdef int n = 0
        while self.st.neigh[s].used and self.st.neigh[s].ip != a:
            s = (s + 1) & (NEIGH_SIZE - 1)
            n += 1
            if n >= NEIGH_SIZE - 1:
                raise ValueError("neighbour table full")
        self.st.neigh[s].used = 1
        self.st.neigh[s].ip = a
        self.st.neigh[s].ifindex = ifindex
        _set_mac(self.st.neigh[s].mac, mac)

    def set_gateway_mac(self, mac, ifindex=0):
        """Next-hop MAC for NAT replies to clients without a neighbour entry (None: none;
        such replies are then dropped and counted as no_route)."""
        if mac is None:
            self.st.has_gw = 0
            return
        _set_mac(self.st.gw_mac, mac)
        self.st.gw_ifindex = ifindex
        self.st.has_gw = 1

    def set_learn_ifindex(self, int ifindex):
        """NAT: when a new connection opens, remember its client's source MAC (the client,
        or its router) as the next hop of the replies, sent out of `ifindex`, unless the
        client already has a neighbour entry. 0 (the default) turns learning off."""
        self.st.learn_ifindex = ifindex

    def set_timeouts(self, tcp=0, tcpfin=0, udp=0):
        """ipvsadm --set: tcp ESTABLISHED, tcp FIN_WAIT and udp timeouts in seconds; 0 keeps
        the current value. Like IPVS, an existing conn keeps its timeout until its next
        state change (TCP) or packet (UDP)."""
        for v in (tcp, tcpfin, udp):
            if v < 0 or v > 0xFFFFFFFF // NS_PER_S * NS_PER_S:
                raise ValueError(f"timeout out of range: {v}")
        if tcp:
            self.st.tcp_timeouts[TCP_S_ESTABLISHED] = tcp
        if tcpfin:
            self.st.tcp_timeouts[TCP_S_FIN_WAIT] = tcpfin
        if udp:
            self.st.udp_timeout = udp

    def get_timeouts(self):
        """(tcp, tcpfin, udp) as ipvsadm -L --timeout shows them."""
        return (self.st.tcp_timeouts[TCP_S_ESTABLISHED], self.st.tcp_timeouts[TCP_S_FIN_WAIT],
                self.st.udp_timeout)

    def set_sysctl(self, name, value):
        """Set one of SYSCTL_DEFAULTS by its kernel name (ValueError for another name or a
        value out of its range). The flood defences are re-evaluated at once, as writing
        the kernel's sysctl does; the booleans take any int, stored as 0/1."""
        if name not in _SYSCTL_RANGE:
            raise ValueError(f"unknown sysctl {name!r}")
        lo, hi = _SYSCTL_RANGE[name]
        v = int(value)
        if name in ("expire_nodest_conn", "expire_quiescent_template", "sloppy_tcp"):
            v = 1 if v else 0
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be {lo}..{hi}, got {value!r}")
        if name == "expire_nodest_conn":
            self.st.expire_nodest_conn = v
        elif name == "expire_quiescent_template":
            self.st.expire_quiescent_template = v
        elif name == "conn_reuse_mode":
            self.st.conn_reuse_mode = v
        elif name == "sloppy_tcp":
            self.st.sloppy_tcp = v
        elif name == "drop_entry":
            if v and self.st.embryo == NULL:
                # the ring of SYN_RECV entries drop_entry takes from; an engine that never
                # uses the defence neither holds nor fills it
                self.st.embryo = <uint64_t *>fl_alloc_table(
                    (<size_t>self.st.bucket_mask + 1) * sizeof(uint64_t))
                if self.st.embryo == NULL:
                    raise MemoryError("cannot allocate drop_entry's ring")
            self.st.drop_entry = v
        elif name == "drop_packet":
            self.st.drop_packet = v
        elif name == "secure_tcp":
            self.st.secure_tcp = v
        elif name == "amemthresh":
            self.st.amemthresh = v
        elif name == "am_droprate":
            self.st.am_droprate = v
        defense_update(&self.st)

    def sysctls(self):
        """{name: value} of the sysctls the engine applies, as they read now (an automatic
        defence reads 2 while in force, 1 while not)."""
        st = &self.st
        return {"expire_nodest_conn": st.expire_nodest_conn,
                "expire_quiescent_template": st.expire_quiescent_template,
                "conn_reuse_mode": st.conn_reuse_mode, "sloppy_tcp": st.sloppy_tcp,
                "drop_entry": st.drop_entry, "drop_packet": st.drop_packet,
                "secure_tcp": st.secure_tcp, "amemthresh": st.amemthresh,
                "am_droprate": st.am_droprate}

    def defense_state(self):
        """The flood defences in force now: drop_entry (bool), drop_rate (drop_packet drops
        1 of every drop_rate new conns, 0 = none), secure_tcp (bool)."""
        return {"drop_entry": bool(self.st.dropentry_on), "drop_rate": self.st.drop_rate,
                "secure_tcp": bool(self.st.secure_tcp_on)}

    def set_sweep_budget(self, uint32_t entries):
        """Most entries the incremental expiry inspects after one batch (default 64); it
        paces itself to walk the used part of the table once per second of frame time."""
        self.st.sweep_budget = entries

    # -- services -------------------------------------------------------------------------------
    cdef uint16_t _vip_intern(self, uint8_t proto, uint32_t *addr, uint16_t port) except 0:
        cdef uint16_t v = vip_find(&self.st, addr, port, proto)
        cdef uint32_t s
        if v != 0:
            return v
        if self.st.nvips >= MAX_VIPS:
            raise ValueError("too many distinct virtual addresses")
        v = <uint16_t>self.st.nvips
        self.st.nvips += 1
        memcpy(self.st.vips[v].addr, addr, 16)
        self.st.vips[v].port = port
        self.st.vips[v].proto = proto
        self.st.vips[v].used = 1
        s = vip_slot(addr, port, proto)
        while self.st.vip_index[s] != 0:
            s = (s + 1) & (VIP_INDEX_SIZE - 1)
        self.st.vip_index[s] = v
        return v

    def set_service(self, int svc_id, proto, vaddr, int vport, persist_timeout=0,
                    netmask=None, sched=0, sched_flags=0, ops=False):
        """Add or edit service `svc_id` (1..65535) = proto (6|17|"tcp"|"udp") vaddr:vport.

        persist_timeout > 0 makes it persistent (-p) with client netmask `netmask` (-M:
        dotted mask or prefix length; default /32). sched: 0 = Python callback, 1 sh, 2 dh,
        3 mh (the table comes with set_hash_table); sched_flags bit0 fallback, bit1 port.
        Editing may move the service to another address: conns of the old one live on.
        ops (-o, UDP only as ipvsadm allows): every datagram is scheduled on its own and
        leaves no conn entry (a persistence template is still made and followed).
        """
        cdef uint32_t a[4]
        cdef fl_svc *s
        cdef uint16_t v
        if svc_id < 1 or svc_id >= MAX_SERVICES:
            raise ValueError(f"svc_id must be 1..{MAX_SERVICES - 1}, got {svc_id}")
        if vport < 0 or vport > 65535:
            raise ValueError(f"vport out of range: {vport}")
        if persist_timeout < 0 or persist_timeout > 0xFFFFFFFF:
            raise ValueError(f"persist_timeout out of range: {persist_timeout}")
        p = _proto_num(proto)
        if isinstance(sched, str):
            sched = SCHED_KINDS[sched]
        if sched not in (0, 1, 2, 3):
            raise ValueError(f"sched must be 0..3, got {sched}")
        if netmask is None:
            mask = 0xFFFFFFFF
        elif isinstance(netmask, int):
            if not 0 <= netmask <= 32:
                raise ValueError(f"prefix length must be 0..32, got {netmask}")
            mask = (0xFFFFFFFF << (32 - netmask)) & 0xFFFFFFFF
        else:
            mask = int(_ipaddress.IPv4Address(netmask))
        _addr_words(vaddr, a)
        v = self._vip_intern(p, a, vport)
        if self.st.vips[v].svc != 0 and self.st.vips[v].svc != svc_id:
            raise ValueError(f"{vaddr}:{vport}/{p} already belongs to service "
                             f"{self.st.vips[v].svc}")
        s = &self.st.svcs[svc_id]
        if s.in_use and s.vip != v:
            self.st.vips[s.vip].svc = 0
        if not s.in_use:
            memset(s, 0, sizeof(fl_svc))
        s.in_use = 1
        s.proto = p
        memcpy(s.vaddr, a, 16)
        s.vport = vport
        s.vip = v
        s.persist_timeout = persist_timeout
        s.netmask = mask
        s.sched = sched
        s.sched_flags = sched_flags
        s.flags = SVC_F_ONEPACKET if ops and p == 17 else 0
        self.st.vips[v].svc = svc_id

    def del_service(self, int svc_id):
        """Remove a service and (like IPVS) all its dests; their conns continue until they
        expire. Removing an absent service is a no-op."""
        cdef fl_svc *s
        cdef uint32_t d
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            return
        s = &self.st.svcs[svc_id]
        for d in range(1, self.st.ndests):
            if (self.st.dests[d].flags & DF_AVAILABLE) and self.st.dests[d].svc == svc_id:
                self.del_dest(d)
        self.st.vips[s.vip].svc = 0
        free(s.table)
        s.table = NULL
        s.table_len = 0
        s.in_use = 0

    def set_hash_table(self, int svc_id, table, kind, int flags=0):
        """Hand the service a sh/dh/mh bucket table of dest ids (0 = empty bucket) so new
        flows are scheduled in C. kind: "sh"|"dh"|"mh" or 1|2|3; flags bit0 fallback,
        bit1 port. table=None returns the service to the Python callback."""
        cdef fl_svc *s
        cdef uint32_t *t
        cdef uint32_t i, n
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        s = &self.st.svcs[svc_id]
        if table is None:
            free(s.table)
            s.table = NULL
            s.table_len = 0
            s.sched = SCHED_CALLBACK
            return
        if isinstance(kind, str):
            kind = SCHED_KINDS[kind]
        if kind not in (1, 2, 3):
            raise ValueError(f"kind must be sh, dh or mh, got {kind!r}")
        vals = [int(x) for x in table]
        n = len(vals)
        if n == 0:
            raise ValueError("empty hash table")
        t = <uint32_t *>malloc(n * sizeof(uint32_t))
        if t == NULL:
            raise MemoryError()
        for i in range(n):
            t[i] = vals[i]
        free(s.table)
        s.table = t
        s.table_len = n
        s.sched = kind
        s.sched_flags = flags

    # -- dests ----------------------------------------------------------------------------------
    cdef int _dest_grow(self, uint32_t dest_id) except -1:
        cdef uint32_t n = self.st.ndests
        cdef fl_dest *nd
        if dest_id < n:
            return 0
        while n <= dest_id:
            n *= 2
        nd = <fl_dest *>realloc(self.st.dests, n * sizeof(fl_dest))
        if nd == NULL:
            raise MemoryError()
        memset(nd + self.st.ndests, 0, (n - self.st.ndests) * sizeof(fl_dest))
        self.st.dests = nd
        self.st.ndests = n
        return 0

    def set_dest(self, int dest_id, int svc_id, raddr, int rport, fwd="dr", mac=None,
                 int ifindex=0, weight=1, u_threshold=0, l_threshold=0, src_mac=None):
        """Add or edit dest `dest_id` (1..2**24) of service `svc_id`.

        Editing a live dest changes fwd/mac/ifindex/weight/thresholds in place (existing
        conns keep the forwarding method they were made with); setting u_threshold to 0
        or raising it clears the overload flag (__ip_vs_update_dest). A deleted dest still
        referenced by conns comes back when re-added with the same service and address
        (IPVS's trash); re-using its id for anything else raises ValueError until its
        conns have expired.
        """
        cdef fl_dest *d
        cdef uint32_t a[4]
        if dest_id < 1 or dest_id > (1 << 24):
            raise ValueError(f"dest_id must be 1..{1 << 24}, got {dest_id}")
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise ValueError(f"no service {svc_id}")
        if rport < 0 or rport > 65535:
            raise ValueError(f"rport out of range: {rport}")
        if isinstance(fwd, str):
            if fwd.lower() not in FWD_NAMES:
                raise ValueError(f"fwd must be dr, nat or tun, got {fwd!r}")
            fwd = FWD_NAMES[fwd.lower()]
        if fwd not in (FWD_DR, FWD_NAT, FWD_TUN):
            raise ValueError(f"fwd must be 1 (dr), 2 (nat) or 3 (tun), got {fwd!r}")
        if weight < 0 or weight > 0x7FFFFFFF:
            raise ValueError(f"weight out of range: {weight}")
        if not (0 <= u_threshold <= 0xFFFFFFFF and 0 <= l_threshold <= 0xFFFFFFFF):
            raise ValueError("thresholds must be 0..2**32-1")
        _mac_bytes(mac)
        _addr_words(raddr, a)
        self._dest_grow(dest_id)
        d = &self.st.dests[dest_id]
        same = (d.svc == svc_id and d.rport == rport and addr_eq(d.raddr, a))
        if d.flags & DF_IN_USE:
            if not same and (d.flags & DF_AVAILABLE or d.refcnt != 0):
                raise ValueError(
                    f"dest id {dest_id} is in use by {_ip_text(d.raddr[3])}:{d.rport} of "
                    f"service {d.svc} ({d.refcnt} conns); delete it and wait for them")
            if not same:
                memset(d, 0, sizeof(fl_dest))
        else:
            memset(d, 0, sizeof(fl_dest))
        d.flags |= DF_IN_USE | DF_AVAILABLE
        memcpy(d.raddr, a, 16)
        d.rport = rport
        d.svc = svc_id
        d.fwd = fwd
        _set_mac(d.mac, mac)
        # Frames to this dest leave by `ifindex`: their source is our MAC there (default:
        # the engine's local MAC, right when the director has one interface).
        if src_mac is None:
            memcpy(d.smac, self.st.local_mac, 6)
        else:
            _set_mac(d.smac, src_mac)
        d.ifindex = ifindex
        d.weight = weight
        if u_threshold == 0 or u_threshold > d.u_threshold:
            d.flags &= ~DF_OVERLOAD
        d.u_threshold = u_threshold
        d.l_threshold = l_threshold

    def del_dest(self, int dest_id):
        """Unlink a dest: never chosen again; as in IPVS its conns' packets are dropped
        (counted dest_unavailable) and the entries left to time out, or, with
        expire_nodest_conn, ended at once. NAT replies of its remaining conns are still
        translated. Its id stays reserved while entries reference it (re-adding the same
        service + address brings them back). Removing an absent dest is a no-op."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            return
        d = &self.st.dests[dest_id]
        if not (d.flags & DF_IN_USE):
            return
        d.flags &= ~DF_AVAILABLE
        if self.st.expire_nodest_conn and d.refcnt != 0:
            conn_flush_nodest(&self.st, dest_id)
        if d.refcnt == 0:
            memset(d, 0, sizeof(fl_dest))

    # -- scheduler callback ---------------------------------------------------------------------
    def set_scheduler_callback(self, fn):
        """fn(svc_ids, flows) -> dest ids, called once per batch (GIL held) with the new flows
        of Python-scheduled services: svc_ids[i] is an int, flows[i] the tuple (af, saddr_int,
        sport, daddr_int, dport, protocol) that Flow.from_ints(*flows[i]) takes. Return one
        dest id per flow, 0 = none (the packet is dropped, counted no_dest). If fn raises,
        the batch's parked frames are dropped (callback_error) and the error is re-raised
        once the batch is finished."""
        self.callback = fn

    cdef int _schedule_parked(self, fl_frame *frames) except -1:
        cdef int k, n = self.st.nparked
        cdef fl_parked *pk
        cdef fl_pkt *p
        idx = []
        svc_ids = []
        flows = []
        for k in range(n):
            pk = &self.st.parked[k]
            if pk.leader >= 0:
                continue
            p = &self.st.pkts[pk.frame]
            idx.append(k)
            svc_ids.append(pk.svc)
            flows.append((4, p.saddr[3], p.sport, p.daddr[3], p.dport,
                          "tcp" if p.proto == 6 else "udp"))
        try:
            if self.callback is None:
                raise RuntimeError("new flow for a service scheduled in Python, "
                                   "but no scheduler callback is set")
            res = self.callback(svc_ids, flows)
            if len(res) != len(idx):
                raise ValueError(f"scheduler callback returned {len(res)} dest ids "
                                 f"for {len(idx)} flows")
            for j in range(len(idx)):
                r = res[j]
                self.st.parked[idx[j]].dest = 0 if r is None else <uint32_t>r
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            for k in range(n):
                if frames[self.st.parked[k].frame].verdict == VERDICT_PENDING:
                    frame_drop(&self.st, &frames[self.st.parked[k].frame], C_CALLBACK_ERROR)
        return 0

    cdef int run_frames(self, fl_frame *frames, int n) except -1:
        """The entry for ring code: process frames[0:n] (n <= MAX_BATCH) in place, with the
        GIL released except for the one scheduler callback. Afterwards every frame has its
        verdict (TX: send data + out_adj, out_len bytes on out_ifindex; 0 = the interface
        it came from, e.g. ICMP replies). A callback error is kept for raise_pending()."""
        cdef int parked
        if n > MAX_BATCH:
            n = MAX_BATCH
        with nogil:
            parked = engine_rx_batch(&self.st, frames, n)
        if parked:
            self._schedule_parked(frames)
            with nogil:
                engine_bind_parked(&self.st, frames)
        return 0

    cdef int _run(self, int n) except -1:
        return self.run_frames(self.frames, n)

    def _raise_pending(self):
        err = self.error
        if err is not None:
            self.error = None
            raise err

    # -- frames from Python ----------------------------------------------------------------------
    def process(self, frames, timestamps=None):
        """Run `frames` (bytes-likes) through the engine in batches of `batch`.

        timestamps: one int (ns) for all, a sequence of ns per frame, or None (monotonic
        clock). Returns [(index, out_ifindex, bytes)] for the frames to transmit, in input
        order. Frames not transmitted were dropped or passed (see stats())."""
        cdef int n, j, total = len(frames)
        cdef int start = 0
        cdef fl_frame *f
        cdef const uint8_t[::1] view
        cdef uint64_t ts
        out = []
        if timestamps is None:
            timestamps = _time.monotonic_ns()
        single = isinstance(timestamps, int)
        while start < total:
            n = min(self.batch, total - start)
            for j in range(n):
                fr = frames[start + j]
                view = fr
                f = &self.frames[j]
                f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
                f.headroom = SLOT_HEADROOM
                f.ts_ns = timestamps if single else timestamps[start + j]
                if view.shape[0] > SLOT_SIZE - SLOT_HEADROOM:
                    f.len = 0           # too big for a slot: parsed as malformed
                else:
                    f.len = view.shape[0]
                    if f.len:
                        memcpy(f.data, &view[0], f.len)
            self._run(n)
            for j in range(n):
                f = &self.frames[j]
                if f.verdict == VERDICT_TX:
                    out.append((start + j, f.out_ifindex,
                                (f.data + f.out_adj)[:f.out_len]))
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return out

    def process_verdicts(self, frames, timestamps=None):
        """Like process() but returns one (verdict, reason, out_ifindex, bytes|None) per frame:
        verdict "tx" | "drop" | "pass", reason the counter name that decided a drop/pass."""
        res = [None] * len(frames)
        cdef int start = 0, n, j, total = len(frames)
        cdef fl_frame *f
        if timestamps is None:
            timestamps = _time.monotonic_ns()
        single = isinstance(timestamps, int)
        names = {VERDICT_DROP: "drop", VERDICT_TX: "tx", VERDICT_PASS: "pass",
                 VERDICT_PENDING: "drop"}
        while start < total:
            n = min(self.batch, total - start)
            chunk = frames[start:start + n]
            ts = timestamps if single else timestamps[start:start + n]
            self._load(chunk, ts)
            self._run(n)
            for j in range(n):
                f = &self.frames[j]
                data = (f.data + f.out_adj)[:f.out_len] if f.verdict == VERDICT_TX else None
                res[start + j] = (names[f.verdict],
                                  COUNTER_NAMES[f.reason] if f.verdict != VERDICT_TX else "",
                                  f.out_ifindex, data)
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return res

    cdef int _load(self, chunk, ts) except -1:
        cdef int j
        cdef fl_frame *f
        cdef const uint8_t[::1] view
        single = isinstance(ts, int)
        for j in range(len(chunk)):
            view = chunk[j]
            f = &self.frames[j]
            f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.ts_ns = ts if single else ts[j]
            f.len = view.shape[0] if view.shape[0] <= SLOT_SIZE - SLOT_HEADROOM else 0
            if f.len:
                memcpy(f.data, &view[0], f.len)
        return 0

    # -- benchmark helpers ------------------------------------------------------------------------
    def load_batch(self, frames):
        """Keep copies of `frames` (any count) in engine memory for process_loaded() and
        baseline_loaded(), which run them in batches of `batch`."""
        cdef size_t total = 0, off = 0
        cdef int j, n = len(frames)
        cdef const uint8_t[::1] view
        for fr in frames:
            if len(fr) > SLOT_SIZE - SLOT_HEADROOM:
                raise ValueError("frame too large")
            total += len(fr)
        free(self.saved)
        free(self.saved_len)
        free(self.saved_off)
        self.saved = <uint8_t *>malloc(total + 1)
        self.saved_len = <uint32_t *>calloc(n + 1, sizeof(uint32_t))
        self.saved_off = <size_t *>calloc(n + 1, sizeof(size_t))
        if self.saved == NULL or self.saved_len == NULL or self.saved_off == NULL:
            raise MemoryError()
        for j in range(n):
            view = frames[j]
            self.saved_len[j] = view.shape[0]
            self.saved_off[j] = off
            if view.shape[0]:
                memcpy(self.saved + off, &view[0], view.shape[0])
            off += view.shape[0]
        self.nloaded = n

    cdef void _restore(self, int start, int n, uint64_t now_ns) noexcept nogil:
        cdef int j
        cdef fl_frame *f
        for j in range(n):
            f = &self.frames[j]
            f.data = self.slots + <size_t>j * SLOT_SIZE + SLOT_HEADROOM
            f.headroom = SLOT_HEADROOM
            f.len = self.saved_len[start + j]
            f.ts_ns = now_ns
            memcpy(f.data, self.saved + self.saved_off[start + j], f.len)

    def process_loaded(self, uint64_t now_ns, bint new_flows=False):
        """Restore the loaded frames (memcpy) batch by batch and run them; returns how many
        were sent. new_flows=True gives every frame a fresh IPv4 source address first (valid
        header checksum; the next one is new_flow_src + 1), so each run opens new conns."""
        cdef int j, n, start = 0, tx = 0
        cdef uint8_t *ip
        cdef uint32_t l2
        while start < self.nloaded:
            n = min(self.batch, self.nloaded - start)
            self._restore(start, n, now_ns)
            if new_flows:
                for j in range(n):
                    l2 = 18 if rd16(self.frames[j].data + 12) == 0x8100 else 14
                    ip = self.frames[j].data + l2
                    self.new_flow_src += 1
                    wr32(ip + 12, self.new_flow_src)
                    wr16(ip + 10, 0)
                    wr16(ip + 10, csum_of(ip, (ip[0] & 0x0F) * 4))
            self._run(n)
            for j in range(n):
                if self.frames[j].verdict == VERDICT_TX:
                    tx += 1
            start += n
            if self.error is not None:
                break
        self._raise_pending()
        return tx

    def baseline_loaded(self):
        """The same restores plus a minimal header touch per frame: the benchmarks' yardstick."""
        cdef int start = 0, n
        with nogil:
            while start < self.nloaded:
                n = self.batch if self.nloaded - start > self.batch else self.nloaded - start
                self._restore(start, n, 0)
                baseline_touch(&self.st, self.frames, n)
                start += n
        return self.nloaded

    # -- timers ---------------------------------------------------------------------------------
    def run_timers(self, now_ns=None, budget=None):
        """Expire entries whose timeout passed by `now_ns` (default: the latest frame time),
        inspecting `budget` entries from the sweep cursor (default: the whole table).
        Returns the number freed."""
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        cdef uint32_t b = self.st.capacity if budget is None else budget
        cdef uint32_t freed
        if now > self.st.now:
            self.st.now = now
        with nogil:
            freed = conn_sweep(&self.st, now, b)
        return freed

    # -- counters and listings --------------------------------------------------------------------
    def stats(self):
        """Global counters by name (drops by reason, passes, tx, conns created/expired)."""
        return {COUNTER_NAMES[i]: self.st.counters[i] for i in range(C_LAST)}

    def service_stats(self, int svc_id):
        """conns, inpkts, outpkts, inbytes, outbytes of a service (bytes = IP lengths)."""
        cdef fl_svc *s
        if svc_id < 1 or svc_id >= MAX_SERVICES or not self.st.svcs[svc_id].in_use:
            raise KeyError(svc_id)
        s = &self.st.svcs[svc_id]
        return {"conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
                "inbytes": s.inbytes, "outbytes": s.outbytes}

    def dest_stats(self, int dest_id):
        """Counters of a dest (also of a deleted one its conns still reference)."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            raise KeyError(dest_id)
        d = &self.st.dests[dest_id]
        if not (d.flags & DF_IN_USE):
            raise KeyError(dest_id)
        return {"conns": d.conns, "inpkts": d.inpkts, "outpkts": d.outpkts,
                "inbytes": d.inbytes, "outbytes": d.outbytes,
                "activeconns": d.activeconns, "inactconns": d.inactconns,
                "persistconns": d.persistconns, "overloaded": bool(d.flags & DF_OVERLOAD),
                "weight": d.weight, "available": bool(d.flags & DF_AVAILABLE),
                "refcnt": d.refcnt}

    def dest_counters(self, int dest_id):
        """(activeconns, inactconns, persistconns, overloaded): what lc/wlc/... read."""
        cdef fl_dest *d
        if dest_id < 1 or <uint32_t>dest_id >= self.st.ndests:
            raise KeyError(dest_id)
        d = &self.st.dests[dest_id]
        return (d.activeconns, d.inactconns, d.persistconns, bool(d.flags & DF_OVERLOAD))

    def conns(self, now_ns=None):
        """Entries for ipvsadm -Lnc: dicts with proto, state, expires (s), caddr, cport,
        vaddr, vport, raddr, rport, template. Entries already expired are left out."""
        cdef uint64_t now = self.st.now if now_ns is None else now_ns
        cdef uint32_t i
        cdef fl_conn *c
        cdef fl_vip *v
        cdef fl_dest *d
        out = []
        for i in range(self.st.used_end):
            c = &self.st.conns[i]
            if c.vip == 0 or c.expires <= now and not (c.flags & CF_TEMPLATE and c.ctl):
                continue
            v = &self.st.vips[c.vip]
            d = &self.st.dests[c.dest]
            tmpl = bool(c.flags & CF_TEMPLATE)
            if tmpl:
                state = "NONE"
            elif c.proto == 17:
                state = "UDP"
            else:
                state = TCP_STATE_NAMES[c.state]
            exp = (c.expires - now) // NS_PER_S if c.expires > now else 0
            out.append({"proto": _PROTO_TEXT[c.proto], "state": state, "expires": exp,
                        "caddr": _ip_text(c.caddr[3]), "cport": c.cport,
                        "vaddr": _ip_text(v.addr[3]), "vport": v.port,
                        "raddr": _ip_text(d.raddr[3]), "rport": d.rport,
                        "template": tmpl, "fwd": _FWD_TEXT.get(c.fwd, "")})
        return out


include "dataplane/ring.pxi"
include "dataplane/ring_xdp.pxi"
include "dataplane/ring_packet.pxi"
include "dataplane/ring_loop.pxi"
