# Parsing one Ethernet frame carrying IPv6 + TCP/UDP into an fl_pkt (parse_frame hands over
# at the ethertype). Addresses fill all four words of saddr/daddr; ihl is the 40-byte fixed
# header and tot_len 40 + the payload length, so the v4 code's offsets hold. A Fragment
# header right after the fixed one goes to reassembly (frag6.pxi); other extension headers
# are not walked: such a packet to a VIP is dropped and counted (v6_exthdr), one to
# anything else is the host's, as is ICMPv6 but for errors about conns (icmp6.pxi).

cdef inline void addr6_read(const uint8_t *b, uint32_t *a) noexcept nogil:
    a[0] = rd32(b)
    a[1] = rd32(b + 4)
    a[2] = rd32(b + 8)
    a[3] = rd32(b + 12)


cdef inline void addr6_write(uint8_t *b, const uint32_t *a) noexcept nogil:
    wr32(b, a[0])
    wr32(b + 4, a[1])
    wr32(b + 8, a[2])
    wr32(b + 12, a[3])


cdef inline uint32_t addr6_fold(const uint32_t *a) noexcept nogil:
    # the key of a v6 address in the uint32 address sets (never 0: 0 marks an empty slot)
    cdef uint32_t x = a[0] ^ ((a[1] << 8) | (a[1] >> 24)) ^ ((a[2] << 16) | (a[2] >> 16)) \
        ^ ((a[3] << 24) | (a[3] >> 8))
    return x if x != 0 else 1


cdef inline bint ip6_is_exthdr(uint8_t nh) noexcept nogil:
    # hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6,
    # experimental (RFC 7045's list; ESP ends the readable headers and is not ours either)
    return (nh == 0 or nh == 43 or nh == 44 or nh == 51 or nh == 60 or nh == 135
            or nh == 139 or nh == 140 or nh == 253 or nh == 254)


cdef int parse_frame_v6(fl_engine *e, fl_frame *f, fl_pkt *p, uint32_t l2) noexcept nogil:
    # Returns PARSE_OK, or the C_* counter explaining why the frame is not handled. A
    # partial TCP/UDP checksum (a sender with checksum offload) is completed here, and the
    # frame then marked complete: the batch loop's v4 test must not read this header.
    cdef const uint8_t *ip = f.data + l2
    cdef const uint8_t *l4
    cdef uint32_t n = f.len
    cdef uint32_t plen, doff, ulen
    cdef uint8_t nh
    if n < l2 + 40:
        return C_MALFORMED
    if (ip[0] >> 4) != 6:
        return C_MALFORMED
    plen = rd16(ip + 4)
    if plen > n - l2 - 40 or plen > 65535 - 40:
        return C_MALFORMED
    p.v6 = 1
    addr6_read(ip + 8, p.saddr)
    addr6_read(ip + 24, p.daddr)
    p.l2len = <uint16_t>l2
    p.ihl = 40
    p.tot_len = <uint16_t>(40 + plen)
    nh = ip[6]
    p.proto = nh
    l4 = ip + 40
    if nh == 6:
        if plen < 20:
            return C_MALFORMED
        doff = <uint32_t>(l4[12] >> 4) * 4
        if doff < 20 or doff > plen:
            return C_MALFORMED
        p.tcpflags = l4[13]
    elif nh == 17:
        if plen < 8:
            return C_MALFORMED
        ulen = rd16(l4 + 4)
        if ulen < 8 or ulen > plen:
            return C_MALFORMED
        p.tcpflags = 0
    elif nh == 58:
        return PARSE_ICMP               # icmp6.pxi: errors about conns; the rest the host's
    elif nh == 44:
        # a Fragment header right after the fixed one: frag6_input takes it from here
        if plen < 8:
            return C_MALFORMED
        return C_FRAGMENT
    elif ip6_is_exthdr(nh):
        return C_V6_EXTHDR              # batch.pxi: dropped if to a VIP, else the host's
    else:
        return C_NO_SERVICE
    p.sport = rd16(l4)
    p.dport = rd16(l4 + 2)
    if f.csum != FRAME_CSUM_FULL:
        if f.csum == FRAME_CSUM_PARTIAL or l4_csum_looks_partial_v6(ip, plen, nh):
            l4_csum_complete(<uint8_t *>ip, 40, plen, nh)
            e.counters[C_CSUM_COMPLETED] += 1
        f.csum = FRAME_CSUM_FULL
    return PARSE_OK


cdef inline bint l4_csum_looks_partial_v6(const uint8_t *ip, uint32_t l4len,
                                          uint8_t proto) noexcept nogil:
    # As l4_csum_looks_partial, over the v6 pseudo-header (both addresses, length, proto).
    cdef const uint8_t *l4 = ip + 40
    cdef uint64_t ps = 0
    cdef uint32_t field
    cdef int i
    if proto == 17:
        field = rd16(l4 + 6)
        if field == 0:
            return False
        l4len = rd16(l4 + 4)
    else:
        field = rd16(l4 + 16)
    for i in range(8):
        ps += rd32(ip + 8 + 4 * i)
    ps += proto + l4len
    ps = (ps & 0xFFFF) + (ps >> 16)
    ps = (ps & 0xFFFF) + (ps >> 16)
    ps = (ps & 0xFFFF) + (ps >> 16)
    return field == ps
