# IPv6 forwarding, as IPVS's *_v6 transmit functions (ip_vs_xmit.c): DR rewrites MACs (the
# v4 function serves), NAT66 rewrites the destination (and the source of replies) with the
# L4 checksum updated over the 128-bit addresses (IPv6 has no header checksum), TUN puts an
# outer IPv6 header (next header 41, IPv6-in-IPv6) in the headroom. The hop limit is
# handled as decrement_ttl does for v6: at 1 the packet is answered with ICMPv6 time
# exceeded; a TUN packet too big for the tunnel gets ICMPv6 packet too big.

cdef enum:
    ICMP6_QUOTE = 1280 - 48     # icmpv6_send quotes what fits in the minimum MTU


cdef inline void l4_csum_replace16(uint8_t *field, const uint32_t *old, const uint32_t *new,
                                   bint udp) noexcept nogil:
    # RFC 1624 over the eight 16-bit words of an address; UDP's 0 (none) stays 0
    cdef uint32_t s
    cdef int i
    if udp and rd16(field) == 0:
        return
    s = ~rd16(field) & 0xFFFF
    for i in range(4):
        s += (~(old[i] >> 16) & 0xFFFF) + (~old[i] & 0xFFFF)
        s += (new[i] >> 16) + (new[i] & 0xFFFF)
    wr16(field, <uint16_t>(~csum_fold(s) & 0xFFFF))
    if udp and rd16(field) == 0:
        wr16(field, 0xFFFF)


cdef inline void persist_net_v6(uint32_t plen, const uint32_t *saddr, uint32_t *snet) noexcept nogil:
    # -M for a v6 service is a prefix length (the kernel keeps it in svc->netmask too)
    cdef uint32_t i, lo
    cdef uint32_t ones = 0xFFFFFFFFu
    for i in range(4):
        lo = 32 * i
        if plen >= lo + 32:
            snet[i] = saddr[i]
        elif plen <= lo:
            snet[i] = 0
        else:
            snet[i] = saddr[i] & (ones << (32 - (plen - lo)))


cdef int icmp6_error(fl_engine *e, fl_frame *f, fl_pkt *p, uint8_t type, uint8_t code,
                     uint32_t info, const uint32_t *saddr) noexcept nogil:
    # An ICMPv6 error back to the frame's sender from `saddr`, quoting as much of its packet
    # as fits in 1280 bytes, out of the interface it came in by. Built in the headroom: the
    # quoted bytes stay where they are, the new headers go 48 bytes before them.
    cdef uint32_t quote = p.tot_len
    cdef uint8_t *o
    cdef uint8_t *ip
    cdef uint8_t *ic
    cdef uint8_t mac[6]
    cdef uint32_t s = 0
    cdef int i
    if quote > ICMP6_QUOTE:
        quote = ICMP6_QUOTE
    if f.headroom < 48:
        return C_NO_HEADROOM
    o = f.data - 48
    memcpy(mac, f.data, 6)
    memmove(o, f.data, p.l2len)
    memcpy(o, o + 6, 6)                 # back to the sender's MAC ...
    memcpy(o + 6, mac, 6)               # ... from the MAC it sent to
    ip = o + p.l2len
    ic = ip + 40
    wr32(ip, 0x60000000)
    wr16(ip + 4, <uint16_t>(8 + quote))
    ip[6] = 58
    ip[7] = 64
    addr6_write(ip + 8, saddr)
    addr6_write(ip + 24, p.saddr)
    ic[0] = type
    ic[1] = code
    wr16(ic + 2, 0)
    wr32(ic + 4, info)
    for i in range(4):
        s += (saddr[i] >> 16) + (saddr[i] & 0xFFFF) + (p.saddr[i] >> 16) + (p.saddr[i] & 0xFFFF)
    s += 8 + quote + 58
    wr16(ic + 2, <uint16_t>(~csum_fold(csum_add_bytes(s, ic, 8 + quote)) & 0xFFFF))
    frame_tx(f, 0, -48, p.l2len + 48 + quote)
    return -1


cdef int icmp6_time_exceeded(fl_engine *e, fl_frame *f, fl_pkt *p,
                             const uint32_t *saddr) noexcept nogil:
    # hop limit exceeded in transit (type 3 code 0); counted either way
    if saddr[0] == 0 and saddr[1] == 0 and saddr[2] == 0 and saddr[3] == 0:
        return C_TTL_EXCEEDED
    e.counters[C_TTL_EXCEEDED] += 1
    return icmp6_error(e, f, p, 3, 0, 0, saddr)


