"""What a configuration asks the health checker for: the data shared by the keepalived.conf
reader (control/keepalived.py), the checker process (health/worker.py) and the policy that
applies results to the service table (control/health.py).

Every value is plain data (frozen dataclasses of str/int/float/bool/tuples), so a spec can be
compared (a reload keeps the state of a checker whose spec did not change), hashed (one probe
per distinct spec, however many virtual servers name the real server) and sent to the
checker process as JSON.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# keepalived's checker block names
KINDS = ("TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "UDP_CHECK", "DNS_CHECK",
         "PING_CHECK")


@dataclass(frozen=True)
class Url:
    """One `url { }` of HTTP_GET/SSL_GET. `status_codes` empty means keepalived's default
    (any 2xx); `digest` is the lower-case hex MD5 of the body, or None."""

    path: str = "/"
    digest: str | None = None
    status_codes: tuple[int, ...] = ()
    virtualhost: str | None = None


_BYTES = ("payload", "require_reply", "reply_mask")     # CheckSpec's bytes fields


@dataclass(frozen=True)
class CheckSpec:
    """One checker of one real server, every inherited value already resolved (the
    keepalived.conf reader applies virtual_server → real_server → checker inheritance).

    The probe goes to connect_ip:connect_port (the real server's address and port unless the
    block says otherwise). Times are seconds. Fields that do not apply to `kind` keep their
    defaults and are ignored."""

    kind: str
    connect_ip: str
    connect_port: int = 0
    bindto: str | None = None
    bind_port: int = 0
    connect_timeout: float = 5.0
    delay_loop: float = 60.0
    retry: int = 1
    delay_before_retry: float = 1.0
    warmup: float = 0.0
    alpha: bool = False          # start down: the server is out until a check succeeds
    # HTTP_GET / SSL_GET
    urls: tuple[Url, ...] = ()
    virtualhost: str | None = None
    sni: bool = False            # SSL_GET: enable_sni
    # MISC_CHECK
    misc_path: str = ""
    misc_timeout: float = 0.0    # 0: delay_loop, as keepalived
    misc_dynamic: bool = False
    # UDP_CHECK
    payload: bytes | None = None
    require_reply: bytes | None = None   # None: no reply needed; b"": any reply
    reply_mask: bytes | None = None      # 1-bits of require_reply not compared (hex `X`)
    min_reply_length: int = 0
    max_reply_length: int = 255
    # DNS_CHECK
    dns_type: str = "SOA"
    dns_name: str = "."

    def to_json(self) -> dict:
        """A JSON-safe dict (bytes as hex), the checker process's wire form."""
        d = dataclasses.asdict(self)
        for k in _BYTES:
            if d[k] is not None:
                d[k] = d[k].hex()
        d["urls"] = [dataclasses.asdict(u) for u in self.urls]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "CheckSpec":
        """The inverse of to_json."""
        d = dict(d)
        for k in _BYTES:
            if d.get(k) is not None:
                d[k] = bytes.fromhex(d[k])
        d["urls"] = tuple(Url(**{**u, "status_codes": tuple(u.get("status_codes", ()))})
                          for u in d.get("urls", ()))
        return cls(**d)


@dataclass(frozen=True)
class ServerHealth:
    """What keepalived keeps per real_server beyond ipvsadm's fields. A server is up while
    every one of its checkers is up (no checker: always up)."""

    checks: tuple[CheckSpec, ...] = ()
    inhibit_on_failure: bool = False   # down: weight 0 (quiescent) instead of removed
    notify_up: str | None = None       # a command line, run through the shell as keepalived
    notify_down: str | None = None


@dataclass(frozen=True)
class SorryServer:
    """virtual_server's `sorry_server IP PORT` (with its forwarding method and weight)."""

    addr: str
    port: int
    fwd: str = "dr"                    # "dr" | "nat" | "tun" (lb_kind of the virtual server)
    weight: int = 1
    inhibit: bool = False              # sorry_server_inhibit: kept at weight 0 while unused


@dataclass(frozen=True)
class VirtualHealth:
    """What keepalived keeps per virtual_server beyond ipvsadm's fields. `servers` maps
    (real server address, port) to its ServerHealth; `weights` the configured weight of
    each, which health changes (misc_dynamic) and the quorum sum start from."""

    servers: dict = field(default_factory=dict)       # (addr, port) -> ServerHealth
    weights: dict = field(default_factory=dict)       # (addr, port) -> configured weight
    quorum: int = 1
    hysteresis: int = 0
    quorum_up: str | None = None
    quorum_down: str | None = None
    sorry_server: SorryServer | None = None
    alpha: bool = False
    omega: bool = False

    def __hash__(self):           # dict fields: compare by value, hash by identity
        return id(self)


@dataclass
class HealthConfig:
    """Every virtual server's health settings, by ServiceKey (control/model.py's key)."""

    services: dict = field(default_factory=dict)      # ServiceKey -> VirtualHealth

    def probes(self) -> dict:
        """Each distinct CheckSpec once, with the (service key, (addr, port)) pairs that
        follow it: one probe per real server and checker, however many services name it."""
        out: dict = {}
        for key, vh in self.services.items():
            for rs, sh in vh.servers.items():
                for spec in sh.checks:
                    out.setdefault(spec, []).append((key, rs))
        return out


__all__ = ["CheckSpec", "HealthConfig", "KINDS", "ServerHealth", "SorryServer", "Url",
           "VirtualHealth"]
