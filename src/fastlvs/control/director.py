"""The control plane: one Director owns an Engine, the service table and one scheduler per
service, and turns every table change into engine calls (Katran's KatranLb shape).

Everything the daemon can change goes through `Director.execute()` (ipvsadm commands) or
`Director.load()` (a whole rules table); the replay, the admin command and the tests all use
these. The engine keeps the live counters; the director copies them into the model's Dest
objects when a scheduler or a listing needs them.
"""
from __future__ import annotations

import errno
import ipaddress
import os
from typing import Callable

from fastlvs import schedulers
from fastlvs.control.listing import conn_header, conn_lines, format_list
from fastlvs.control.model import (RATE_FIELDS, STAT_FIELDS, ControlError, FwdMethod, Service,
                           NoRoute, ServiceKey, ServiceTable, addrport, Proto, MarkRule)
from fastlvs.control.ipvsadm import Command, apply_command, describe
from fastlvs.control.rules import dump_rules, iter_rules
from fastlvs.control import sysctl as _sysctl
from fastlvs.engine import contract
from fastlvs.schedulers import Flow

# The engine serves contract.HASH_KINDS from their exported table, in C, without calling
# Python; a dest's forwarding method goes to the engine as its contract id.
_FWD = {m: contract.fwd_id(m.value) for m in FwdMethod}

# ip_vs_est.c: one estimation step every 2 s; cps/pps averages are kept scaled by 2**10 and
# bps by 2**5, and a 2 s delta shifted by 9 (resp. 4) is the per-second rate so scaled.
EST_INTERVAL = 2.0
_EST_SHIFT = (9, 9, 9, 4, 4)                        # conns, inpkts, outpkts, inbytes, outbytes
_EST_ROUND = (0x1FF, 0x1FF, 0x1FF, 0xF, 0xF)        # ip_vs_read_estimator's rounding
_EST_SCALE = (10, 10, 10, 5, 5)

NextHop = Callable[[str], "tuple[bytes | str, int]"]

# Steering a mark's traffic: the nft sets and the XDP map hold exact (proto, addr, port)
# keys or whole addresses (port 0), so a rule is spelt out address by address; a port range
# wider than MARK_STEER_PORTS takes the whole address (its other ports reach the engine and
# pass back to the host), and a rule over more than MARK_STEER_KEYS keys is refused.
MARK_STEER_PORTS = 64
MARK_STEER_KEYS = 4096
MARK_PROTOS = ("tcp", "udp", "sctp")


def mark_protos(rule: MarkRule) -> tuple[str, ...]:
    """The protocols `rule` matches: its own, or for "any" every one the engine forwards
    in the rule's family (no SCTP over IPv6)."""
    if rule.proto != "any":
        return (rule.proto,)
    return MARK_PROTOS if rule.af == 4 else MARK_PROTOS[:2]


def mark_rule_keys(rule: MarkRule) -> list[tuple[str, str, int]]:
    """(proto, addr, port) steering keys covering `rule`; ControlError when too many."""
    net = ipaddress.ip_network(rule.prefix)
    protos = mark_protos(rule)
    nports = rule.port_hi - rule.port_lo + 1
    ports = [0] if nports > MARK_STEER_PORTS else range(rule.port_lo, rule.port_hi + 1)
    if net.num_addresses * len(ports) * len(protos) > MARK_STEER_KEYS:
        raise ControlError("invalid mark rule", errno.E2BIG,
                           f"{rule.text()}: covers more than {MARK_STEER_KEYS} "
                           f"(protocol, address, port) steering keys; use a longer prefix")
    return [(p, str(a), port) for p in protos for a in net for port in ports]


CONN_SLICE = 512        # engine slots behind one piece of iter_conns(): a fraction of a ms


def describe_noroute(cmd: Command, err: NoRoute) -> str:
    """One line for a command refused because a real server has no next hop."""
    where = cmd.flag
    if cmd.service is not None:
        where += f" {cmd.service.option_text()}"
    if cmd.dest_addr is not None:
        where += f" -r {addrport(cmd.dest_addr, cmd.dest_port)}"
    return f"{where}: {os.strerror(errno.EHOSTUNREACH)} ({err})"


