# The kernel's bucket functions for the hash schedulers, so sh/dh/mh serve new flows in C:
# hash_32 (include/linux/hash.h) for sh and dh, hsiphash on 64-bit builds (SipHash-1-3,
# lib/siphash.c) for mh, and the connection table's own bucket hash (seeded, not IPVS's).

cdef enum:
    GOLDEN_RATIO_32 = 0x61C88647
    SH_TAB_BITS = 8
    SH_TAB_SIZE = 256

cdef uint64_t MH_KEY0 = 2654435761ULL     # ip_vs_mh.c generate_hash_secret(): hash1
cdef uint64_t MH_KEY1 = 2654435761ULL


cdef inline uint32_t hash_32(uint32_t val, unsigned int bits) noexcept nogil:
    # The kernel's hash_32(): multiply by the golden ratio, keep the top `bits` bits.
    return <uint32_t>(val * <uint32_t>GOLDEN_RATIO_32) >> (32 - bits)


cdef inline uint64_t rotl64(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint32_t hsiphash_1u32(uint32_t first, uint64_t k0, uint64_t k1) noexcept nogil:
    # hsiphash(&first, 4, key) as a 64-bit kernel computes it: one compression round over the
    # final word (length 4 in the top byte), three finalisation rounds.
    cdef uint64_t v0 = 0x736f6d6570736575ULL ^ k0
    cdef uint64_t v1 = 0x646f72616e646f6dULL ^ k1
    cdef uint64_t v2 = 0x6c7967656e657261ULL ^ k0
    cdef uint64_t v3 = 0x7465646279746573ULL ^ k1
    cdef uint64_t b = (<uint64_t>4 << 56) | first
    cdef int r
    v3 ^= b
    for r in range(4):
        if r == 1:
            v0 ^= b
            v2 ^= 0xFF
        v0 += v1
        v1 = rotl64(v1, 13)
        v1 ^= v0
        v0 = rotl64(v0, 32)
        v2 += v3
        v3 = rotl64(v3, 16)
        v3 ^= v2
        v0 += v3
        v3 = rotl64(v3, 21)
        v3 ^= v0
        v2 += v1
        v1 = rotl64(v1, 17)
        v1 ^= v2
        v2 = rotl64(v2, 32)
    return <uint32_t>((v0 ^ v1) ^ (v2 ^ v3))


cdef inline uint32_t addr_fold(const uint32_t *a) noexcept nogil:
    # IPv4: the address; IPv6: the xor of its four words (host order), as the kernel folds.
    return a[0] ^ a[1] ^ a[2] ^ a[3]


cdef inline uint32_t sh_hashkey(uint32_t fold, uint16_t port, uint32_t offset) noexcept nogil:
    return (offset + hash_32(<uint32_t>port + fold, SH_TAB_BITS)) & (SH_TAB_SIZE - 1)


cdef inline bint dest_unavailable(fl_engine *e, uint32_t d) noexcept nogil:
    # is_unavailable()/is_overloaded() of sh/dh/mh: weight <= 0 or overloaded (or gone).
    cdef fl_dest *dp
    if d == 0 or d >= e.ndests:
        return True
    dp = &e.dests[d]
    return (dp.flags & DF_AVAILABLE) == 0 or dp.weight <= 0 or (dp.flags & DF_OVERLOAD) != 0


cdef uint32_t sched_hash(fl_engine *e, fl_svc *s, fl_pkt *p) noexcept nogil:
    # The dest id the service's C hash table gives this new flow, 0 = none.
    cdef uint32_t fold, ihash, h, d, off, roff
    cdef uint16_t port = 0
    cdef uint32_t n = s.table_len
    if s.table == NULL or n == 0:
        return 0
    if s.sched == SCHED_DH:
        d = s.table[hash_32(addr_fold(p.daddr), SH_TAB_BITS) % n]
        return 0 if dest_unavailable(e, d) else d
    if s.sched_flags & SCHED_F_PORT:
        port = p.sport
    fold = addr_fold(p.saddr)
    if s.sched == SCHED_SH:
        ihash = sh_hashkey(fold, port, 0) % n
    else:
        ihash = hsiphash_1u32(fold + port, MH_KEY0, MH_KEY1) % n
    d = s.table[ihash]
    if d == 0:
        return 0
    if not dest_unavailable(e, d):
        return d
    if not (s.sched_flags & SCHED_F_FALLBACK):
        return 0
    for off in range(n):
        roff = (off + ihash) % n
        if s.sched == SCHED_SH:
            h = sh_hashkey(fold, port, roff) % n
        else:
            h = hsiphash_1u32(roff + port + fold, MH_KEY0, MH_KEY1) % n
        d = s.table[h]
        if d == 0:
            return 0
        if not dest_unavailable(e, d):
            return d
    return 0


cdef inline uint32_t conn_hash(fl_engine *e, const uint32_t *caddr, uint16_t cport,
                               uint8_t proto) noexcept nogil:
    # Bucket of (client addr, client port, proto): both directions of a conn hash the same
    # key, so NAT replies find their entry in the same chain (as IPVS's conn table does).
    cdef uint64_t x = (<uint64_t>(caddr[0] ^ caddr[1] ^ caddr[2] ^ caddr[3]) << 32) \
        | (<uint64_t>cport << 8) | proto
    x ^= e.seed
    x *= 0x9E3779B97F4A7C15ULL
    x ^= x >> 29
    x *= 0xBF58476D1CE4E5B9ULL
    return <uint32_t>(x >> 32) & e.bucket_mask
