"""What a fastlvs process changed on the system, recorded while it runs so that the next
start can undo it after a SIGKILL or a crash: its XDP programs (named fl_steer), its nft
tables (fastlvs_<pid>_<n>), busy-poll sysfs values and threaded NAPI settings, with their
original values. One JSON file per process, /run/fastlvs/state-<pid>.json, removed by a
clean exit. recover() undoes the files of processes that are gone, in this network namespace.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess

from fastlvs.system import nft

log = logging.getLogger("fastlvs")

RUN_DIR = "/run/fastlvs"
XDP_PROG_NAME = "fl_steer"          # the function name in engine/bpf/steer.bpf.c


def _netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a pid alone may be reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class StateFile:
    """The record of this process's changes. update() rewrites it (atomically) when the
    content changed; close() removes it. A directory that cannot be written is logged once
    and the daemon runs without a record."""

    def __init__(self, run_dir: str = RUN_DIR):
        self.pid = os.getpid()
        self.path = os.path.join(run_dir, f"state-{self.pid}.json")
        self.data = {"pid": self.pid, "start": _start_time(self.pid), "netns": _netns(),
                     "xdp": [], "nft": [], "sysfs": {}, "threaded": {}}
        self._written = None
        self._broken = False

    def update(self, *, xdp=(), nft_tables=(), sysfs=None, threaded=None) -> None:
        self.data.update(xdp=sorted(xdp), nft=sorted(nft_tables), sysfs=dict(sysfs or {}),
                         threaded=dict(threaded or {}))
        text = json.dumps(self.data, sort_keys=True)
        if text == self._written or self._broken:
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            self._written = text
        except OSError as e:
            self._broken = True
            log.warning("%s: cannot record state (%s); a crash would leave settings behind",
                        self.path, e.strerror)

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _alive(data: dict) -> bool:
    pid = data.get("pid")
    if not isinstance(pid, int):
        return False
    start = _start_time(pid)
    return start is not None and start == data.get("start")


def _xdp_prog(ifname: str) -> tuple[str, int] | None:
    """(program name, attach mode) of the XDP program on `ifname`, or None."""
    r = subprocess.run(["ip", "-d", "-j", "link", "show", "dev", ifname], capture_output=True,
                       text=True, timeout=10)
    if r.returncode != 0:
        return None
    try:
        xdp = json.loads(r.stdout)[0].get("xdp") or {}
    except (ValueError, IndexError):
        return None
    prog = xdp.get("prog") or {}
    return (prog.get("name", ""), xdp.get("mode", 0)) if prog else None


def detach_ours(ifname: str) -> bool:
    """Detach the XDP program on `ifname` if it is fastlvs's (named fl_steer); True if it
    was. A program of anyone else is left alone."""
    found = _xdp_prog(ifname)
    if found is None or found[0] != XDP_PROG_NAME:
        return False
    kind = {1: "xdpdrv", 2: "xdpgeneric", 3: "xdpoffload"}.get(found[1], "xdp")
    r = subprocess.run(["ip", "link", "set", "dev", ifname, kind, "off"], capture_output=True,
                       text=True, timeout=10)
    return r.returncode == 0


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def recover(ifnames=(), run_dir: str = RUN_DIR) -> list[str]:
    """Undo what fastlvs processes that are gone left in this network namespace: restore
    their sysfs and NAPI settings, detach their XDP programs, delete their nft tables, remove
    their state files. Also removes nft tables named after a dead pid, and detaches a
    fastlvs XDP program from `ifnames` (the interfaces about to be opened) that no live
    fastlvs here claims. Returns one line per thing undone."""
    done = []
    here = _netns()
    claimed = set()
    for path in sorted(glob.glob(os.path.join(run_dir, "state-*.json"))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("netns") != here:
            continue
        if _alive(data):
            claimed.update(data.get("xdp", []))
            continue
        pid = data.get("pid")
        for key, value in (data.get("sysfs") or {}).items():
            ifname, _, knob = key.partition("/")
            if _write(f"/sys/class/net/{ifname}/{knob}", value):
                done.append(f"{ifname}: {knob} restored to {value} (left by pid {pid})")
        for ifname, value in (data.get("threaded") or {}).items():
            if _write(f"/sys/class/net/{ifname}/threaded", value):
                done.append(f"{ifname}: threaded NAPI restored to {value} (left by pid {pid})")
        for ifname in data.get("xdp", []):
            if detach_ours(ifname):
                done.append(f"{ifname}: XDP program of pid {pid} detached")
        try:
            os.unlink(path)
        except OSError:
            pass
    for table in nft.remove_stale():
        done.append(f"nft table {table} of a process that is gone removed")
    for ifname in ifnames:
        if ifname not in claimed and detach_ours(ifname):
            done.append(f"{ifname}: XDP program left by an earlier fastlvs detached")
    return done


__all__ = ["RUN_DIR", "StateFile", "XDP_PROG_NAME", "detach_ours", "recover"]
