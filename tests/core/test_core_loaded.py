"""Fails if the compiled engine or its test tools did not build or load: a silent pure-Python
fallback would make every fast-path figure meaningless."""
import importlib.machinery

import pytest

import fastlvs.engine._core as core
import fastlvs.engine._testing as testing

SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def test_core_is_the_compiled_extension():
    assert core.__file__.endswith(SUFFIXES)


def test_testing_tools_are_compiled_and_reach_the_engine():
    assert testing.__file__.endswith(SUFFIXES)
    # Loaded runs frames through the engine's C side (declared in _core.pxd): a frame that
    # is not IPv4 comes back counted by the engine itself
    e = core.Engine(capacity=64)
    loaded = testing.Loaded(e, [b"\xff" * 12 + b"\x08\x06" + b"\0" * 46] * 3)
    assert loaded.process(1) == 0
    assert e.stats()["not_ip"] == 3 and e.stats()["rx"] == 3


def test_c_hash_32_matches_the_kernel_definition():
    """include/linux/hash.h: hash_32(val, bits) = (val * GOLDEN_RATIO_32) >> (32 - bits)."""
    for val in (0, 1, 0xC0000201, 0xFFFFFFFF, 12345678):
        assert testing.py_hash_32(val, 8) == ((val * 0x61C88647) & 0xFFFFFFFF) >> 24


def test_the_product_extension_carries_no_test_tools():
    for name in ("load_batch", "process_loaded", "baseline_loaded"):
        assert not hasattr(core.Engine, name)
    for name in ("py_hash_32", "py_hsiphash_u32", "Loaded", "PassThrough", "transmit"):
        assert not hasattr(core, name)


def test_bare_forwarders_come_from_the_test_tools():
    # the ring loop's hook is only a base class; PassThrough (tests/netns polls it) builds on it
    with pytest.raises(TypeError):
        core.Bare()
    assert isinstance(testing.PassThrough().add(1, 2), core.Bare)
