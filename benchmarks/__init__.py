"""Benchmarks (pytest-benchmark files and scripts run as `python -m benchmarks.<name>`)."""
