"""Fails if the compiled engine did not build or load: a silent pure-Python fallback would
make every fast-path figure meaningless."""
import importlib.machinery

import fastlvs.engine._core as core


def test_core_is_the_compiled_extension():
    assert core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_c_hash_32_matches_the_kernel_definition():
    """include/linux/hash.h: hash_32(val, bits) = (val * GOLDEN_RATIO_32) >> (32 - bits)."""
    for val in (0, 1, 0xC0000201, 0xFFFFFFFF, 12345678):
        assert core.py_hash_32(val, 8) == ((val * 0x61C88647) & 0xFFFFFFFF) >> 24