cdef int xmit_nat_v6(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # client -> VIP:vport becomes client -> RIP:rport
    cdef fl_dest *d = &e.dests[c.dest]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *l4 = ip + 40
    cdef bint udp = p.proto == 17
    cdef uint8_t *ck = l4 + (6 if udp else 16)
    cdef uint16_t rport = conn_rport(e, c)
    addr6_write(ip + 24, d.raddr)
    l4_csum_replace16(ck, p.daddr, d.raddr, udp)
    if p.dport != rport:
        wr16(l4 + 2, rport)
        l4_csum_replace2(ck, p.dport, rport, udp)
    eth_set(f.data, d.mac, d.smac)
    frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
    return -1


cdef int xmit_nat_out_v6(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # RS reply RIP:rport -> client becomes VIP:vport -> client, sent to the client's next hop
    cdef fl_vip *v = &e.vips[c.vip]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *l4 = ip + 40
    cdef bint udp = p.proto == 17
    cdef uint8_t *ck = l4 + (6 if udp else 16)
    cdef fl_neigh6 *nb = neigh6_find(e, p.daddr, neigh_tick(e.now))
    if nb != NULL:
        eth_set(f.data, nb.mac, e.local_mac)
        frame_tx(f, nb.ifindex, 0, p.l2len + p.tot_len)
    elif e.has_gw6:
        eth_set(f.data, e.gw6_mac, e.local_mac)
        frame_tx(f, e.gw6_ifindex, 0, p.l2len + p.tot_len)
    else:
        return C_NO_ROUTE
    addr6_write(ip + 8, v.addr)
    l4_csum_replace16(ck, p.saddr, v.addr, udp)
    if p.sport != c.vport:
        wr16(l4, c.vport)
        l4_csum_replace2(ck, p.sport, c.vport, udp)
    return -1


cdef int xmit_tun_v6(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # IPv6-in-IPv6: an outer header (local v6 address -> RIP, next header 41, traffic class
    # and the decremented hop limit copied from the inner one, flow label 0: recorded,
    # tests/fixtures/kernel/ipv6.json) in front of the untouched packet.
    # One too big for the tunnel is refused with packet too big (the tunnel's MTU) unless
    # it is ICMPv6 itself, as ensure_mtu_is_adequate does for v6: IPv6 routers never cut.
    # A GUE or GRE dest gets its header after the outer one (tunnel.pxi).
    cdef fl_dest *d = &e.dests[c.dest]
    cdef uint8_t *inner = f.data + p.l2len
    cdef uint32_t hl = 40 + tun_extra(d)
    cdef uint8_t *o
    cdef uint8_t *ip
    if <uint32_t>p.tot_len + hl > e.mtu and f.xrec == 0:     # reassembled: frag6_toobig
        if inner[6] == 58 or e.mtu < 1280 + hl:
            return C_OVERSIZE
        e.counters[C_FRAG_NEEDED_SENT] += 1
        return icmp6_error(e, f, p, 2, 0, e.mtu - hl, p.daddr)
    if e.local_ip6[0] == 0 and e.local_ip6[1] == 0 and e.local_ip6[2] == 0 \
            and e.local_ip6[3] == 0:
        return C_NO_ROUTE               # no v6 address of ours to send the tunnel from
    if f.headroom < hl:
        return C_NO_HEADROOM
    o = f.data - hl
    memmove(o, f.data, p.l2len)
    eth_set(o, d.mac, d.smac)
    ip = o + p.l2len
    wr32(ip, rd32(inner) & 0xFFF00000u) # version and traffic class; flow label 0 (recorded)
    wr16(ip + 4, <uint16_t>(p.tot_len + hl - 40))
    ip[6] = 41
    ip[7] = inner[7]
    addr6_write(ip + 8, e.local_ip6)
    addr6_write(ip + 24, d.raddr)
    if hl != 40:
        ip[6] = tun_encap(d, p, ip, 40, p.tot_len, True)
    frame_tx(f, d.ifindex, -<int32_t>hl, p.l2len + hl + p.tot_len)
    return -1


cdef xmit_fn[5] XMIT6 = [NULL, xmit_dr_v4, xmit_nat_v6, xmit_tun_v6, xmit_nat_out_v6]


cdef int forward_in_v6(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # decrement_ttl for v6, then the conn's transmit function; the answer to a packet at
    # hop limit 1 comes from the address it was sent to (the VIP). Out of line: the v4
    # path it sits beside must stay as small as it was.
    cdef uint8_t *ip = f.data + p.l2len
    cdef int r
    if fl_unlikely(ip[7] <= 1):
        return icmp6_time_exceeded(e, f, p, p.daddr)
    ip[7] -= 1
    if fl_unlikely(f.xrec != 0):
        r = frag6_toobig(e, f, p, c)
        if r != 0:
            return r
    return XMIT6[c.fwd](e, f, p, c)


cdef void conn_forward_out_v6(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c,
                              uint64_t now) noexcept nogil:
    # conn_forward_out for a NAT66 reply: a hop limit of 1 ends it in the director's
    # forwarding (no stats, no state), answered from the director's own v6 address
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef uint8_t *ip = f.data + p.l2len
    cdef int r
    if fl_unlikely(ip[7] <= 1):
        r = icmp6_time_exceeded(e, f, p, e.local_ip6)
        if r >= 0:
            frame_drop(e, f, r)
        return
    ip[7] -= 1
    d.outpkts += 1
    d.outbytes += p.tot_len
    s.outpkts += 1
    s.outbytes += p.tot_len
    if p.proto == 6:
        tcp_set_state(e, c, True, p.tcpflags)
    else:
        c.timeout = e.udp_timeout
    r = xmit_nat_out_v6(e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    c.expires = now + secs(c.timeout)
    if fl_unlikely(e.sync.meta != NULL):
        sync_out_packet(e, c)
