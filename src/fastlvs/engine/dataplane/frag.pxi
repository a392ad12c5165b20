# IPv4 reassembly for virtual services, as the kernel's ip_defrag does before IPVS sees a
# packet: fragments to a VIP address (and NAT replies from a real server) are copied into an
# area allocated with the Engine (queues, 1 KiB blocks, per-source shares), a queue expires
# ipfrag_time (30 s of frame time) after its first fragment, an overlap discards the datagram.
# A complete datagram is rebuilt in the batch's output arena and handled as one packet; what
# it becomes is cut again into fragments no larger than the largest one received, as the
# kernel's ip_do_fragment does with the reassembled skb's frag_max_size (recorded on 6.1);
# so is a TUN packet too big for the tunnel (xmit_cut_later), to the MTU.

cdef enum:
    FQ_FIRST = 1
    FQ_LAST = 2
    XBUF_HEADROOM = 64        # before a rebuilt datagram: TUN's outer header, ICMP replies
    FRAG_EXPIRE_BUDGET = 64   # queues expired after one batch at most (the rest next time)


cdef inline uint32_t frag_hash(fl_engine *e, uint32_t saddr, uint32_t daddr, uint16_t ipid,
                               uint8_t proto) noexcept nogil:
    # keyed like conn_hash: spoofed sources cannot aim at one chain without the seed
    cdef uint64_t x = ((<uint64_t>saddr << 32) | daddr) ^ e.seed
    x *= 0x9E3779B97F4A7C15ULL
    x ^= x >> 29
    x ^= (<uint64_t>ipid << 8) | proto
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 32
    return <uint32_t>x & e.frag.bmask


cdef inline uint8_t frag_src(fl_engine *e, uint32_t saddr) noexcept nogil:
    cdef uint64_t x = (<uint64_t>saddr ^ (e.seed >> 17)) * 0x9E3779B97F4A7C15ULL
    return <uint8_t>(x >> 58)


cdef inline bint addr_set_has(const uint32_t *t, uint32_t mask, uint32_t a) noexcept nogil:
    # open addressing at most half full (the control plane sizes it), so probes stay short
    cdef uint32_t s
    if t == NULL or a == 0:
        return False
    s = <uint32_t>((<uint64_t>a * 0x9E3779B97F4A7C15ULL) >> 40) & mask
    while t[s] != 0:
        if t[s] == a:
            return True
        s = (s + 1) & mask
    return False


cdef void frag_q_free(fl_engine *e, uint32_t qi) noexcept nogil:
    # Unlink queue qi (0-based) from its chain and the age list, give its blocks back.
    cdef fl_frag *F = &e.frag
    cdef fl_fragq *q = &F.q[qi]
    cdef uint32_t b = frag_hash(e, q.saddr, q.daddr, q.ipid, q.proto)
    cdef uint32_t *link = &F.buckets[b]
    cdef uint32_t *oldest = &F.oldest
    cdef uint32_t *newest = &F.newest
    cdef int k
    if q.proto == FRAG6_PROTO:
        oldest = &F.oldest6
        newest = &F.newest6
    while link[0] != 0:
        if link[0] == qi + 1:
            link[0] = q.next
            break
        link = &F.q[link[0] - 1].next
    if q.older != 0:
        F.q[q.older - 1].newer = q.newer
    else:
        oldest[0] = q.newer
    if q.newer != 0:
        F.q[q.newer - 1].older = q.older
    else:
        newest[0] = q.older
    for k in range(FRAG_MAX_BLOCKS):
        if q.blocks[k] != 0:
            F.free_blocks[F.nfree] = <uint16_t>(q.blocks[k] - 1)
            F.nfree += 1
            q.blocks[k] = 0
    F.src_blocks[q.src] -= q.nblocks
    F.src_queues[q.src] -= 1
    F.nqueued -= 1
    q.used = 0
    q.next = F.free_q
    F.free_q = qi + 1


cdef uint32_t frag_expire(fl_engine *e, uint64_t now, uint32_t budget) noexcept nogil:
    # Expire queues whose time is up, oldest first (v4's, then v6's); returns how many.
    cdef fl_frag *F = &e.frag
    cdef uint32_t n = 0
    while n < budget and F.oldest != 0 and F.q[F.oldest - 1].expires <= now:
        frag_q_free(e, F.oldest - 1)
        e.counters[C_FRAG_TIMEOUT] += 1
        n += 1
    while n < budget and F.oldest6 != 0 and F.q[F.oldest6 - 1].expires <= now:
        frag_q_free(e, F.oldest6 - 1)
        e.counters[C_FRAG_TIMEOUT] += 1
        n += 1
    return n


cdef inline void frag_batch_start(fl_engine *e) noexcept nogil:
    e.frag.xused = 0
    e.frag.nxseg = 0
    e.frag.nxrec = 0


cdef inline uint8_t *frag_xalloc(fl_frag *F, uint32_t n) noexcept nogil:
    cdef uint8_t *r
    n = (n + 63) & ~(<uint32_t>63)
    if F.xused + n > F.xsize:
        return NULL
    r = F.xbuf + F.xused
    F.xused += n
    return r


