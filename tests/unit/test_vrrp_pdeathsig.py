"""keepalived started by --vrrp dies with fastlvs (system/vrrp.py's _die_with_parent, run in
the child before exec): the parent-death signal is SIGTERM, so keepalived gives its VIPs up;
and a parent that died between fork and that prctl (no signal would ever come) makes the child
end itself the same way. Forked children only; no root, no keepalived."""
from __future__ import annotations

import os
import signal
import time

from fastlvs.system import vrrp


def _child_status(body) -> int:
    pid = os.fork()
    if pid == 0:                      # the child: body, then a plain exit if it survived
        try:
            body()
        finally:
            os._exit(7)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not end")


def test_a_child_whose_parent_is_alive_carries_on():
    status = _child_status(lambda: vrrp._die_with_parent(os.getppid()))
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7


def test_a_child_whose_parent_already_went_ends_with_sigterm():
    # as if fastlvs died between fork and prctl: the child's parent is not the one it was
    # forked from any more
    status = _child_status(lambda: vrrp._die_with_parent(os.getppid() + 1))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_the_parent_death_signal_is_sigterm():
    import ctypes

    def body():
        vrrp._die_with_parent(os.getppid())
        sig = ctypes.c_int(0)
        ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)      # PR_GET_PDEATHSIG
        os._exit(50 + sig.value)

    status = _child_status(body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 50 + signal.SIGTERM
