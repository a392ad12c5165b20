# cython: language_level=3
"""The fast path (one extension). For now it only proves the build works and exposes the
golden-ratio hash the hash schedulers use, so the C side can be checked against Python."""

from libc.stdint cimport uint32_t

cdef enum:
    GOLDEN_RATIO_32 = 0x61C88647


cdef inline uint32_t hash_32(uint32_t val, unsigned int bits) noexcept nogil:
    # The kernel's hash_32(): multiply by the golden ratio, keep the top `bits` bits.
    return <uint32_t>(val * <uint32_t>GOLDEN_RATIO_32) >> (32 - bits)


def py_hash_32(uint32_t val, unsigned int bits):
    """hash_32(val, bits) computed in C, for differential tests against the Python version."""
    if bits < 1 or bits > 32:
        raise ValueError(f"bits must be 1..32, got {bits}")
    return hash_32(val, bits)
