"""The namespace test bench: a client, a director and real servers in network namespaces
(testbed.py), and the live demo that `make demo` runs on it (demo_live.py). The tests and
benchmarks use it; the daemon never imports it.
"""
