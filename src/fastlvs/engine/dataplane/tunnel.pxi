# TUN's encapsulations besides plain IPIP / IPv6-in-IPv6: GUE (an outer UDP header to the
# dest's tun_port and a 4-byte GUE header) and GRE (4 bytes, 8 with a checksum), put between
# the outer IP header that xmit_tun_v4/xmit_tun_v6 write and the untouched inner packet, as
# the 6.1 kernel's ipvs_gue_encap/ipvs_gre_encap do (recorded: tests/fixtures/kernel/tunnels.json).

# TUN_IPIP/GUE/GRE, TUN_F_CSUM/REMCSUM and GUE_PORT_MIN/MAX come from contract.py.


cdef inline uint32_t tun_extra(const fl_dest *d) noexcept nogil:
    # bytes between the outer IP header and the inner packet. remcsum never adds its option
    # here: a forwarded packet's checksum is complete, never CHECKSUM_PARTIAL.
    if d.tun_type == TUN_GUE:
        return 12
    if d.tun_type == TUN_GRE:
        return 8 if d.tun_flags & TUN_F_CSUM else 4
    return 0


cdef inline uint16_t gue_sport(const fl_pkt *p, const uint8_t *inner) noexcept nogil:
    # udp_flow_src_port: a hash of the inner flow scaled into the local port range, so one
    # flow keeps one source port and flows spread over the receivers' queues. The kernel's
    # hash has a per-boot random seed; ours is a fixed mix of the same inputs: for IPv6
    # with a flow label the label stands for the ports (the flow dissector stops there:
    # recorded, every TCP flow of one v6 client and label got one port).
    cdef uint32_t ports = (<uint32_t>p.sport << 16) | p.dport
    cdef uint32_t h = p.saddr[0] ^ p.saddr[1] ^ p.saddr[2] ^ p.saddr[3]
    if p.v6 and rd32(inner) & 0xFFFFFu:
        ports = rd32(inner) & 0xFFFFFu
    h = (h * 0x9E3779B1u) ^ p.daddr[0] ^ p.daddr[1] ^ p.daddr[2] ^ p.daddr[3]
    h = (h * 0x85EBCA6Bu) ^ ports
    h = (h * 0xC2B2AE35u) ^ p.proto
    h ^= h >> 16
    h *= 0x7FEB352Du
    h ^= h >> 15
    return <uint16_t>(((<uint64_t>h * (GUE_PORT_MAX - GUE_PORT_MIN)) >> 32) + GUE_PORT_MIN)


cdef uint8_t tun_encap(const fl_dest *d, const fl_pkt *p, uint8_t *ip, uint32_t iphl,
                       uint32_t inner_len, bint v6) noexcept nogil:
    # Writes the GUE or GRE header after the outer IP header `ip` (addresses already in
    # place) and returns the outer header's protocol. The UDP checksum is 0 unless csum or
    # remcsum is set (udp_set_csum / udp6_set_csum); GRE's covers itself and the inner packet.
    cdef uint8_t *h = ip + iphl
    cdef uint8_t inner_proto = 41 if v6 else 4
    cdef uint32_t s
    cdef uint32_t ulen
    cdef uint16_t ck
    if d.tun_type == TUN_GUE:
        ulen = 12 + inner_len
        wr16(h, gue_sport(p, h + 12))
        wr16(h + 2, d.tun_port)
        wr16(h + 4, <uint16_t>ulen)
        wr16(h + 6, 0)
        h[8] = 0                        # version 0, control 0, hlen 0
        h[9] = inner_proto
        wr16(h + 10, 0)                 # flags
        if d.tun_flags & (TUN_F_CSUM | TUN_F_REMCSUM):
            if v6:
                s = csum_add_bytes(0, ip + 8, 32)
            else:
                s = csum_add_bytes(0, ip + 12, 8)
            s += 17 + ulen
            s = csum_fold(csum_add_bytes(s, h, 12))
            s = csum_fold(s + csum_fold_wide(h + 12, inner_len))
            ck = <uint16_t>(~s & 0xFFFF)
            wr16(h + 6, ck if ck != 0 else 0xFFFF)
        return 17
    # GRE: C bit with a checksum, version 0, the inner packet's ethertype
    wr16(h, 0x8000 if d.tun_flags & TUN_F_CSUM else 0)
    wr16(h + 2, 0x86DD if v6 else 0x0800)
    if d.tun_flags & TUN_F_CSUM:
        wr32(h + 4, 0)
        s = csum_fold(csum_add_bytes(0, h, 8))
        s = csum_fold(s + csum_fold_wide(h + 8, inner_len))
        wr16(h + 4, <uint16_t>(~s & 0xFFFF))
    return 47


cdef int tun_quoted_encap(fl_engine *e, const uint8_t *q, uint32_t qihl,
                          uint32_t n) noexcept nogil:
    # ip_vs_in_icmp's UDP/GRE tunnel case (ipvs_udp_decap, ipvs_gre_decap): the length of
    # the GUE or GRE header after the quoted IPv4 header q (n bytes quoted) when it is one
    # of ours, to a TUN dest of that address and tunnel port (ip_vs_find_tunnel) whose type
    # it is, carrying IPIP; -1 when not (the error is then looked at as any other). The
    # dests are walked: this is the path of rare ICMP errors to the director's own address.
    # 6.1 files a GRE dest under its own port but looks for one under port 0, so only a
    # port-0 dest (a firewall-mark service's) is ever found for GRE (recorded: an error
    # about a GRE packet to a port service reached nobody).
    cdef const uint8_t *h = q + qihl
    cdef uint32_t raddr = rd32(q + 16)
    cdef uint32_t i
    cdef uint16_t port = 0
    cdef uint16_t flags
    cdef uint8_t kind
    cdef fl_dest *d = NULL
    if q[9] == 17:
        if n < qihl + 8:
            return -1
        port = rd16(h + 2)
        kind = TUN_GUE
    elif q[9] == 47:
        if n < qihl + 4:
            return -1
        kind = TUN_GRE
    else:
        return -1
    for i in range(1, e.ndests):
        if (e.dests[i].flags & DF_AVAILABLE and e.dests[i].fwd == FWD_TUN
                and e.dests[i].tun_port == port and e.dests[i].raddr[3] == raddr
                and (kind == TUN_GUE or e.dests[i].rport == 0)
                and (e.dests[i].raddr[0] | e.dests[i].raddr[1] | e.dests[i].raddr[2]) == 0):
            d = &e.dests[i]
            break
    if d == NULL or d.tun_type != kind:
        return -1
    if kind == TUN_GUE:
        # version 0, a data message (C clear), IPIP inside: as the kernel, nothing else
        if n < qihl + 12 or (h[8] & 0xE0) != 0 or h[9] != 4:
            return -1
        return 12 + <int>(h[8] & 0x1F) * 4
    flags = rd16(h)
    if (flags & 0x7FFF) != 0 or rd16(h + 2) != 0x0800:
        return -1                       # only version 0 with at most a checksum, IPv4
    return 8 if flags & 0x8000 else 4
