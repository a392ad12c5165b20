# ICMPv6 errors about existing conns, both ways, as IPVS's ip_vs_in_icmp_v6 and
# ip_vs_out_icmp_v6: an error (destination unreachable, packet too big, time exceeded,
# parameter problem) quoting what a service sent a client (VIP:vport -> client) goes to the
# conn's real server (DR rewrites MACs, TUN encapsulates, NAT66 rewrites the outer
# destination and the quoted source address and port); one from a NAT66 server's side
# quoting a request the server got (client -> RIP:rport) goes to the client from the VIP, so
# path-MTU discovery works through NAT66. The quoted packet must be IPv6 with TCP or UDP
# right after its fixed header; anything else is the host's, as other ICMPv6 is.

cdef inline uint32_t icmp6_pseudo(const uint8_t *ip, uint32_t n) noexcept nogil:
    # the ICMPv6 pseudo-header: both addresses of the outer header, length, next header 58
    return csum_add_bytes(0, ip + 8, 32) + n + 58


cdef inline bint icmp6_csum_ok(const uint8_t *ip, uint32_t n) noexcept nogil:
    return csum_fold(csum_add_bytes(icmp6_pseudo(ip, n), ip + 40, n)) == 0xFFFF


cdef inline void icmp6_csum_set(uint8_t *ip, uint32_t n) noexcept nogil:
    wr16(ip + 42, 0)
    wr16(ip + 42, <uint16_t>(~csum_fold(csum_add_bytes(icmp6_pseudo(ip, n), ip + 40, n))
                             & 0xFFFF))


cdef int icmp6_parse(fl_engine *e, fl_frame *f, fl_pkt *p) noexcept nogil:
    # parse_frame_v6 said ICMPv6 (payload length checked). ICMP_OK with p set as the reverse
    # of the quoted packet (icmp_parse's key), or the C_* counter of a drop or a pass.
    cdef const uint8_t *ip = f.data + p.l2len
    cdef const uint8_t *ic = ip + 40
    cdef const uint8_t *q = ic + 8
    cdef uint32_t n = <uint32_t>p.tot_len - 40
    if n < 8:
        return C_MALFORMED
    if ic[0] >= 128 or ic[0] == 0:
        return C_NO_SERVICE             # informational (neighbour discovery, echo): the host's
    if n < 8 + 40 + 4 or (q[0] >> 4) != 6 or (q[6] != 6 and q[6] != 17):
        return C_ICMP_NO_CONN
    p.proto = q[6]
    p.tcpflags = 0
    addr6_read(q + 24, p.saddr)
    addr6_read(q + 8, p.daddr)
    p.sport = rd16(q + 42)
    p.dport = rd16(q + 40)
    p.vip = vip_find_in(e, p.daddr, p.dport, p.proto)
    if p.vip != 0:
        p.bucket = conn_hash(e, p.saddr, p.sport, p.proto)
    else:
        p.bucket = conn_hash(e, p.daddr, p.dport, p.proto)
    return ICMP_OK


cdef void icmp6_forward_in(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # ip_vs_in_icmp_v6 for an error quoting what a client was sent; the conn's state and
    # timer stay as they are, the error counts as an incoming packet of it
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *q = ip + 48
    cdef uint32_t n = <uint32_t>p.tot_len - 40
    cdef int r
    if not icmp6_csum_ok(ip, n):
        frame_drop(e, f, C_ICMP_BAD_CHECKSUM)
        return
    d.inpkts += 1
    d.inbytes += p.tot_len
    s.inpkts += 1
    s.inbytes += p.tot_len
    if ip[7] <= 1:
        frame_drop(e, f, C_TTL_EXCEEDED)   # and no ICMPv6 about an ICMPv6 error
        return
    ip[7] -= 1
    if c.fwd == FWD_NAT:
        addr6_write(ip + 24, d.raddr)
        addr6_write(q + 8, d.raddr)
        wr16(q + 40, conn_rport(e, c))
        icmp6_csum_set(ip, n)
        eth_set(f.data, d.mac, d.smac)
        frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
        r = -1
    else:
        r = XMIT6[c.fwd](e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    else:
        e.counters[C_ICMP_RELATED] += 1


cdef void icmp6_forward_out(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # ip_vs_out_icmp_v6 for an error quoting a request a NAT66 server got, on its way to the
    # client: it leaves from the VIP, about a packet sent to VIP:vport
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef fl_vip *v = &e.vips[c.vip]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *q = ip + 48
    cdef uint32_t n = <uint32_t>p.tot_len - 40
    cdef uint32_t dst[4]
    cdef fl_neigh6 *nb
    if ip[7] <= 1:
        frame_drop(e, f, C_TTL_EXCEEDED)
        return
    if not icmp6_csum_ok(ip, n):
        frame_drop(e, f, C_ICMP_BAD_CHECKSUM)
        return
    addr6_read(ip + 24, dst)
    nb = neigh6_find(e, dst, neigh_tick(e.now))
    if nb != NULL:
        eth_set(f.data, nb.mac, e.local_mac)
        frame_tx(f, nb.ifindex, 0, p.l2len + p.tot_len)
    elif e.has_gw6:
        eth_set(f.data, e.gw6_mac, e.local_mac)
        frame_tx(f, e.gw6_ifindex, 0, p.l2len + p.tot_len)
    else:
        frame_drop(e, f, C_NO_ROUTE)
        return
    ip[7] -= 1
    addr6_write(ip + 8, v.addr)
    addr6_write(q + 24, v.addr)
    wr16(q + 42, c.vport)
    icmp6_csum_set(ip, n)
    d.outpkts += 1
    d.outbytes += p.tot_len
    s.outpkts += 1
    s.outbytes += p.tot_len
    e.counters[C_ICMP_RELATED] += 1


cdef void icmp6_handle(fl_engine *e, fl_frame *f, fl_pkt *p, uint64_t now) noexcept nogil:
    # icmp_handle for v6: the quoted packet's conn, as sent to a client, then as a request
    # a NAT66 server got; neither, the host's
    cdef uint32_t ci
    if p.vip != 0:
        ci = conn_lookup_in(e, p, now)
        if ci != 0:
            icmp6_forward_in(e, f, p, &e.conns[ci - 1])
            return
    ci = conn_lookup_out(e, p, now)
    if ci != 0:
        icmp6_forward_out(e, f, p, &e.conns[ci - 1])
        return
    frame_pass(e, f, C_ICMP_NO_CONN)