class Director:
    """Services, dests and schedulers bound to one engine.

    `nexthop(ip)` answers (mac, ifindex) of the next hop towards `ip` (the RS itself on a
    shared segment, else its gateway), optionally with a third item, our own MAC on that
    interface (the source of frames sent there), or raises NoRoute. Ids given to the engine are stable:
    a service or dest that is deleted and added again gets its old id back, so conns that
    outlived it in the engine find it again (IPVS's dest trash).
    """

    def __init__(self, engine, nexthop: NextHop, poll: Callable | None = None):
        self.engine = engine
        self.nexthop = nexthop
        # the extension's ring loop, poll(engine, ports, stay_ms=...) (None: no rings)
        self._poll = poll
        self.table = ServiceTable()
        # () -> {ifname: counters} of the rings the daemon runs (None: no rings, e.g. replay)
        self.port_stats: Callable[[], dict] | None = None
        self._svc_ids: dict[ServiceKey, int] = {}
        self._dest_ids: dict[tuple, int] = {}
        self._live: dict[int, tuple[Service, schedulers.Scheduler]] = {}
        self._engine_dests: dict[int, set[int]] = {}     # svc id -> dest ids in the engine
        self._dest_by_obj: dict[int, int] = {}            # id(Dest) -> dest id
        self._hops: dict[int, tuple] = {}                 # dest id -> (mac, ifindex) pushed
        self._dest_info: dict[int, tuple] = {}            # dest id -> (proto, addr, port, fwd)
        # -Z zeroes the listing, not the engine: its counters only ever grow, so a reader of
        # them (a rate estimator, a test) never sees them go backwards.
        self._zero_base: dict[tuple[str, int], dict[str, int]] = {}
        # IPVS's tot_stats (/proc/net/ip_vs_stats): deleted services' traffic stays in the
        # total, and only -Z of everything zeroes it.
        self._tot_retired = dict.fromkeys(STAT_FIELDS, 0)
        self._tot_base = dict.fromkeys(STAT_FIELDS, 0)
        # The rate estimator: (kind, id) -> [model object, last raw counters, scaled averages].
        self._est: dict[tuple[str, int], list] = {}
        self._est_time: float | None = None
        self._sysctls = _sysctl.defaults()     # the engine starts with the same defaults
        # VIPs not on this host now (a VRRP backup's): their services stay in the table and
        # their conns in the engine, but their traffic is the kernel's. Empty: serve all.
        self._vips_absent: set[str] = set()
        engine.set_scheduler_callback(self._schedule_batch)

    # -- the control API ------------------------------------------------------------------------
    def execute(self, cmd: Command):
        """Carry out one table-changing ipvsadm command (-A -E -D -C -a -e -d -Z --set) on the
        table and the engine. Raises ControlError (ipvsadm's wording) and changes nothing
        when the table refuses; NoRoute when a new real server has no next hop (the table
        change is then undone). What the engine cannot forward (an SCTP service, a real
        server of the other address family) is refused with ControlError before the table changes, as
        a kernel without that support refuses it."""
        self._check_supported(cmd)
        before = self.table.get(cmd.service) if cmd.service is not None else None
        old_sched = (before.sched_name, before.flags) if before is not None else None
        if cmd.name == "flush":
            for svc in list(self.table):
                self._drop_service(svc.key)
            apply_command(self.table, cmd)
            return None
        result = apply_command(self.table, cmd)
        if cmd.name in ("mark-rule", "del-mark-rules"):
            self._push_marks()
            return result
        if cmd.name == "set":
            self.engine.set_timeouts(*cmd.timeouts)
            return result
        if cmd.name == "zero":
            self._zero(cmd.service)
            return result
        if cmd.name == "delete-service":
            self._drop_service(cmd.service)
            return result
        svc = self.table.get(cmd.service)
        dests_changed = cmd.name in ("add-server", "edit-server", "delete-server")
        try:
            self._sync_service(svc, dests_changed, old_sched)
        except NoRoute:
            if cmd.name == "add-server":
                self.table.delete_dest(svc.key, cmd.dest_addr, cmd.dest_port)
                self._sync_service(svc, True, (svc.sched_name, svc.flags))
            raise
        return result

    def load(self, table: ServiceTable) -> None:
        """Make the director serve `table` (a parsed rules file), replacing what it served.
        Services and dests keep their engine ids where they stay, so their conns live on.

        All or nothing: the whole table is checked (check_table) and every real server's
        next hop resolved before anything changes; ControlError or NoRoute then leaves the
        running state exactly as it was."""
        self.check_table(table)
        resolved = {(svc.key, d.key): tuple(self.nexthop(d.addr))
                    for svc in table for d in svc.dests}
        for svc in list(self.table):
            if table.get(svc.key) is None:
                self._drop_service(svc.key)
        old = {s.key: s for s in self.table}
        self.table = table
        self.engine.set_timeouts(table.timeouts["tcp"], table.timeouts["tcpfin"],
                                 table.timeouts["udp"])
        if table.sysctls is not None:
            self.apply_sysctls({**_sysctl.defaults(), **table.sysctls})
        self._push_marks()
        for svc in table:
            self._live.pop(self._svc_ids.get(svc.key, 0), None)
            self._sync_service(svc, True, None, resolved)
        del old

    def check_table(self, table: ServiceTable) -> None:
        """ControlError (one line naming the service) when `table` holds what the engine
        cannot forward: an SCTP service, a real server of the other family, more services than
        the engine has ids for. Changes nothing."""
        for rule in table.marks:
            mark_rule_keys(rule)
        new = sum(1 for svc in table if svc.key not in self._svc_ids)
        if len(self._svc_ids) + new > contract.MAX_SERVICES:
            raise ControlError("Cannot allocate memory", errno.ENOMEM,
                               f"more than {contract.MAX_SERVICES} services")
        for svc in table:
            try:
                self._check_service(svc.key)
                for d in svc.dests:
                    self._check_dest(d.addr, svc.af)
            except ControlError as e:
                raise ControlError(e.message, e.errno,
                                   f"{svc.key.option_text()}: {e.detail}") from None

    @staticmethod
    def _check_service(key: ServiceKey) -> None:
        if key.proto is Proto.FWM:
            return
        if key.proto.value not in contract.PROTOCOLS:
            raise ControlError(os.strerror(errno.EPROTONOSUPPORT), errno.EPROTONOSUPPORT,
                               f"fastlvs forwards {' and '.join(contract.PROTOCOLS)} only")
        ip = ipaddress.ip_address(key.vaddr)
        if ip.version == 6 and int(ip) >> 32 == 0:
            raise ControlError(os.strerror(errno.EAFNOSUPPORT), errno.EAFNOSUPPORT,
                               f"{key.vaddr}: IPv6 addresses in ::/96 are not forwarded")

    @staticmethod
    def _check_dest(addr: str, af: int = 0) -> None:
        # the kernel lets a TUN dest be of the other family (IPIP in v6, v6 in IPIP); the
        # engine's tunnels are IPv4-in-IPv4 and IPv6-in-IPv6 only
        ip = ipaddress.ip_address(addr)
        if af and ip.version != af:
            raise ControlError(os.strerror(errno.EAFNOSUPPORT), errno.EAFNOSUPPORT,
                               f"{addr}: fastlvs forwards to real servers of the "
                               f"service's own address family only")
        if ip.version == 6 and int(ip) >> 32 == 0:
            raise ControlError(os.strerror(errno.EAFNOSUPPORT), errno.EAFNOSUPPORT,
                               f"{addr}: IPv6 addresses in ::/96 are not forwarded")

    def _check_supported(self, cmd: Command) -> None:
        if cmd.name == "mark-rule":
            mark_rule_keys(cmd.mark_rule)
        if cmd.name in ("add-service", "edit-service") and cmd.service is not None:
            self._check_service(cmd.service)
        if cmd.name in ("add-server", "edit-server") and cmd.dest_addr is not None:
            self._check_dest(cmd.dest_addr, cmd.service.af if cmd.service else 0)

    # -- sysctls ------------------------------------------------------------------------------------
    def set_sysctl(self, name: str, value) -> int:
        """Set one IPVS sysctl (control/sysctl.py: the kernel's name, range and meaning);
        SysctlError names an unknown sysctl or a value out of range or not implemented,
        and changes nothing. Returns the value set. Takes effect from the next packet;
        deleting a server later follows the expire_nodest_conn in force then."""
        v = _sysctl.check(name, value)
        if name in ("sync_threshold", "sync_period"):
            pair = {"sync_threshold": self._sysctls["sync_threshold"],
                    "sync_period": self._sysctls["sync_period"], name: v}
            _sysctl.check_sync_pair(pair["sync_threshold"], pair["sync_period"])
        if _sysctl.SYSCTLS[name].engine:
            self.engine.set_sysctl(name, v)
        self._sysctls[name] = v
        return v

    def apply_sysctls(self, values: dict) -> None:
        """Set several sysctls; every value is checked first, so a refusal changes none."""
        checked = {n: _sysctl.check(n, v) for n, v in values.items()}
        pair = {n: checked.get(n, self._sysctls[n]) for n in ("sync_threshold", "sync_period")}
        _sysctl.check_sync_pair(pair["sync_threshold"], pair["sync_period"])
        if "sync_period" in checked and pair["sync_threshold"] >= self._sysctls["sync_period"]:
            # the pair moves up: the period first, so no step breaks the rule
            checked = {"sync_period": checked.pop("sync_period"), **checked}
        for n, v in checked.items():
            self.set_sysctl(n, v)

    def sysctls(self) -> dict[str, int]:
        """{name: value} of every declared sysctl as it reads now (an automatic flood
        defence reads 2 while in force, as the kernel's do)."""
        out = dict(self._sysctls)
        out.update(self.engine.sysctls())
        return out

    # -- connection sync (the engine's side; sync/daemon.py owns the sockets) ------------------
    def sync_start_master(self, syncid: int, maxlen: int) -> None:
        """Start the sync master: from now on the engine decides per packet (the
        sync_* sysctls, Linux 6.1's policy) which conns and templates to send, in IPVS
        sync v1 messages of syncid `syncid` (0-255) and at most `maxlen` bytes (1..65507;
        protocol.sync_maxlen computes the kernel's default). Restarting changes both and
        drops messages not yet taken. ValueError for a value out of range."""
        self.engine.sync_start_master(syncid, maxlen)

    def sync_stop_master(self) -> None:
        """Stop the sync master; messages not yet taken are dropped. No-op when stopped."""
        self.engine.sync_stop_master()

    def sync_take(self, now_ns: int) -> list[bytes]:
        """Whole v1 datagrams to multicast now (UDP payloads, oldest first): the full
        messages, and the partial one once it is 2 s old as the kernel flushes it.
        `now_ns` is the engine's frame clock. [] when the master is not running."""
        return self.engine.sync_take(now_ns)

    def sync_queue_all(self, vaddr: str | None, start: int = 0, limit: int | None = None,
                       now_ns: int | None = None) -> tuple[int, int | None]:
        """The handover (fastlvs's own): queue every live conn and template of VIP `vaddr`
        (None: of all), SYN_RECV ones included, in slices of `limit` table slots from
        `start`; returns (queued, next start or None at the end, when the last message is
        closed so that sync_take hands out everything). RuntimeError when not a master."""
        return self.engine.sync_queue_all(vaddr, start, limit, now_ns)

    def sync_start_backup(self, syncid: int) -> None:
        """Start the sync backup: sync_receive accepts messages of `syncid` (0: any).
        Master and backup may run at once, as the kernel allows."""
        self.engine.sync_start_backup(syncid)

    def sync_stop_backup(self) -> None:
        """Stop the sync backup; installed conns stay until they expire."""
        self.engine.sync_stop_backup()

    def sync_receive(self, datagram: bytes, now_ns: int) -> None:
        """Install or refresh the conns one sync datagram carries, at `now_ns` (frame
        clock), as a kernel backup does: bound to the service's real server, with the
        entry's state and timeout. Bad datagrams and entries, conns of services or real
        servers not configured here, and conns the table has no room for are counted
        in sync_stats(), never raised. RuntimeError when the backup is not running."""
        self.engine.sync_receive(datagram, now_ns)

    def sync_stats(self) -> dict[str, int]:
        """Sync counters: sent/sent_conns/sent_bytes/queue_overflow of the master,
        received/received_conns/installed/updated/refused_*/dropped and one
        drop_*/skip_* per reason of the backup, queued, master and backup (0/1)."""
        return self.engine.sync_stats()

    def refresh_nexthops(self, nexthop: NextHop | None = None) -> int:
        """Resolve every dest's next hop again and re-push the dests whose MAC or interface
        changed (a real server replaced, a gateway moved); weights, schedulers and conns are
        untouched. A dest whose next hop no longer resolves keeps the last one. `nexthop`
        replaces the director's resolver for this call (the daemon's loop passes one that
        never waits). Returns how many dests changed."""
        resolve = nexthop or self.nexthop
        changed = 0
        for sid, (svc, _) in self._live.items():
            for d in svc.dests:
                did = self._dest_by_obj[id(d)]
                try:
                    hop = resolve(d.addr)
                except NoRoute:
                    continue
                hop = tuple(hop)
                if hop != self._hops.get(did):
                    self._hops[did] = hop
                    self._push_dest(did, sid, d, hop)
                    changed += 1
        return changed

    # -- what the daemon feeds the engine --------------------------------------------------------
    def set_neighbor(self, ip: str, mac, ifindex: int) -> bool:
        """The MAC (and interface) NAT replies to client `ip` go to; setting it again
        replaces it, mac=None forgets it (its replies then go by a MAC learned from its
        frames, or the gateway; IPv6 clients have their own table and gateway). A full
        neighbour table returns False: the client's replies then go by its learned MAC or
        the gateway, and nothing else changes. ValueError for an `ip` that is no address."""
        ipaddress.ip_address(ip)
        try:
            self.engine.set_neighbor(ip, mac, ifindex)
        except ValueError:          # the engine's neighbour table is full
            return False
        return True

    def set_gateway(self, mac, ifindex: int = 0) -> None:
        """The MAC NAT replies go to when their client has no neighbour entry (the default
        gateway's), sent out of `ifindex`. None removes it: such replies are then dropped
        and counted as no_route."""
        self.engine.set_gateway_mac(mac, ifindex)

    def set_gateway6(self, mac, ifindex: int = 0) -> None:
        """set_gateway for IPv6 clients: the v6 default router's MAC, where NAT66 replies
        to a client without a neighbour entry go. None removes it (no_route)."""
        self.engine.set_gateway6_mac(mac, ifindex)

    def set_local_ip6(self, addr: str) -> None:
        """The director's own IPv6 address: the outer source of IPv6-in-IPv6 (TUN) packets
        and of the hop-limit errors sent to NAT66 real servers. "" clears it (v6 TUN dests
        then drop, counted no_route). ValueError for anything but an IPv6 address."""
        self.engine.set_local(local_ip6=addr)

    def learn_clients(self, ifindex: int, subnets=None) -> None:
        """NAT: remember a new connection's client MAC (the client or its router) as the
        next hop of its replies, sent out of `ifindex`; 0 turns learning off. A client with
        a neighbour entry keeps it. `subnets` (prefixes such as "192.0.2.0/24", at most 16)
        are the clients on-link there: replies to any other client go to the gateway's MAC
        and take no entry, so a flood of spoofed sources cannot fill the table. None leaves
        the engine's list as it is."""
        self.engine.set_learn_ifindex(ifindex)
        if subnets is not None:
            self.engine.set_client_subnets(list(subnets))

    def expire(self, now_ns: int, budget: int | None = None) -> int:
        """Expire connection entries whose timeout passed by `now_ns` (monotonic ns),
        inspecting at most `budget` entries from where the last sweep stopped (None: the
        whole table). Returns how many were freed; an idle director calls this so that
        ActiveConn/InActConn come down as IPVS's timers bring them down."""
        return self.engine.run_timers(now_ns, budget)

    def poll(self, ports, stay_ms: int = 0) -> int:
        """Forward what waits on `ports` (the rings the daemon opened) for `stay_ms`, then
        return the number of frames received. A scheduler error is raised after the batch
        it broke (that batch's new flows were dropped and counted). RuntimeError when the
        director was built without the ring loop (replay, tests)."""
        if self._poll is None:
            raise RuntimeError("this director has no ring loop")
        return self._poll(self.engine, ports, stay_ms=stay_ms)

    def process(self, frames, timestamps=None):
        """Run `frames` (bytes) through the engine without rings, as `engine.process` does:
        [(index, out_ifindex, bytes)] of the frames to transmit, in input order."""
        return self.engine.process(frames, timestamps)

    def interfaces(self) -> set[int]:
        """The ifindexes the engine sends real servers' frames out of: every dest's resolved
        next hop, deleted dests whose connections live on included."""
        return {hop[1] for hop in self._hops.values()}

    def set_vip_present(self, vaddr: str, present: bool) -> bool:
        """Whether VIP `vaddr` is on this host now; returns whether that changed. While
        absent, its services stay in the table (listed, editable) and their conns in the
        engine, but steering() leaves their traffic out and the engine passes any frame to
        it to the kernel; present again, both take it back and its conns carry on. A VIP
        not named yet is present (a service added later on an absent VIP starts absent)."""
        if present == (vaddr not in self._vips_absent):
            return False
        if present:
            self._vips_absent.discard(vaddr)
        else:
            self._vips_absent.add(vaddr)
        for svc in self.table:
            if svc.vaddr == vaddr and svc.key in self._svc_ids:
                self.engine.set_vip_served(svc.proto.number, vaddr, svc.vport, present)
        return True

    def vips(self) -> dict[str, list[str]]:
        """{"served": [...], "absent": [...]}: the table's VIPs, in address order, by
        whether they are on this host now (absent ones wait: a VRRP backup's)."""
        addrs = sorted({svc.vaddr for svc in self.table if svc.proto is not Proto.FWM},
                       key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
        return {"served": [a for a in addrs if a not in self._vips_absent],
                "absent": [a for a in addrs if a in self._vips_absent]}

    def steering(self, client_ifindex: int) -> dict[int, set[tuple[str, str, str, int]]]:
        """{ifindex: {(kind, proto, addr, port)}}: the traffic each interface's ring must
        receive. ("service", proto, VIP, vport) on the clients' interface for every VIP on
        this host now (set_vip_present: an absent one's traffic is the kernel's); ("rserver", proto,
        RIP, rport) where a NAT real server's replies arrive (its next hop's interface),
        deleted NAT dests included while their connections live. An interface that only
        sends (a DR/TUN dest's) appears with an empty set."""
        want: dict[int, set] = {client_ifindex: set()}
        for ifindex in self.interfaces():
            want.setdefault(ifindex, set())
        for svc in self.table:
            if svc.proto is Proto.FWM:
                # what the mark's rules cover; its NAT replies from every protocol they name
                want[client_ifindex] |= self._mark_steering(svc)
                for d in svc.dests:
                    oif = self.dest_ifindex(svc.key, d)
                    if d.fwd is FwdMethod.NAT and oif is not None:
                        for proto in self._mark_protos(svc.vport, svc.af):
                            want.setdefault(oif, set()).add(("rserver", proto, d.addr, d.port))
                continue
            if svc.vaddr not in self._vips_absent:
                want[client_ifindex].add(("service", svc.proto.value, svc.vaddr, svc.vport))
            for d in svc.dests:
                oif = self.dest_ifindex(svc.key, d)
                if d.fwd is FwdMethod.NAT and oif is not None:
                    want.setdefault(oif, set()).add(("rserver", svc.proto.value, d.addr,
                                                     d.port if svc.vport else 0))
        for proto, addr, port, fwd, oif in self.retired_dests():
            if fwd is FwdMethod.NAT:
                want.setdefault(oif, set()).add(("rserver", proto, addr, port))
        return want

    # -- listings --------------------------------------------------------------------------------
    def pull_counters(self) -> None:
        """Copy the engine's per-service and per-dest counters into the model objects."""
        e = self.engine
        for sid, (svc, _) in self._live.items():
            st = e.service_stats(sid)
            base = self._zero_base.get(("svc", sid), {})
            for f in STAT_FIELDS:
                setattr(svc, f, st[f] - base.get(f, 0))
            for d in svc.dests:
                did = self._dest_by_obj[id(d)]
                ds = e.dest_stats(did)
                base = self._zero_base.get(("dest", did), {})
                for f in STAT_FIELDS:
                    setattr(d, f, ds[f] - base.get(f, 0))
                d.activeconns, d.inactconns, d.persistconns, d.overloaded = e.dest_counters(did)

    def list(self, **options) -> str:
        """`ipvsadm -L` text of the current state (options as listing.format_list takes)."""
        self.pull_counters()
        options.setdefault("conn_table_size", self.engine.hash_size)
        return format_list(self.table, **options)

    def list_conns(self, numeric: bool = True, persistent_conn: bool = False) -> str:
        """`ipvsadm -Lc [--persistent-conn]` text of the engine's connection entries (no
        entry has a persistence engine, so --persistent-conn only changes the title), made
        in one go: the control socket streams iter_conns() instead."""
        del numeric                      # numbers either way: names are the client's
        return "".join(self.iter_conns(persistent_conn))

    def iter_conns(self, persistent_conn: bool = False, slice_size: int = CONN_SLICE):
        """`ipvsadm -Lc [--persistent-conn]` text in pieces, made as they are asked for: the
        title, then the lines of each `slice_size` engine slots (Engine.conns_slice; a
        piece may be "" where the table is sparse). The caller may forward packets and
        change the table between two pieces: an entry that lives through the whole walk
        is listed exactly once, one made or expired meanwhile may or may not be.

        Entries come in the engine's slot order, not sorted. ipvsadm prints what the
        kernel's /proc/net/ip_vs_conn gives, in the order given, and the kernel walks its
        connection hash table bucket by bucket: its order is no more sorted than ours."""
        engine = self.engine             # a walk stays on the engine it started on
        yield conn_header(persistent_conn)
        cursor = 0
        while cursor is not None:
            part, cursor = engine.conns_slice(cursor, slice_size)
            # a port-0 service's template is listed with its protocol, as 6.1 lists it
            # (tests/fixtures/kernel/port0.json); "IP" is a fwmark service's
            yield conn_lines([(c["proto"], c["caddr"], c["cport"], c["vaddr"], c["vport"],
                               c["raddr"], c["rport"], c["state"], c["expires"]) for c in part],
                             persistent_conn)

    def counters(self) -> dict:
        """Everything countable as one JSON-ready dict: the engine's global counters, per
        service and per dest the IPVS stats and connection counts, and (in the daemon) per
        ring its frames, drops and wake-ups, with the kernel's own counts for AF_XDP."""
        self.pull_counters()
        services = []
        for svc in self.table:
            services.append({
                "service": svc.key.option_text(),
                "scheduler": svc.sched_name,
                **{f: getattr(svc, f) for f in STAT_FIELDS},
                "dests": [{
                    "dest": addrport(d.addr, d.port), "fwd": d.fwd.label, "weight": d.weight,
                    "activeconns": d.activeconns, "inactconns": d.inactconns,
                    "persistconns": d.persistconns, "overloaded": bool(d.overloaded),
                    **{f: getattr(d, f) for f in STAT_FIELDS},
                } for d in svc.dests],
            })
        out = {"engine": self.engine.stats(), "conn_entries": self.engine.conn_count(),
               "conn_capacity": self.engine.capacity, "services": services,
               "vips": self.vips()}
        if getattr(self.engine, "offload_fd", -1) >= 0:     # the XDP offload is on
            out["offload"] = self.engine.offload_stats()
        if self.port_stats is not None:
            out["ports"] = self.port_stats()
        return out

    def totals(self) -> dict:
        """IPVS's totals over every service (/proc/net/ip_vs_stats, what node_exporter
        reads): conns, inpkts, outpkts, inbytes, outbytes since start or the last -Z of
        the whole table. A deleted service's traffic stays counted; -Z of one service
        does not change them."""
        raw = self._raw_totals()
        return {f: raw[f] - self._tot_base[f] for f in STAT_FIELDS}

    def _raw_totals(self) -> dict:
        out = dict(self._tot_retired)
        for sid in self._live:
            st = self.engine.service_stats(sid)
            for f in STAT_FIELDS:
                out[f] += st[f]
        return out

    def save(self, numeric: bool = True) -> str:
        """`ipvsadm -S [-n]` text of the current table (rules.dump_rules: sorted as ipvsadm
        sorts, thresholds not written). Numbers either way: the admin client puts in names (control/names.py)."""
        return dump_rules(self.table, numeric)

    def restore(self, text: str, filename: str = "-", final: bool = True) -> list[str]:
        """`ipvsadm -R`: apply the commands of a rules text, in order, ON TOP of the current
        table (it adds; it does not replace: write -C first to replace).

        Every line is parsed before any is applied: a line ipvsadm itself would refuse
        (syntax, a list/save command) raises RulesError (`FILE:LINE: reason`) and changes
        nothing. A line the table refuses ("Service already exists", a real server without
        a next hop) is skipped and the rest applied, as ipvsadm -R carries on past refused
        lines; the refusals are returned, one `FILE:LINE: what` string each ([] if none).
        Not `final`: NoRoute(pending=True), before anything is applied, while the kernel is
        still resolving a real server of the text (the caller asks again later).
        """
        commands = list(iter_rules(text, filename))
        if not final:
            for _, cmd in commands:
                if cmd.name == "add-server":
                    try:
                        self.nexthop(cmd.dest_addr)
                    except NoRoute as e:
                        if e.pending:
                            raise
        errors = []
        for lineno, cmd in commands:
            try:
                self.execute(cmd)
            except ControlError as e:
                errors.append(f"{filename}:{lineno}: {describe(cmd, e)}")
            except NoRoute as e:
                errors.append(f"{filename}:{lineno}: {describe_noroute(cmd, e)}")
        return errors

    # -- rates (ip_vs_est.c) ---------------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Run the rate estimator if its 2 s interval has passed at `now` (monotonic
        seconds); the daemon may call this as often as it likes, from the thread that runs
        the engine. Returns True when an estimation step ran.

        Each step is IPVS's: per service and per dest, the counter deltas since the last
        step become a rate (per second, scaled by 2**10 for cps/pps, 2**5 for bps) folded
        into an average with weight 1/4, and the CPS/InPPS/OutPPS/InBPS/OutBPS fields
        `ipvsadm -L --rate` prints are that average rounded as ip_vs_read_estimator does.
        The first call only starts the clock; a service or dest starts its estimator at the
        first step that sees it (rates 0 until the next). A step that comes more than half
        an interval late scales its deltas to 2 s, so a stalled loop shows no burst.
        """
        last = self._est_time
        if last is None:
            self._est_time = now
            self._estimate(None)
            return True
        elapsed = now - last
        if elapsed < EST_INTERVAL:
            return False
        self._est_time = now
        self._estimate(EST_INTERVAL / elapsed if elapsed > 1.5 * EST_INTERVAL else None)
        return True

    def _est_objects(self):
        e = self.engine
        for sid, (svc, _) in self._live.items():
            yield ("svc", sid), svc, e.service_stats(sid)
            for d in svc.dests:
                did = self._dest_by_obj[id(d)]
                yield ("dest", did), d, e.dest_stats(did)

    def _estimate(self, scale: float | None) -> None:
        seen = set()
        for key, obj, st in self._est_objects():
            seen.add(key)
            raw = [st[f] for f in STAT_FIELDS]
            est = self._est.get(key)
            if est is None or est[0] is not obj:
                # A new (or re-added) object starts from its counters as they stand, as
                # ip_vs_start_estimator does; its rates stay 0 until the next step.
                self._est[key] = [obj, raw, [0] * 5]
                continue
            _, prev, avg = est
            for i, f in enumerate(RATE_FIELDS):
                delta = raw[i] - prev[i]
                if scale is not None:
                    delta = int(delta * scale)
                rate = delta << _EST_SHIFT[i]
                avg[i] += (rate - avg[i]) >> 2      # arithmetic shift, as the kernel's s64
                setattr(obj, f, (avg[i] + _EST_ROUND[i]) >> _EST_SCALE[i])
            est[1] = raw
        for key in list(self._est):
            if key not in seen:
                del self._est[key]

    # -- engine synchronisation --------------------------------------------------------------------
    def _svc_id(self, key: ServiceKey) -> int:
        sid = self._svc_ids.get(key)
        if sid is None:
            sid = self._svc_ids[key] = len(self._svc_ids) + 1
            if sid > 65535:
                raise ControlError("Cannot allocate memory", detail="more than 65535 services")
        return sid

    def _dest_id(self, key: ServiceKey, dest) -> int:
        k = (key, dest.key)
        did = self._dest_ids.get(k)
        if did is None:
            did = self._dest_ids[k] = len(self._dest_ids) + 1
        return did

    def _sync_service(self, svc: Service, dests_changed: bool, old_sched,
                      resolved: dict | None = None) -> None:
        """Push `svc` and its dests to the engine and keep its scheduler in step: a new
        scheduler (the kernel's init_service) when the service is new or its scheduler or
        flags changed, else the add/del/upd hooks through Scheduler.update()."""
        sid = self._svc_id(svc.key)
        # Resolve every next hop before touching the engine, so a failure changes nothing.
        if resolved is not None:
            hops = {id(d): resolved[(svc.key, d.key)] for d in svc.dests}
        else:
            hops = {id(d): self.nexthop(d.addr) for d in svc.dests
                    if id(d) not in self._dest_by_obj or dests_changed}
        kind = contract.HASH_KINDS.get(svc.sched_name, contract.SCHED_CALLBACK)
        flag_bits = contract.sched_flag_bits(svc.flags)
        if svc.proto is Proto.FWM:
            self._set_fwm_service(sid, svc, kind, flag_bits)
        else:
            self.engine.set_service(sid, svc.proto.number, svc.vaddr, svc.vport,
                                    persist_timeout=svc.timeout,
                                    netmask=svc.netmask,
                                    sched=kind, sched_flags=flag_bits, ops=svc.ops)
            # always: a service deleted while its VIP was away may come back to a present one
            self.engine.set_vip_served(svc.proto.number, svc.vaddr, svc.vport,
                                       svc.vaddr not in self._vips_absent)
        present = set()
        for d in svc.dests:
            did = self._dest_id(svc.key, d)
            present.add(did)
            self._dest_by_obj[id(d)] = did
            hop = self._hops[did] = tuple(hops.get(id(d)) or self.nexthop(d.addr))
            self._push_dest(did, sid, d, hop)
        for did in self._engine_dests.get(sid, set()) - present:
            self.engine.del_dest(did)
        self._engine_dests[sid] = present
        live = self._live.get(sid)
        if live is None:
            # A service new to the engine, even one that arrives whole (a rules file, TOML,
            # --vip/--rs, a reload): built as `ipvsadm -R` builds it in the kernel, the
            # service first (init_service on an empty list), then each -a in turn, oldest
            # first, each at the head of the list. wrr's first round depends on it.
            sched = schedulers.create(svc.sched_name, [], flags=svc.flags)
            for n in range(len(svc.dests) - 1, -1, -1):
                sched.update(svc.dests[n:])
            self._live[sid] = (svc, sched)
        elif live[0] is not svc or old_sched != (svc.sched_name, svc.flags):
            # ipvsadm -E with another scheduler: the kernel binds it to the whole list
            sched = schedulers.create(svc.sched_name, svc.dests, flags=svc.flags)
            self._live[sid] = (svc, sched)
        elif dests_changed:
            sched = live[1]
            sched.update(svc.dests)
        else:
            sched = live[1]
        if kind:
            ids = [self._dest_by_obj[id(d)] for d in sched.servers]
            table = [ids[i - 1] if i else 0 for i in sched.lookup_table()]
            self.engine.set_hash_table(sid, table, kind, flag_bits)

    # -- firewall-mark services ------------------------------------------------------------------
    def _set_fwm_service(self, sid: int, svc: Service, kind: int, flag_bits: int) -> None:
        self.engine.set_fwm_service(sid, svc.vport, persist_timeout=svc.timeout,
                                    netmask=svc.netmask, sched=kind, sched_flags=flag_bits,
                                    af=svc.af)

    def _push_marks(self) -> None:
        self.engine.set_marks([r.engine_row() for r in self.table.marks])

    def _mark_steering(self, svc: Service) -> set[tuple[str, str, str, int]]:
        """The ("service", proto, addr, port) keys of what `svc`'s mark's rules of its own
        address family cover (port 0: every port of the address, for a rule over more than
        MARK_STEER_PORTS ports): a v4 frame given the mark goes to `-f N`, a v6 one to
        `-f N -6`, and a mark with no service of the frame's family serves it nowhere."""
        keys = set()
        for r in self.table.marks:
            if r.mark != svc.vport or r.af != svc.af:
                continue
            for proto, addr, port in mark_rule_keys(r):
                keys.add(("service", proto, addr, port))
        return keys

    def _mark_protos(self, mark: int, af: int = 4) -> list[str]:
        out = []
        for r in self.table.marks:
            if r.mark == mark and r.af == af:
                for p in mark_protos(r):
                    if p not in out:
                        out.append(p)
        return out

    def _push_dest(self, did: int, sid: int, d, hop: tuple) -> None:
        # hop = (next-hop MAC, ifindex[, our MAC on that interface])
        # a port-0 service's NAT replies come from every port of the server (its conns keep
        # the client's port, whatever the dest's): steered by a port-0 key
        port0 = any(i == sid and key.vport == 0 for key, i in self._svc_ids.items())
        self._dest_info[did] = (self._live_proto(sid), d.addr, 0 if port0 else d.port, d.fwd)
        # a GUE/GRE tunnel's settings go along (leaving them out makes the dest plain ipip)
        tun = {} if d.tun_type == "ipip" else dict(
            tun_type=d.tun_type, tun_port=d.tun_port, tun_flags=d.tun_flags)
        self.engine.set_dest(did, sid, d.addr, d.port, fwd=_FWD[d.fwd], mac=hop[0],
                             ifindex=hop[1], weight=d.weight, u_threshold=d.u_threshold,
                             l_threshold=d.l_threshold, src_mac=hop[2] if len(hop) > 2 else None,
                             **tun)

    def _live_proto(self, sid: int) -> str:
        for key, i in self._svc_ids.items():
            if i == sid:
                if key.proto is Proto.FWM:
                    return (self._mark_protos(key.vport, key.af) or ["tcp"])[0]
                return key.proto.value
        return "tcp"

    def dest_ifindex(self, key: ServiceKey, dest) -> int | None:
        """The interface the engine sends `dest`'s frames out of (its resolved next hop)."""
        hop = self._hops.get(self._dest_ids.get((key, dest.key), 0))
        return hop[1] if hop else None

    def retired_dests(self) -> list[tuple[str, str, int, FwdMethod, int]]:
        """(proto, addr, port, fwd, ifindex) of real servers deleted from the table whose
        connections the engine still forwards (IPVS keeps such a dest in its trash until
        they end): a NAT one's replies must still reach the engine."""
        live = {did for dids in self._engine_dests.values() for did in dids}
        out = []
        for did, info in self._dest_info.items():
            if did in live:
                continue
            try:
                if self.engine.dest_stats(did)["refcnt"] > 0:
                    out.append(info + (self._hops[did][1],))
            except KeyError:
                pass
        return out

    def _drop_service(self, key: ServiceKey) -> None:
        sid = self._svc_ids.get(key)
        if sid is None:
            return
        if sid in self._live:
            st = self.engine.service_stats(sid)
            for f in STAT_FIELDS:
                self._tot_retired[f] += st[f]
        # the engine's counters of a service added again start from 0, as the kernel's do
        self._zero_base.pop(("svc", sid), None)
        self.engine.del_service(sid)
        self._live.pop(sid, None)
        self._engine_dests.pop(sid, None)

    def _zero(self, key) -> None:
        if key is None:
            self._tot_base = self._raw_totals()     # ip_vs_zero_all zeroes tot_stats too
        sids = [self._svc_ids[key]] if key is not None else list(self._live)
        for sid in sids:
            st = self.engine.service_stats(sid)
            self._zero_base[("svc", sid)] = {f: st[f] for f in STAT_FIELDS}
            for did in self._engine_dests.get(sid, ()):
                ds = self.engine.dest_stats(did)
                self._zero_base[("dest", did)] = {f: ds[f] for f in STAT_FIELDS}
            # ip_vs_zero_estimator: the averages restart from 0 and from today's counters.
            for kind, oid, st in [("svc", sid, self.engine.service_stats(sid))] + [
                    ("dest", did, self.engine.dest_stats(did))
                    for did in self._engine_dests.get(sid, ())]:
                est = self._est.get((kind, oid))
                if est is not None:
                    est[1] = [st[f] for f in STAT_FIELDS]
                    est[2] = [0] * 5

    # -- new connections (called by the engine once per batch) ----------------------------------------
    def _schedule_batch(self, svc_ids, flows):
        e = self.engine
        out = []
        fresh = set()
        for sid, ft in zip(svc_ids, flows):
            live = self._live.get(sid)
            if live is None:
                out.append(0)
                continue
            svc, sched = live
            if sid not in fresh:
                # Schedulers read the engine's counters as they are at this batch's end.
                for d in svc.dests:
                    (d.activeconns, d.inactconns, d.persistconns,
                     d.overloaded) = e.dest_counters(self._dest_by_obj[id(d)])
                fresh.add(sid)
            dest = sched.schedule(Flow.from_ints(*ft))
            if dest is None:
                out.append(0)
                continue
            # What the engine's bind will do to the counters, so the next flow of this batch
            # sees them as the kernel's next packet would: a TCP SYN moves the new conn to
            # SYN_RECV (active), a UDP conn stays inactive; u_threshold marks overload.
            if ft[5] == "tcp":
                dest.activeconns += 1
            elif not svc.ops:                 # a -o datagram leaves no entry behind
                dest.inactconns += 1
            if dest.u_threshold and dest.activeconns + dest.inactconns >= dest.u_threshold:
                dest.overloaded = True
            out.append(self._dest_by_obj[id(dest)])
        return out
