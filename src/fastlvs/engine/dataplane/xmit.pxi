# The forwarding methods, one small function each, chosen when the conn is created (the
# entry's `fwd` indexes XMIT): DR rewrites MACs, NAT rewrites the destination (and the
# source of replies) with incremental checksums, TUN prepends an outer IPv4 header in the
# headroom. All work in place on the frame. Each returns the C_* counter of a drop or -1.

ctypedef int (*xmit_fn)(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil


cdef inline void eth_set(uint8_t *d, const uint8_t *dst, const uint8_t *src) noexcept nogil:
    memcpy(d, dst, 6)
    memcpy(d + 6, src, 6)


cdef inline void frame_tx(fl_frame *f, uint32_t ifindex, int32_t adj, uint32_t length) noexcept nogil:
    f.verdict = VERDICT_TX
    f.out_ifindex = ifindex
    f.out_adj = adj
    f.out_len = length


cdef int xmit_dr_v4(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    cdef fl_dest *d = &e.dests[c.dest]
    eth_set(f.data, d.mac, d.smac)
    frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
    return -1


cdef int xmit_nat_v4(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # client -> VIP:vport becomes client -> RIP:rport
    cdef fl_dest *d = &e.dests[c.dest]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *l4 = ip + p.ihl
    cdef bint udp = p.proto == 17
    cdef uint8_t *ck = l4 + (6 if udp else 16)
    cdef uint32_t old = p.daddr[3]
    cdef uint32_t new = d.raddr[3]
    cdef int r
    if p.proto == IPPROTO_SCTP:
        # no pseudo-header in SCTP's CRC: only a port change needs a new one
        r = sctp_nat_ports(f, l4, p.tot_len - p.ihl, 2, p.dport, conn_rport(e, c))
        if r >= 0:
            return r
        wr32(ip + 16, new)
        csum_replace4(ip + 10, old, new)
        eth_set(f.data, d.mac, d.smac)
        frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
        return -1
    wr32(ip + 16, new)
    csum_replace4(ip + 10, old, new)
    l4_csum_replace4(ck, old, new, udp)
    cdef uint16_t rport = conn_rport(e, c)
    if p.dport != rport:
        wr16(l4 + 2, rport)
        l4_csum_replace2(ck, p.dport, rport, udp)
    eth_set(f.data, d.mac, d.smac)
    frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
    return -1


cdef int xmit_nat_out_v4(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # RS reply RIP:rport -> client becomes VIP:vport -> client, sent to the client's next hop
    cdef fl_vip *v = &e.vips[c.vip]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *l4 = ip + p.ihl
    cdef bint udp = p.proto == 17
    cdef uint8_t *ck = l4 + (6 if udp else 16)
    cdef uint32_t old = p.saddr[3]
    cdef uint32_t new = v.addr[3]
    cdef fl_neigh *nb = NULL
    cdef int r
    if p.proto == IPPROTO_SCTP:
        r = sctp_nat_ports(f, l4, p.tot_len - p.ihl, 0, p.sport, c.vport)
        if r >= 0:
            return r
    if neigh_on_link(e, p.daddr[3]):
        nb = neigh_find(e, p.daddr[3], neigh_tick(e.now))
    if nb != NULL:
        eth_set(f.data, nb.mac, e.local_mac)
        frame_tx(f, nb.ifindex, 0, p.l2len + p.tot_len)
    elif e.has_gw:
        eth_set(f.data, e.gw_mac, e.local_mac)
        frame_tx(f, e.gw_ifindex, 0, p.l2len + p.tot_len)
    else:
        return C_NO_ROUTE
    wr32(ip + 12, new)
    csum_replace4(ip + 10, old, new)
    if p.proto == IPPROTO_SCTP:
        return -1                       # ports and CRC done above
    l4_csum_replace4(ck, old, new, udp)
    if p.sport != c.vport:
        wr16(l4, c.vport)
        l4_csum_replace2(ck, p.sport, c.vport, udp)
    return -1


cdef inline void ttl_dec_v4(uint8_t *ip) noexcept nogil:
    # ip_decrease_ttl: the TTL/protocol word drops by 0x0100, so the checksum rises by as
    # much, with the end-around carry; 0xFFFF (negative zero) becomes 0, as the kernel's
    cdef uint32_t c = rd16(ip + 10) + 0x0100
    wr16(ip + 10, <uint16_t>(c + (c >= 0xFFFF)))
    ip[8] -= 1


cdef int icmp_error_v4(fl_engine *e, fl_frame *f, fl_pkt *p, uint8_t type, uint8_t code,
                       uint32_t info, uint32_t saddr, uint32_t quote) noexcept nogil:
    # An ICMP error back to the frame's sender, from `saddr`, quoting `quote` bytes of its
    # IP packet, out of the interface it came in by. Built in the headroom: the quoted
    # bytes stay where they are and the new headers go 28 bytes before them.
    cdef uint8_t *o
    cdef uint8_t *ip
    cdef uint8_t *ic
    cdef uint8_t tos
    cdef uint8_t mac[6]
    if quote > p.tot_len:
        quote = p.tot_len
    if f.headroom < 28:
        return C_NO_HEADROOM
    o = f.data - 28
    tos = f.data[p.l2len + 1]
    memcpy(mac, f.data, 6)
    memmove(o, f.data, p.l2len)
    memcpy(o, o + 6, 6)                 # back to the sender's MAC ...
    memcpy(o + 6, mac, 6)               # ... from the MAC it sent to
    ip = o + p.l2len
    ic = ip + 20
    ip[0] = 0x45
    ip[1] = (tos & 0x1E) | 0xC0
    wr16(ip + 2, <uint16_t>(28 + quote))
    e.ip_id += 1
    wr16(ip + 4, e.ip_id)
    wr16(ip + 6, 0)
    ip[8] = 64
    ip[9] = 1
    wr16(ip + 10, 0)
    wr32(ip + 12, saddr)
    wr32(ip + 16, p.saddr[3])
    wr16(ip + 10, csum_of(ip, 20))
    ic[0] = type
    ic[1] = code
    wr16(ic + 2, 0)
    wr32(ic + 4, info)
    wr16(ic + 2, csum_of(ic, 8 + quote))
    frame_tx(f, 0, -28, p.l2len + 28 + quote)
    return -1


cdef int icmp_frag_needed_v4(fl_engine *e, fl_frame *f, fl_pkt *p, uint16_t mtu) noexcept nogil:
    # dest unreachable / fragmentation needed, from the address the sender wrote to (the
    # VIP), quoting as much of the packet as fits in 576 bytes, as icmp_send does (recorded:
    # tests/fixtures/kernel/natpmtu.json)
    cdef int r = icmp_error_v4(e, f, p, 3, 4, mtu, p.daddr[3], 576 - 28)
    if r < 0:
        e.counters[C_FRAG_NEEDED_SENT] += 1
    return r


cdef int icmp_time_exceeded_v4(fl_engine *e, fl_frame *f, fl_pkt *p,
                               uint32_t saddr) noexcept nogil:
    # A packet that arrived with TTL 1 (or 0) is not forwarded: time exceeded in transit
    # back to its sender, quoting as much of it as fits in 576 bytes, as the kernel's
    # icmp_send does (recorded: tests/fixtures/kernel/ttl.json). Counted either way.
    if saddr == 0:
        return C_TTL_EXCEEDED           # no address to answer from: the drop counts it
    e.counters[C_TTL_EXCEEDED] += 1
    return icmp_error_v4(e, f, p, 11, 0, 0, saddr, 576 - 28)


cdef int xmit_cut_later(fl_engine *e, fl_frame *f, uint32_t l2len) noexcept nogil:
    # A frame whose output is over the MTU and may be fragmented (a TUN packet without DF
    # on its outer header) gets a record as a rebuilt datagram has one, so that frag_cut
    # cuts its output as ip_fragment does (to the MTU: frag_max 0)
    cdef fl_frag *F = &e.frag
    cdef fl_xrec *rec
    if F.nxrec >= MAX_BATCH:
        return C_FRAG_NO_ROOM
    rec = &F.xrec[F.nxrec]
    rec.l2len = <uint8_t>l2len
    rec.frag_max = 0
    rec.seg0 = 0
    rec.nseg = 0
    F.nxrec += 1
    f.xrec = <uint16_t>F.nxrec
    return -1


cdef int xmit_tun_v4(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # IPIP: outer header (local IP -> RIP, proto 4, TOS/TTL copied from the inner header, DF
    # too with pmtu_disc, id 0 with DF as the kernel's ip_select_ident gives) in front of
    # the untouched packet; a GUE or GRE dest gets its header between the two (tunnel.pxi),
    # and the tunnel's MTU is smaller by it.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef uint8_t *inner = f.data + p.l2len
    cdef bint df = (inner[6] & 0x40) != 0 and e.pmtu_disc
    cdef uint32_t hl = 20 + tun_extra(d)
    cdef uint8_t *o
    cdef uint8_t *ip
    cdef int r
    if <uint32_t>p.tot_len + hl > e.mtu and f.xrec == 0:   # a reassembled one is cut later
        # too big for the tunnel: with DF (pmtu_disc) refused, but never an ICMP error
        # (ensure_mtu_is_adequate); else the tunnel packet is fragmented (ip_fragment;
        # `ignore_df` lets an ICMP error's with DF go too: id 0, no piece with DF)
        if df and inner[9] != 1:
            return icmp_frag_needed_v4(e, f, p, <uint16_t>(e.mtu - hl))
        r = xmit_cut_later(e, f, p.l2len)
        if r >= 0:
            return r
        e.counters[C_OVERSIZE] += 1
    if f.headroom < hl:
        return C_NO_HEADROOM
    o = f.data - hl
    memmove(o, f.data, p.l2len)
    eth_set(o, d.mac, d.smac)
    ip = o + p.l2len
    ip[0] = 0x45
    ip[1] = inner[1]
    wr16(ip + 2, <uint16_t>(p.tot_len + hl))
    if df:
        wr16(ip + 4, 0)
        wr16(ip + 6, 0x4000)
    else:
        e.ip_id += 1
        wr16(ip + 4, e.ip_id)
        wr16(ip + 6, 0)
    ip[8] = inner[8]
    ip[9] = 4
    wr16(ip + 10, 0)
    wr32(ip + 12, e.local_ip)
    wr32(ip + 16, d.raddr[3])
    if hl != 20:
        ip[9] = tun_encap(d, p, ip, 20, p.tot_len, False)
    wr16(ip + 10, csum_of(ip, 20))
    frame_tx(f, d.ifindex, -<int32_t>hl, p.l2len + hl + p.tot_len)
    return -1


cdef xmit_fn[5] XMIT = [NULL, xmit_dr_v4, xmit_nat_v4, xmit_tun_v4, xmit_nat_out_v4]
