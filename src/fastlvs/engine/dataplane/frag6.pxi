# IPv6 reassembly for virtual services, as nf_defrag_ipv6 does before IPVS sees a packet:
# fragments (a Fragment header right after the fixed header) to a v6 VIP, or from a NAT66
# real server, go into frag.pxi's area (its queues, blocks and per-source shares, the share
# by source /64) and age on a list of their own (ip6frag_time, 60 s). What 6.1 does, as
# recorded (tests/fixtures/kernel/frags6.json): the datagram takes the first fragment's
# header and leaves without a Fragment header when it fits, else in the fragments it came in
# (ip6_fragment's fast path over the reassembled frag list) under a new identification; a
# largest fragment over the MTU is refused with packet too big; an overlap or a fragment
# with M set and a length not a multiple of 8 discards the datagram.

cdef enum:
    FRAG6_PROTO = 44          # fl_fragq.proto of a v6 queue (v4 queues hold 1, 6 or 17)
    IPV6_MIN_MTU = 1280


cdef inline uint32_t frag6_mix(uint64_t x, const uint32_t *w, int n) noexcept nogil:
    # keyed fold of 128-bit words: spoofed keys cannot aim at one hash chain without the seed
    cdef int i
    for i in range(n):
        x = (x ^ w[i]) * 0x9E3779B97F4A7C15ULL
        x ^= x >> 29
    return <uint32_t>(x >> 32)


cdef inline uint32_t frag6_ident(fl_engine *e, const uint8_t *ip) noexcept nogil:
    # ipv6_select_ident: a new identification per datagram cut, not guessable from outside
    # (a counter folded with the addresses under the engine's key)
    cdef uint32_t w[8]
    e.frag.id6 += 1
    addr6_read(ip + 8, w)
    addr6_read(ip + 24, w + 4)
    return frag6_mix(e.seed ^ (<uint64_t>e.frag.id6 * 0xD6E8FEB86659FD93ULL), w, 8)


cdef int frag6_complete(fl_engine *e, fl_frame *f, fl_pkt *p, uint32_t qi) noexcept nogil:
    # Rebuild queue qi's datagram in the arena (the first fragment's header, its next header
    # in place of 44, no Fragment header), keep where its pieces ended (frag6_cut sends
    # them so), free the queue and parse the frame again as a whole packet.
    cdef fl_frag *F = &e.frag
    cdef fl_fragq *q = &F.q[qi]
    cdef uint32_t hl = q.l2len + 40
    cdef uint32_t n = hl + q.total
    cdef uint8_t *buf
    cdef uint16_t *ends
    cdef uint32_t off, k, chunk
    cdef int i, r
    cdef fl_xrec *rec
    if F.nxrec >= MAX_BATCH:
        frag_q_free(e, qi)
        return C_FRAG_NO_ROOM
    buf = frag_xalloc(F, XBUF_HEADROOM + n + 2 + 2 * <uint32_t>q.npieces)
    if buf == NULL:
        frag_q_free(e, qi)
        return C_FRAG_NO_ROOM
    buf += XBUF_HEADROOM
    memcpy(buf, q.hdr6, hl)
    wr16(buf + q.l2len + 4, <uint16_t>q.total)
    off = 0
    while off < q.total:
        k = off >> FRAG_BLOCK_BITS
        chunk = FRAG_BLOCK - (off & (FRAG_BLOCK - 1))
        if chunk > q.total - off:
            chunk = q.total - off
        memcpy(buf + hl + off,
               F.blocks + (<size_t>(q.blocks[k] - 1) << FRAG_BLOCK_BITS) + (off & (FRAG_BLOCK - 1)),
               chunk)
        off += chunk
    ends = <uint16_t *>(buf + n)     # 2-byte aligned: the arena's pieces start 64-aligned
    if (<size_t>ends) & 1:
        ends = <uint16_t *>(buf + n + 1)
    for i in range(q.npieces):
        ends[i] = q.pend[i]
    rec = &F.xrec[F.nxrec]
    rec.l2len = q.l2len
    rec.frag_max = q.frag_max
    rec.seg0 = 0
    rec.nseg = 0
    rec.ends6 = ends
    rec.nends6 = q.npieces
    F.nxrec += 1
    frag_q_free(e, qi)
    e.counters[C_FRAG_REASM] += 1
    f.data = buf
    f.len = n
    f.headroom = XBUF_HEADROOM
    f.xrec = <uint16_t>F.nxrec
    r = parse_frame(f, p)
    if r == PARSE_IPV6:
        r = parse_frame_v6(e, f, p, p.l2len)
    return r


