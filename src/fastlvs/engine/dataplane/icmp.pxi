# ICMP errors about existing conns, both ways, as IPVS's ip_vs_in_icmp and ip_vs_out_icmp
# (Linux 6.1, recorded: tests/fixtures/kernel/icmp.json). An error (dest unreachable, source
# quench, time exceeded) quoting a packet the director sent towards a client (VIP:vport ->
# client) goes to that conn's real server: DR and TUN forward it as they forward the conn,
# NAT rewrites it for the server. One quoting a request a NAT server got (client ->
# RIP:rport) is rewritten to come from the VIP, so path-MTU discovery works through NAT.
# One about the IPIP packet the director sent a TUN server is answered to the client.

cdef enum:
    ICMP_OK = -3            # icmp_parse: an error whose quoted packet may be a conn's
    ICMP_TUN_OK = -4        # ... one quoting our IPIP packet around a client's request
    PKT_ICMP = 2            # fl_pkt.ok of such errors (1: a TCP/UDP packet)
    PKT_ICMP_TUN = 3


cdef int icmp_parse(fl_engine *e, fl_frame *f, fl_pkt *p) noexcept nogil:
    # parse_frame said ICMP. Returns ICMP_OK with p set as the reverse of the quoted packet
    # (saddr:sport its destination, daddr:dport its source), the key both lookups take: as
    # a client -> VIP packet (vip set) and as a NAT server's reply; or the C_* counter of a
    # drop (malformed) or of a pass (not an error, or not one that can name a conn).
    cdef const uint8_t *ic = f.data + p.l2len + p.ihl
    cdef uint32_t n = <uint32_t>p.tot_len - p.ihl
    cdef const uint8_t *q
    cdef uint32_t qihl
    cdef int r
    if p.v6:
        return icmp6_parse(e, f, p)
    if n < 8:
        return C_MALFORMED              # the kernel drops a truncated ICMP header
    if ic[0] != 3 and ic[0] != 4 and ic[0] != 11:
        return C_NO_SERVICE             # not an error IPVS relates to a conn: the host's
    q = ic + 8
    n -= 8
    # the quoted header and its ports are needed to know the conn; a later fragment has none
    if n < 20 or (q[0] >> 4) != 4:
        return C_ICMP_NO_CONN
    qihl = <uint32_t>(q[0] & 0x0F) * 4
    if qihl < 20 or n < qihl + 4 or (rd16(q + 6) & 0x1FFF) != 0:
        return C_ICMP_NO_CONN
    if q[9] == 4:
        return icmp_parse_tun(e, f, p, q, qihl, n)
    if (q[9] == 17 or q[9] == 47) and e.local_ip != 0 \
            and rd32(f.data + p.l2len + 16) == e.local_ip:
        # one about a GUE or GRE packet we sent: as IPIP's, past its header (tunnel.pxi)
        r = tun_quoted_encap(e, q, qihl, n)
        if r > 0:
            return icmp_parse_tun(e, f, p, q, qihl + <uint32_t>r, n)
    if q[9] != 6 and q[9] != 17:
        return C_ICMP_NO_CONN
    p.proto = q[9]
    p.tcpflags = 0
    p.saddr[3] = rd32(q + 16)
    p.sport = rd16(q + qihl + 2)
    p.daddr[3] = rd32(q + 12)
    p.dport = rd16(q + qihl)
    p.vip = vip_find_in(e, p.daddr, p.dport, p.proto)
    if p.vip != 0:
        p.bucket = conn_hash(e, p.saddr, p.sport, p.proto)
    else:
        p.bucket = conn_hash(e, p.daddr, p.dport, p.proto)
    return ICMP_OK


cdef int icmp_parse_tun(fl_engine *e, fl_frame *f, fl_pkt *p, const uint8_t *q,
                        uint32_t qihl, uint32_t n) noexcept nogil:
    # ip_vs_in_icmp's tunnel case: the error quotes an IPIP packet, which must be addressed
    # to the director (only ours are), and inside it the client's request, looked up as it
    # was sent (client -> VIP:vport, not reversed). p is set as that request.
    cdef const uint8_t *t = q + qihl
    cdef uint32_t tihl
    if e.local_ip == 0 or rd32(f.data + p.l2len + 16) != e.local_ip:
        return C_ICMP_NO_CONN
    n -= qihl
    if n < 20 or (t[0] >> 4) != 4:
        return C_ICMP_NO_CONN
    tihl = <uint32_t>(t[0] & 0x0F) * 4
    if tihl < 20 or n < tihl + 4 or (rd16(t + 6) & 0x1FFF) != 0:
        return C_ICMP_NO_CONN
    if t[9] != 6 and t[9] != 17:
        return C_ICMP_NO_CONN
    p.proto = t[9]
    p.tcpflags = 0
    p.saddr[3] = rd32(t + 12)
    p.sport = rd16(t + tihl)
    p.daddr[3] = rd32(t + 16)
    p.dport = rd16(t + tihl + 2)
    p.vip = vip_find_in(e, p.daddr, p.dport, p.proto)
    if p.vip == 0:
        return C_ICMP_NO_CONN
    p.bucket = conn_hash(e, p.saddr, p.sport, p.proto)
    return ICMP_TUN_OK


