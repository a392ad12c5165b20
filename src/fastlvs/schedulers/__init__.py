"""The IPVS schedulers in pure Python, one module per scheduler, with the kernel's choices.

    from fastlvs.schedulers import RealServer, Flow, create, names
    sched = create("wlc", [RealServer("192.0.2.11", 80, weight=3), ...])
    dest = sched.schedule(Flow("198.51.100.7", 40000, "203.0.113.10", 80, "tcp"))

This package imports nothing of the fast path; the director drives it with the engine's
counters, and tests and users drive it directly.
"""
from __future__ import annotations

import importlib

from fastlvs.schedulers.base import Flow, RealServer, Scheduler

# Module name = registry name = ipvsadm name. Listed in the order ipvsadm's man page gives them.
_NAMES = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf",
          "mh", "twos")
_registry: dict[str, type[Scheduler]] = {}


def names() -> list[str]:
    """All scheduler names, as ipvsadm's `-s` accepts them."""
    return list(_NAMES)


def get(name: str) -> type[Scheduler]:
    """The Scheduler class registered as `name`; ValueError naming the valid ones if unknown."""
    if name not in _NAMES:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(_NAMES)}")
    cls = _registry.get(name)
    if cls is None:
        module = importlib.import_module(f"fastlvs.schedulers.{name}")
        cls = _registry[name] = module.SCHEDULER
    return cls


def create(name: str, servers, flags=None, rng=None, clock=None) -> Scheduler:
    """A scheduler `name` bound to a service that already holds `servers` (kernel list order).

    `flags`: ipvsadm -b names (e.g. {"sh-port"}); `rng`: a random.Random-like source (twos);
    `clock`: a function returning seconds (lblc/lblcr expiry). Raises ValueError for an
    unknown scheduler or flag.
    """
    return get(name)(servers, flags=flags, rng=rng, clock=clock)


__all__ = ["Flow", "RealServer", "Scheduler", "create", "get", "names"]
