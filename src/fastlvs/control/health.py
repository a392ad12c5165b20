"""What health-check results do to the service table, as keepalived's check/ipwrapper.c does it
(keepalived 2.2.7, Debian 12's): a real server is in its virtual services while all its
checkers are up; down, it is removed (or held at weight 0 with inhibit_on_failure); quorum,
hysteresis and the sorry server per virtual server; misc_dynamic weights; notify_up/down and
quorum_up/down scripts; the transition log; the health listing; a reload that keeps state.
Every change goes to the Director as one ipvsadm command, so the operator's own changes stand.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from typing import Callable, Iterable

from fastlvs.control.director import describe_noroute
from fastlvs.control.ipvsadm import Command, describe
from fastlvs.control.model import (MAX_WEIGHT, ControlError, FwdMethod, NoRoute, ServiceKey,
                                   ServiceTable, addrport)
from fastlvs.health.spec import CheckSpec, HealthConfig, ServerHealth, VirtualHealth

log = logging.getLogger("fastlvs")

SCRIPT_TIMEOUT = 30.0      # seconds a notify/quorum script may run before its group is killed
SCRIPT_MAX_RUNNING = 64    # a flapping pool must not fork without bound
SHUTDOWN_WAIT = 1.0        # keepalived gives omega's scripts one second (TIMER_HZ) at exit


def _real_weight(w: int) -> int:
    # keepalived's real_weight(): the effective weight clamped to what IPVS takes
    return 0 if w < 0 else min(w, MAX_WEIGHT)


def _svc_text(key: ServiceKey) -> str:
    if key.proto.value == "fwm":
        return f"FWM {key.vport}"           # a mark has no address
    return f"{key.proto.value.upper()} {addrport(key.vaddr, key.vport)}"


# -- scripts ------------------------------------------------------------------------------------
class ScriptRunner:
    """notify_up/notify_down/quorum_up/quorum_down, started as keepalived's notify_exec starts
    them: `/bin/sh -c LINE`, in a process group of their own, never waited for. Output goes
    nowhere. `reap()` (the daemon's loop calls it through HealthPolicy.tick) collects those
    that ended and kills the group of one that ran past `timeout`; `wait()` is the bounded
    wait at shutdown. Nothing here raises: a script that cannot start is one log line."""

    def __init__(self, timeout: float = SCRIPT_TIMEOUT, max_running: int = SCRIPT_MAX_RUNNING,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.max_running = max_running
        self._clock = clock
        self._running: list[tuple[subprocess.Popen, float, str]] = []

    def __call__(self, line: str, what: str) -> None:
        self.reap()
        if len(self._running) >= self.max_running:
            log.warning("%s: not run, %d scripts still running: %s", what, len(self._running),
                        line)
            return
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", line], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    close_fds=True, start_new_session=True)
        except OSError as e:
            log.warning("%s: cannot run %s: %s", what, line, e.strerror or e)
            return
        self._running.append((proc, self._clock() + self.timeout, what))

    @property
    def running(self) -> int:
        """How many scripts have not been reaped yet."""
        return len(self._running)

    def reap(self) -> int:
        """Collect the scripts that ended, kill those past their time; returns how many are
        still running."""
        now = self._clock()
        keep = []
        for proc, deadline, what in self._running:
            try:
                if proc.poll() is not None:
                    continue
                if now >= deadline:
                    log.warning("%s: still running after %g s, killed", what, self.timeout)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait(timeout=1.0)
                    continue
            except Exception as e:       # never into the loop
                log.warning("%s: %s", what, e)
                continue
            keep.append((proc, deadline, what))
        self._running = keep
        return len(keep)

    def wait(self, timeout: float) -> int:
        """Reap for up to `timeout` seconds, then kill what still runs; returns how many
        had to be killed."""
        end = time.monotonic() + timeout
        while self.reap() and time.monotonic() < end:
            time.sleep(0.01)
        killed = 0
        for proc, _, what in self._running:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=1.0)
            except Exception:
                pass
            log.warning("%s: still running at exit, killed", what)
            killed += 1
        self._running = []
        return killed


# -- state ---------------------------------------------------------------------------------------
class _Checker:
    """One probe (one CheckSpec), shared by every (service, server) that follows it."""

    __slots__ = ("spec", "up", "has_run", "reason", "at", "weight")

    def __init__(self, spec: CheckSpec):
        self.spec = spec
        self.up = not spec.alpha       # keepalived: up unless alpha
        self.has_run = False
        self.reason = ""
        self.at: float | None = None
        self.weight: int | None = None  # misc_dynamic: the weight its exit status asks for

    def describe(self, addr: str, port: int) -> str:
        s = self.spec
        text = f"{s.kind} {addrport(addr, port)}"
        if (s.connect_ip, s.connect_port) not in ((addr, port), (addr, 0)) \
                and s.kind != "MISC_CHECK":
            text += f" (probing {addrport(s.connect_ip, s.connect_port)})"
        return text


class _Server:
    """One real server of one virtual service: keepalived's real_server_t."""

    __slots__ = ("addr", "port", "health", "weight", "fwd", "u_threshold", "l_threshold",
                 "checkers", "alive", "set", "tun")

    def __init__(self, addr, port, health: ServerHealth, weight: int, fwd: FwdMethod,
                 upper: int, lower: int, checkers: list, tun=None):
        self.addr, self.port = addr, port
        self.tun = tun                       # a TUN dest's (tun_type, tun_port, tun_flags)
        self.health = health
        self.weight = weight                 # configured (keepalived's iweight)
        self.fwd, self.u_threshold, self.l_threshold = fwd, upper, lower
        self.checkers: list[_Checker] = checkers
        self.alive = False
        self.set = False                     # in the director's table (keepalived's rs->set)

    @property
    def inhibit(self) -> bool:
        return self.health.inhibit_on_failure

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checkers if not c.up)

    @property
    def effective_weight(self) -> int:
        # keepalived: iweight plus each dynamic checker's (status - 2 - iweight); a checker
        # that failed gives its share back
        return self.weight + sum(c.weight - self.weight for c in self.checkers
                                 if c.weight is not None and c.up)


