"""The `fastlvs --mode dr|nat|tun ...` process: builds the service table from the command line,
a rules file or a TOML config, checks it against the kernel (interfaces, VIPs, routes and
neighbours), opens the rings, and runs the loop that interleaves packet batches, control
requests, neighbour changes, rate estimation and connection expiry. Signals: SIGTERM/SIGINT
stop cleanly, SIGHUP reloads the rules/config file.
"""
from __future__ import annotations

import logging
import os
import signal
import time

from fastlvs.control import ctl
from fastlvs.settings import Options, merge as merge_settings, parse_listen
from fastlvs.control.config import ConfigError, DirectorConfig, load_config
from fastlvs.control.server import ControlServer
from fastlvs.control.metrics import MetricsServer, director_metrics
from fastlvs.control.director import Director
from fastlvs.control.factory import build_director
from fastlvs.control.model import ControlError, FwdMethod, NoRoute, ServiceTable
from fastlvs.system.napi import PlacementError, check_cpu
from fastlvs.system import sdnotify
from fastlvs.system.ports import PortError, Ports, xdp_missing
from fastlvs.system.state import StateFile, recover
from fastlvs.system.netlink import Netlink, NetlinkError, NeighbourMonitor, dr_problem, vip_problem
from fastlvs.control.ipvsadm import CommandError, apply_command, parse_command
from fastlvs.control.rules import RulesError, load_rules

log = logging.getLogger("fastlvs")