cdef int frag6_input(fl_engine *e, fl_frame *f, fl_pkt *p, uint64_t now) noexcept nogil:
    # A v6 fragment (parse_frame_v6 said C_FRAGMENT; l2len, tot_len, addresses filled).
    # Returns as frag_input does, or C_V6_EXTHDR for a fragment of anything but TCP, UDP or
    # ICMPv6 (dropped if to a VIP, as other extension headers are).
    cdef fl_frag *F = &e.frag
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *fh = ip + 40
    cdef uint8_t nh = fh[0]
    cdef uint16_t fo = rd16(fh + 2)
    cdef uint32_t off = fo & 0xFFF8
    cdef bint mf = (fo & 1) != 0
    cdef uint32_t ident = rd32(fh + 4)
    cdef uint32_t ln = p.tot_len - 48
    cdef uint32_t end = off + ln
    cdef uint32_t ks, kd, qi, b, k, need, chunk, pos
    cdef uint16_t kid
    cdef fl_fragq *q
    cdef int i, lo, hi
    cdef uint8_t sb
    if not (addr_set_has(e.vset6, e.vmask6, addr6_fold(p.daddr))
            or addr_set_has(F.rset6, F.rmask6, addr6_fold(p.saddr))):
        return C_FRAGMENT
    if nh != 6 and nh != 17 and nh != 58:
        return C_V6_EXTHDR
    # nf_ct_frag6_queue drops these alone: nothing in it, past 64 KiB of payload; and a
    # first fragment must hold its transport header whole (RFC 8200 4.5)
    if ln == 0 or end > 65535 or (off == 0 and nh == 6 and ln < 20):
        return C_FRAG_BAD
    ks = frag6_mix(e.seed, p.saddr, 4)
    kd = frag6_mix(e.seed ^ 0x5851F42D4C957F2DULL, p.daddr, 4)
    kid = <uint16_t>frag6_mix(e.seed, &ident, 1)
    b = frag_hash(e, ks, kd, kid, FRAG6_PROTO)
    qi = F.buckets[b]
    while qi != 0:
        q = &F.q[qi - 1]
        if (q.proto == FRAG6_PROTO and q.id6 == ident
                and memcmp(q.addr6, p.saddr, 16) == 0 and memcmp(q.addr6 + 4, p.daddr, 16) == 0):
            break
        qi = q.next
    if qi != 0 and F.q[qi - 1].expires <= now:
        frag_q_free(e, qi - 1)
        e.counters[C_FRAG_TIMEOUT] += 1
        qi = 0
    if qi == 0:
        if F.free_q == 0:
            frag_expire(e, now, 1)
        # one share per /64: a v6 host picks its own interface bits at will
        sb = frag_src(e, p.saddr[0] ^ p.saddr[1])
        if F.free_q == 0 or F.src_queues[sb] >= F.src_queue_limit:
            return C_FRAG_NO_ROOM
        qi = F.free_q
        q = &F.q[qi - 1]
        F.free_q = q.next
        memset(q, 0, sizeof(fl_fragq))
        q.used = 1
        q.saddr = ks
        q.daddr = kd
        q.ipid = kid
        q.proto = FRAG6_PROTO
        q.id6 = ident
        memcpy(q.addr6, p.saddr, 16)
        memcpy(q.addr6 + 4, p.daddr, 16)
        q.src = sb
        q.expires = now + F.timeout6_ns
        q.next = F.buckets[b]
        F.buckets[b] = qi
        q.older = F.newest6
        if F.newest6 != 0:
            F.q[F.newest6 - 1].newer = qi
        else:
            F.oldest6 = qi
        F.newest6 = qi
        F.nqueued += 1
        F.src_queues[sb] += 1
    q = &F.q[qi - 1]
    if mf:
        if end & 7:
            # the RFC wants whole 8-byte units before the last piece: the datagram goes
            frag_q_free(e, qi - 1)
            return C_FRAG_BAD
        if q.flags & FQ_LAST and end > q.total:
            return C_FRAG_BAD
    elif (q.flags & FQ_LAST and end != q.total) or (q.npieces and q.pend[q.npieces - 1] > end):
        return C_FRAG_BAD
    # where the piece goes: lo = first piece ending after off, hi = first starting at/after end
    lo = 0
    while lo < q.npieces and q.pend[lo] <= off:
        lo += 1
    hi = lo
    while hi < q.npieces and q.poff[hi] < end:
        hi += 1
    if hi > lo:
        # inside one contiguous run of what is held: a duplicate (ignored); any other
        # overlap discards the datagram (RFC 5722, inet_frag_queue_insert)
        if q.poff[lo] <= off and q.pend[hi - 1] >= end:
            i = lo
            while i + 1 < hi and q.pend[i] == q.poff[i + 1]:
                i += 1
            if i + 1 == hi:
                return C_FRAG_BAD
        frag_q_free(e, qi - 1)
        return C_FRAG_BAD
    if q.npieces >= FRAG_MAX_PIECES:
        frag_q_free(e, qi - 1)
        return C_FRAG_NO_ROOM
    need = 0
    for k in range(off >> FRAG_BLOCK_BITS, ((end - 1) >> FRAG_BLOCK_BITS) + 1):
        if q.blocks[k] == 0:
            need += 1
    if need > F.nfree or F.src_blocks[q.src] + need > F.src_block_limit:
        return C_FRAG_NO_ROOM
    for k in range(off >> FRAG_BLOCK_BITS, ((end - 1) >> FRAG_BLOCK_BITS) + 1):
        if q.blocks[k] == 0:
            F.nfree -= 1
            q.blocks[k] = <uint16_t>(F.free_blocks[F.nfree] + 1)
            q.nblocks += 1
    F.src_blocks[q.src] += need
    pos = off
    while pos < end:
        k = pos >> FRAG_BLOCK_BITS
        chunk = FRAG_BLOCK - (pos & (FRAG_BLOCK - 1))
        if chunk > end - pos:
            chunk = end - pos
        memcpy(F.blocks + (<size_t>(q.blocks[k] - 1) << FRAG_BLOCK_BITS) + (pos & (FRAG_BLOCK - 1)),
               fh + 8 + (pos - off), chunk)
        pos += chunk
    i = q.npieces
    while i > lo:
        q.poff[i] = q.poff[i - 1]
        q.pend[i] = q.pend[i - 1]
        i -= 1
    q.poff[lo] = <uint16_t>off
    q.pend[lo] = <uint16_t>end
    q.npieces += 1
    q.received += ln
    if p.tot_len > q.frag_max:
        q.frag_max = p.tot_len
    if off == 0:
        q.flags |= FQ_FIRST
        q.l2len = <uint8_t>p.l2len
        memcpy(q.hdr6, f.data, p.l2len + 40)
        q.hdr6[p.l2len + 6] = nh
    if not mf:
        q.flags |= FQ_LAST
        q.total = end
    if (q.flags & (FQ_FIRST | FQ_LAST)) == (FQ_FIRST | FQ_LAST) and q.received == q.total:
        return frag6_complete(e, f, p, qi - 1)
    return C_FRAG_HELD