class _Sorry:
    __slots__ = ("addr", "port", "fwd", "weight", "inhibit", "alive", "set")

    def __init__(self, spec):
        self.addr, self.port = spec.addr, spec.port
        self.fwd = FwdMethod.of(spec.fwd)
        self.weight = spec.weight
        self.inhibit = spec.inhibit
        self.alive = False                   # in use
        self.set = False

    failed = 0
    u_threshold = l_threshold = 0
    tun = None

    @property
    def effective_weight(self) -> int:
        return self.weight

    def same(self, spec) -> bool:
        return spec is not None and (spec.addr, spec.port) == (self.addr, self.port)


class _Virtual:
    __slots__ = ("key", "health", "servers", "quorum", "hysteresis", "quorum_up", "sorry")

    def __init__(self, key: ServiceKey, health: VirtualHealth):
        self.key = key
        self.health = health
        self.servers: dict[tuple, _Server] = {}
        total = sum(health.weights.get(rs, 1) for rs in health.servers)
        # keepalived's config check: a quorum above the total weight could never be met, and
        # hysteresis must stay below the quorum
        self.quorum = max(0, min(health.quorum, total))
        self.hysteresis = max(0, min(health.hysteresis, self.quorum - 1))
        self.quorum_up = False
        self.sorry = _Sorry(health.sorry_server) if health.sorry_server else None

    def live_weight(self) -> int:
        return sum(_real_weight(s.effective_weight) for s in self.servers.values() if s.alive)


