"""Placement of the daemon and of its interfaces' NAPI for `fastlvs --cpu N`.

A user-space director shares its core with the kernel's receive work (NAPI) that fills its
rings. Left to the scheduler's fairness, NAPI takes about two thirds of the core under a
flood and spends most of it on frames the full ring then drops: the director forwards half of
what it could (receive livelock). `--cpu N` puts the daemon on CPU N and switches the NAPI of
every interface it opens to a kernel thread (`/sys/class/net/IF/threaded`), pinned to the same
CPU at the lowest priority (nice 19): NAPI then mostly runs while the daemon waits for frames,
so it fills the rings about as fast as the daemon empties them. Measured in
benchmarks/README-peers.md. Everything changed is put back by close().
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("fastlvs")

NAPI_NICE = 19


class PlacementError(Exception):
    """--cpu names a CPU this process may not run on."""


def napi_threads(ifname: str) -> dict[int, str]:
    """pid -> name of the kernel threads of `ifname`'s NAPI instances ("napi/IF-ID"; kernel
    threads' names are not cut at 15 characters)."""
    prefix = f"napi/{ifname}-"
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            found[int(pid)] = name
    return found


def check_cpu(cpu: int) -> None:
    """PlacementError unless this process may run on `cpu`."""
    allowed = os.sched_getaffinity(0)
    if cpu not in allowed:
        raise PlacementError(f"--cpu: {cpu} is not one of the CPUs this process may use "
                             f"({','.join(str(c) for c in sorted(allowed))})")


class NapiPlacement:
    """Pins this process to `cpu` now; place(ifname) does the same for an interface's NAPI.
    close() restores the threaded setting, affinities and priorities it changed."""

    def __init__(self, cpu: int):
        check_cpu(cpu)
        self.cpu = cpu
        self._own_affinity = os.sched_getaffinity(0)
        self._threaded: dict[str, str] = {}          # ifname -> sysfs value before we wrote 1
        self._threads: dict[int, tuple] = {}         # pid -> (affinity, nice) before
        self.placed: dict[str, list[str]] = {}       # ifname -> NAPI thread names we placed
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), {cpu})

    def place(self, ifname: str) -> list[str]:
        """Threaded NAPI for `ifname`, its threads on our CPU at nice 19. An interface whose
        NAPI cannot be threaded (no such setting, read-only sysfs) is logged and left as it
        is: the daemon runs either way. Returns the names of the threads placed."""
        if ifname in self.placed:
            return self.placed[ifname]
        path = f"/sys/class/net/{ifname}/threaded"
        try:
            with open(path) as f:
                before = f.read().strip()
            if before == "0":
                old = set(napi_threads(ifname))
                with open(path, "w") as f:
                    f.write("1")
                self._threaded[ifname] = before
                # Threads that appeared with our write are this interface's for sure; a
                # same-named interface in another namespace has older ones.
                threads = {p: n for p, n in napi_threads(ifname).items() if p not in old}
            else:
                threads = napi_threads(ifname)
        except OSError as e:
            log.warning("--cpu: %s: NAPI not placed (%s: %s); the daemon is pinned to CPU %d",
                        ifname, path, e.strerror, self.cpu)
            self.placed[ifname] = []
            return []
        names = []
        for pid, name in sorted(threads.items()):
            try:
                saved = (os.sched_getaffinity(pid), os.getpriority(os.PRIO_PROCESS, pid))
                os.sched_setaffinity(pid, {self.cpu})
                os.setpriority(os.PRIO_PROCESS, pid, NAPI_NICE)
            except OSError as e:         # the thread went away, or it may not move
                log.warning("--cpu: %s: %s", name, e.strerror)
                continue
            self._threads.setdefault(pid, saved)
            names.append(name)
        self.placed[ifname] = names
        log.info("--cpu %d: %s NAPI threads %s at nice %d", self.cpu, ifname,
                 ", ".join(names) or "(none found)", NAPI_NICE)
        return names

    def close(self) -> None:
        """Undo place() and the pinning; safe to call twice."""
        for pid, (affinity, nice) in self._threads.items():
            try:
                os.sched_setaffinity(pid, affinity)
                os.setpriority(os.PRIO_PROCESS, pid, nice)
            except OSError:              # gone with its interface or its threaded mode
                pass
        self._threads.clear()
        for ifname, before in self._threaded.items():
            try:
                with open(f"/sys/class/net/{ifname}/threaded", "w") as f:
                    f.write(before)
            except OSError as e:
                log.warning("cleanup: %s: threaded NAPI not restored: %s", ifname, e.strerror)
        self._threaded.clear()
        self.placed.clear()
        try:
            os.sched_setaffinity(0, self._own_affinity)
        except OSError:
            pass


# sysfs knobs of an interface that busy polling wants, and the values it writes
BUSY_POLL_SYSFS = (("napi_defer_hard_irqs", "2"), ("gro_flush_timeout", "200000"))


class SysfsTuning:
    """Writes /sys/class/net/IF/<knob> values for busy polling, remembering each original
    value once (the first write wins); restore() writes them back and is safe to call twice.
    `saved` is {(ifname, knob): original}, which the daemon also records in its state file
    so that a later start can restore what a killed one changed."""

    def __init__(self):
        self.saved: dict[tuple[str, str], str] = {}

    def busy_poll(self, ifname: str) -> dict:
        """Defer hard IRQs and flush GRO late on `ifname`, so busy polling finds frames
        waiting. Returns {knob: (before, now)}, or {"sysfs": why} when the interface's sysfs
        cannot be written from here (a read-only /sys, another namespace's view)."""
        base = f"/sys/class/net/{ifname}"
        out = {}
        try:
            for knob, value in BUSY_POLL_SYSFS:
                with open(f"{base}/{knob}") as fh:
                    old = fh.read().strip()
                with open(f"{base}/{knob}", "w") as fh:
                    fh.write(value)
                self.saved.setdefault((ifname, knob), old)
                out[knob] = (old, value)
        except OSError as e:
            out["sysfs"] = str(e)
        return out

    def restore(self) -> None:
        for (ifname, knob), old in self.saved.items():
            try:
                with open(f"/sys/class/net/{ifname}/{knob}", "w") as fh:
                    fh.write(old)
            except OSError:              # the interface went away
                pass
        self.saved.clear()

    close = restore
