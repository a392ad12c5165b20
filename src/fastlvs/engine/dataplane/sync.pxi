# IPVS connection sync in the engine, protocol version 1 as Linux 6.1 speaks it (ip_vs_sync.c).
# Master: per packet of a conn (conn_forward_in), sync_conn_needed decides with the kernel's
# policy (sync_threshold/sync_period, sync_refresh_period/sync_retries, sync_persist_mode,
# TCP state changes) whether the conn, then its persistence template, is appended to the
# message being filled; full messages wait in a queue bounded by sync_qlen_max until
# Engine.sync_take hands them out. Backup: sync_read checks a datagram as the kernel does
# (the drop reasons of fastlvs.sync.protocol) and sync_install installs or refreshes each
# entry as ip_vs_proc_conn does. No Python object and no GIL in any of it.

cdef enum:
    SYNC_HDR = 8
    SYNC_ENT4 = 36
    SYNC_ENT6 = 72
    SYNC_FLUSH_NS = 2000000000   # IPVS_SYNC_FLUSH_TIME: a partial message leaves after 2 s
    SYNC_MAX_ENTRIES = 255       # the header's count is one byte
    # IP_VS_CONN_F_* as they travel
    KF_MASQ = 0x0000
    KF_TUNNEL = 0x0002
    KF_DROUTE = 0x0003
    KF_SYNC = 0x0020
    KF_NOOUTPUT = 0x0080
    KF_INACTIVE = 0x0100
    KF_TEMPLATE = 0x1000
    KF_BACKUP_MASK = 0x1F87
    # IPVS_OPT_*
    SOPT_SEQ = 1
    SOPT_PE_DATA = 2
    SOPT_PE_NAME = 3
    SOPT_F_PARAM = 0x40
    TPL_ASSURED = 1              # IP_VS_CTPL_S_ASSURED


# Names of e.sync.counters, in the SC_/SD_/SK_ order of types.pxi (sync_stats' keys).
SYNC_COUNTER_NAMES = (
    "sent", "sent_conns", "sent_bytes", "queue_overflow", "queue_overflow_conns",
    "received", "received_bytes", "received_conns", "installed", "updated",
    "refused_no_service", "refused_no_dest", "refused_table_full", "refused_pe",
    "refused_protocol", "ignored_replaced", "dropped",
    "drop_short", "drop_size_mismatch", "drop_foreign_syncid", "drop_not_v1",
    "drop_truncated", "drop_entry_overrun", "drop_entry_version", "drop_entry_type",
    "drop_entry_size", "drop_option_truncated", "drop_option_length", "drop_option_seq",
    "drop_option_pe_data", "drop_option_pe_name",
    "skip_unknown_option", "skip_unknown_protocol", "skip_bad_state", "skip_bad_pe")


cdef struct fl_syncent:
    # One entry as read from a datagram; addresses host-order words, IPv4 in [3].
    uint32_t caddr[4]
    uint32_t vaddr[4]
    uint32_t daddr[4]
    uint32_t flags
    uint32_t fwmark
    uint32_t timeout
    uint32_t seq[6]
    uint32_t pe_off         # offsets into the datagram
    uint32_t name_off
    uint16_t state
    uint16_t cport
    uint16_t vport
    uint16_t dport
    uint16_t pe_len
    uint16_t name_len
    uint8_t proto
    uint8_t v6
    uint8_t has_seq
    uint8_t has_pe
    uint8_t has_name
    uint8_t nparam          # unknown options a receiver may skip (IPVS_OPT_F_PARAM)


cdef inline uint16_t sy_rd16(const uint8_t *b) noexcept nogil:
    return (<uint16_t>b[0] << 8) | b[1]


cdef inline uint32_t sy_rd32(const uint8_t *b) noexcept nogil:
    return ((<uint32_t>b[0] << 24) | (<uint32_t>b[1] << 16) | (<uint32_t>b[2] << 8)
            | <uint32_t>b[3])