POLL_MS = 10            # time in the C loop between looks at signals, requests, neighbours
SWEEP_EVERY = 1.0       # seconds between expiry sweeps when traffic is idle
SWEEP_BUDGET = 65536    # entries inspected per idle sweep
RESOLVE_TIMEOUT = 3.0


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
        self._hop_ips: set[str] = set()              # next-hop addresses of the real servers
        self._gateway: str | None = None             # the default gateway (NAT replies off-link)
        self._cif = 0                                # the client-side interface's ifindex
        self._retired_steered = False                # steering kept for deleted NAT dests
        self._stop = False
        self._reload = False
        self._watchdog = sdnotify.Watchdog()

    # -- configuration --------------------------------------------------------------------------
    def _load_table(self) -> ServiceTable:
        o = self.opts
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

    def _settings(self) -> None:
        o = self.opts
        if o.config:
            try:
                self.cfg = load_config(o.config).director
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
        if not (o.config or o.rules or o.vip):
            raise StartupError("nothing to serve: give --vip/--rs, --rules FILE or --config FILE")
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
            problem = vip_problem(nl, svc.vaddr)
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
        table = self._load_table()
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
        try:
            self.ports.open(cif.index)
            if self.cfg.rs_interface:
                self.ports.open(self.nl.interface(self.cfg.rs_interface).index)
        except PortError as e:
            raise StartupError(str(e)) from None
        self.director.load(table)
        self._sync_ports()
        self._learn_neighbours()
        self.director.learn_clients(self._cif, self._client_subnets(cif))
        self.control = ControlServer(self.director, self.cfg.socket_path, reload=self._do_reload)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("ready: %d service(s), mode %s, ports %s, control socket %s",
                 len(table), self.cfg.mode, self.ports.describe(), self.control.path)
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(table)} service(s)\nMAINPID={os.getpid()}")

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

    def _resolve_all(self, table: ServiceTable) -> None:
        """StartupError naming the first real server of `table` without a next hop; the
        kernel resolves them all at once, within RESOLVE_TIMEOUT in all."""
        hops = self.nl.nexthops([d.addr for svc in table for d in svc.dests], RESOLVE_TIMEOUT)
        for svc in table:
            for d in svc.dests:
                if isinstance(hops[d.addr], NetlinkError):
                    raise StartupError(f"{svc.key.option_text()} -r {d.addr}: {hops[d.addr]}")

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

    def _nexthop(self, ip: str):
        try:
            mac, ifindex = self.nl.nexthop(ip, RESOLVE_TIMEOUT)
        except NetlinkError as e:
            raise NoRoute(str(e)) from None
        return mac, ifindex, self.nl.interface_by_index(ifindex).mac

    def _nexthop_now(self, ip: str):
        """_nexthop without waiting: a next hop the kernel has no answer for yet is asked
        for (NTF_USE) and NoRoute raised at once; its neighbour event brings the refresh
        back. The loop's refreshes use this, so forwarding never waits for ARP."""
        try:
            # a route that moved to a new gateway: its answer is the event to wait for
            self._hop_ips.add(self.nl.route_get(ip).nexthop)
            mac, ifindex = self.nl.nexthop(ip, 0)
        except NetlinkError as e:
            raise NoRoute(str(e)) from None
        return mac, ifindex, self.nl.interface_by_index(ifindex).mac

    # -- ports and steering: which interfaces have rings, which traffic they receive -----------
    def _sync_ports(self) -> list:
        """After any change of the table or of next hops: a ring on every interface the
        director sends or receives on, each steering exactly its traffic. Returns the ports
        opened now (the loop must poll them at once)."""
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

    @staticmethod
    def _client_subnets(cif) -> list[str]:
        """The on-link prefixes of the client-side interface: VIPs held as /32 are not
        networks, and the engine keeps at most 16."""
        return [a for a in cif.addresses if not a.endswith("/32")][:16]

    def _learn_neighbours(self) -> None:
        # NAT replies go back to clients: the engine needs their MACs. The kernel learns them
        # (a client ARPs for the VIP, which the kernel owns), so copy its table and follow it.
        for ip, mac in self.nl.neighbours(self._cif):
            self.director.set_neighbor(ip, mac, self._cif)
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
            news = [(ip, mac, self._cif) for ip, mac in self.nl.neighbours(self._cif)]
            if self.director.refresh_nexthops(self._nexthop_now):
                self._sync_ports()
        hops_moved = False
        for ip, mac, ifindex in news:
            if ":" in ip:
                continue
            # a gone entry is forgotten too: the client's replies fall back to what the
            # engine learned from its frames, or to the gateway
            self.director.set_neighbor(ip, mac, ifindex)
            if ip == self._gateway and mac is not None:
                self.director.set_gateway(mac, ifindex)     # a replaced router is followed
            hops_moved |= ip in self._hop_ips
        if hops_moved:
            n = self.director.refresh_nexthops(self._nexthop_now)
            if n:
                log.info("next hop of %d real server(s) changed", n)
                self._sync_ports()

    # -- signals and reload ---------------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        self._stop = True

    def _on_hup(self, signum, frame) -> None:
        self._reload = True

    def _do_reload(self) -> str:
        """Re-read --rules/--config; services and dests that stay keep their connections.
        All or nothing: a file that does not parse, check or resolve raises ControlError
        ("reload refused: ...", one line) and the running state is untouched."""
        if not (self.opts.rules or self.opts.config):
            raise ControlError("reload: started with --vip/--rs, there is no file to re-read")
        try:
            table = self._load_table()
            self._check(table)
            self.director.check_table(table)
            # Everything the new table needs is resolved before the running one changes; the
            # kernel is asked about every unknown next hop at once, so an unresolvable real
            # server costs one resolution timeout, not one per server.
            self._resolve_all(table)
            self.director.load(table)
        except (StartupError, ControlError, NoRoute) as e:
            raise ControlError(f"reload refused: {e}") from None
        self._sync_ports()
        return f"reloaded {self.opts.rules or self.opts.config}: {len(table)} service(s)"

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until a stop signal. The one error boundary: an unexpected exception in a
        pass is logged with its traceback and the loop goes on (a scheduler's error only
        costs its batch, which the engine dropped and counted)."""
        self._last_sweep = time.monotonic()
        while not self._stop:
            try:
                self._pass()
            except Exception:
                log.exception("unexpected error in the loop; carrying on")

    def _pass(self) -> None:
        self._watchdog.feed(time.monotonic())
        try:
            # while a listing streams, come back for its next slice after 1 ms, not 10
            stay = 1 if getattr(self.control, "streaming", False) else POLL_MS
            self.director.poll(self.ports.list(), stay_ms=stay)
        except Exception as e:          # a scheduler error: the batch was dropped and counted
            log.error("scheduler error, batch dropped: %s", e)
        if self.control.handle_ready():
            self._sync_ports()
        if self.metrics is not None:
            self.metrics.handle_ready()
        self._neighbour_changes()
        self.ports.follow()             # the director's own addresses, as they change
        now = time.monotonic()
        self.director.tick(now)
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
            try:
                log.info("%s", self._do_reload())
            except ControlError as e:
                log.error("%s", e)

    def close(self) -> None:
        if self.control is not None:
            sdnotify.notify("STOPPING=1")
        for closer in (self.control, self.metrics, self.neigh, self.ports, self.nl):
            if closer is None:
                continue
            try:
                closer.close()
            except Exception as e:          # teardown goes on: leave nothing else behind
                log.warning("cleanup: %s", e)
        self.control = self.metrics = self.neigh = self.ports = self.nl = None


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