cdef int frag6_toobig(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # ensure_mtu_is_adequate for a reassembled datagram (__mtu_check_toobig_v6): its largest
    # fragment, not its length, must fit the MTU (less the tunnel's headers for TUN); if not
    # the client gets packet too big from the VIP quoting it (recorded). 0: it fits.
    cdef fl_xrec *rec = &e.frag.xrec[f.xrec - 1]
    cdef uint32_t mtu = e.mtu
    if c.fwd == FWD_TUN:
        mtu -= 40 + tun_extra(&e.dests[c.dest])
    if mtu < IPV6_MIN_MTU:
        return C_OVERSIZE               # no v6 route under 1280 (__ip_vs_get_out_rt_v6)
    if rec.frag_max <= mtu:
        return 0
    if p.proto == 58:
        return C_OVERSIZE
    e.counters[C_FRAG_NEEDED_SENT] += 1
    return icmp6_error(e, f, p, 2, 0, mtu, p.daddr)


cdef bint frag6_cut(fl_engine *e, fl_frame *f) noexcept nogil:
    # The TX output of a reassembled v6 datagram: as it is if it fits both the MTU and its
    # largest fragment (ip6_finish_output), else cut after the fixed header with a Fragment
    # header each. ip6_fragment's fast path keeps the pieces it came in (the first grown by
    # what TUN put in front) when they all fit and the first is whole 8-byte units; else
    # pieces of the MTU (the largest fragment, at least 1280). False: no room, dropped.
    cdef fl_frag *F = &e.frag
    cdef fl_xrec *rec = &F.xrec[f.xrec - 1]
    cdef uint8_t *out = f.data + f.out_adj
    cdef uint32_t l2 = rec.l2len
    cdef uint8_t *ip = out + l2
    cdef uint32_t plen = f.out_len - l2 - 40
    cdef uint32_t mtu = e.mtu
    cdef uint32_t room, nseg, left, off, ln, grow, ident, i
    cdef bint fast
    cdef uint8_t *o
    cdef uint8_t *oip
    cdef fl_xseg *sg
    # an ICMPv6 error of ours (icmp6_error builds it 48 bytes before the datagram) is a
    # packet of its own, never cut; else the datagram as it is when it fits
    if (f.out_adj == -48 and ip[6] == 58) or (
            40 + plen <= mtu and (rec.frag_max == 0 or 40 + plen <= rec.frag_max)):
        if F.nxseg + 1 > F.xseg_max:
            frag_drop(e, f)
            return False
        rec.seg0 = F.nxseg
        rec.nseg = 1
        F.xseg[F.nxseg].data = out
        F.xseg[F.nxseg].len = f.out_len
        F.nxseg += 1
        return True
    if rec.frag_max != 0 and rec.frag_max <= mtu:
        mtu = rec.frag_max if rec.frag_max > IPV6_MIN_MTU else IPV6_MIN_MTU
        if mtu > e.mtu:
            mtu = e.mtu
    if mtu < 40 + 8 + 8:
        mtu = 40 + 8 + 8
    room = mtu - 48
    # the fast path: the output's fragmentable part is what TUN put in front (grow) and
    # then the datagram's pieces
    fast = rec.nends6 > 1
    if fast:
        grow = plen - rec.ends6[rec.nends6 - 1]
        if (grow + rec.ends6[0]) & 7 or grow + rec.ends6[0] > room:
            fast = False
        for i in range(1, rec.nends6):
            if not fast:
                break
            if rec.ends6[i] - rec.ends6[i - 1] > room:
                fast = False
    if fast:
        nseg = rec.nends6
    else:
        # every piece but the last is room rounded down to 8 bytes; the last takes what is
        # left once that fits in room
        nseg = 1
        left = plen
        while left > room:
            left -= room & ~(<uint32_t>7)
            nseg += 1
    if F.nxseg + nseg > F.xseg_max or F.xused + plen + nseg * (l2 + 48 + 63) > F.xsize:
        frag_drop(e, f)
        return False
    rec.seg0 = F.nxseg
    rec.nseg = nseg
    ident = frag6_ident(e, ip)
    off = 0
    for i in range(nseg):
        if fast:
            ln = grow + rec.ends6[0] if i == 0 else rec.ends6[i] - rec.ends6[i - 1]
        else:
            ln = (room & ~(<uint32_t>7)) if plen - off > room else plen - off
        o = frag_xalloc(F, l2 + 48 + ln)
        memcpy(o, out, l2 + 40)
        oip = o + l2
        wr16(oip + 4, <uint16_t>(8 + ln))
        oip[6] = 44
        oip[40] = ip[6]
        oip[41] = 0
        wr16(oip + 42, <uint16_t>(off | (1 if off + ln < plen else 0)))
        wr32(oip + 44, ident)
        memcpy(oip + 48, ip + 40 + off, ln)
        sg = &F.xseg[F.nxseg]
        sg.data = o
        sg.len = l2 + 48 + ln
        F.nxseg += 1
        off += ln
    e.counters[C_FRAG_OUT] += nseg
    return True