cdef inline bint icmp_csum_ok(const uint8_t *ic, uint32_t n) noexcept nogil:
    return csum_fold_wide(ic, n) == 0xFFFF


cdef void icmp_nat_rewrite(uint8_t *ip, uint32_t ihl, uint32_t tot, uint32_t addr,
                           bint inout, uint16_t port) noexcept nogil:
    # ip_vs_nat_icmp: out -> in (inout 0) the outer destination and the quoted source
    # address and port become the real server's; in -> out (1) the outer source and the
    # quoted destination become the VIP's. The quoted IP header's checksum is recomputed and
    # its TCP/UDP checksum left as it was, as the kernel leaves it; the ICMP checksum is
    # computed afresh over the whole message.
    cdef uint8_t *ic = ip + ihl
    cdef uint8_t *q = ic + 8
    cdef uint32_t qihl = <uint32_t>(q[0] & 0x0F) * 4
    cdef uint32_t old
    if inout:
        old = rd32(ip + 12)
        wr32(ip + 12, addr)
        wr32(q + 16, addr)
        wr16(q + qihl + 2, port)
    else:
        old = rd32(ip + 16)
        wr32(ip + 16, addr)
        wr32(q + 12, addr)
        wr16(q + qihl, port)
    csum_replace4(ip + 10, old, addr)
    wr16(q + 10, 0)
    wr16(q + 10, csum_of(q, qihl))
    wr16(ic + 2, 0)
    wr16(ic + 2, <uint16_t>(~csum_fold_wide(ic, tot - ihl) & 0xFFFF))


