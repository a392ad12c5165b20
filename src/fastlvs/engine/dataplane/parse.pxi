# Parsing one Ethernet frame (optionally one 802.1Q tag) carrying IPv4 + TCP/UDP into an
# fl_pkt (ICMP is only recognised here: icmp.pxi reads the error and what it quotes). Every
# length is checked before it is read; the IP total length, not the frame length, bounds
# the packet (Ethernet padding is ignored).

cdef enum:
    PARSE_OK = -1
    PARSE_ICMP = -2         # an ICMP message, l2len/ihl/tot_len/addresses filled: icmp.pxi
    PARSE_IPV6 = -5         # IPv6, l2len filled: parse_frame_v6 (parse6.pxi) takes over


cdef inline int parse_frame(fl_frame *f, fl_pkt *p) noexcept nogil:
    # Returns PARSE_OK, or the C_* counter explaining why the frame is not handled.
    cdef const uint8_t *d = f.data
    cdef uint32_t n = f.len
    cdef uint32_t l2 = 14
    cdef uint16_t etype
    cdef const uint8_t *ip
    cdef uint32_t ihl, tot, l4len, doff, ulen
    cdef const uint8_t *l4
    p.v6 = 0
    if n < 14:
        return C_MALFORMED
    etype = rd16(d + 12)
    if etype == 0x8100:
        if n < 18:
            return C_MALFORMED
        etype = rd16(d + 16)
        l2 = 18
    if etype != 0x0800:
        if etype == 0x86DD:
            p.l2len = <uint16_t>l2
            return PARSE_IPV6
        return C_NOT_IP
    if n < l2 + 20:
        return C_MALFORMED
    ip = d + l2
    if (ip[0] >> 4) != 4:
        return C_MALFORMED
    ihl = <uint32_t>(ip[0] & 0x0F) * 4
    if ihl < 20 or n < l2 + ihl:
        return C_MALFORMED
    tot = rd16(ip + 2)
    if tot < ihl or tot > n - l2:
        return C_MALFORMED
    if not csum_ip_ok(ip, ihl):
        return C_BAD_CHECKSUM
    if (rd16(ip + 6) & 0x3FFF) != 0:          # MF set or an offset: frag_input takes
        # it from here with these three
        p.l2len = <uint16_t>l2
        p.ihl = <uint16_t>ihl
        p.tot_len = <uint16_t>tot
        return C_FRAGMENT
    p.proto = ip[9]
    l4 = ip + ihl
    l4len = tot - ihl
    if p.proto == 6:
        if l4len < 20:
            return C_MALFORMED
        doff = <uint32_t>(l4[12] >> 4) * 4
        if doff < 20 or doff > l4len:
            return C_MALFORMED
        p.tcpflags = l4[13]
    elif p.proto == 17:
        if l4len < 8:
            return C_MALFORMED
        ulen = rd16(l4 + 4)
        if ulen < 8 or ulen > l4len:
            return C_MALFORMED
        p.tcpflags = 0
    elif p.proto == IPPROTO_SCTP:
        if sctp_parse(l4, l4len, p) != PARSE_OK:
            return C_MALFORMED
    elif p.proto == 1:
        p.saddr[0] = 0
        p.saddr[1] = 0
        p.saddr[2] = 0
        p.saddr[3] = rd32(ip + 12)
        p.daddr[0] = 0
        p.daddr[1] = 0
        p.daddr[2] = 0
        p.daddr[3] = rd32(ip + 16)
        p.l2len = <uint16_t>l2
        p.ihl = <uint16_t>ihl
        p.tot_len = <uint16_t>tot
        return PARSE_ICMP
    else:
        return C_NO_SERVICE
    p.sport = rd16(l4)
    p.dport = rd16(l4 + 2)
    p.saddr[0] = 0
    p.saddr[1] = 0
    p.saddr[2] = 0
    p.saddr[3] = rd32(ip + 12)
    p.daddr[0] = 0
    p.daddr[1] = 0
    p.daddr[2] = 0
    p.daddr[3] = rd32(ip + 16)
    p.l2len = <uint16_t>l2
    p.ihl = <uint16_t>ihl
    p.tot_len = <uint16_t>tot
    return PARSE_OK
