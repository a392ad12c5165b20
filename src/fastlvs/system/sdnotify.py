"""systemd's notify protocol, written with a plain datagram socket (no dependency): READY=1
once the daemon serves, WATCHDOG=1 from the loop at half the unit's WatchdogSec, STOPPING=1
at exit. Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
"""
from __future__ import annotations

import os
import socket


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    # "@name" is a socket in the abstract namespace
    return "\0" + path[1:] if path.startswith("@") else path


def notify(message: str) -> bool:
    """Send `message` ("READY=1", "WATCHDOG=1\\nSTATUS=...") to systemd; False when there is
    no notify socket or it cannot be reached (never raises: the daemon runs either way)."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 messages (half of $WATCHDOG_USEC, as sd_watchdog_enabled
    advises), or None when systemd asks for none or asks another process ($WATCHDOG_PID)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Watchdog:
    """feed(now) from the loop: sends WATCHDOG=1 when half the interval has passed since the
    last one. A loop that wedges stops feeding, and systemd restarts the unit."""

    def __init__(self):
        self.interval = watchdog_interval()
        self._last: float | None = None

    def feed(self, now: float) -> bool:
        if self.interval is None:
            return False
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return notify("WATCHDOG=1")


__all__ = ["Watchdog", "notify", "watchdog_interval"]
