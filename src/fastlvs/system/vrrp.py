"""keepalived running VRRP beside fastlvs (`--vrrp`): writes the VRRP part of the user's
keepalived.conf (derived by control/vrrp.py, handed in as a callable) to a private runtime file, runs `keepalived --vrrp` on it in
the foreground with pid files of its own (never those of a system keepalived), logs its lines,
starts it again when it dies (at most once per RESTART_EVERY), sends it SIGHUP on reload and
stops it at exit so that no keepalived process is left.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import re
import signal
import subprocess
import time

log = logging.getLogger("fastlvs")

PROGRAM = "keepalived"
RUN_DIR = "/run/fastlvs"
RESTART_EVERY = 5.0      # seconds between two starts of a keepalived that keeps dying
START_WATCH = 0.5        # a keepalived that exits this soon after the first start failed to start
STOP_WAIT = 5.0          # SIGTERM, then this long for keepalived to drop its VIPs, then SIGKILL
_PR_SET_PDEATHSIG = 1
# --log-console lines start with keepalived's own clock ("Thu Dec  3 14:40:54 2026: "); our
# log has its own
_STAMP = re.compile(rb"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}: ")


class VrrpError(Exception):
    """keepalived could not be started: the one line to print."""


def _die_with_parent(parent: int) -> None:
    # In the child, before exec: a fastlvs killed by SIGKILL still takes keepalived along
    # (SIGTERM, so keepalived drops its VIPs and the peer takes over at once).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # a parent that died between fork and prctl sent no signal: go as it would have had us go
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class VrrpKeepalived:
    """`keepalived --vrrp` on the file `derive()` returns (its text), supervised.

    `derive()` raises ValueError (one line: a file that does not read) or OSError.
    `start()` raises VrrpError (one line) when keepalived is missing, the file cannot be
    derived, or keepalived exits at once; `poll(now)` (from the daemon's loop) logs its
    output and restarts it after it died; `reload()` re-derives the file and sends SIGHUP
    (a file that no longer reads is logged and the running keepalived keeps its old one);
    `close()` stops it (SIGTERM, STOP_WAIT, then SIGKILL of its process group) and removes
    its files; safe to call twice."""

    def __init__(self, derive, run_dir: str = RUN_DIR, command=(PROGRAM,)):
        self.derive = derive
        self.command = list(command)         # the program, with a prefix (`ip netns exec NS`)
        self.program = self.command[-1]
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        base = os.path.join(run_dir, f"keepalived-vrrp-{os.getpid()}")
        self.conf_path = base + ".conf"
        self._pids = {"-p": base + ".pid", "-r": base + "-vrrp.pid",
                      "-c": base + "-checkers.pid", "-b": base + "-bfd.pid"}
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self._started = 0.0
        self.restarts = 0

    @property
    def argv(self) -> list[str]:
        """The command line: foreground, log lines on its stderr (our pipe) not syslog."""
        argv = self.command + ["--vrrp", "--dont-fork", "--log-console", "--log-detail",
                "--no-syslog", "-f", self.conf_path]
        for opt, path in self._pids.items():
            argv += [opt, path]
        return argv

    def _write(self) -> None:
        text = self.derive()
        tmp = self.conf_path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf_path)

    def _spawn(self) -> None:
        self._buf = b""
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=functools.partial(_die_with_parent,
                                                                  os.getpid()))
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._started = time.monotonic()

    def start(self) -> None:
        try:
            self._write()
        except ValueError as e:
            raise VrrpError(str(e)) from None
        except OSError as e:
            raise VrrpError(f"--vrrp: {e.filename}: {e.strerror}") from None
        try:
            self._spawn()
        except FileNotFoundError:
            raise VrrpError(f"--vrrp: {self.program} not found (install the keepalived "
                            "package)") from None
        except OSError as e:
            raise VrrpError(f"--vrrp: cannot run {self.program}: {e.strerror}") from None
        deadline = time.monotonic() + START_WATCH
        while time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        if self.proc.poll() is not None:
            lines = self._read_lines(final=True)
            last = lines[-1] if lines else "no output"
            raise VrrpError(f"--vrrp: keepalived exited at once ({self._status()}): {last}")
        log.info("vrrp: keepalived --vrrp started (pid %d) on %s", self.proc.pid,
                 self.conf_path)

    def fileno(self) -> int:
        """Readable when keepalived wrote something (or exited)."""
        return self.proc.stdout.fileno()

    def _status(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "running"
        return f"killed by signal {-rc}" if rc < 0 else f"status {rc}"

    def _read_lines(self, final: bool = False) -> list[str]:
        out = self.proc.stdout
        while True:
            try:
                chunk = os.read(out.fileno(), 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                break
            if not chunk:
                final = True
                break
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        if final and self._buf:
            lines.append(self._buf)
            self._buf = b""
        return [_STAMP.sub(b"", ln).decode("utf-8", "replace").rstrip()
                for ln in lines if ln.strip()]

    def poll(self, now: float | None = None) -> None:
        """Log what keepalived said; after it died, start it again (not sooner than
        RESTART_EVERY after its last start)."""
        if self.proc is None:
            return
        if not self.proc.stdout.closed:          # closed: its death was seen already
            for line in self._read_lines():
                log.info("keepalived: %s", line)
            if self.proc.poll() is None:
                return
            for line in self._read_lines(final=True):
                log.info("keepalived: %s", line)
            self.proc.stdout.close()
            self._kill_group(signal.SIGKILL)      # its VRRP child or scripts, if any remain
            log.error("vrrp: keepalived --vrrp exited (%s)", self._status())
        now = time.monotonic() if now is None else now
        if now - self._started < RESTART_EVERY:
            return
        try:
            self._spawn()
            self.restarts += 1
            log.error("vrrp: keepalived --vrrp started again (pid %d)", self.proc.pid)
        except OSError as e:
            self._started = now
            log.error("vrrp: cannot run %s: %s", self.program, e.strerror)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reload(self) -> None:
        """Re-derive the file from the source and have keepalived re-read it (SIGHUP)."""
        try:
            self._write()
        except (ValueError, OSError) as e:
            log.error("vrrp: keepalived keeps its file: %s", e)
            return
        if self.alive:
            os.kill(self.proc.pid, signal.SIGHUP)
            log.info("vrrp: keepalived re-reads %s", self.conf_path)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_WAIT)
                except subprocess.TimeoutExpired:
                    log.warning("vrrp: keepalived did not stop in %gs; killing it", STOP_WAIT)
            self._kill_group(signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(STOP_WAIT)
            # SIGKILL lands asynchronously: give the rest of the group (children keepalived
            # left, now orphans) a moment to be gone before the caller looks
            end = time.monotonic() + STOP_WAIT
            while _group_running(proc.pid) and time.monotonic() < end:
                time.sleep(0.01)
            if proc.stdout is not None and not proc.stdout.closed:
                for line in self._read_lines(final=True):
                    log.info("keepalived: %s", line)
                proc.stdout.close()
            self.proc = None
        for path in (self.conf_path, self.conf_path + ".new", *self._pids.values()):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies, dead but not yet reaped by
    whoever inherited them, do not count)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


__all__ = ["VrrpError", "VrrpKeepalived"]
