"""BIRD 2's side of the announcements: the include file of static /32 routes that BIRD's
`protocol static` reads, and `configure` sent over BIRD's control socket (the protocol birdc
speaks: a banner line, then per request reply lines `DDDD-text` ending with `DDDD text`;
codes 0xxx succeed, 8xxx/9xxx fail). Speaking the socket directly needs no birdc process per
change and bounds the wait with a socket timeout; the include file alone is the state, so a
BIRD started (or restarted) later announces exactly what the file says. The routes point at
a TUN device this process holds open (the beacon): when fastlvs dies, even by SIGKILL, the
kernel removes the device and BIRD withdraws every route at once.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import tempfile

DEFAULT_SOCKET = "/run/bird/bird.ctl"
DEFAULT_INCLUDE = "/run/fastlvs/bgp-vips.conf"
DEFAULT_DEVICE = "fastlvs-bgp"
TIMEOUT = 2.0                  # seconds for one configure (BIRD answers in milliseconds)

_HEADER = ("# Written by fastlvs: the VIPs this director serves now, one static /32 each.\n"
           "# Include it inside a `protocol static { ipv4; ... }` block of bird.conf.\n")


class BirdError(Exception):
    """BIRD could not be told (no socket, no BIRD, a refused configure); str() is one line."""


def include_text(vips, device: str | None = None) -> str:
    """The include file for `vips` (addresses), in address order: one /32 route per VIP,
    `via "DEVICE"` (the beacon: the route lives only while this process does) or, without
    a device, blackhole. The route is only a vehicle for the BGP announcement (the
    director's kernel protocol should not export it)."""
    addrs = sorted({ipaddress.IPv4Address(v) for v in vips})
    how = f'via "{device}"' if device else "blackhole"
    return _HEADER + "".join(f"route {a}/32 {how};\n" for a in addrs)


def write_include(path: str, vips, device: str | None = None) -> bool:
    """Write the include for `vips` atomically (BIRD never reads half a file); returns
    whether the content changed. OSError when the directory cannot be written."""
    text = include_text(vips, device)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except (OSError, UnicodeDecodeError):
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".fastlvs-vips-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return True


def read_reply(sock: socket.socket, buf: bytearray) -> list[tuple[int, str]]:
    """One reply of BIRD's control socket as [(code, text), ...]: lines `DDDD-text` go on,
    `DDDD text` ends it, and ` text` continues the previous code. BirdError when the socket
    closes or says something else."""
    out: list[tuple[int, str]] = []
    last = 0
    while True:
        nl = buf.find(b"\n")
        while nl < 0:
            chunk = sock.recv(4096)
            if not chunk:
                raise BirdError("BIRD closed its control socket")
            buf += chunk
            nl = buf.find(b"\n")
        line = bytes(buf[:nl]).decode("utf-8", "replace")
        del buf[:nl + 1]
        if line[:1] == " ":
            out.append((last, line[1:]))
            continue
        if len(line) < 5 or not line[:4].isdigit() or line[4] not in " -":
            raise BirdError(f"BIRD's control socket answered {line[:60]!r}")
        last = int(line[:4])
        out.append((last, line[5:]))
        if line[4] == " ":
            return out


def command(path: str, text: str, timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    """Send one command (`configure`, `show route`, ...) to BIRD's control socket at `path`
    and return its reply lines; BirdError (one line) if BIRD is absent, silent or refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    buf = bytearray()
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise BirdError(f"BIRD control socket {path}: no such file (is bird running?)") \
                from None
        except OSError as e:
            raise BirdError(f"BIRD control socket {path}: {e.strerror or e}") from None
        read_reply(sock, buf)                       # the banner: 0001 BIRD 2.x ready.
        sock.sendall(text.encode() + b"\n")
        reply = read_reply(sock, buf)
    except socket.timeout:
        raise BirdError(f"BIRD control socket {path}: no answer within {timeout:g} s") from None
    except OSError as e:
        raise BirdError(f"BIRD control socket {path}: {e.strerror or e}") from None
    finally:
        sock.close()
    code, last = reply[-1]
    if code >= 8000:
        raise BirdError(f"BIRD refused `{text}`: {last}")
    return reply


def configure(path: str, timeout: float = TIMEOUT) -> str:
    """`birdc configure` over the socket: BIRD re-reads its config (and our include); only
    the routes that changed are announced or withdrawn. Returns BIRD's last line."""
    return command(path, "configure", timeout)[-1][1]


_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


class Beacon:
    """A TUN device that exists exactly as long as this process holds it open (not
    persistent): BIRD's static routes via it are up while fastlvs lives and vanish, with the
    device, when it dies however it dies. `open()` raises BirdError (one line) when no TUN
    device can be made; `close()` removes it."""

    def __init__(self, name: str = DEFAULT_DEVICE):
        if not name or len(name) > 15 or "/" in name or " " in name or '"' in name:
            raise BirdError(f"bgp device {name!r}: not an interface name (1-15 characters)")
        self.name = name
        self.fd: int | None = None

    def open(self) -> None:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise BirdError(f"/dev/net/tun: {e.strerror}") from None
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", self.name.encode(),
                                                    _IFF_TUN | _IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise BirdError(f"TUN device {self.name}: {e.strerror}") from None
        self.fd = fd
        r = subprocess.run(["ip", "link", "set", "dev", self.name, "up"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            self.close()
            raise BirdError(f"TUN device {self.name}: cannot set it up: "
                            f"{r.stderr.strip() or r.returncode}")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = ["Beacon", "DEFAULT_DEVICE", "BirdError", "DEFAULT_INCLUDE", "DEFAULT_SOCKET", "TIMEOUT", "command", "configure",
           "include_text", "read_reply", "write_include"]
