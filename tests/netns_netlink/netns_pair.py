"""Shell helpers for the namespace tests: `ip` and the Pair the fixture yields."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True,
                          timeout=30)


@dataclass
class Pair:
    a: str
    b: str
    a_if: str
    b_if: str
    a_ip: str
    b_ip: str

    def mac(self, ns, ifname) -> bytes:
        out = ip("-n", ns, "-o", "link", "show", ifname).stdout
        text = out.split("link/ether ")[1].split()[0]
        return bytes(int(x, 16) for x in text.split(":"))

    def index(self, ns, ifname) -> int:
        return int(ip("-n", ns, "-o", "link", "show", ifname).stdout.split(":")[0])