cdef int frag_complete(fl_engine *e, fl_frame *f, fl_pkt *p, uint32_t qi) noexcept nogil:
    # Rebuild the datagram of queue qi in the arena, free the queue and point the frame at
    # the rebuilt packet (parsed again, so it goes on as any other frame of the batch).
    cdef fl_frag *F = &e.frag
    cdef fl_fragq *q = &F.q[qi]
    cdef uint32_t hl = q.l2len + 20
    cdef uint32_t n = hl + q.total
    cdef uint8_t *buf
    cdef uint8_t *ip
    cdef uint32_t off, k, chunk
    cdef fl_xrec *rec
    if F.nxrec >= MAX_BATCH:
        frag_q_free(e, qi)
        return C_FRAG_NO_ROOM
    buf = frag_xalloc(F, XBUF_HEADROOM + n)
    if buf == NULL:
        frag_q_free(e, qi)
        return C_FRAG_NO_ROOM
    buf += XBUF_HEADROOM
    memcpy(buf, q.hdr, hl)
    ip = buf + q.l2len
    wr16(ip + 2, <uint16_t>(20 + q.total))
    wr16(ip + 6, 0)
    wr16(ip + 10, 0)
    wr16(ip + 10, csum_of(ip, 20))
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
    rec = &F.xrec[F.nxrec]
    rec.l2len = q.l2len
    rec.frag_max = q.frag_max
    rec.seg0 = 0
    rec.nseg = 0
    F.nxrec += 1
    frag_q_free(e, qi)
    e.counters[C_FRAG_REASM] += 1
    f.data = buf
    f.len = n
    f.headroom = XBUF_HEADROOM
    f.xrec = <uint16_t>F.nxrec
    return parse_frame(f, p)


cdef int frag_input(fl_engine *e, fl_frame *f, fl_pkt *p, uint64_t now) noexcept nogil:
    # A fragment (parse_frame said C_FRAGMENT, with l2len/ihl/tot_len filled). Returns
    # C_FRAGMENT (not ours: to the host), C_FRAG_HELD (kept), another C_* (dropped), or
    # PARSE_OK once it completed its datagram (the frame now holds the whole datagram).
    cdef fl_frag *F = &e.frag
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t proto = ip[9]
    cdef uint32_t saddr = rd32(ip + 12)
    cdef uint32_t daddr = rd32(ip + 16)
    cdef uint16_t ipid = rd16(ip + 4)
    cdef uint16_t fo = rd16(ip + 6)
    cdef uint32_t off = <uint32_t>(fo & 0x1FFF) * 8
    cdef bint mf = (fo & 0x2000) != 0
    cdef uint32_t ln, end, qi, b, k, need, chunk, pos
    cdef fl_fragq *q
    cdef int i, lo, hi
    cdef uint8_t sb
    if proto != 6 and proto != 17 and proto != 1:   # ICMP: an error may quote a conn's
        return C_FRAGMENT
    if not (addr_set_has(F.vset, F.vmask, daddr) or addr_set_has(F.rset, F.rmask, saddr)):
        return C_FRAGMENT
    ln = p.tot_len - p.ihl
    end = off + ln
    # options (ihl > 20) would have to be split between first and later fragments;
    # a fragment with MF must carry a multiple of 8 bytes; the datagram must fit 64 KiB
    if p.ihl != 20 or ln == 0 or (mf and (ln & 7) != 0) or end + 20 > 65535:
        return C_FRAG_BAD
    b = frag_hash(e, saddr, daddr, ipid, proto)
    qi = F.buckets[b]
    while qi != 0:
        q = &F.q[qi - 1]
        if q.saddr == saddr and q.daddr == daddr and q.ipid == ipid and q.proto == proto:
            break
        qi = q.next
    if qi != 0 and F.q[qi - 1].expires <= now:
        frag_q_free(e, qi - 1)
        e.counters[C_FRAG_TIMEOUT] += 1
        qi = 0
    if qi == 0:
        if F.free_q == 0:
            frag_expire(e, now, 1)
        sb = frag_src(e, saddr)
        if F.free_q == 0 or F.src_queues[sb] >= F.src_queue_limit:
            return C_FRAG_NO_ROOM
        qi = F.free_q
        q = &F.q[qi - 1]
        F.free_q = q.next
        memset(q, 0, sizeof(fl_fragq))
        q.used = 1
        q.saddr = saddr
        q.daddr = daddr
        q.ipid = ipid
        q.proto = proto
        q.src = sb
        q.expires = now + F.timeout_ns
        q.next = F.buckets[b]
        F.buckets[b] = qi
        q.older = F.newest
        if F.newest != 0:
            F.q[F.newest - 1].newer = qi
        else:
            F.oldest = qi
        F.newest = qi
        F.nqueued += 1
        F.src_queues[sb] += 1
    q = &F.q[qi - 1]
    # where the piece goes: lo = first piece ending after off, hi = first starting at/after end
    lo = 0
    while lo < q.npieces and q.pend[lo] <= off:
        lo += 1
    hi = lo
    while hi < q.npieces and q.poff[hi] < end:
        hi += 1
    if hi > lo:
        # touches what we hold: inside one contiguous run of it = a duplicate (ignored);
        # any other overlap discards the datagram, as ip_frag_queue does (RFC 5722 style)
        if q.poff[lo] <= off and q.pend[hi - 1] >= end:
            i = lo
            while i + 1 < hi and q.pend[i] == q.poff[i + 1]:
                i += 1
            if i + 1 == hi:
                return C_FRAG_BAD
        frag_q_free(e, qi - 1)
        return C_FRAG_BAD
    if not mf:
        if (q.flags & FQ_LAST and end != q.total) or (q.npieces and q.pend[q.npieces - 1] > end):
            frag_q_free(e, qi - 1)
            return C_FRAG_BAD
    elif q.flags & FQ_LAST and end > q.total:
        frag_q_free(e, qi - 1)
        return C_FRAG_BAD
    if q.npieces >= FRAG_MAX_PIECES:
        frag_q_free(e, qi - 1)
        return C_FRAG_NO_ROOM
    # blocks first (all or nothing), then the bytes
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
               ip + 20 + (pos - off), chunk)
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
        memcpy(q.hdr, f.data, p.l2len + 20)
    if not mf:
        q.flags |= FQ_LAST
        q.total = end
    if (q.flags & (FQ_FIRST | FQ_LAST)) == (FQ_FIRST | FQ_LAST) and q.received == q.total:
        return frag_complete(e, f, p, qi - 1)
    return C_FRAG_HELD