# -- the policy ----------------------------------------------------------------------------------
class HealthPolicy:
    """Applies checker results to `director`'s table, keepalived's way.

    `HealthPolicy(director, config)` takes the table the director serves (keepalived.conf's
    virtual servers at their configured weights) and puts it in keepalived's starting state
    at once: servers with an alpha checker out (weight 0 with inhibit_on_failure), sorry
    servers in where the quorum is not met, quorum_up run for the services that start with
    their quorum. `run_script(line, what)` starts a script (default: a ScriptRunner);
    `status_source()` (settable later) returns the checker process's ProbeStatus list for the
    health listing; `clock()` stamps what the policy records itself.

    The daemon feeds `on_event()` every checker transition, calls `tick()` from its loop
    (reaps scripts), `reload()` on SIGHUP and `shutdown()` at exit.
    """

    def __init__(self, director, config: HealthConfig, run_script: Callable | None = None,
                 status_source: Callable | None = None,
                 clock: Callable[[], float] = time.time):
        self.director = director
        self.run_script = run_script if run_script is not None else ScriptRunner()
        self.status_source = status_source
        self._clock = clock
        self.config = HealthConfig()
        self._checkers: dict[CheckSpec, _Checker] = {}
        self._virtuals: dict[ServiceKey, _Virtual] = {}
        self._follow: dict[CheckSpec, list] = {}     # spec -> [(_Virtual, _Server)]
        self.reload(config, copy_table(director.table), initial=True)

    # -- events ---------------------------------------------------------------------------------
    def on_event(self, event) -> None:
        """Apply one checker result (`event.spec`, `.up`, `.reason`, `.weight`, `.at`) to every
        (service, server) that follows that spec. An event for a spec not configured is
        ignored; one that repeats the checker's state only records it (and, as keepalived,
        runs notify_down for an alpha checker's first failure) or changes a misc_dynamic
        weight. Never raises: a refused table change is logged."""
        ck = self._checkers.get(event.spec)
        if ck is None:
            log.debug("health: result for a checker not configured: %s %s:%s", event.spec.kind,
                      event.spec.connect_ip, event.spec.connect_port)
            return
        try:
            self._event(ck, bool(event.up), str(event.reason or ""), event.weight,
                        event.at if event.at is not None else self._clock())
        except Exception:                 # a bug here must not stop the daemon's loop
            log.exception("health: applying a result of %s failed", event.spec.kind)

    def _event(self, ck: _Checker, up: bool, reason: str, weight, at: float) -> None:
        first = not ck.has_run
        was_up = ck.up
        ck.has_run, ck.reason, ck.at = True, reason, at
        followers = self._follow.get(ck.spec, ())
        new_weight = weight if (up and ck.spec.misc_dynamic) else None
        if up and new_weight != ck.weight:
            # keepalived's misc checker changes the weight before the state (update_svr_wgt)
            olds = [_real_weight(s.effective_weight) for _, s in followers]
            ck.weight = new_weight
            for (v, s), old in zip(followers, olds):
                self._weight_changed(v, s, ck, old, reason)
        if up == was_up:
            if first and not up:
                for v, s in followers:     # an alpha checker's first failure: notify_down
                    self._notify_server(v, s)
            return
        for v, s in followers:
            self._checker_moved(v, s, ck, up, reason)
        ck.up = up
        if not up:
            ck.weight = None               # a failed misc checker's weight share is given back

    def _checker_moved(self, v: _Virtual, s: _Server, ck: _Checker, up: bool, reason: str):
        what = f"{ck.describe(s.addr, s.port)} of {_svc_text(v.key)} {'up' if up else 'down'}"
        if reason:
            what += f": {reason}"
        others = s.failed - (0 if ck.up else 1)        # failed checkers besides this one
        if up and others:
            log.info("%s; server stays down (%d other checker%s down)", what, others,
                     "" if others == 1 else "s")
            return
        if not up and not s.alive:
            log.info("%s; server already down", what)
            return
        ck.up = up                       # the server's weight and quorum see the new state
        try:
            self._server_state(v, s, up, what)
        finally:
            ck.up = not up               # _event sets it for every follower at the end

    def _weight_changed(self, v: _Virtual, s: _Server, ck: _Checker, old: int, reason: str):
        new = _real_weight(s.effective_weight)
        if new == old:
            return
        applies = s.set and s.alive and self._pool_in_use(v)
        log.info("%s of %s weight %d -> %d%s; %s", ck.describe(s.addr, s.port), _svc_text(v.key),
                 old, new, f" ({reason})" if reason else "",
                 "applied" if applies else "takes effect when the server is in the pool")
        if applies:
            self._ipvs(v, s, "edit")
        self._update_quorum(v, init=False)

    @staticmethod
    def _pool_in_use(v: _Virtual) -> bool:
        # keepalived changes the real servers only while the sorry server is not in their place
        return v.quorum_up or v.sorry is None or not v.sorry.alive

    def _server_state(self, v: _Virtual, s: _Server, alive: bool, what: str) -> None:
        # keepalived's perform_svr_state
        if s.alive == alive:
            return
        if self._pool_in_use(v):
            self._ipvs(v, s, "add" if alive else "del", alive_now=alive)
            if alive:
                done = (f"weight {_real_weight(s.effective_weight)} restored "
                        f"(inhibit_on_failure)") if s.inhibit else "added"
            else:
                done = "weight 0 (inhibit_on_failure)" if s.inhibit else "removed"
        else:
            done = "sorry server in use: the pool waits for the quorum"
        log.info("%s; %s", what, done)
        s.alive = alive
        self._notify_server(v, s)
        self._update_quorum(v, init=False)

    def _notify_server(self, v: _Virtual, s: _Server) -> None:
        line = s.health.notify_up if s.alive else s.health.notify_down
        if line:
            self._run(line, f"{'notify_up' if s.alive else 'notify_down'} of "
                            f"{addrport(s.addr, s.port)} in {_svc_text(v.key)}")

    def _run(self, line: str, what: str) -> None:
        try:
            self.run_script(line, what)
        except Exception as e:           # never into the loop
            log.warning("%s: %s", what, e)

    # -- quorum (keepalived's update_quorum_state) ----------------------------------------------
    def _update_quorum(self, v: _Virtual, init: bool, fresh: bool = False) -> None:
        total = v.live_weight()
        sign = -1 if v.quorum_up else 1
        threshold = v.quorum + sign * v.hysteresis
        svc = _svc_text(v.key)
        sorry = v.sorry
        if not v.quorum_up and total >= threshold:
            v.quorum_up = True
            text = (f"quorum gained for {svc}: live weight {total} >= {threshold} "
                    f"(quorum {v.quorum} + hysteresis {v.hysteresis})")
            if sorry is not None and sorry.alive:
                self._ipvs(v, sorry, "del")
                sorry.alive = False
                self._pool(v, add=True)
                text += (f"; sorry server {addrport(sorry.addr, sorry.port)} "
                         f"{'at weight 0' if sorry.inhibit else 'removed'}, "
                         f"alive real servers back")
            log.info("%s", text)
            self._notify_quorum(v)
        elif (v.quorum_up and (not total or total < threshold)) or \
                (init and not v.quorum_up and sorry is not None and not sorry.alive):
            v.quorum_up = False
            text = (f"{'starting with quorum down' if fresh else 'quorum lost'} for {svc}: live "
                    f"weight {total} < {threshold} (quorum {v.quorum} {'-' if sign < 0 else '+'} "
                    f"hysteresis {v.hysteresis})")
            if sorry is not None and not sorry.alive:
                self._pool(v, add=False)
                self._ipvs(v, sorry, "add")
                sorry.alive = True
                text += f"; sorry server {addrport(sorry.addr, sorry.port)} in"
                if any(s.alive for s in v.servers.values()):
                    text += ", alive real servers out" + (" (weight 0)" if any(
                        s.inhibit for s in v.servers.values() if s.alive) else "")
            log.info("%s", text)
            self._notify_quorum(v)

    def _pool(self, v: _Virtual, add: bool) -> None:
        # keepalived's perform_quorum_state: only the alive servers move
        for s in v.servers.values():
            if s.alive:
                self._ipvs(v, s, "add" if add else "del", alive_now=True)

    def _notify_quorum(self, v: _Virtual) -> None:
        line = v.health.quorum_up if v.quorum_up else v.health.quorum_down
        if line:
            self._run(line, f"{'quorum_up' if v.quorum_up else 'quorum_down'} of "
                            f"{_svc_text(v.key)}")

    # -- the table (keepalived's ipvs_cmd, as ipvsadm commands) ---------------------------------
    def _ipvs(self, v: _Virtual, s, op: str, alive_now: bool = True) -> None:
        """keepalived's ipvs_cmd(): with inhibit, a removal is an edit to weight 0 and an add
        of a dest still in the table an edit back; an add of a dest already there and a
        removal of one already gone are not errors."""
        w = _real_weight(s.effective_weight)
        if op == "del" and s.inhibit:
            self._edit(v, s, 0)
        elif op == "add" and s.inhibit and s.set:
            self._edit(v, s, w)
        elif op == "add":
            if not s.set:
                s.set = True
                if s.inhibit and not alive_now:
                    w = 0
            self._command(v, s, "add-server", w, tolerate="Destination already exists")
        elif op == "del":
            s.set = False
            self._command(v, s, "delete-server", 0, tolerate="No such destination")
        else:
            self._edit(v, s, w)

    def _edit(self, v: _Virtual, s, weight: int) -> None:
        svc = self.director.table.get(v.key)
        d = svc.find_dest(s.addr, s.port) if svc is not None else None
        if d is None:                 # ipvs_talk: an edit of a dest that is gone adds it
            self._command(v, s, "add-server", weight)
            return
        # an edit replaces every field: keep what the operator set, change the weight
        self._execute(Command(
            "edit-server", frozenset({"service-address", "real-server", "weight"}),
            service=v.key, dest_addr=s.addr, dest_port=s.port, fwd=d.fwd, weight=weight,
            u_threshold=d.u_threshold, l_threshold=d.l_threshold,
            tun=(d.tun_type, d.tun_port, d.tun_flags)))

    def _command(self, v: _Virtual, s, name: str, weight: int, tolerate: str = "") -> None:
        self._execute(Command(
            name, frozenset({"service-address", "real-server"}), service=v.key,
            dest_addr=s.addr, dest_port=s.port, fwd=s.fwd, weight=weight,
            u_threshold=s.u_threshold, l_threshold=s.l_threshold, tun=s.tun), tolerate)

    def _execute(self, cmd: Command, tolerate: str = "") -> bool:
        """Run one table command through the director; a refusal is logged, never raised
        (keepalived logs a failed ipvs_cmd and carries on). Returns True when it applied."""
        try:
            self.director.execute(cmd)
            return True
        except ControlError as e:
            if tolerate and e.message == tolerate:
                return False
            log.warning("health: %s", describe(cmd, e))
        except NoRoute as e:
            log.warning("health: %s", describe_noroute(cmd, e))
        return False

    # -- reload ---------------------------------------------------------------------------------
    def reload(self, config: HealthConfig, table: ServiceTable, initial: bool = False) -> None:
        """Serve `table` (keepalived.conf's virtual servers, every real server at its configured
        weight, as a fresh parse gives it) with `config`'s health settings, keeping what
        stays: a checker whose spec is unchanged keeps its state, so a failed server stays
        out (keepalived re-adds none on reload either); a real server that stays keeps its
        alive state and weight, a virtual server its quorum state and its sorry server if the
        address is the same. New checkers start as their spec says (up unless alpha), a new
        server is up when all its checkers are. Gone ones are forgotten (an alive server
        that goes runs notify_down, a service that goes with its quorum runs quorum_down, as
        keepalived does).

        `table` is edited to that state and handed to Director.load, which is all or
        nothing: ControlError or NoRoute from it leaves the director and this policy as they
        were. Then each virtual server's quorum is looked at again as at start (quorum_up of
        a new service, the sorry server of one whose quorum is not met).
        The daemon calls this instead of Director.load when keepalived.conf drives the table.
        """
        checkers = {}
        for spec in config.probes():
            checkers[spec] = self._checkers.get(spec) or _Checker(spec)
        virtuals: dict[ServiceKey, _Virtual] = {}
        changed = []                      # (virtual, server, was alive) of servers kept
        for key, vh in config.services.items():
            old = self._virtuals.get(key)
            v = _Virtual(key, vh)
            svc = table.get(key)
            if old is not None:
                v.quorum_up = old.quorum_up
                if v.sorry is not None and old.sorry is not None and v.sorry.same(vh.sorry_server):
                    v.sorry.alive, v.sorry.set = old.sorry.alive, old.sorry.set
            for rs, sh in vh.servers.items():
                addr, port = rs
                d = svc.find_dest(addr, port) if svc is not None else None
                weight = vh.weights.get(rs, d.weight if d is not None else 1)
                fwd = d.fwd if d is not None else (v.sorry.fwd if v.sorry else FwdMethod.DR)
                s = _Server(addr, port, sh, weight, fwd, d.u_threshold if d else 0,
                            d.l_threshold if d else 0, [checkers[c] for c in sh.checks],
                            (d.tun_type, d.tun_port, d.tun_flags) if d else None)
                prev = old.servers.get(rs) if old is not None else None
                s.alive = s.failed == 0
                if prev is not None and prev.alive != s.alive:
                    changed.append((v, s, prev.alive))
                v.servers[rs] = s
            virtuals[key] = v
        self._shape(table, virtuals)
        self.director.load(table)
        # committed: from here on nothing may fail half-way
        gone = [(v, s) for k, v in self._virtuals.items() for rs, s in v.servers.items()
                if s.alive and (k not in virtuals or rs not in virtuals[k].servers)]
        gone_quorum = [v for k, v in self._virtuals.items()
                       if k not in virtuals and v.quorum_up]
        fresh = {k for k in virtuals if k not in self._virtuals}
        self.config, self._checkers, self._virtuals = config, checkers, virtuals
        self._follow = {spec: [(virtuals[k], virtuals[k].servers[rs]) for k, rs in pairs]
                        for spec, pairs in config.probes().items()}
        for v, s in gone:
            log.info("%s of %s: no longer configured", addrport(s.addr, s.port),
                     _svc_text(v.key))
            s.alive = False
            self._notify_server(v, s)
        for v in gone_quorum:
            v.quorum_up = False
            self._notify_quorum(v)
        for v, s, was in changed:
            log.info("%s of %s %s on reload: %s", addrport(s.addr, s.port), _svc_text(v.key),
                     "up" if s.alive else "down",
                     "no checker of it is down now" if s.alive else "a new checker starts down")
            if s.alive:                   # keepalived's perform_svr_state from migrate_checkers
                self._notify_server(v, s)
        for v in virtuals.values():
            self._update_quorum(v, init=True, fresh=v.key in fresh)
            sorry = v.sorry
            if sorry is not None and sorry.inhibit and not sorry.set:
                self._command(v, sorry, "add-server", 0, tolerate="Destination already exists")
                sorry.set = True
        if initial:
            for v in virtuals.values():
                down = [addrport(s.addr, s.port) for s in v.servers.values() if not s.alive]
                if down:
                    log.info("%s: starting without %s (alpha: out until a check succeeds)",
                             _svc_text(v.key), ", ".join(down))

    @staticmethod
    def _shape(table: ServiceTable, virtuals: dict) -> None:
        # Put `table` in the state the policy's servers ask for, before it is loaded.
        for key, v in virtuals.items():
            svc = table.get(key)
            if svc is None:
                continue
            pool = HealthPolicy._pool_in_use(v)
            for s in v.servers.values():
                d = svc.find_dest(s.addr, s.port)
                keep = s.alive and pool
                weight = _real_weight(s.effective_weight) if keep else 0
                if keep or s.inhibit:
                    if d is None:
                        d = table.add_dest(key, s.addr, s.port, fwd=s.fwd, weight=weight,
                                           u_threshold=s.u_threshold, l_threshold=s.l_threshold,
                                           tun=s.tun)
                    d.weight = weight
                    s.set = True
                else:
                    if d is not None:
                        table.delete_dest(key, s.addr, s.port)
                    s.set = False
            sorry = v.sorry
            if sorry is not None:
                d = svc.find_dest(sorry.addr, sorry.port)
                if sorry.alive or (sorry.inhibit and sorry.set):
                    weight = sorry.weight if sorry.alive else 0
                    if d is None:
                        d = table.add_dest(key, sorry.addr, sorry.port, fwd=sorry.fwd,
                                           weight=weight)
                    d.weight = weight
                    sorry.set = True
                elif d is not None and (sorry.addr, sorry.port) not in v.servers:
                    table.delete_dest(key, sorry.addr, sorry.port)

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> None:
        """At exit, as keepalived's clear_services: for every virtual server with `omega`,
        notify_down of each alive real server, then quorum_down; waits up to `wait` seconds
        for the scripts (keepalived gives them one), then kills what still runs. Without
        omega nothing is run. The table is left alone: it ends with the daemon."""
        for v in self._virtuals.values():
            if not v.health.omega:
                continue
            for s in v.servers.values():
                if s.alive:
                    s.alive = False
                    log.info("shutting down %s of %s", addrport(s.addr, s.port),
                             _svc_text(v.key))
                    self._notify_server(v, s)
            v.quorum_up = False
            self._notify_quorum(v)
        runner = self.run_script
        if isinstance(runner, ScriptRunner):
            runner.wait(wait)

    def tick(self) -> None:
        """Reap the scripts that ended (and kill any past its time); call from the loop."""
        runner = self.run_script
        if isinstance(runner, ScriptRunner):
            try:
                runner.reap()
            except Exception:
                log.exception("health: reaping scripts failed")

    # -- the listing --------------------------------------------------------------------------
    def status(self, ask_checkers: bool = True) -> dict:
        """JSON-ready health state for `fastlvs admin --health`: per virtual server its quorum
        state and live weight, per real server whether it is up, what the table holds for it
        (its weight, or None when it is out) and each checker with its state, last result and
        time. With a status_source, the checker process's own last result, time and failure
        count are shown; without (or not `ask_checkers`: the metrics, which must not wait for
        the checker process), the last transition the policy saw."""
        probes = {}
        if self.status_source is not None and ask_checkers:
            try:
                probes = {p.spec: p for p in self.status_source()}
            except Exception as e:
                log.warning("health: the checker process's status is unavailable: %s", e)
        out = []
        for v in self._virtuals.values():
            svc = self.director.table.get(v.key)

            def in_table(addr, port):
                d = svc.find_dest(addr, port) if svc is not None else None
                return None if d is None else d.weight

            servers = []
            for s in v.servers.values():
                checks = []
                for ck in s.checkers:
                    p = probes.get(ck.spec)
                    entry = {"checker": ck.spec.kind,
                             "target": addrport(ck.spec.connect_ip, ck.spec.connect_port),
                             "up": ck.up, "reason": ck.reason, "time": ck.at,
                             "failures": None}
                    if p is not None:
                        entry.update(reason=p.last_reason or "", time=p.last_time,
                                     failures=p.failures)
                    if ck.weight is not None:
                        entry["weight"] = ck.weight
                    checks.append(entry)
                servers.append({"server": addrport(s.addr, s.port), "up": s.alive,
                                "weight": _real_weight(s.effective_weight),
                                "configured_weight": s.weight, "inhibit": s.inhibit,
                                "in_table": in_table(s.addr, s.port), "checkers": checks})
            sorry = None
            if v.sorry is not None:
                sorry = {"server": addrport(v.sorry.addr, v.sorry.port), "in_use": v.sorry.alive,
                         "inhibit": v.sorry.inhibit,
                         "in_table": in_table(v.sorry.addr, v.sorry.port)}
            out.append({"service": _svc_text(v.key), "quorum_up": v.quorum_up,
                        "live_weight": v.live_weight(), "quorum": v.quorum,
                        "hysteresis": v.hysteresis, "sorry_server": sorry,
                        "servers": servers})
        return {"services": out}


