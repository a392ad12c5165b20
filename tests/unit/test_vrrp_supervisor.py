"""VrrpKeepalived's supervision with stand-in programs (no root, no keepalived): the command
line keepalived gets, its lines in the log, the restart rate bound, SIGHUP on reload, and a
program that ignores SIGTERM killed with its whole process group at close. Real keepalived is
tests/netns/test_vrrp_keepalived.py."""
from __future__ import annotations

import logging
import os
import signal
import time

from fastlvs.system import vrrp as vrrpmod
from fastlvs.system.vrrp import VrrpKeepalived

# a stand-in that says a line (with keepalived's clock in front), then waits for signals
STANDIN = ("sh", "-c", 'echo "Thu Dec  3 14:40:54 2026: up $*"; trap "echo hup" HUP; '
           "while :; do sleep 0.1; done", "keepalived")


def _group_alive(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (a zombie waiting for its reaper
    is dead)."""
    alive = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(name))
    return alive


def _wait(cond, sup, bound=10.0):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        sup.poll()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_command_line_pid_files_and_logged_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fastlvs")
    sup = VrrpKeepalived(lambda: "vrrp_instance A {\n}\n", run_dir=str(tmp_path / "run"),
                         command=STANDIN)
    try:
        sup.start()
        base = str(tmp_path / "run" / f"keepalived-vrrp-{os.getpid()}")
        assert sup.argv[len(STANDIN):] == [
            "--vrrp", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
            "-f", base + ".conf", "-p", base + ".pid", "-r", base + "-vrrp.pid",
            "-c", base + "-checkers.pid", "-b", base + "-bfd.pid"]
        assert open(base + ".conf").read() == "vrrp_instance A {\n}\n"
        assert os.stat(base + ".conf").st_mode & 0o777 == 0o600
        _wait(lambda: any(m.startswith("keepalived: up --vrrp") for m in caplog.messages), sup)
        sup.derive = lambda: "vrrp_instance B {\n}\n"
        sup.reload()
        assert open(base + ".conf").read() == "vrrp_instance B {\n}\n"
        _wait(lambda: "keepalived: hup" in caplog.messages, sup)
        sup.derive = lambda: (_ for _ in ()).throw(ValueError("k.conf:3: bad"))
        sup.reload()                                     # refused: the file stays
        assert open(base + ".conf").read() == "vrrp_instance B {\n}\n"
        assert "vrrp: keepalived keeps its file: k.conf:3: bad" in caplog.messages
    finally:
        sup.close()
    assert not os.listdir(tmp_path / "run")


def test_a_dead_keepalived_is_restarted_no_sooner_than_restart_every(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fastlvs")
    sup = VrrpKeepalived(lambda: "", run_dir=str(tmp_path), command=STANDIN)
    try:
        sup.start()
        first, started = sup.proc.pid, sup._started
        os.killpg(first, signal.SIGKILL)
        sup.proc.wait(5)
        sup.poll(now=started + vrrpmod.RESTART_EVERY - 0.1)
        assert not sup.alive and sup.restarts == 0
        assert "vrrp: keepalived --vrrp exited (killed by signal 9)" in caplog.messages
        sup.poll(now=started + vrrpmod.RESTART_EVERY - 0.05)   # the daemon's next turns
        assert not sup.alive and sup.restarts == 0
        sup.poll(now=started + vrrpmod.RESTART_EVERY)
        assert sup.alive and sup.restarts == 1 and sup.proc.pid != first
    finally:
        sup.close()


def test_close_kills_what_ignores_sigterm_and_its_children(tmp_path, monkeypatch):
    monkeypatch.setattr(vrrpmod, "STOP_WAIT", 0.5)
    stubborn = ("sh", "-c", 'trap "" TERM; sleep 60 & echo up; while :; do sleep 0.1; done',
                "keepalived")
    sup = VrrpKeepalived(lambda: "", run_dir=str(tmp_path), command=stubborn)
    sup.start()
    pgid = sup.proc.pid
    assert len(_group_alive(pgid)) >= 2    # sh and its background sleep
    sup.close()
    assert _group_alive(pgid) == []        # the background sleep went too
    sup.close()                            # twice is fine
