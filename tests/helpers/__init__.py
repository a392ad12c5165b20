"""Helpers shared by more than one test folder (and the benchmarks)."""
