# Byte access in network order and Internet checksums: full sums for headers we build or
# verify, RFC 1624 incremental updates (HC' = ~(~HC + ~m + m')) for fields we rewrite, and
# the completion of partial TCP/UDP checksums that senders with checksum offload leave.

cdef inline uint16_t rd16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((<uint16_t>p[0] << 8) | p[1])


cdef inline uint32_t rd32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline void wr16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void wr32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint32_t csum_add_bytes(uint32_t s, const uint8_t *p, uint32_t n) noexcept nogil:
    # Ones' complement partial sum of n bytes (odd tail padded with zero), not folded.
    cdef uint32_t i = 0
    while i + 1 < n:
        s += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint32_t>p[i] << 8
    return s


cdef inline uint16_t csum_fold(uint32_t s) noexcept nogil:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>s


cdef inline uint16_t csum_of(const uint8_t *p, uint32_t n) noexcept nogil:
    # The value to store in a checksum field covering p[0:n] (field zeroed beforehand).
    return <uint16_t>(~csum_fold(csum_add_bytes(0, p, n)) & 0xFFFF)


cdef inline bint csum_ip_ok(const uint8_t *ip, uint32_t ihl) noexcept nogil:
    return csum_fold(csum_add_bytes(0, ip, ihl)) == 0xFFFF


cdef inline void csum_replace2(uint8_t *field, uint16_t old, uint16_t new) noexcept nogil:
    cdef uint32_t s = (~rd16(field) & 0xFFFF) + (~old & 0xFFFF) + new
    wr16(field, <uint16_t>(~csum_fold(s) & 0xFFFF))


cdef inline void csum_replace4(uint8_t *field, uint32_t old, uint32_t new) noexcept nogil:
    cdef uint32_t s = (~rd16(field) & 0xFFFF)
    s += (~(old >> 16) & 0xFFFF) + (~old & 0xFFFF)
    s += (new >> 16) + (new & 0xFFFF)
    wr16(field, <uint16_t>(~csum_fold(s) & 0xFFFF))


cdef inline void l4_csum_replace4(uint8_t *field, uint32_t old, uint32_t new,
                                  bint udp) noexcept nogil:
    # A UDP checksum of 0 means "none" and stays 0; a computed 0 is sent as 0xFFFF.
    if udp and rd16(field) == 0:
        return
    csum_replace4(field, old, new)
    if udp and rd16(field) == 0:
        wr16(field, 0xFFFF)


cdef inline void l4_csum_replace2(uint8_t *field, uint16_t old, uint16_t new,
                                  bint udp) noexcept nogil:
    if udp and rd16(field) == 0:
        return
    csum_replace2(field, old, new)
    if udp and rd16(field) == 0:
        wr16(field, 0xFFFF)


cdef inline uint16_t csum_fold_wide(const uint8_t *p, uint32_t n) noexcept nogil:
    # The folded ones' complement sum of n bytes, 8 at a time: native-order words summed
    # then byte-swapped on little-endian hosts (RFC 1071 2(B): the sum is order-independent).
    cdef uint64_t acc = 0
    cdef uint64_t w
    cdef uint32_t i = 0
    cdef uint16_t probe = 1
    cdef uint32_t s
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        acc += (w & 0xFFFFFFFFULL) + (w >> 32)
        i += 8
    acc = (acc & 0xFFFFFFFFULL) + (acc >> 32)
    acc = (acc & 0xFFFFFFFFULL) + (acc >> 32)
    s = csum_fold(<uint32_t>(acc & 0xFFFF) + <uint32_t>(acc >> 16))
    if (<uint8_t *>&probe)[0] == 1:
        s = ((s & 0xFF) << 8) | (s >> 8)
    return csum_fold(csum_add_bytes(s, p + i, n - i))


cdef inline bint l4_csum_looks_partial(const uint8_t *ip, uint32_t ihl, uint32_t l4len,
                                       uint8_t proto) noexcept nogil:
    # A sender with checksum offload leaves the pseudo-header sum (folded, not complemented)
    # in the TCP/UDP checksum field for the NIC to finish: the test for frames that come
    # without receive metadata. The addresses are summed as 32-bit words (2**16 = 1 in
    # ones' complement arithmetic modulo 0xFFFF, so folding gives the 16-bit word sum).
    cdef const uint8_t *l4 = ip + ihl
    cdef uint64_t ps
    cdef uint32_t field
    if proto == 17:
        field = rd16(l4 + 6)
        if field == 0:
            return False                # no checksum at all
        l4len = rd16(l4 + 4)
    else:
        field = rd16(l4 + 16)
    ps = <uint64_t>rd32(ip + 12) + rd32(ip + 16) + proto + l4len
    ps = (ps & 0xFFFF) + (ps >> 16)
    ps = (ps & 0xFFFF) + (ps >> 16)
    ps = (ps & 0xFFFF) + (ps >> 16)
    return field == ps


cdef void l4_csum_complete(uint8_t *ip, uint32_t ihl, uint32_t l4len,
                           uint8_t proto) noexcept nogil:
    # Finish a partial checksum: field = ~sum(L4 bytes, field included). A complete
    # checksum that merely looked partial (equal to the pseudo-header sum) comes out the
    # same, so a wrong guess changes nothing. Kept out of line: most frames never get here.
    cdef uint8_t *l4 = ip + ihl
    cdef uint8_t *ck
    cdef uint16_t v
    if proto == 17:
        l4len = rd16(l4 + 4)
        ck = l4 + 6
    else:
        ck = l4 + 16
    v = <uint16_t>(~csum_fold_wide(l4, l4len) & 0xFFFF)
    if proto == 17 and v == 0:
        v = 0xFFFF
    wr16(ck, v)