def copy_table(table: ServiceTable) -> ServiceTable:
    """A ServiceTable with the same services and dests (same order, fields and settings) as
    `table`, sharing no object with it."""
    new = ServiceTable()
    new.timeouts = dict(table.timeouts)
    new.sysctls = None if table.sysctls is None else dict(table.sysctls)
    for svc in table:
        new.add_service(svc.proto, svc.vaddr, svc.vport, sched=svc.sched_name,
                        timeout=svc.timeout, netmask=svc.netmask, flags=set(svc.flags),
                        ops=svc.ops)
        for d in reversed(svc.dests):      # each add goes to the head
            new.add_dest(svc.key, d.addr, d.port, fwd=d.fwd, weight=d.weight,
                         u_threshold=d.u_threshold, l_threshold=d.l_threshold,
                         tun=(d.tun_type, d.tun_port, d.tun_flags))
    return new


def _when(t) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def format_status(status: dict) -> str:
    """`fastlvs admin --health` text of HealthPolicy.status()."""
    lines = []
    for v in status.get("services", ()):
        q = "up" if v["quorum_up"] else "down"
        lines.append(f"{v['service']}  quorum {q} (live weight {v['live_weight']}, quorum "
                     f"{v['quorum']}, hysteresis {v['hysteresis']})")
        for s in v["servers"]:
            t = s["in_table"]
            table = "removed" if t is None else f"weight {t}"
            lines.append(f"  -> {s['server']:<22} {'up' if s['up'] else 'down':<5} {table}")
            for c in s["checkers"]:
                result = c.get("reason") or ("no result yet" if c.get("time") is None else "")
                extra = ""
                if c.get("failures"):
                    extra += f"  failures {c['failures']}"
                if c.get("weight") is not None:
                    extra += f"  weight {c['weight']}"
                lines.append(f"       {c['checker']} {c['target']:<22} "
                             f"{'up' if c['up'] else 'down':<5} {_when(c.get('time'))}  "
                             f"{result}{extra}".rstrip())
        ss = v.get("sorry_server")
        if ss:
            t = ss["in_table"]
            use = "in use" if ss["in_use"] else "not in use"
            where = "not in the table" if t is None else f"weight {t}"
            lines.append(f"  sorry server {ss['server']}: {use} ({where})")
    return "".join(line + "\n" for line in lines)


__all__ = ["HealthPolicy", "ScriptRunner", "copy_table", "format_status"]
