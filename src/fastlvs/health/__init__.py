"""Health checking of real servers, as keepalived's checkers do it.

spec.py is what a configuration asks for (one CheckSpec per checker block); the checker
modules probe once; monitor.py keeps each checker's up/down state with keepalived's retry,
alpha and warmup rules; worker.py runs every probe in a process of its own, so checks never
take the fast path's CPU or GIL. Nothing here imports the control plane, the system layer or
the engine: what a result does to the service table is decided in control/health.py.
"""
