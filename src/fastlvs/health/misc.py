"""MISC_CHECK: run misc_path and judge it by its exit status, as keepalived's check_misc.c and
notify.c do (keepalived 2.4). The line is split into words with shell quoting and the program
is executed directly (found on PATH when it has no `/`), in a process group of its own; only
a line starting `<` (keepalived's "is this file readable" form) goes through /bin/sh.

Exit 0 is up. With misc_dynamic, 2..255 is up too with weight = status - 2 (0..253), and 1
is down; without it every non-zero status is down. After misc_timeout (0: delay_loop) the
group gets SIGTERM, and SIGKILL 2 s later if it is still there: a timeout is a failure. If
the checker process dies, the program gets SIGTERM (PR_SET_PDEATHSIG), as keepalived does.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import shutil
import signal
import subprocess

from fastlvs.health.checkers import Result, secs
from fastlvs.health.spec import CheckSpec

KILL_GRACE = 2.0      # keepalived: SIGTERM, then SIGKILL 2 s later
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _in_child() -> None:
    # as keepalived: if the checker process dies, its script gets SIGTERM
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def argv(misc_path: str) -> list[str]:
    """The command to execute for a misc_path line; ValueError saying what is wrong."""
    if misc_path.lstrip().startswith("<"):
        return ["/bin/sh", "-c", misc_path]
    words = shlex.split(misc_path)
    if not words:
        raise ValueError("misc_path is empty")
    prog = words[0] if "/" in words[0] else shutil.which(words[0])
    if prog is None or not os.access(prog, os.X_OK) or os.path.isdir(prog):
        raise ValueError(f"misc_path not executable: {words[0]}")
    return [prog] + words[1:]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def verdict(status: int, dynamic: bool) -> Result:
    """keepalived's reading of an exit status."""
    if status == 0:
        return Result(True, "exit 0")
    if dynamic and 2 <= status <= 255:
        return Result(True, f"exit {status}", weight=status - 2)
    return Result(False, f"exit {status}")


async def probe(spec: CheckSpec) -> Result:
    try:
        cmd = argv(spec.misc_path)
    except ValueError as e:
        return Result(False, str(e))
    timeout = spec.misc_timeout or spec.delay_loop
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, process_group=0, preexec_fn=_in_child)
    except OSError as e:
        return Result(False, f"misc_path failed to start: {e.strerror or e}")
    try:
        async with asyncio.timeout(timeout):
            rc = await proc.wait()
    except TimeoutError:
        _killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(KILL_GRACE):
                await proc.wait()
        except TimeoutError:
            pass
        # the leader may be gone while its children are not: the whole group goes
        _killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Result(False, f"timeout after {secs(timeout)}")
    except BaseException:          # the probe was stopped (set_probes, close): no orphans
        _killpg(proc.pid, signal.SIGKILL)
        raise
    if rc < 0:
        return Result(False, f"killed by signal {-rc}")
    return verdict(rc, spec.misc_dynamic)
