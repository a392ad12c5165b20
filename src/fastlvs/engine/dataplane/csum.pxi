# Byte access in network order and Internet checksums: full sums for headers we build or
# verify, and RFC 1624 incremental updates (HC' = ~(~HC + ~m + m')) for fields we rewrite.

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