cdef inline void sy_wr16(uint8_t *b, uint32_t v) noexcept nogil:
    b[0] = <uint8_t>(v >> 8)
    b[1] = <uint8_t>v


cdef inline void sy_wr32(uint8_t *b, uint32_t v) noexcept nogil:
    b[0] = <uint8_t>(v >> 24)
    b[1] = <uint8_t>(v >> 16)
    b[2] = <uint8_t>(v >> 8)
    b[3] = <uint8_t>v


# -- master: the sending policy ------------------------------------------------------------------

cdef inline void sync_meta_reset(fl_engine *e, uint32_t idx, uint64_t now) noexcept nogil:
    # ip_vs_conn_new: old_state 0, in_pkts 0, sync_endtime = now with the retry bits clear
    cdef fl_syncmeta *m = &e.sync.meta[idx]
    m.in_pkts = 0
    m.old_state = 0
    m.endtime = (now // 1000000) & ~(<uint64_t>3)


cdef bint sync_needed(fl_engine *e, fl_conn *c, fl_syncmeta *m, uint32_t pkts,
                      uint64_t now) noexcept nogil:
    # ip_vs_sync_conn_needed, in ms of frame time where the kernel counts jiffies.
    cdef fl_sync *sy = &e.sync
    cdef uint64_t orig = m.endtime
    cdef uint64_t nowt = now // 1000000
    cdef uint64_t tmo = <uint64_t>c.timeout * 1000
    cdef uint64_t n = (nowt + tmo) & ~(<uint64_t>3)
    cdef int64_t diff
    cdef uint64_t min_diff, lim, retries
    cdef bint force = False
    if c.flags & CF_TEMPLATE:
        force = False
    elif sy.persist_mode and c.ctl != 0:
        # sync_persist_mode: a conn under a template is not sent, the template is
        return False
    elif c.proto == 6:
        # only these states are worth a backup's knowing; a change into one (other than
        # into ESTABLISHED, which waits for its threshold packet) is sent at once
        if not ((1 << c.state) & ((1 << TCP_S_ESTABLISHED) | (1 << TCP_S_FIN_WAIT)
                                  | (1 << TCP_S_CLOSE) | (1 << TCP_S_CLOSE_WAIT)
                                  | (1 << TCP_S_TIME_WAIT))):
            return False
        force = c.state != m.old_state
        if force and c.state != TCP_S_ESTABLISHED:
            m.old_state = c.state
            m.endtime = n
            return True
    elif c.proto == IPPROTO_SCTP:
        # the same rule over SCTP's states: established, the shutdowns and closed
        if not ((1 << c.state) & ((1 << SCTP_S_ESTABLISHED) | (1 << SCTP_S_SHUTDOWN_SENT)
                                  | (1 << SCTP_S_SHUTDOWN_RECEIVED)
                                  | (1 << SCTP_S_SHUTDOWN_ACK_SENT) | (1 << SCTP_S_CLOSED))):
            return False
        force = c.state != m.old_state
        if force and c.state != SCTP_S_ESTABLISHED:
            m.old_state = c.state
            m.endtime = n
            return True
    if sy.refresh_ms > 0:
        diff = <int64_t>(n - orig)
        if diff < 0:
            diff = -diff
        min_diff = tmo >> 1
        if min_diff < 10000:
            min_diff = 10000
        lim = sy.refresh_ms if sy.refresh_ms < min_diff else min_diff
        if <uint64_t>diff < lim:
            # not yet due: only the retries, each an eighth of the period after the last
            retries = orig & 3
            if retries >= sy.retries:
                return False
            if <int64_t>(nowt - (orig - tmo + (sy.refresh_ms >> 3))) < 0:
                return False
            n |= retries + 1
    if sy.period > 0:
        if not (c.flags & CF_TEMPLATE) and pkts % sy.period != sy.threshold:
            return False
    elif sy.refresh_ms == 0 and pkts != sy.threshold:
        return False
    m.old_state = c.state
    m.endtime = n
    return True


cdef inline fl_syncbuf *sync_buf_get(fl_engine *e) noexcept nogil:
    # a message from the pool, else a new one (the pool only grows while the queue does:
    # a steady master allocates nothing)
    cdef fl_syncbuf *b = e.sync.pool
    if b != NULL:
        e.sync.pool = b.next
    else:
        b = <fl_syncbuf *>malloc(sizeof(fl_syncbuf) + e.sync.bufcap)
        if b == NULL:
            return NULL
        b.data = <uint8_t *>(b + 1)
    b.cap = e.sync.maxlen
    b.next = NULL
    b.len = SYNC_HDR
    b.nconns = 0
    return b


cdef inline void sync_buf_put(fl_engine *e, fl_syncbuf *b) noexcept nogil:
    b.next = e.sync.pool
    e.sync.pool = b


cdef void sync_enqueue(fl_engine *e, fl_syncbuf *b) noexcept nogil:
    # sb_queue_tail: the header is written and the message queued, or dropped (counted)
    # when the master stopped or sync_qlen_max messages already wait
    cdef fl_sync *sy = &e.sync
    b.data[0] = 0
    b.data[1] = sy.master_syncid
    sy_wr16(b.data + 2, b.len)
    b.data[4] = <uint8_t>b.nconns
    b.data[5] = 1
    b.data[6] = 0
    b.data[7] = 0
    if sy.master and sy.qlen < sy.qlen_max:
        b.next = NULL
        if sy.qtail != NULL:
            sy.qtail.next = b
        else:
            sy.qhead = b
        sy.qtail = b
        sy.qlen += 1
    else:
        sy.counters[SC_QUEUE_OVERFLOW] += 1
        sy.counters[SC_QUEUE_OVERFLOW_CONNS] += b.nconns
        sync_buf_put(e, b)


cdef inline bint sy_v6(const uint32_t *a) noexcept nogil:
    # v4 addresses are ::a.b.c.d in the engine's words (::/96 is refused as a v6 address)
    return a[0] != 0 or a[1] != 0 or a[2] != 0


cdef inline void sy_wraddr(uint8_t *p, const uint32_t *a, bint v6) noexcept nogil:
    if v6:
        sy_wr32(p, a[0])
        sy_wr32(p + 4, a[1])
        sy_wr32(p + 8, a[2])
        sy_wr32(p + 12, a[3])
    else:
        sy_wr32(p, a[3])


cdef void sync_append(fl_engine *e, fl_conn *c, uint64_t now) noexcept nogil:
    # ip_vs_sync_conn's packing: pad the message to 4 bytes, close it when this entry
    # would pass maxlen, then write a v4 or v6 entry (flags as the kernel's conn has them)
    cdef fl_sync *sy = &e.sync
    cdef fl_syncbuf *b = sy.cur
    cdef uint32_t pad = 0, fl, size, mark = 0
    cdef uint8_t *p
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *sv = &e.svcs[d.svc]
    cdef const uint32_t *va = e.vips[c.vip].addr
    cdef uint32_t markaddr[4]
    cdef bint tmpl = (c.flags & CF_TEMPLATE) != 0
    cdef bint v6
    if sv.flags & SVC_F_FWMARK:
        # cp->fwmark is the mark of the frame that made the conn: its service's mark here
        # (a mark service's address holds it in word 3 for v4, in word 0 for v6)
        mark = sv.vaddr[0] | sv.vaddr[3]
    if tmpl:
        # a template is of its dest's family (a mark's template VIP holds the mark); a
        # mark's template has the mark as virtual address, in the address's first 4 bytes
        v6 = sy_v6(d.raddr)
        if mark != 0:
            markaddr[0] = mark if v6 else 0
            markaddr[1] = 0
            markaddr[2] = 0
            markaddr[3] = 0 if v6 else mark
            va = markaddr
    else:
        v6 = sy_v6(va)
    size = SYNC_ENT6 if v6 else SYNC_ENT4
    if b != NULL:
        pad = (0 - b.len) & 3
        if b.len + pad + size > b.cap or b.nconns >= SYNC_MAX_ENTRIES:
            sync_enqueue(e, b)
            sy.cur = NULL
            b = NULL
            pad = 0
    if b == NULL:
        b = sync_buf_get(e)
        if b == NULL:
            sy.counters[SC_QUEUE_OVERFLOW_CONNS] += 1
            return
        b.first_ns = now
        if b.cap < SYNC_HDR + size:
            # an entry larger than maxlen has a message of its own (bufcap holds a v6 one)
            b.cap = SYNC_HDR + size
        sy.cur = b
    p = b.data + b.len
    if pad:
        memset(p, 0, pad)
        p += pad
    if c.fwd == FWD_NAT:
        fl = KF_MASQ
    elif c.fwd == FWD_TUN:
        fl = KF_TUNNEL
    else:
        fl = KF_DROUTE
    if c.flags & CF_TEMPLATE:
        # a template has its dest's conn_flags: inactive, and no output but for NAT
        fl |= KF_TEMPLATE | KF_INACTIVE
        if c.fwd != FWD_NAT:
            fl |= KF_NOOUTPUT
    else:
        if c.flags & CF_INACTIVE:
            fl |= KF_INACTIVE
        if c.flags & CF_NOOUTPUT:
            fl |= KF_NOOUTPUT
    p[0] = 1 if v6 else 0
    p[1] = 0 if tmpl and mark != 0 else c.proto     # a mark's template: IPPROTO_IP
    sy_wr16(p + 2, size)
    sy_wr32(p + 4, fl)
    sy_wr16(p + 8, c.state)
    sy_wr16(p + 10, c.cport)
    sy_wr16(p + 12, c.vport)
    if c.flags & CF_TEMPLATE:
        # a template of a port-0 service is <caddr, 0, vaddr, 0, raddr, 0>
        sy_wr16(p + 14, d.rport if c.vport != 0 else 0)
    else:
        sy_wr16(p + 14, conn_rport(e, c))
    sy_wr32(p + 16, mark)
    sy_wr32(p + 20, c.timeout)
    if v6:
        sy_wraddr(p + 24, c.caddr, True)
        sy_wraddr(p + 40, va, True)
        sy_wraddr(p + 56, d.raddr, True)
    else:
        sy_wr32(p + 24, c.caddr[3])
        sy_wr32(p + 28, va[3])
        sy_wr32(p + 32, d.raddr[3])
    b.len += pad + size
    b.nconns += 1


cdef void sync_in_packet(fl_engine *e, fl_conn *c, uint64_t now) noexcept nogil:
    # After a client packet of conn c was handled (ip_vs_in): count it, and on a master
    # send the conn and then its template if the policy says so (ip_vs_sync_conn).
    cdef fl_sync *sy = &e.sync
    cdef uint32_t idx = <uint32_t>(c - e.conns)
    cdef uint32_t pkts
    cdef bint onepkt = (c.proto == 17 and c.dest != 0
                        and (e.svcs[e.dests[c.dest].svc].flags & SVC_F_ONEPACKET) != 0)
    cdef fl_syncmeta *m = &sy.meta[idx]
    if c.ctl != 0 and c.proto == 6 and c.state == TCP_S_ESTABLISHED:
        # ip_vs_control_assure_ct: the template of a conn that reached ESTABLISHED
        e.conns[c.ctl - 1].state |= TPL_ASSURED
    if onepkt:
        pkts = sy.threshold
    else:
        m.in_pkts += 1
        pkts = m.in_pkts
    if not sy.master:
        if onepkt and c.ctl != 0:
            sy.meta[c.ctl - 1].in_pkts += 1
        return
    while True:
        if not onepkt and c.dest != 0 and sync_needed(e, c, m, pkts, now):
            sync_append(e, c, now)
        if (c.flags & CF_TEMPLATE) or c.ctl == 0:
            return
        # then its controller, the template, counted once more
        idx = c.ctl - 1
        c = &e.conns[idx]
        m = &sy.meta[idx]
        m.in_pkts += 1
        pkts = m.in_pkts
        onepkt = False


cdef inline void sync_out_packet(fl_engine *e, fl_conn *c) noexcept nogil:
    # udp_state_transition: a reply assures the template of a UDP conn
    if c.ctl != 0 and c.proto == 17:
        e.conns[c.ctl - 1].state |= TPL_ASSURED


cdef void sync_flush_due(fl_engine *e, uint64_t now, bint force) noexcept nogil:
    # get_curr_sync_buff: the partial message leaves once it is 2 s old (or now)
    cdef fl_syncbuf *b = e.sync.cur
    if b != NULL and (force or now >= b.first_ns + SYNC_FLUSH_NS):
        e.sync.cur = NULL
        sync_enqueue(e, b)


cdef void sync_drop_queue(fl_engine *e) noexcept nogil:
    # the master stops: what was not sent goes back to the pool, unsent (as the kernel)
    cdef fl_syncbuf *b
    if e.sync.cur != NULL:
        sync_buf_put(e, e.sync.cur)
        e.sync.cur = NULL
    while e.sync.qhead != NULL:
        b = e.sync.qhead
        e.sync.qhead = b.next
        sync_buf_put(e, b)
    e.sync.qtail = NULL
    e.sync.qlen = 0


cdef uint32_t sync_queue_range(fl_engine *e, const uint32_t *vaddr, bint anyvip,
                               uint32_t first, uint32_t end, uint64_t now) noexcept nogil:
    # fastlvs's handover (beyond the kernel, which only syncs by the per-packet policy): every
    # live conn and template of slots first..end-1 (of VIP address vaddr unless anyvip) is
    # appended to the master's messages whatever its state or packet count, so that a
    # backup taking over also knows the handshakes in flight (SYN_RECV). Returns how many.
    cdef uint32_t i, n = 0
    cdef fl_conn *c
    for i in range(first, end):
        c = &e.conns[i]
        if c.vip == 0 or c.dest == 0 or (c.flags & CF_INVALID):
            continue
        if c.expires <= now and not (c.flags & CF_TEMPLATE and c.ctl):
            continue
        if not anyvip and not addr_eq(e.vips[c.vip].addr, vaddr):
            continue
        sync_append(e, c, now)
        n += 1
    return n


cdef void sync_free_pool(fl_engine *e) noexcept nogil:
    cdef fl_syncbuf *b
    while e.sync.pool != NULL:
        b = e.sync.pool
        e.sync.pool = b.next
        free(b)


cdef void sync_free_all(fl_engine *e) noexcept nogil:
    sync_drop_queue(e)
    sync_free_pool(e)
    free(e.sync.meta)
    e.sync.meta = NULL


# -- backup: reading a datagram ---------------------------------------------------------------

cdef inline int sync_proto_states(uint8_t proto) noexcept nogil:
    # how many states IPVS has for the protocol, 0 = no handler
    if proto == 6:
        return 11
    if proto == 17 or proto == 50 or proto == 51:
        return 1
    if proto == 132:
        return SCTP_S_LAST
    return 0


cdef inline void sy_addr(const uint8_t *b, uint32_t *out, bint v6) noexcept nogil:
    if v6:
        out[0] = sy_rd32(b)
        out[1] = sy_rd32(b + 4)
        out[2] = sy_rd32(b + 8)
        out[3] = sy_rd32(b + 12)
    else:
        out[0] = 0
        out[1] = 0
        out[2] = 0
        out[3] = sy_rd32(b)


cdef int sync_entry(const uint8_t *buf, uint32_t p, uint32_t end, fl_syncent *s) noexcept nogil:
    # ip_vs_proc_sync_conn's checks, in its order, on the entry at buf[p:end]: 0 = an entry
    # to install in s, SD_* = the rest of the datagram is dropped, SK_* = this one skipped.
    cdef uint32_t fixed, q, plen
    cdef uint8_t ptype, kind
    cdef int states, k
    cdef bint v6
    cdef bint skip = False
    if buf[p] & 1:
        v6 = True
        fixed = SYNC_ENT6
    elif buf[p] == 0:
        v6 = False
        fixed = SYNC_ENT4
    else:
        return SD_ENTRY_TYPE
    if p + fixed > end:
        return SD_ENTRY_SIZE
    s.v6 = v6
    s.proto = buf[p + 1]
    s.flags = sy_rd32(buf + p + 4)
    s.state = sy_rd16(buf + p + 8)
    s.cport = sy_rd16(buf + p + 10)
    s.vport = sy_rd16(buf + p + 12)
    s.dport = sy_rd16(buf + p + 14)
    s.fwmark = sy_rd32(buf + p + 16)
    s.timeout = sy_rd32(buf + p + 20)
    if v6:
        sy_addr(buf + p + 24, s.caddr, True)
        sy_addr(buf + p + 40, s.vaddr, True)
        sy_addr(buf + p + 56, s.daddr, True)
    else:
        sy_addr(buf + p + 24, s.caddr, False)
        sy_addr(buf + p + 28, s.vaddr, False)
        sy_addr(buf + p + 32, s.daddr, False)
    s.has_seq = 0
    s.has_pe = 0
    s.has_name = 0
    s.nparam = 0
    q = p + fixed
    while q < end:
        if q + 2 > end:
            return SD_OPT_TRUNCATED
        ptype = buf[q]
        plen = buf[q + 1]
        q += 2
        if plen == 0 or q + plen > end:
            return SD_OPT_LENGTH
        kind = ptype & ~SOPT_F_PARAM
        if kind == SOPT_SEQ:
            if plen != 24 or s.has_seq:
                return SD_OPT_SEQ
            s.has_seq = 1
            for k in range(6):
                s.seq[k] = sy_rd32(buf + q + 4 * k)
        elif kind == SOPT_PE_DATA:
            if s.has_pe:
                return SD_OPT_PE_DATA
            s.has_pe = 1
            s.pe_off = q
            s.pe_len = <uint16_t>plen
        elif kind == SOPT_PE_NAME:
            if plen > 16 or s.has_name:
                return SD_OPT_PE_NAME
            s.has_name = 1
            s.name_off = q
            s.name_len = <uint16_t>plen
        elif ptype & SOPT_F_PARAM:
            s.nparam += 1
        else:
            # the kernel stops reading the entry's options here: later ones do not matter
            skip = True
            break
        q += plen
    if skip:
        return SK_OPTION
    if not (s.flags & KF_TEMPLATE):
        states = sync_proto_states(s.proto)
        if states == 0:
            return SK_PROTOCOL
        if s.state >= states:
            return SK_STATE
    if s.has_pe and not (s.has_name and s.name_len == 3 and buf[s.name_off] == 115
                         and buf[s.name_off + 1] == 105 and buf[s.name_off + 2] == 112):
        # pe data needs the name of an engine the receiver has: sip is the one there is
        return SK_PE
    return 0


cdef int sync_read(fl_engine *e, const uint8_t *buf, uint32_t n, uint8_t want,
                   fl_syncent *out, uint8_t *skips, uint32_t *nout, uint32_t *nskip,
                   bint install, uint64_t now) noexcept nogil:
    # One datagram as a v1 backup with syncid `want` (0: any) reads it: every entry that
    # passes is installed (install) or written to out (for the differential tests); the
    # reasons of skipped entries go to skips. Returns 0, or the SD_* that ended the read
    # (the entries before it stand, as in the kernel).
    cdef uint32_t nconns, i, p, end, vs, size
    cdef int r
    cdef fl_syncent one
    cdef fl_syncent *s
    nout[0] = 0
    nskip[0] = 0
    if n < 4:
        return SD_SHORT
    if n != sy_rd16(buf + 2):
        return SD_SIZE
    if want != 0 and buf[1] != want:
        return SD_SYNCID
    if n < SYNC_HDR or buf[5] != 1 or buf[0] != 0 or buf[6] != 0 or buf[7] != 0:
        return SD_VERSION
    nconns = buf[4]
    end = SYNC_HDR
    for i in range(nconns):
        p = end
        if p + SYNC_ENT4 > n:
            return SD_TRUNCATED
        vs = sy_rd16(buf + p + 2)
        size = vs & 0x0FFF
        end = p + size
        if end > n:
            return SD_ENTRY_OVERRUN
        if vs >> 12:
            return SD_ENTRY_VERSION
        s = &out[nout[0]] if out != NULL else &one
        r = sync_entry(buf, p, end, s)
        if r >= SK_OPTION:
            skips[nskip[0]] = <uint8_t>r
            nskip[0] += 1
        elif r != 0:
            return r
        else:
            nout[0] += 1
            if install:
                sync_install(e, s, now)
        end = p + ((size + 3) & ~(<uint32_t>3))
    return 0


cdef uint32_t sync_find_dest(fl_engine *e, uint16_t svc, const uint32_t *daddr,
                             uint16_t dport) noexcept nogil:
    # ip_vs_find_dest: the service's dest of that address and port, else of port 0
    cdef uint32_t i, zero = 0
    cdef fl_dest *d
    for i in range(1, e.ndests):
        d = &e.dests[i]
        if (d.flags & DF_AVAILABLE) and d.svc == svc and addr_eq(d.raddr, daddr):
            if d.rport == dport:
                return i
            if d.rport == 0 and zero == 0:
                zero = i
    return zero


cdef uint16_t sync_mark_svc(fl_engine *e, uint32_t mark, bint v6) noexcept nogil:
    # ip_vs_svc_fwm_find: the firewall-mark service of `mark` in the entry's family, 0 =
    # none: the service on the mark's VIP, (0, [0, 0, 0, mark], 0) for v4 and
    # (0, [mark, 0, 0, 0], 0) for v6 (the address IPVS gives a mark's templates)
    cdef uint32_t a[4]
    cdef uint16_t v, sid
    a[0] = mark if v6 else 0
    a[1] = 0
    a[2] = 0
    a[3] = 0 if v6 else mark
    v = vip_find(e, a, 0, 0)
    sid = e.vips[v].svc if v != 0 else 0
    return sid if sid != 0 and e.svcs[sid].in_use else 0


cdef void sync_install(fl_engine *e, fl_syncent *s, uint64_t now) noexcept nogil:
    # ip_vs_proc_conn: refresh the conn (or template) the entry names, or make it bound to
    # its service's dest. The service is ip_vs_service_find's: the entry's mark's first,
    # else (protocol, vaddr, vport), else port 0. fastlvs keeps no entry without a dest
    # (the kernel keeps one unbound and routes it to daddr): such an entry, and one of a
    # service not configured here, is refused and counted, and so are those of a
    # persistence engine and of protocols it does not forward (AH, ESP). New entries take
    # the same table rules as new connections (a full table reclaims, else refuses: a
    # flood of sync messages cannot take what the flood defences keep).
    cdef fl_sync *sy = &e.sync
    cdef uint32_t flags = (s.flags & KF_BACKUP_MASK) | KF_SYNC
    cdef bint tmpl = (flags & KF_TEMPLATE) != 0
    cdef bint inact = (flags & KF_INACTIVE) != 0
    cdef uint16_t vip = 0, svc = 0
    cdef uint32_t b, i, ci = 0, dest, t
    cdef fl_conn *c = NULL
    cdef fl_dest *d
    if s.has_pe:
        sy.counters[SC_REFUSED_PE] += 1
        return
    if not tmpl and ((s.proto != 6 and s.proto != 17 and s.proto != IPPROTO_SCTP)
                     or (s.proto == IPPROTO_SCTP and s.v6)):
        # AH/ESP, and SCTP over IPv6: this engine forwards neither
        sy.counters[SC_REFUSED_PROTOCOL] += 1
        return
    if s.fwmark != 0:
        svc = sync_mark_svc(e, s.fwmark, s.v6)
    if svc != 0 and tmpl:
        vip = e.svcs[svc].vip          # a mark's templates hang off the mark's VIP
    else:
        vip = vip_find_in(e, s.vaddr, s.vport, s.proto)
        if vip == 0 and svc != 0:
            # a mark's conns are keyed by (proto, vaddr, 0) (fwmark.pxi), made below
            vip = vip_find(e, s.vaddr, 0, s.proto)
        elif vip == 0:
            sy.counters[SC_NO_SERVICE] += 1
            return
    b = conn_hash(e, s.caddr, s.cport, s.proto)
    i = e.buckets[b]
    while i != 0:
        c = &e.conns[i - 1]
        if (c.cport == s.cport and c.vip == vip and c.vport == s.vport
                and c.proto == s.proto and addr_eq(c.caddr, s.caddr)
                and (c.flags & (CF_TEMPLATE | CF_INVALID)) == (CF_TEMPLATE if tmpl else 0)):
            ci = i
            break
        i = c.next
    if ci != 0 and c.expires <= now and conn_expire(e, ci - 1, now):
        ci = 0              # its timer had fired: gone, as in the kernel
    if ci != 0 and not tmpl:
        d = &e.dests[c.dest]
        if c.dest == 0 or not addr_eq(d.raddr, s.daddr) or conn_rport(e, c) != s.dport:
            # another real server: an active entry replaces it; an inactive one is the
            # expiry message of the conn it replaced, and is ignored
            if inact:
                sy.counters[SC_REPLACED] += 1
                return
            conn_free(e, ci - 1)
            ci = 0
    if ci != 0:
        c = &e.conns[ci - 1]
        if not tmpl and c.dest != 0 and ((c.flags & CF_INACTIVE) != 0) != inact:
            d = &e.dests[c.dest]
            if inact:
                d.activeconns -= 1
                d.inactconns += 1
                c.flags |= CF_INACTIVE
            else:
                d.activeconns += 1
                d.inactconns -= 1
                c.flags &= ~CF_INACTIVE
        sy.counters[SC_UPDATED] += 1
    else:
        if svc == 0:
            svc = e.vips[vip].svc
        if svc == 0 or not e.svcs[svc].in_use:
            sy.counters[SC_NO_SERVICE] += 1
            return
        dest = sync_find_dest(e, svc, s.daddr, s.dport)
        if dest == 0:
            sy.counters[SC_NO_DEST] += 1
            return
        if vip == 0:
            vip = vip_intern_c(e, s.vaddr, 0, s.proto)
            if vip == 0:
                sy.counters[SC_TABLE_FULL] += 1      # every VIP slot taken
                return
        ci = conn_new(e, s.caddr, s.cport, vip, s.proto, dest,
                      CF_TEMPLATE if tmpl else 0, now)
        if ci == 0:
            sy.counters[SC_TABLE_FULL] += 1
            return
        c = &e.conns[ci - 1]
        c.vport = s.vport
        if not tmpl and not inact:
            # ip_vs_bind_dest for a synced conn keeps the master's activity flag
            d = &e.dests[dest]
            c.flags &= ~CF_INACTIVE
            d.inactconns -= 1
            d.activeconns += 1
        sy.counters[SC_INSTALLED] += 1
        if (s.proto == 6 and not tmpl
                and (s.state == TCP_S_SYN_RECV or s.state == TCP_S_SYNACK)):
            embryo_push(e, ci - 1, b)
    c.state = <uint8_t>(s.state if s.state < 255 else 255)
    if sy.meta != NULL:
        sy.meta[ci - 1].in_pkts = sy.threshold
        sy.meta[ci - 1].old_state = c.state
    if s.timeout != 0:
        t = s.timeout
    elif tmpl:
        t = 180
    elif s.proto == 6:
        t = e.tcp_timeouts[s.state]
    elif s.proto == IPPROTO_SCTP:
        t = e.sctp_timeouts[s.state]
    else:
        t = e.udp_timeout
    c.timeout = t
    c.expires = now + secs(t)
