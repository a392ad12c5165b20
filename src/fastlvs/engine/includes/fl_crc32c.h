/* CRC32c (SCTP's checksum) with the CPU's crc32 instruction (SSE4.2) where it has one; the
 * engine asks fl_crc32c_hw_ok() once and otherwise uses its own slice-by-8 tables. The
 * instruction performs the same reflected Castagnoli step as those tables (no inversion at
 * either end: the caller does that), 8 bytes at a time. */
#ifndef FL_CRC32C_H
#define FL_CRC32C_H
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static inline uint32_t fl_crc32c_hw(uint32_t crc, const uint8_t *p, uint32_t n)
{
    uint64_t c = crc, v;
    while (n >= 8) {
        memcpy(&v, p, 8);               /* unaligned-safe load */
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n > 0) {
        crc = _mm_crc32_u8(crc, *p++);
        n--;
    }
    return crc;
}

static inline int fl_crc32c_hw_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
static inline uint32_t fl_crc32c_hw(uint32_t crc, const uint8_t *p, uint32_t n)
{
    (void)p;
    (void)n;
    return crc;
}

static inline int fl_crc32c_hw_ok(void)
{
    return 0;
}
#endif
#endif
