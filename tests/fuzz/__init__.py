"""The engine fuzzer (run as `python -m tests.fuzz.fuzz_engine N`); tests/core runs a sample."""