cdef void icmp_forward_in(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # ip_vs_in_icmp + ip_vs_icmp_xmit for an error quoting what a client was sent. The
    # conn's state and timer stay as they are; the error counts as an incoming packet.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef uint8_t *ip = f.data + p.l2len
    cdef int r
    if not icmp_csum_ok(ip + p.ihl, <uint32_t>p.tot_len - p.ihl):
        frame_drop(e, f, C_ICMP_BAD_CHECKSUM)
        return
    d.inpkts += 1
    d.inbytes += p.tot_len
    s.inpkts += 1
    s.inbytes += p.tot_len
    if ip[8] <= 1:
        # decrement_ttl refuses it, and no ICMP is sent about an ICMP error
        frame_drop(e, f, C_TTL_EXCEEDED)
        return
    ttl_dec_v4(ip)
    if c.fwd == FWD_NAT:
        icmp_nat_rewrite(ip, p.ihl, p.tot_len, d.raddr[3], False, conn_rport(e, c))
        eth_set(f.data, d.mac, d.smac)
        frame_tx(f, d.ifindex, 0, p.l2len + p.tot_len)
        r = -1
    else:
        r = XMIT[c.fwd](e, f, p, c)
    if r >= 0:
        frame_drop(e, f, r)
    else:
        e.counters[C_ICMP_RELATED] += 1


cdef void icmp_forward_out(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # ip_vs_out_icmp + handle_response_icmp for an error quoting a request a NAT real server
    # got, from the server or a router on its side, on its way to the client: it leaves
    # from the VIP, about a packet sent to VIP:vport.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef fl_vip *v = &e.vips[c.vip]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint32_t dst = rd32(ip + 16)
    cdef fl_neigh *nb = NULL
    if ip[8] <= 1:
        # ip_forward drops it before IPVS sees it (and sends nothing about an ICMP error)
        frame_drop(e, f, C_TTL_EXCEEDED)
        return
    if not icmp_csum_ok(ip + p.ihl, <uint32_t>p.tot_len - p.ihl):
        frame_drop(e, f, C_ICMP_BAD_CHECKSUM)
        return
    if neigh_on_link(e, dst):
        nb = neigh_find(e, dst, neigh_tick(e.now))
    if nb != NULL:
        eth_set(f.data, nb.mac, e.local_mac)
        frame_tx(f, nb.ifindex, 0, p.l2len + p.tot_len)
    elif e.has_gw:
        eth_set(f.data, e.gw_mac, e.local_mac)
        frame_tx(f, e.gw_ifindex, 0, p.l2len + p.tot_len)
    else:
        frame_drop(e, f, C_NO_ROUTE)
        return
    ttl_dec_v4(ip)
    icmp_nat_rewrite(ip, p.ihl, p.tot_len, v.addr[3], True, c.vport)
    d.outpkts += 1
    d.outbytes += p.tot_len
    s.outpkts += 1
    s.outbytes += p.tot_len
    e.counters[C_ICMP_RELATED] += 1


cdef void icmp_answer_tun(fl_engine *e, fl_frame *f, fl_pkt *p, fl_conn *c) noexcept nogil:
    # The error about our IPIP packet goes to the client as the kernel's icmp_send makes it:
    # same type and code, from the VIP, TTL 64, quoting the client's request as far as it
    # was quoted (at most 576 bytes in all); a frag-needed says the MTU towards the server
    # less the 20 bytes of IPIP, and is not sent when the request did not set DF (the
    # kernel's PMTU update stays the kernel's). Built in place: the request moves up.
    cdef fl_dest *d = &e.dests[c.dest]
    cdef fl_svc *s = &e.svcs[d.svc]
    cdef uint8_t *ip = f.data + p.l2len
    cdef uint8_t *ic = ip + p.ihl
    cdef uint8_t *q = ic + 8
    cdef uint8_t *t = q + <uint32_t>(q[0] & 0x0F) * 4
    cdef uint32_t tlen
    if q[9] != 4:                       # past a GUE/GRE header (parse found it)
        t += tun_quoted_encap(e, q, <uint32_t>(q[0] & 0x0F) * 4,
                              <uint32_t>p.tot_len - p.ihl - 8)
    tlen = <uint32_t>p.tot_len - <uint32_t>(t - ip)
    cdef uint32_t quote = tlen
    cdef uint32_t info = rd32(ic + 4)
    cdef uint32_t mtu
    cdef uint8_t type = ic[0]
    cdef uint8_t code = ic[1]
    cdef uint8_t tos = t[1]
    cdef uint32_t client = p.saddr[3]
    cdef fl_neigh *nb = NULL
    if not icmp_csum_ok(ic, <uint32_t>p.tot_len - p.ihl):
        frame_drop(e, f, C_ICMP_BAD_CHECKSUM)
        return
    if type == 3 and code == 4:
        if not (t[6] & 0x40):
            frame_drop(e, f, C_ICMP_RELATED)    # consumed: the client does no PMTU discovery
            return
        mtu = e.mtu
        if mtu > 68 + 20:
            mtu -= 20
        info = mtu
    if quote > 576 - 28:
        quote = 576 - 28
    if neigh_on_link(e, client):
        nb = neigh_find(e, client, neigh_tick(e.now))
    if nb != NULL:
        eth_set(f.data, nb.mac, e.local_mac)
        frame_tx(f, nb.ifindex, 0, p.l2len + 28 + quote)
    elif e.has_gw:
        eth_set(f.data, e.gw_mac, e.local_mac)
        frame_tx(f, e.gw_ifindex, 0, p.l2len + 28 + quote)
    else:
        frame_drop(e, f, C_NO_ROUTE)
        return
    memmove(ip + 28, t, quote)
    ip[0] = 0x45
    ip[1] = (tos & 0x1E) | 0xC0
    wr16(ip + 2, <uint16_t>(28 + quote))
    e.ip_id += 1
    wr16(ip + 4, e.ip_id)
    wr16(ip + 6, 0)
    ip[8] = 64
    ip[9] = 1
    wr16(ip + 10, 0)
    wr32(ip + 12, p.daddr[3])
    wr32(ip + 16, client)
    wr16(ip + 10, csum_of(ip, 20))
    ic = ip + 20
    ic[0] = type
    ic[1] = code
    wr16(ic + 2, 0)
    wr32(ic + 4, info)
    wr16(ic + 2, csum_of(ic, 8 + quote))
    # ip_vs_out_stats on the request as quoted, and again on the error made of it, which
    # passes IPVS's output hook and matches the conn there (a DR/TUN conn's VIP side)
    d.outpkts += 2
    d.outbytes += tlen + 28 + quote
    s.outpkts += 2
    s.outbytes += tlen + 28 + quote
    e.counters[C_ICMP_RELATED] += 1


cdef void icmp_handle(fl_engine *e, fl_frame *f, fl_pkt *p, uint64_t now) noexcept nogil:
    # The quoted packet's conn: first as something the director sent a client (VIP:vport ->
    # client), then as a request it sent a NAT server (client -> RIP:rport); neither, the
    # error is the host's (IPVS accepts it to the local stack).
    cdef uint32_t ci
    cdef uint8_t *q
    if p.v6:
        icmp6_handle(e, f, p, now)
        return
    if p.ok == PKT_ICMP_TUN:
        ci = conn_lookup_in(e, p, now)
        if ci != 0:
            # ip_vs_find_tunnel: the IPIP packet went to this conn's TUN server
            q = f.data + p.l2len + p.ihl + 8
            if (e.conns[ci - 1].fwd == FWD_TUN
                    and e.dests[e.conns[ci - 1].dest].raddr[3] == rd32(q + 16)):
                icmp_answer_tun(e, f, p, &e.conns[ci - 1])
                return
        frame_pass(e, f, C_ICMP_NO_CONN)
        return
    if p.vip != 0:
        ci = conn_lookup_in(e, p, now)
        if ci != 0:
            icmp_forward_in(e, f, p, &e.conns[ci - 1])
            return
    ci = conn_lookup_out(e, p, now)
    if ci != 0:
        icmp_forward_out(e, f, p, &e.conns[ci - 1])
        return
    frame_pass(e, f, C_ICMP_NO_CONN)