cdef inline void frag_drop(fl_engine *e, fl_frame *f) noexcept nogil:
    f.verdict = VERDICT_DROP
    f.reason = C_FRAG_NO_ROOM
    e.counters[C_FRAG_NO_ROOM] += 1


cdef bint frag_cut(fl_engine *e, fl_frame *f) noexcept nogil:
    # The TX output of a reassembled datagram, cut into fragments of at most
    # min(mtu, largest fragment received) bytes of IP packet: each copies the L2 header and
    # the (outer) IP header with its offset/MF and checksum. False: no room, frame dropped.
    cdef fl_frag *F = &e.frag
    cdef fl_xrec *rec = &F.xrec[f.xrec - 1]
    cdef uint8_t *out = f.data + f.out_adj
    cdef uint32_t l2 = rec.l2len
    cdef uint8_t *ip = out + l2
    cdef uint32_t hlen = <uint32_t>(ip[0] & 0x0F) * 4
    cdef uint32_t payload = f.out_len - l2 - hlen
    cdef uint32_t mtu = e.mtu
    cdef uint32_t room, nseg, left, off, ln
    cdef uint16_t fo = 0        # ip_do_fragment: no piece carries DF (recorded)
    cdef uint8_t *o
    cdef uint8_t *oip
    cdef fl_xseg *sg
    if (ip[0] >> 4) == 6:
        return frag6_cut(e, f)
    if rec.frag_max != 0 and rec.frag_max < mtu:
        mtu = rec.frag_max
    if mtu < hlen + 8:
        mtu = hlen + 8
    room = (mtu - hlen) & ~(<uint32_t>7)
    # every piece but the last is `room` bytes; the last takes what is left once that fits
    # in mtu - hlen (which may be up to 7 bytes more than room)
    nseg = 1
    left = payload
    while left > mtu - hlen:
        left -= room
        nseg += 1
    if F.nxseg + nseg > F.xseg_max:
        frag_drop(e, f)
        return False
    rec.seg0 = F.nxseg
    rec.nseg = nseg
    if nseg == 1:
        # fits whole (the kernel's cut makes one unfragmented packet): send it as it is
        F.xseg[F.nxseg].data = out
        F.xseg[F.nxseg].len = f.out_len
        F.nxseg += 1
        return True
    if F.xused + payload + nseg * (l2 + hlen + 63) > F.xsize:
        rec.nseg = 0
        frag_drop(e, f)
        return False
    left = payload
    off = 0
    while left > 0:
        ln = left
        if ln > mtu - hlen:
            ln = room
        o = frag_xalloc(F, l2 + hlen + ln)
        memcpy(o, out, l2 + hlen)
        oip = o + l2
        wr16(oip + 2, <uint16_t>(hlen + ln))
        wr16(oip + 6, <uint16_t>(fo | (off >> 3) | (0x2000 if ln < left else 0)))
        wr16(oip + 10, 0)
        wr16(oip + 10, csum_of(oip, hlen))
        memcpy(oip + hlen, ip + hlen + off, ln)
        sg = &F.xseg[F.nxseg]
        sg.data = o
        sg.len = l2 + hlen + ln
        F.nxseg += 1
        off += ln
        left -= ln
    e.counters[C_FRAG_OUT] += nseg
    return True
