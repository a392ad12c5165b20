"""The `fastlvs --mode dr|nat|tun ...` process: builds the service table from the command line,
a rules file or a TOML config, checks it against the kernel (interfaces, VIPs, routes and
neighbours), opens the rings, and runs the loop that interleaves packet batches, control
requests, neighbour changes, VIPs that come and go (steered only while on this host),
rate estimation, connection expiry and the IPVS sync daemons (sync/daemon.py: started by
[sync], keepalived's lvs_sync_daemon or `fastlvs admin --start-daemon`). Signals: SIGTERM/SIGINT
stop cleanly, SIGHUP reloads the rules/config file.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from socket import AF_INET6

from fastlvs.control import ctl
from fastlvs.settings import Options, merge as merge_settings, parse_listen
from fastlvs.control.config import ConfigError, DirectorConfig, load_config
from fastlvs.control.server import ControlServer, Later
from fastlvs.control.metrics import (HealthCollector, MetricsServer, OffloadCollector,
                                     SyncCollector, director_metrics)
from fastlvs.control.director import Director
from fastlvs.control.factory import build_director
from fastlvs.control.model import ControlError, FwdMethod, NoRoute, ServiceTable
from fastlvs.system.napi import PlacementError, check_cpu
from fastlvs.system import sdnotify
from fastlvs.system.ports import PortError, Ports, xdp_missing
from fastlvs.system.state import StateFile, recover
from fastlvs.system.vrrp import VrrpError, VrrpKeepalived
from fastlvs.system.netlink import (AddressMonitor, Netlink, NetlinkError, NeighbourMonitor,
                                    NoAnswer, dr_problem, vip_local, vip_problem)
from fastlvs.control.ipvsadm import CommandError, apply_command, parse_command
from fastlvs.control.rules import RulesError, load_rules
from fastlvs.control.keepalived import KeepalivedConfig, KeepalivedError, load_keepalived
from fastlvs.control.health import HealthPolicy
from fastlvs.control.vrrp import vrrp_conf
from fastlvs.health.worker import HealthWorker
from fastlvs.bgp.announce import Announcer, BgpConfig
from fastlvs.settings import SyncSettings
from fastlvs.sync.daemon import BACKUP, MASTER, SyncDaemons, SyncError

log = logging.getLogger("fastlvs")

POLL_MS = 10            # time in the C loop between looks at signals, requests, neighbours
SWEEP_EVERY = 1.0       # seconds between expiry sweeps when traffic is idle
SWEEP_BUDGET = 65536    # entries inspected per idle sweep
RESOLVE_TIMEOUT = 3.0
CHECKER_RESTART = 5.0   # seconds between two starts of a checker process that keeps dying
SYNC_RETRY = 1.0        # seconds between two tries of a sync daemon switch that failed
SYNC_LINGER = 3.0       # seconds a new master still hears the old one's handover


class StartupError(Exception):
    """Bad configuration found before touching the network: the one line to print."""


_FWD_FLAG = {"dr": "-g", "nat": "-m", "tun": "-i"}


def quickstart_table(opts: Options) -> ServiceTable:
    """The service of `--vip [tcp:|udp:]VIP:PORT --rs RIP:PORT[@WEIGHT] ... -s SCHED [-p T]`,
    built through the ipvsadm parser so it means what `ipvsadm -A/-a` would: each --rs is
    added in order, so (as in IPVS) the last one heads the list."""
    head, sep, tail = opts.vip.partition(":")
    proto, rest = (head.lower(), tail) if sep and head.isalpha() else ("", opts.vip)
    if proto and proto not in ("tcp", "udp"):
        raise StartupError(f"--vip {opts.vip}: protocol must be tcp or udp")
    popt = "-u" if proto == "udp" else "-t"
    table = ServiceTable()
    add = ["-A", popt, rest, "-s", opts.scheduler]
    if opts.persistent is not None:
        add += ["-p", str(opts.persistent)]
    try:
        apply_command(table, parse_command(add))
        for rs in opts.rs:
            addr, _, weight = rs.partition("@")
            argv = ["-a", popt, rest, "-r", addr, _FWD_FLAG[opts.mode]]
            if weight:
                argv += ["-w", weight]
            apply_command(table, parse_command(argv))
    except (CommandError, ControlError) as e:
        raise StartupError(f"--vip/--rs: {e}") from None
    return table


class Daemon:
    """One director process. `start()` checks everything and opens the rings (StartupError
    before any change to the system); `run()` loops until a stop signal; `close()` leaves
    nothing attached (XDP programs, nft tables, sockets) and is safe to call twice."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.cfg = DirectorConfig()
        self.nl: Netlink | None = None
        self.director: Director | None = None
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.neigh: NeighbourMonitor | None = None
        self.ports: Ports | None = None
        self.vip_events: AddressMonitor | None = None   # addresses and local routes
        self._vip_here: dict[str, bool] = {}         # VIP -> on this host, as last looked
        self._hop_ips: set[str] = set()              # next-hop addresses of the real servers
        self._gateway: str | None = None             # the default gateway (NAT replies off-link)
        self._gateway6: str | None = None            # the same for IPv6 clients
        self._cif = 0                                # the client-side interface's ifindex
        self._retired_steered = False                # steering kept for deleted NAT dests
        self._stop = False
        self._reload = False
        self._reload_until: float | None = None     # a SIGHUP reload waiting for ARP
        self._watchdog = sdnotify.Watchdog()
        self.keepalived: KeepalivedConfig | None = None  # --keepalived-conf, as served
        self._read: KeepalivedConfig | None = None       # as last read (a reload may refuse it)
        self.health: HealthPolicy | None = None          # what checker results do to the table
        self.checker: HealthWorker | None = None         # the checker process
        self._checker_started = 0.0
        self._cpus = os.sched_getaffinity(0)             # before --cpu pins this process
        self._kc_path: str | None = None                 # --keepalived-conf, resolved
        self.vrrp: VrrpKeepalived | None = None          # --vrrp: keepalived for VRRP
        self.bgp: Announcer | None = None                # [bgp]/--bird-include: announcements
        self._stops = 0                                  # SIGTERM/SIGINT received
        self.sync: SyncDaemons | None = None             # the IPVS sync daemons
        self._sync_toml: SyncSettings | None = None      # [sync] of --config
        self._sync_plan: SyncSettings | None = None      # what runs without admin commands
        self._sync_role: str | None = None               # the plan's role last applied
        self._sync_retry_at: float | None = None         # a failed switch is tried again
        self._vips_left: list[str] = []                  # VIPs that left, to hand over
        self._sync_linger: tuple | None = None           # (until, backup cfg) kept a while

    # -- configuration --------------------------------------------------------------------------
    def _load_table(self) -> ServiceTable:
        o = self.opts
        if self.cfg.keepalived_conf:
            return self._load_keepalived()
        try:
            if o.config:
                return load_config(o.config).table
            if o.rules:
                return load_rules(o.rules)
        except (ConfigError, RulesError) as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"{o.config or o.rules}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise StartupError(f"{o.rules}: not UTF-8 text (byte {e.start})") from None
        except RecursionError:
            raise StartupError(f"{o.config or o.rules}: nested too deeply") from None
        return quickstart_table(o)

    def _load_keepalived(self) -> ServiceTable:
        """The services of --keepalived-conf (or [director] keepalived_conf, relative to the
        TOML file); its warnings are logged, the whole reading kept in self._read until
        it is served (start, or a reload that succeeds)."""
        o = self.opts
        path = self.cfg.keepalived_conf
        if o.config and not o.keepalived_conf and not os.path.isabs(path):
            path = os.path.join(os.path.dirname(o.config), path)
        self._kc_path = path
        try:
            kc = load_keepalived(path)
            if o.config:
                extra = load_config(o.config)
                if extra.services:
                    raise StartupError(f"{o.config}: [[service]] cannot be combined with "
                                       "keepalived_conf (it gives the services)")
                kc.table.sysctls = extra.table.sysctls
                kc.table.marks = extra.table.marks      # for `virtual_server fwmark N`
        except (KeepalivedError, ConfigError) as e:
            raise StartupError(str(e)) from None
        except OSError as e:
            raise StartupError(f"{e.filename or path}: {e.strerror}") from None
        for line in kc.warnings:
            log.warning("%s", line)
        for svc in kc.table:
            if svc.proto.value == "fwm" and not any(r.mark == svc.vport and r.af == svc.af
                                                    for r in kc.table.marks):
                log.warning("%s: virtual_server fwmark %d: no [[mark]] rule gives this mark "
                            "to IPv%d frames, so no frame reaches it", path, svc.vport, svc.af)
        self._read = kc
        return kc.table

    def _settings(self) -> None:
        o = self.opts
        if o.config:
            try:
                loaded = load_config(o.config)
                self.cfg, self._sync_toml = loaded.director, loaded.sync
            except ConfigError as e:
                raise StartupError(str(e)) from None
            except OSError as e:
                raise StartupError(f"{o.config}: {e.strerror}") from None
        c = self.cfg
        problems = merge_settings(o, c)
        if problems:
            raise StartupError(problems[0])
        if c.cpu is not None:
            try:
                check_cpu(c.cpu)
            except PlacementError as e:
                raise StartupError(str(e)) from None
        if c.interface is None:
            raise StartupError("no interface: give -i IFACE (or interface = in [director])")
        if not (o.config or o.rules or o.vip or o.keepalived_conf):
            raise StartupError("nothing to serve: give --vip/--rs, --rules FILE, --config FILE "
                               "or --keepalived-conf FILE")
        if c.vrrp and not c.keepalived_conf:
            raise StartupError("--vrrp needs a keepalived.conf (--keepalived-conf FILE)")
        if c.offload == "on" and c.backend == "packet":
            raise StartupError("--offload on needs the AF_XDP backend: AF_PACKET has no offload")
        if o.keepalived_conf and (o.vip or o.rules):
            raise StartupError("--keepalived-conf cannot be combined with --rules or --vip")
        if o.vip and (o.config or o.rules):
            raise StartupError("--vip/--rs cannot be combined with --rules or --config")
        if o.vip and not o.rs:
            raise StartupError("--vip needs at least one --rs RIP:PORT")

    def _check(self, table: ServiceTable) -> None:
        """Everything the kernel must agree with, before the network is touched."""
        nl = self.nl
        try:
            nl.interface(self.cfg.interface)
            if self.cfg.rs_interface:
                nl.interface(self.cfg.rs_interface)
        except NetlinkError as e:
            raise StartupError(str(e)) from None
        for svc in table:
            # a VIP not on this host is no error: a backup waits for it (_follow_vips)
            problem = vip_problem(svc.vaddr) if svc.proto.value != "fwm" else None
            if problem:
                raise StartupError(f"{svc.key.option_text()}: {problem}")
            for d in svc.dests:
                if d.fwd is FwdMethod.DR:
                    problem = dr_problem(nl, d.addr)
                    if problem:
                        raise StartupError(f"{svc.key.option_text()} -r {d.addr}: {problem}")

    # -- start ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._settings()
        self._bgp_settings()
        table = self._bgp_table(self._load_table())
        self.metrics = self._open_metrics()
        self.nl = Netlink()
        self._check(table)
        cif = self.nl.interface(self.cfg.interface)
        self._cif = cif.index
        local_ip = cif.ips[0] if cif.ips else ""
        mtu = self.cfg.mtu or cif.mtu
        self.director = build_director(self._nexthop, capacity=self.cfg.capacity,
                                       batch=self.cfg.batch, local_ip=local_ip,
                                       local_mac=cif.mac, mtu=mtu)
        local6 = self.nl.global_ipv6(cif.index)
        if local6:
            # TUN's IPv6-in-IPv6 source and NAT66's hop-limit errors come from here
            self.director.set_local_ip6(local6[0])
        if self.metrics is not None:
            self.metrics.source = director_metrics(self.director)
        try:
            self.director.check_table(table)
        except ControlError as e:
            raise StartupError(str(e)) from None
        # Resolve every real server before any ring opens: an unresolvable one is a config
        # error, and nothing has been attached yet.
        self._resolve_all(table)
        backend = self._choose_backend()
        # What a fastlvs killed earlier left here (its XDP program would keep ours off the
        # interface, its nft tables would drop traffic, its NAPI settings stay changed).
        names = [self.cfg.interface] + ([self.cfg.rs_interface] if self.cfg.rs_interface else [])
        for line in recover(names):
            log.info("%s", line)
        self.ports = Ports(self.nl, backend, busy_poll=self.cfg.busy_poll, cpu=self.cfg.cpu,
                           mtu=self.cfg.mtu, state=StateFile())
        self.director.port_stats = self.ports.stats
        self._offload_map(backend)
        try:
            self.ports.open(cif.index)
            if self.cfg.rs_interface:
                self.ports.open(self.nl.interface(self.cfg.rs_interface).index)
        except PortError as e:
            raise StartupError(str(e)) from None
        self._offload_decide()
        self.director.load(table)
        if self._read is not None:
            self._start_health()
        # the monitor before the first look (in _sync_ports): no change falls between the two
        self.vip_events = AddressMonitor(routes=True)
        self._sync_ports()
        self._learn_neighbours()
        self.director.learn_clients(self._cif, self._client_subnets(cif))
        if self.cfg.vrrp:
            path = self._kc_path
            self.vrrp = VrrpKeepalived(lambda: vrrp_conf(path))
            try:
                self.vrrp.start()
            except VrrpError as e:
                raise StartupError(str(e)) from None
        self._start_sync()
        self.control = ControlServer(self.director, self.cfg.socket_path, reload=self._do_reload,
                                     resolve_wait=RESOLVE_TIMEOUT,
                                     health=self.health.status if self.health else None,
                                     sync=self.sync)
        # From now on the loop runs: a real server added by `fastlvs admin -a` is resolved
        # without waiting (the control server parks the command while ARP goes on).
        self.director.nexthop = self._nexthop_now
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("ready: %d service(s), mode %s, ports %s, control socket %s",
                 len(table), self.cfg.mode, self.ports.describe(), self.control.path)
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(table)} service(s)\nMAINPID={os.getpid()}")
        self._bgp_start()

    def _start_health(self) -> None:
        """keepalived.conf's health checks: the policy puts the table in keepalived's
        starting state (alpha servers out, sorry servers in where the quorum is not met),
        and one checker process probes each distinct checker once."""
        self.keepalived, health = self._read, self._read.health
        self.health = HealthPolicy(self.director, health)
        specs = list(health.probes())
        if specs:
            self.checker = HealthWorker(cpus=self._checker_cpus())
            self.checker.set_probes(specs)
            self.health.status_source = self.checker.status
        if self.metrics is not None:
            self.metrics.source.register("health", HealthCollector(self.health))
        log.info("health checks: %d checker(s) over %d virtual server(s)", len(specs),
                 len(health.services))

    def _checker_cpus(self) -> set[int] | None:
        """Where the checker process runs: with --cpu N, every other CPU this process may
        use (the checks must not take the forwarding core); otherwise anywhere."""
        cpu = self.cfg.cpu
        if cpu is None or len(self._cpus) < 2:
            return None
        return self._cpus - {cpu}

    def _health_events(self, now: float) -> None:
        """Apply what the checker process reported since the last turn. A dead checker
        process is started again, at most once per CHECKER_RESTART seconds; its checkers
        then report their first verdicts again."""
        if self.checker is None:
            return
        events = self.checker.events()
        for ev in events:
            if ev.spec is None:             # about the process itself: died, events lost
                log.error("health: %s", ev.reason)
                continue
            self.health.on_event(ev)
        if events:
            self._sync_ports()        # a sorry server or a returning server may be new
        if not self.checker.alive and now - self._checker_started >= CHECKER_RESTART:
            log.error("health: starting the checker process again")
            self._checker_started = now
            self.checker.restart()
        self.health.tick()

    def _open_metrics(self) -> MetricsServer | None:
        """The --metrics endpoint, bound before anything else is opened: an address that is
        not ours or a port in use is a StartupError. Answers 503 until the director is
        built."""
        if self.cfg.metrics is None:
            return None
        host, port = parse_listen(self.cfg.metrics)      # checked by _settings already
        try:
            server = MetricsServer(None, host, port)
        except OSError as e:
            raise StartupError(f"--metrics {self.cfg.metrics}: {os.strerror(e.errno)}") from None
        log.info("metrics: http://%s/metrics", self.cfg.metrics)
        return server

    def _resolve_all(self, table: ServiceTable, final: bool = True) -> None:
        """StartupError naming the first real server of `table` without a next hop; the
        kernel resolves them all at once, within RESOLVE_TIMEOUT in all. Not `final` (the
        loop is running): nothing is waited for, and Later is raised while the kernel has
        not answered for some of them, so the caller asks again on a later turn."""
        wait = RESOLVE_TIMEOUT if final and self.control is None else 0
        hops = self.nl.nexthops([d.addr for svc in table for d in svc.dests], wait,
                                waited=RESOLVE_TIMEOUT)
        for svc in table:
            for d in svc.dests:
                err = hops[d.addr]
                if isinstance(err, NoAnswer) and not final:
                    raise Later()
                if isinstance(err, NetlinkError):
                    raise StartupError(f"{svc.key.option_text()} -r {d.addr}: {err}")

    def _choose_backend(self) -> str:
        want = self.cfg.backend
        if want == "packet":
            return "packet"
        missing = xdp_missing()
        if missing:
            if want == "xdp":
                raise StartupError(missing)
            log.info("AF_XDP backend not built; using AF_PACKET")
            return "packet"
        return "xdp" if want == "xdp" else "auto"

    def _offload_map(self, backend: str) -> None:
        """The engine's offload map, made before any port opens so that every interface's
        program shares it (--offload on|auto with an AF_XDP backend)."""
        want = self.cfg.offload
        if want == "on" and backend == "packet":
            raise StartupError("--offload on needs the AF_XDP backend: AF_PACKET has no offload")
        if want == "off" or backend == "packet":
            return
        engine = self.director.engine
        try:
            self.ports.offload = (engine.offload_enable(), engine.offload_max_entries)
        except OSError as e:
            if want == "on":
                raise StartupError(f"--offload on: {e}") from None
            log.info("XDP offload unavailable (%s)", e)

    def _offload_decide(self) -> None:
        """After the first ports opened: --offload auto keeps the offload only where the
        program runs natively on a NIC; on refuses an AF_PACKET fallback."""
        want = self.cfg.offload
        engine = self.director.engine
        if engine.offload_fd < 0:
            return
        if self.ports.backend == "packet":
            if want == "on":
                raise StartupError("--offload on needs the AF_XDP backend, and AF_XDP did not "
                                   "attach (AF_PACKET has no offload)")
            engine.offload_disable()
        elif want == "auto" and not self.ports.offload_native():
            engine.offload_disable()
        if engine.offload_fd < 0:
            self.ports.offload = None
        elif self.metrics is not None:
            self.metrics.source.register("offload", OffloadCollector(engine))
        log.info("XDP offload: %s", "on" if engine.offload_fd >= 0 else "off")

    def _nexthop(self, ip: str):
        try:
            mac, ifindex = self.nl.nexthop(ip, RESOLVE_TIMEOUT)
        except NetlinkError as e:
            raise NoRoute(str(e)) from None
        return mac, ifindex, self.nl.interface_by_index(ifindex).mac

    def _nexthop_now(self, ip: str):
        """_nexthop without waiting: a next hop the kernel has no answer for yet is asked
        for (NTF_USE) and NoRoute(pending=True) raised at once; its neighbour event brings
        the refresh back, and a parked admin command asks again. The running loop uses only
        this, so forwarding never waits for ARP."""
        try:
            # a route that moved to a new gateway: its answer is the event to wait for
            self._hop_ips.add(self.nl.route_get(ip).nexthop)
            mac, ifindex = self.nl.nexthop(ip, 0)
        except NoAnswer as e:
            raise NoRoute(str(e), pending=True) from None
        except NetlinkError as e:
            raise NoRoute(str(e)) from None
        return mac, ifindex, self.nl.interface_by_index(ifindex).mac

    # -- ports and steering: which interfaces have rings, which traffic they receive -----------
    def _sync_ports(self) -> list:
        """After any change of the table or of next hops: a ring on every interface the
        director sends or receives on, each steering exactly its traffic. Returns the ports
        opened now (the loop must poll them at once)."""
        self._follow_vips()             # a service new to the table may name a new VIP
        want = self.director.steering(self._cif)
        hops = set()
        for svc in self.director.table:
            for d in svc.dests:
                try:
                    hops.add(self.nl.route_get(d.addr).nexthop)
                except NetlinkError:
                    pass
        self._hop_ips = hops
        self._retired_steered = any(fwd is FwdMethod.NAT
                                    for _, _, _, fwd, _ in self.director.retired_dests())
        return self.ports.sync(want)

    def _follow_vips(self, reread: bool = False) -> bool:
        """Tell the director which VIPs of the table are on this host now (an address, or
        inside a local route): the VIPs it has not been told about, or every one after
        address or local-route news (`reread`). One log line per VIP that comes or goes.
        Returns whether the steering must change."""
        old, new = self._vip_here, {}
        for vip in sorted({svc.vaddr for svc in self.director.table
                           if svc.proto.value != "fwm"}):     # (a mark has no VIP)
            new[vip] = old[vip] if vip in old and not reread else vip_local(self.nl, vip)
        self._vip_here = new
        moved = False
        for vip, here in new.items():
            was = old.get(vip)
            if was == here:
                continue
            moved |= self.director.set_vip_present(vip, here)
            if was is None:
                if not here:
                    log.info("VIP %s not on this host: waiting for it (backup)", vip)
            elif here:
                log.info("VIP %s is on this host: serving it", vip)
            else:
                log.info("VIP %s left this host: the kernel gets its traffic; its services "
                         "and connections are kept", vip)
                self._vips_left.append(vip)
        return moved

    @staticmethod
    def _client_subnets(cif) -> list[str]:
        """The on-link prefixes of the client-side interface: VIPs held as /32 are not
        networks, and the engine keeps at most 16."""
        return [a for a in cif.addresses if not a.endswith("/32")][:16]

    def _learn_neighbours(self) -> None:
        # NAT replies go back to clients: the engine needs their MACs. The kernel learns them
        # (a client ARPs for the VIP, which the kernel owns), so copy its table and follow it.
        for ip, mac in self.nl.neighbours(self._cif) + self.nl.neighbours(self._cif, AF_INET6):
            self.director.set_neighbor(ip, mac, self._cif)
        gw6 = self._gateway6 = self.nl.default_gateway(AF_INET6)
        if gw6:
            try:
                mac, oif = self.nl.nexthop(gw6, RESOLVE_TIMEOUT)
                self.director.set_gateway6(mac, oif)
            except NetlinkError:
                log.warning("IPv6 default gateway %s does not resolve; NAT66 replies to "
                            "clients without a neighbour entry will be dropped", gw6)
        gw = self._gateway = self.nl.default_gateway()
        if gw:
            try:
                mac, oif = self.nl.nexthop(gw, RESOLVE_TIMEOUT)
                self.director.set_gateway(mac, oif)
            except NetlinkError:
                log.warning("default gateway %s does not resolve; NAT replies to clients "
                            "without a neighbour entry will be dropped", gw)
        self.neigh = NeighbourMonitor()

    def _neighbour_changes(self) -> None:
        try:
            news = self.neigh.changes()
        except NetlinkError:            # overrun: the kernel dropped news; re-read it all
            news = [(ip, mac, self._cif) for ip, mac in
                    self.nl.neighbours(self._cif) + self.nl.neighbours(self._cif, AF_INET6)]
            if self.director.refresh_nexthops(self._nexthop_now):
                self._sync_ports()
        hops_moved = False
        for ip, mac, ifindex in news:
            if ip.startswith("fe80:"):
                continue                # link-local: no client of a VIP
            # a gone entry is forgotten too: the client's replies fall back to what the
            # engine learned from its frames, or to the gateway
            self.director.set_neighbor(ip, mac, ifindex)
            if ip == self._gateway and mac is not None:
                self.director.set_gateway(mac, ifindex)     # a replaced router is followed
            if ip == self._gateway6 and mac is not None:
                self.director.set_gateway6(mac, ifindex)
            hops_moved |= ip in self._hop_ips
        if hops_moved:
            n = self.director.refresh_nexthops(self._nexthop_now)
            if n:
                log.info("next hop of %d real server(s) changed", n)
                self._sync_ports()

    # -- BGP: announcements through BIRD (bgp/), the drain --------------------------------------
    def _bgp_settings(self) -> None:
        """[bgp] of --config, with --bird-include/--bird-socket/--drain-timeout over it."""
        o = self.opts
        cfg = None
        if o.config:
            try:
                cfg = load_config(o.config).bgp
            except (ConfigError, OSError):
                cfg = None              # _settings() has reported the file already
        if cfg is None and not o.bird_include:
            if o.bird_socket or o.drain_timeout is not None:
                raise StartupError("--bird-socket/--drain-timeout need --bird-include FILE "
                                   "(or [bgp] include in the config)")
            return
        cfg = cfg or BgpConfig()
        if o.bird_include:
            cfg.include = o.bird_include
        if o.bird_socket:
            cfg.socket = o.bird_socket
        if o.drain_timeout is not None:
            if not 0 <= o.drain_timeout <= 86400:
                raise StartupError(f"--drain-timeout: {o.drain_timeout:g} is outside 0..86400")
            cfg.drain_timeout = o.drain_timeout
        self.bgp = Announcer(cfg)

    def _bgp_table(self, table: ServiceTable) -> ServiceTable:
        """Services announced over ECMP default to sloppy_tcp=1 (a mid-connection packet
        that ECMP moved here is scheduled, not dropped): the sysctl is global, so it is set
        for the whole director unless the config's [sysctl] names it."""
        if self.bgp is None or not self.bgp.cfg.sloppy_tcp:
            return table
        if table.sysctls is not None and "sloppy_tcp" not in table.sysctls:
            table.sysctls["sloppy_tcp"] = 1
        return table

    def _bgp_start(self) -> None:
        if self.bgp is None:
            return
        if self.director.table.sysctls is None and self.bgp.cfg.sloppy_tcp:
            self.director.set_sysctl("sloppy_tcp", 1)
        log.info("bgp: announcing through BIRD at %s (include %s); sloppy_tcp=%d",
                 self.bgp.cfg.socket, self.bgp.cfg.include,
                 self.director.sysctls()["sloppy_tcp"])
        self.control.bgp = self._bgp_request
        self.bgp.start(self.director)

    def _bgp_request(self, action: str, timeout) -> dict:
        now = time.monotonic()
        if action == "drain":
            self.bgp.drain(self.director, now, timeout)
            self._drain_handover()
        elif action == "undrain":
            self.bgp.undrain(self.director, now)
        return self.bgp.status()

    def _bgp_holds(self) -> bool:
        """After SIGTERM, whether the loop goes on: with BGP, every VIP is withdrawn first
        and forwarding continues until the drain ends; a second signal ends it at once."""
        if self.bgp is None or self._stops > 1 or self.director is None:
            return False
        now = time.monotonic()
        if not self.bgp.draining:
            self.bgp.drain(self.director, now)
            self._drain_handover()
        self.bgp.update(self.director, now)
        return not self.bgp.drained

    def _drain_handover(self) -> None:
        """A drain moves this director's flows to the others at once (the router drops its
        route): with sync between the directors, first hand them every connection here, so
        that one restarted since a connection was synced still knows it (sync's handover)."""
        if self.sync is not None and self.director is not None:
            self._sync_handover(self.director.vips()["served"])
    # -- connection sync: the IPVS sync daemons ----------------------------------------------------
    def _start_sync(self) -> None:
        """The sync daemons' layer (always: `fastlvs admin --start-daemon` may start one),
        and the daemons [sync] or keepalived's lvs_sync_daemon ask for. A daemon that cannot
        start (no such interface, ...) is a StartupError."""
        self.sync = SyncDaemons(self.director, sock_size=self._sync_sock_size)
        if self.metrics is not None:
            self.metrics.source.register("sync", SyncCollector(self.sync))
        kc = self._read.sync if self._read is not None else None
        if kc is not None and self._sync_toml is not None:
            raise StartupError(f"{self.opts.config}: [sync] cannot be combined with "
                               f"keepalived.conf's lvs_sync_daemon ({kc.source})")
        self._sync_plan = kc or self._sync_toml
        if self._sync_plan is None:
            return
        try:
            self._sync_apply(self._sync_wanted())
        except SyncError as e:
            raise StartupError(f"{self._sync_plan.source}: sync daemon on "
                               f"{self._sync_plan.interface}: {e}") from None

    def _sync_reload(self) -> None:
        """After a reload that succeeded: a changed [sync] or lvs_sync_daemon stops the
        daemons running and starts what the new one asks for, as keepalived's reload
        restarts its sync daemon when its settings changed; unchanged, nothing moves (an
        admin's daemons stay)."""
        new = self._read.sync if self._read is not None else None
        if new is None and self.opts.config and self._read is None:
            try:
                new = load_config(self.opts.config).sync
            except (ConfigError, OSError):
                return                  # the reload read it a moment ago; keep what runs
        if new == self._sync_plan:
            return
        for state in (MASTER, BACKUP):
            if self.sync.running(state) is not None:
                self.sync.stop(state)
        self._sync_plan, self._sync_role, self._sync_retry_at = new, None, None
        if new is None:
            log.info("sync: no sync daemon configured any more")
            return
        try:
            self._sync_apply(self._sync_wanted())
        except SyncError as e:
            log.error("%s: sync daemon on %s: %s; trying again", new.source, new.interface, e)
            self._sync_retry_at = time.monotonic() + SYNC_RETRY

    def _sync_sock_size(self) -> int:
        return self.director.sysctls().get("sync_sock_size", 0)

    def _sync_wanted(self) -> str:
        """The role the plan asks for now: its own, or with role auto, master while one of
        its VIPs (all the services' VIPs when it names none) is on this host."""
        plan = self._sync_plan
        if plan.role != "auto":
            return plan.role
        if plan.vips:
            here = any(self._vip_here.get(v, None) if v in self._vip_here
                       else vip_local(self.nl, v) for v in plan.vips)
        else:
            here = any(self._vip_here.values())
        return MASTER if here else BACKUP

    def _sync_apply(self, role: str) -> None:
        """Run the daemons of `role` (master, backup or both) with the plan's settings, as
        keepalived switches IPVS's: becoming master stops the backup and starts the master,
        becoming backup the other way round. SyncError when one cannot start (the role is
        then tried again later)."""
        plan = self._sync_plan
        want = (MASTER, BACKUP) if role == "both" else (role,)
        # fastlvs's handover: the old master sends its conns when it sees its VIPs go, which
        # is after this director took them; a new master hears it for SYNC_LINGER more
        linger = role == MASTER and self._sync_role == BACKUP and plan.role == "auto"
        for state in (MASTER, BACKUP):
            if state not in want and self.sync.running(state) is not None:
                if state == BACKUP and linger:
                    self._sync_linger = (time.monotonic() + SYNC_LINGER,
                                         self.sync.running(BACKUP))
                    continue
                self.sync.stop(state)
        self._sync_role = None
        for state in want:
            if self.sync.running(state) is None:
                cfg = self.sync.start(plan.options(state))
                log.info("%s: %s", plan.source, cfg.describe())
        self._sync_role = role
        self._sync_retry_at = None

    def _sync_follow(self) -> None:
        """After address news: switch the daemons when the plan's role changes (only on a
        change, so an admin's --stop-daemon stands until the next one)."""
        if self._sync_plan is None or self._sync_plan.role != "auto":
            return
        role = self._sync_wanted()
        if role != self._sync_role:
            try:
                self._sync_apply(role)
            except SyncError as e:
                log.error("sync: cannot become %s: %s; trying again", role, e)
                self._sync_retry_at = time.monotonic() + SYNC_RETRY

    def _sync_turn(self, now: float) -> None:
        """One loop turn of the sync daemons: send and receive (bounded, sync/daemon.py),
        and try a failed switch again."""
        if self.sync is None:
            return
        if self._sync_linger is not None and now >= self._sync_linger[0]:
            # the lingering backup stops, unless this director became a backup again (or
            # an admin restarted it) meanwhile
            cfg, self._sync_linger = self._sync_linger[1], None
            if self._sync_role == MASTER and self.sync.running(BACKUP) is cfg:
                self.sync.stop(BACKUP)
        if self._sync_retry_at is not None and now >= self._sync_retry_at:
            self._sync_role = None
            self._sync_retry_at = None
            if self._sync_plan.role == "auto":
                self._sync_follow()
            else:
                try:
                    self._sync_apply(self._sync_plan.role)
                except SyncError as e:
                    log.error("sync: %s", e)
                    self._sync_retry_at = now + SYNC_RETRY
        self.sync.poll(time.monotonic_ns())

    def _sync_handover(self, vips: list[str] | None = None) -> None:
        """A master giving up VIPs (`vips`, else those that left since the last call) first
        multicasts all of their conns and templates, SYN_RECV ones included (sync/daemon.py's
        handover): the director taking over then knows even a handshake whose SYN came
        through here. fastlvs's own; the kernel sends nothing more as its VIPs go."""
        if vips is None:
            vips, self._vips_left = self._vips_left, []
        if self.sync is None or not vips or self.sync.running(MASTER) is None:
            return
        try:
            queued, sent = self.sync.handover(vips)
        except Exception as e:          # the handover is a help: its failure stops nothing
            log.error("sync: handover of %s failed: %s: %s", ", ".join(vips),
                      type(e).__name__, e)
            return
        log.info("sync: handover of %s: %d conns and templates in %d messages",
                 ", ".join(vips), queued, sent)

    # -- signals and reload ---------------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        self._stop = True
        self._stops += 1

    def _on_hup(self, signum, frame) -> None:
        self._reload = True

    def _do_reload(self, final: bool = True) -> str:
        """Re-read --rules/--config; services and dests that stay keep their connections.
        All or nothing: a file that does not parse, check or resolve raises ControlError
        ("reload refused: ...", one line) and the running state is untouched. Not `final`:
        Later while the kernel is still resolving a real server of the new file (the
        caller asks again on a later turn; the last attempt is final)."""
        if not (self.opts.rules or self.opts.config or self.opts.keepalived_conf):
            raise ControlError("reload: started with --vip/--rs, there is no file to re-read")
        try:
            table = self._bgp_table(self._load_table())
            self._check(table)
            self.director.check_table(table)
            # Everything the new table needs is resolved before the running one changes; the
            # kernel is asked about every unknown next hop at once, so an unresolvable real
            # server costs one resolution timeout, not one per server.
            self._resolve_all(table, final)
            if self.health is not None:
                # only the difference: checkers that stay keep their state, so a failed
                # server stays out (keepalived's reload re-adds it)
                self.health.reload(self._read.health, table)
            else:
                self.director.load(table)
        except (StartupError, ControlError, NoRoute) as e:
            raise ControlError(f"reload refused: {e}") from None
        if self.health is not None:
            self.keepalived = self._read
            specs = list(self.keepalived.health.probes())
            if specs and self.checker is None:
                self.checker = HealthWorker(cpus=self._checker_cpus())
                self.health.status_source = self.checker.status
            if self.checker is not None:
                self.checker.set_probes(specs)
        if self.vrrp is not None:
            self.vrrp.reload()
        if self.sync is not None:
            self._sync_reload()
        self._sync_ports()
        return (f"reloaded {self.opts.rules or self.opts.config or self.opts.keepalived_conf}: "
                f"{len(table)} service(s)")

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until a stop signal. The one error boundary: an unexpected exception in a
        pass is logged with its traceback and the loop goes on (a scheduler's error only
        costs its batch, which the engine dropped and counted)."""
        self._last_sweep = time.monotonic()
        while not self._stop or self._bgp_holds():
            try:
                self._pass()
            except Exception:
                log.exception("unexpected error in the loop; carrying on")

    def _pass(self) -> None:
        self._watchdog.feed(time.monotonic())
        try:
            # while a listing streams, come back for its next slice after 1 ms, not 10
            stay = 1 if self.control.streaming or self.control.waiting else POLL_MS
            self.director.poll(self.ports.list(), stay_ms=stay)
        except Exception as e:          # a scheduler error: the batch was dropped and counted
            log.error("scheduler error, batch dropped: %s", e)
        if self.control.handle_ready():
            self._sync_ports()
        if self.metrics is not None:
            self.metrics.handle_ready()
        self._neighbour_changes()
        self.ports.follow()             # the director's own addresses, as they change
        # VIPs that come and go (keepalived's VRRP moves them): read without waiting; an
        # overrun reads as news, so everything is looked at again
        if self.vip_events.changed():
            if self._follow_vips(reread=True):
                self._sync_ports()
            self._sync_handover()
            self._sync_follow()
        now = time.monotonic()
        self.director.tick(now)
        self._health_events(now)
        if self.bgp is not None:
            self.bgp.update(self.director, now)
        if self.vrrp is not None:
            self.vrrp.poll(now)
        self._sync_turn(now)
        if now - self._last_sweep >= SWEEP_EVERY:
            # Batches sweep as they go; an idle director must still expire conns so
            # that ActiveConn/InActConn come down as IPVS's timers bring them down.
            self.director.expire(time.monotonic_ns(), SWEEP_BUDGET)
            self._last_sweep = now
            # Replies of a deleted NAT server's connections stay steered until the
            # last of them expires.
            if self._retired_steered:
                self._sync_ports()
        if self._reload:
            self._reload = False
            self._reload_until = now + RESOLVE_TIMEOUT
        if self._reload_until is not None:
            try:
                log.info("%s", self._do_reload(final=now >= self._reload_until))
            except Later:
                return                  # the kernel is resolving: next turn
            except ControlError as e:
                log.error("%s", e)
            self._reload_until = None

    def close(self) -> None:
        if self.control is not None:
            sdnotify.notify("STOPPING=1")
        if self.sync is not None and self.director is not None:
            # while keepalived still holds the VIPs: the backup installs what is in flight
            # here before it takes them over
            self._sync_handover(self.director.vips()["served"])
        if self.health is not None:
            try:
                self.health.shutdown()      # omega's scripts, with keepalived's one second
            except Exception as e:
                log.warning("cleanup: health: %s", e)
        # routes first: the router moves the flows elsewhere (a start that failed announced
        # nothing, and leaves BIRD alone)
        if self.bgp is not None and self.bgp.ready:
            try:
                self.bgp.withdraw_all()
            except Exception as e:
                log.warning("cleanup: bgp: %s", e)
        # keepalived first: it gives the VIPs up, so the peer takes them while we still serve
        for closer in (self.vrrp, self.sync, self.checker, self.control, self.metrics,
                       self.neigh, self.vip_events, self.ports, self.nl):
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as e:          # teardown goes on: leave nothing else behind
                log.warning("cleanup: %s", e)
        self.control = self.metrics = self.neigh = self.ports = self.nl = None
        self.checker = self.health = self.vrrp = self.vip_events = self.sync = None
        self.bgp = None


def main(opts: Options) -> int:
    """Run the daemon in the foreground; 0 after a clean stop, 2 for a configuration error."""
    logging.basicConfig(level=logging.INFO, format="fastlvs: %(message)s")
    if os.geteuid() != 0:
        log.error("needs root (raw sockets, XDP, nftables)")
        return 2
    d = Daemon(opts)
    try:
        d.start()
    except StartupError as e:
        log.error("%s", e)
        d.close()
        return 2
    except OSError as e:
        log.error("%s", e)
        d.close()
        return 1
    except Exception as e:          # a defect of ours: still one line, and nothing left behind
        log.error("cannot start: %s: %s", type(e).__name__, e)
        d.close()
        return 1
    try:
        d.run()
    finally:
        d.close()
        log.info("stopped")
    return 0


__all__ = ["Daemon", "Options", "StartupError", "main", "quickstart_table", "ctl"]
