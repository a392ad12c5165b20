"""The two hash functions the IPVS hash schedulers feed: hash_32 (sh, dh) and hsiphash (mh).

Both are bit-exact with a 64-bit little-endian Linux build (x86-64): hash_32 is the multiply
by GOLDEN_RATIO_32 keeping the top bits; hsiphash is SipHash-1-3 over 64-bit words with the
result cut to 32 bits, which is what lib/siphash.c builds when BITS_PER_LONG == 64 (a
32-bit kernel runs HalfSipHash instead, so its mh tables differ from these).
"""
from __future__ import annotations

GOLDEN_RATIO_32 = 0x61C88647

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF

# SipHash's initialisation constants ("somepseudorandomlygeneratedbytes").
_C0 = 0x736F6D6570736575
_C1 = 0x646F72616E646F6D
_C2 = 0x6C7967656E657261
_C3 = 0x7465646279746573


def hash_32(val: int, bits: int) -> int:
    """include/linux/hash.h hash_32: (val * GOLDEN_RATIO_32 mod 2**32) >> (32 - bits).

    `val` is taken modulo 2**32 (the C argument is a u32), so a sum that overflowed in C
    gives the same bucket here. `bits` must be 1..32.
    """
    return ((val * GOLDEN_RATIO_32) & _M32) >> (32 - bits)


def _sipround(v0, v1, v2, v3):
    v0 = (v0 + v1) & _M64
    v1 = (((v1 << 13) & _M64) | (v1 >> 51)) ^ v0
    v0 = ((v0 << 32) & _M64) | (v0 >> 32)
    v2 = (v2 + v3) & _M64
    v3 = (((v3 << 16) & _M64) | (v3 >> 48)) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = (((v3 << 21) & _M64) | (v3 >> 43)) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = (((v1 << 17) & _M64) | (v1 >> 47)) ^ v2
    v2 = ((v2 << 32) & _M64) | (v2 >> 32)
    return v0, v1, v2, v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """The kernel's hsiphash(data, len(data), key) on a 64-bit machine, as a u32.

    `key` is the hsiphash_key_t's two unsigned longs (64-bit each), key[0] first. The data
    is read as little-endian 64-bit words; the last 0..7 bytes go into the final word whose
    top byte is the length mod 256. One SipRound per word, three after finalisation
    (SipHash-1-3), and the low 32 bits of v0^v1^v2^v3 are returned.
    """
    k0, k1 = key[0] & _M64, key[1] & _M64
    v0, v1, v2, v3 = _C0 ^ k0, _C1 ^ k1, _C2 ^ k0, _C3 ^ k1
    n = len(data)
    whole = n - (n & 7)
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & _M32


def hsiphash_u32_fn(key: tuple[int, int]):
    """A fast `f(v) == hsiphash(v.to_bytes(4, "little"), key)` for one fixed key.

    This is the only shape ip_vs_mh.c hashes (a u32 in native order, i.e. hsiphash_1u32),
    so the per-call work is specialised: the key-only part of the state is precomputed and
    the rounds are written out inline. `v` is taken modulo 2**32.
    """
    k0, k1 = key[0] & _M64, key[1] & _M64
    i0, i1, i2, i3 = _C0 ^ k0, _C1 ^ k1, _C2 ^ k0, _C3 ^ k1
    # The first round's v0/v1 half never sees the message word, so it is a constant.
    a0 = (i0 + i1) & _M64
    r1 = (((i1 << 13) & _M64) | (i1 >> 51)) ^ a0          # v1 after the first step
    r0 = ((a0 << 32) & _M64) | (a0 >> 32)                 # v0 after its rotation
    len_word = 4 << 56

    def f(v: int, M=_M64, M32=_M32, r0=r0, r1=r1, i2=i2, i3=i3, lw=len_word) -> int:
        b = lw | (v & M32)
        # round 1 (message word b), with the constant half folded in
        v3 = i3 ^ b
        v2 = (i2 + v3) & M
        v3 = (((v3 << 16) & M) | (v3 >> 48)) ^ v2
        v0 = (r0 + v3) & M
        v3 = (((v3 << 21) & M) | (v3 >> 43)) ^ v0
        v2 = (v2 + r1) & M
        v1 = (((r1 << 17) & M) | (r1 >> 47)) ^ v2
        v2 = ((v2 << 32) & M) | (v2 >> 32)
        v0 ^= b
        v2 ^= 0xFF
        # rounds 2..4 (finalisation)
        for _ in (0, 1, 2):
            v0 = (v0 + v1) & M
            v1 = (((v1 << 13) & M) | (v1 >> 51)) ^ v0
            v0 = ((v0 << 32) & M) | (v0 >> 32)
            v2 = (v2 + v3) & M
            v3 = (((v3 << 16) & M) | (v3 >> 48)) ^ v2
            v0 = (v0 + v3) & M
            v3 = (((v3 << 21) & M) | (v3 >> 43)) ^ v0
            v2 = (v2 + v1) & M
            v1 = (((v1 << 17) & M) | (v1 >> 47)) ^ v2
            v2 = ((v2 << 32) & M) | (v2 >> 32)
        return (v0 ^ v1 ^ v2 ^ v3) & M32

    return f
