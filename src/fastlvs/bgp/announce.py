"""Which VIPs this director announces, and the drain: a VIP is announced only while the
daemon is ready and not draining, the VIP is on this host (served, not a VRRP backup's), one
of its services has an available real server (weight > 0; health checks remove failed ones
and put a sorry server in) and none of its services translates (NAT). The [bgp] settings.
The daemon calls Announcer.update() from its loop; BIRD is told only when the set changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from fastlvs.bgp import bird

log = logging.getLogger("fastlvs")

RETRY = 5.0           # seconds between two attempts to reach a BIRD that failed
LOOK_EVERY = 0.2      # seconds between two looks at the table (the loop turns every 10 ms)
DRAIN_LOOK = 0.5      # seconds between two counts of a draining director's connections
DRAIN_QUIET = 2.0     # a drain ends when nothing arrived for this long: ECMP moved it all
DRAIN_TIMEOUT = 30.0

NAT_REASON = ("a NAT service: its replies must come back through the director that "
              "translated the request, which ECMP does not promise")


@dataclass
class BgpConfig:
    """The [bgp] table (and --bird-include/--bird-socket/--drain-timeout over it).
    `include` None: no announcements (BGP off). `sloppy_tcp`: set the IPVS sysctl to 1 at
    start unless [sysctl] says otherwise (a director that ECMP hands a flow mid-connection
    must schedule it)."""

    include: str | None = None
    socket: str = bird.DEFAULT_SOCKET
    device: str = bird.DEFAULT_DEVICE      # the beacon TUN device; "" for blackhole routes
    drain_timeout: float = DRAIN_TIMEOUT
    sloppy_tcp: bool = True

    @property
    def enabled(self) -> bool:
        return self.include is not None


_KEYS = ("include", "socket", "device", "drain_timeout", "sloppy_tcp")


def parse_table(data, fail) -> BgpConfig:
    """The `[bgp]` table of a TOML file; `fail(key, what)` builds the exception to raise.
    `include` turns BGP on; `enabled = false` is not needed: leave the table out."""
    if not isinstance(data, dict):
        raise fail(None, "must be a table ([bgp])")
    for key in data:
        if key not in _KEYS:
            raise fail(key, f"unknown key (valid: {', '.join(_KEYS)})")
    cfg = BgpConfig()
    for key in ("include", "socket"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value or "\0" in value:
                raise fail(key, "must be a path")
            setattr(cfg, key, value)
    if "device" in data:
        value = data["device"]
        if not isinstance(value, str) or len(value) > 15 or any(c in value for c in '/ "'):
            raise fail("device", "must be an interface name of at most 15 characters, "
                                 'or "" for blackhole routes')
        cfg.device = value
    if "drain_timeout" in data:
        value = data["drain_timeout"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 86400:
            raise fail("drain_timeout", "must be seconds, 0..86400")
        cfg.drain_timeout = float(value)
    if "sloppy_tcp" in data:
        if not isinstance(data["sloppy_tcp"], bool):
            raise fail("sloppy_tcp", "must be true or false")
        cfg.sloppy_tcp = data["sloppy_tcp"]
    if cfg.include is None:
        raise fail("include", "missing: the file BIRD includes (e.g. /run/fastlvs/bgp-vips.conf)")
    return cfg


def servable(table, absent=()) -> dict[str, str | None]:
    """{VIP: None if it may be announced, else why not} for every VIP of `table` (a
    ServiceTable): absent VIPs (not on this host) are not, nor VIPs with a NAT dest, nor
    VIPs none of whose services has a dest of weight > 0 (a sorry server counts: health
    checks put it in the table). One available service is enough: the /32 carries every
    port of the VIP."""
    by_vip: dict[str, list] = {}
    for svc in table:
        by_vip.setdefault(svc.vaddr, []).append(svc)
    out: dict[str, str | None] = {}
    for vip, svcs in by_vip.items():
        dests = [d for svc in svcs for d in svc.dests]
        if ":" in vip:
            continue                     # IPv4 routes only (BIRD's ipv4 channel)
        if vip in absent:
            out[vip] = "not on this host"
        elif any(d.fwd.value == "nat" for d in dests):
            out[vip] = NAT_REASON
        elif any(d.weight > 0 for d in dests):
            out[vip] = None
        else:
            out[vip] = "no available real server"
    return out


class Announcer:
    """The announcements of one daemon. `update(director, now)` recomputes what may be
    announced (at most every LOOK_EVERY s, or at once with `force`), rewrites the include
    file when it changes and tells BIRD (`configure`); BIRD unreachable or refusing is one
    log line per distinct problem, tried again every RETRY s, and never stops forwarding.
    `drain(timeout)` withdraws everything and starts the drain; `drained` says it is over
    (no active connection left, nothing arrived for DRAIN_QUIET s, or the timeout)."""

    def __init__(self, cfg: BgpConfig):
        self.cfg = cfg
        self.ready = False
        self.draining = False
        self.drain_started: float | None = None
        self.drain_until: float | None = None
        self.drained = False
        self.drain_reason = ""
        self.announced: set[str] = set()
        self.reasons: dict[str, str | None] = {}
        self._told = False           # BIRD has been told the include's content (not yet)
        self._error: str | None = None
        self._next_try = 0.0
        self._next_look = 0.0
        self._drain_look = 0.0
        self._inpkts = -1
        self._quiet_since = 0.0
        self.beacon: bird.Beacon | None = None
        self.device: str | None = None       # what the routes point at (None: blackhole)

    # -- what the daemon calls ------------------------------------------------------------------
    def start(self, director) -> None:
        """The daemon is ready: announce what it can serve. Routes go via the beacon
        device when it can be made (else blackhole: they would outlive a killed fastlvs,
        which is said once). BIRD reads the new include before the device appears: a
        stale include of a killed run is never announced again."""
        self.device = self.cfg.device or None
        self.ready = True
        self.update(director, 0.0, force=True)
        if self.device:
            beacon = bird.Beacon(self.device)
            try:
                beacon.open()
            except bird.BirdError as e:
                log.warning("bgp: %s: routes are blackhole ones, and stay announced if "
                            "fastlvs is killed", e)
                self.device, self._told = None, False
                self._apply(self.announced, self.reasons)
                self._tell(0.0)
            else:
                self.beacon = beacon

    def update(self, director, now: float, force: bool = False) -> None:
        if self.draining:
            self._drain_step(director, now)
        if force or now >= self._next_look:
            self._next_look = now + LOOK_EVERY
            absent = set(director.vips()["absent"])
            reasons = servable(director.table, absent)
            if not self.ready:
                want = set()
            elif self.draining:
                want = set()
                reasons = {v: "draining" for v in reasons}
            else:
                want = {v for v, why in reasons.items() if why is None}
            self._apply(want, reasons)
        if not self._told and (force or now >= self._next_try):
            self._tell(now)

    def drain(self, director, now: float, timeout: float | None = None) -> None:
        """Withdraw every VIP and drain: forwarding goes on for what still arrives until
        `drained` (see the class). Draining again restarts the clock."""
        t = self.cfg.drain_timeout if timeout is None else timeout
        self.draining, self.drained, self.drain_reason = True, False, ""
        self.drain_started, self.drain_until = now, now + t
        self._inpkts, self._quiet_since, self._drain_look = -1, now, 0.0
        log.info("bgp: draining: every VIP withdrawn, established connections forwarded "
                 "for at most %g s", t)
        self.update(director, now, force=True)

    def undrain(self, director, now: float) -> None:
        """End a drain: announce again what may be announced."""
        if self.draining:
            log.info("bgp: drain ended by the admin: announcing again")
        self.draining = self.drained = False
        self.drain_until = self.drain_started = None
        self.update(director, now, force=True)

    def withdraw_all(self) -> None:
        """At exit: nothing of ours stays announced (BIRD reached or not: the include is
        empty, so a BIRD started later announces nothing either)."""
        self.ready = False
        self._apply(set(), {v: "stopped" for v in self.reasons})
        if not self._told:
            self._tell(0.0)
        if self.beacon is not None:
            self.beacon.close()
            self.beacon = None

    def status(self) -> dict:
        """JSON-ready: announced VIPs, the others with their reason, the drain's state and
        BIRD's last error (None: BIRD has the include's content)."""
        return {"include": self.cfg.include, "socket": self.cfg.socket, "device": self.device,
                "ready": self.ready, "draining": self.draining, "drained": self.drained,
                "drain_reason": self.drain_reason, "announced": sorted(self.announced),
                "withheld": {v: why for v, why in sorted(self.reasons.items())
                             if v not in self.announced},
                "bird_error": None if self._told else (self._error or "not told yet")}

    # -- inside ---------------------------------------------------------------------------------
    def _apply(self, want: set[str], reasons: dict) -> None:
        for vip in sorted(want - self.announced):
            log.info("bgp: announcing VIP %s", vip)
        for vip in sorted(self.announced - want):
            log.info("bgp: withdrawing VIP %s: %s", vip, reasons.get(vip) or "no longer served")
        for vip, why in sorted(reasons.items()):
            if why == NAT_REASON and self.reasons.get(vip) != NAT_REASON:
                log.warning("bgp: VIP %s is not announced: %s", vip, why)
        self.reasons = reasons
        if want == self.announced and self._told:
            return
        self.announced = set(want)
        try:
            bird.write_include(self.cfg.include, want, self.device)
        except OSError as e:
            self._fail(f"bgp: cannot write {self.cfg.include}: {e.strerror or e}")
            self._told = False
            return
        self._told = False
        self._next_try = 0.0

    def _tell(self, now: float) -> None:
        try:
            bird.write_include(self.cfg.include, self.announced, self.device)
            bird.configure(self.cfg.socket)
        except OSError as e:
            self._fail(f"bgp: cannot write {self.cfg.include}: {e.strerror or e}")
        except bird.BirdError as e:
            self._fail(f"bgp: {e}")
        else:
            if self._error is not None:
                log.info("bgp: BIRD reached again: announcements are up to date")
            self._told, self._error = True, None
            return
        self._next_try = now + RETRY

    def _fail(self, line: str) -> None:
        if line != self._error:
            log.error("%s; forwarding goes on, BIRD is tried again every %g s", line, RETRY)
        self._error = line

    def _drain_step(self, director, now: float) -> None:
        if self.drained or now < self._drain_look:
            return
        self._drain_look = now + DRAIN_LOOK
        totals = director.totals()
        if totals["inpkts"] != self._inpkts:
            self._inpkts, self._quiet_since = totals["inpkts"], now
        active = 0
        director.pull_counters()
        for svc in director.table:
            for d in svc.dests:
                active += d.activeconns
        why = ""
        if active == 0:
            why = "no active connection left"
        elif now - self._quiet_since >= DRAIN_QUIET:
            why = f"nothing arrived for {DRAIN_QUIET:g} s (the router moved every flow)"
        elif now >= self.drain_until:
            why = f"drain timeout ({active} active connection(s) left)"
        if why:
            self.drained, self.drain_reason = True, why
            log.info("bgp: drained after %.1f s: %s", now - self.drain_started, why)


__all__ = ["Announcer", "BgpConfig", "DRAIN_TIMEOUT", "NAT_REASON", "parse_table", "servable"]
