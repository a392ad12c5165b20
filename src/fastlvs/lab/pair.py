"""Two fastlvs directors on one LAN, in network namespaces, for the failover tests and
benchmarks (root only): a client, directors d1 and d2 each running `fastlvs --keepalived-conf
FILE --vrrp` (keepalived's VRRP from the distribution, supervised by fastlvs; the file's
lvs_sync_daemon asks for connection sync), and real servers running the load module's echo
server. Every name is unique; `Pair.destroy()` removes what was made, also after a failure.
Nothing is addressed outside 10.204/16.

    client 10.204.0.1 --+-- br0 --+-- d1 lan0 10.204.0.2    VRRP on lan0 holds the VIP
                                  +-- d2 lan0 10.204.0.3    10.204.0.100 (and, NAT, the
    DR: rs1..rsN 10.204.0.11.. on br0, VIP on lo            real servers' gateway)
    NAT: d1 rsnet0 10.204.1.2, d2 rsnet0 10.204.1.3 -- br1 -- rs1..rsN 10.204.1.11..,
         default route via 10.204.1.1, a VRRP address of the same instance (as LVS-NAT
         pairs have it, so replies follow the VIP)

d1 has the higher priority: it starts first and becomes MASTER; d2 waits as BACKUP.

keepalived runs with `nftables` and `no_accept` (no_accept=True, the default): it then drops
in the kernel's input path whatever is addressed to the VIPs. fastlvs takes the service
traffic before that (XDP), so nothing it serves is dropped; what the rule stops is the
kernel answering the VIP with RSTs while it holds the address and fastlvs does not steer it:
on a new master between keepalived adding the VIP and fastlvs following the address event,
and on a master whose fastlvs died (the rule outlives even a SIGKILLed keepalived).
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from fastlvs.lab import load
from fastlvs.lab.testbed import Daemon, run, sysctl, tx_checksum_off
from fastlvs.system import vrrp

LAN = "10.204.0"
RSNET = "10.204.1"
CLIENT_IP = f"{LAN}.1"
VIP = f"{LAN}.100"
GATEWAY = f"{RSNET}.1"           # NAT: the real servers' default route, held by VRRP
PORT = load.PORT
VRID = 51
SYNCID = 7
MODES = ("dr", "nat")
_seq = itertools.count()


class _Host:
    """What testbed.Daemon needs of its bed: the namespace, a private directory, the list
    of running daemons (the pair's)."""

    def __init__(self, ns: str, tmp: str, daemons: list):
        self.director = ns
        self.tmp = tmp
        self.daemons = daemons


class Pair:
    """A director pair for `mode` ("dr" or "nat"). `build()` makes the namespaces and starts
    the real servers' echo servers; `start()` starts d1 then d2 and waits until d1 holds the
    VIP; `destroy()` is safe after a partial build. advert_int is VRRP's (seconds);
    priorities are d1's and d2's; sync=False leaves lvs_sync_daemon out of the file;
    no_accept=False leaves keepalived's VIP drop out (see the module's docstring)."""

    def __init__(self, mode: str = "dr", n_rs: int = 2, prefix: str = "fp",
                 advert_int: float = 1.0, priorities=(150, 100), sync: bool = True,
                 backend: str = "xdp", no_accept: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.advert_int = advert_int
        self.priorities = list(priorities)
        self.sync = sync
        self.no_accept = no_accept
        self.backend = backend
        tag = f"{prefix}{os.getpid() % 100000}x{next(_seq)}"
        self.tag = tag
        self.switch, self.client = f"{tag}sw", f"{tag}c"
        self.directors = [f"{tag}d1", f"{tag}d2"]
        self.rs = [f"{tag}r{i + 1}" for i in range(n_rs)]
        net = RSNET if mode == "nat" else LAN
        self.rips = [f"{net}.{11 + i}" for i in range(n_rs)]
        self.dips = [f"{LAN}.2", f"{LAN}.3"]
        self.rs_dips = [f"{RSNET}.2", f"{RSNET}.3"]
        self.vip = VIP
        self.lan_if = "lan0"
        self.rs_if = "rsnet0" if mode == "nat" else None
        self.tmp = tempfile.mkdtemp(prefix=f"{tag}-")
        self.made: list[str] = []
        self.servers: dict[str, subprocess.Popen] = {}
        self.daemons: list[Daemon] = []
        self.running: list[Daemon | None] = [None, None]
        self.hosts = [_Host(ns, self.tmp, self.daemons) for ns in self.directors]
        self.pids: list[int] = []          # every fastlvs started, for the files it left

    @property
    def namespaces(self):
        return [self.switch, self.client, *self.directors, *self.rs]

    # -- building --------------------------------------------------------------------------------
    def build(self) -> "Pair":
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _veth(self, sw_name, ns, dev, bridge):
        run("ip", "-n", self.switch, "link", "add", sw_name, "type", "veth", "peer", "name",
            dev, "netns", ns)
        run("ip", "-n", self.switch, "link", "set", sw_name, "master", bridge, "up")

    def _addr(self, ns, dev, cidr):
        run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")

    def _build(self):
        if shutil.which("keepalived") is None:
            raise RuntimeError("keepalived not found (install the keepalived package)")
        for ns in self.namespaces:
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            sysctl(ns, ipv6__conf__all__disable_ipv6=1, ipv6__conf__default__disable_ipv6=1,
                   ipv4__conf__all__rp_filter=0, ipv4__conf__default__rp_filter=0)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        bridges = ["br0", "br1"] if self.mode == "nat" else ["br0"]
        for br in bridges:
            run("ip", "-n", self.switch, "link", "add", br, "type", "bridge",
                "forward_delay", "0", "stp_state", "0")
            run("ip", "-n", self.switch, "link", "set", br, "up")
        self._veth("pc", self.client, "eth0", "br0")
        tx_checksum_off(self.client, "eth0")
        self._addr(self.client, "eth0", f"{CLIENT_IP}/24")
        # many short connections from one client: reuse TIME_WAIT ports
        sysctl(self.client, ipv4__tcp_tw_reuse=1)
        for i, ns in enumerate(self.directors):
            self._veth(f"pd{i + 1}", ns, self.lan_if, "br0")
            self._addr(ns, self.lan_if, f"{self.dips[i]}/24")
            # a director without the VIP must not route it (nor anything else)
            sysctl(ns, ipv4__ip_forward=0)
            if self.mode == "nat":
                self._veth(f"pn{i + 1}", ns, self.rs_if, "br1")
                self._addr(ns, self.rs_if, f"{self.rs_dips[i]}/24")
        rs_bridge = "br1" if self.mode == "nat" else "br0"
        for i, (ns, rip) in enumerate(zip(self.rs, self.rips)):
            self._veth(f"pr{i + 1}", ns, "eth0", rs_bridge)
            tx_checksum_off(ns, "eth0")
            self._addr(ns, "eth0", f"{rip}/24")
            if self.mode == "nat":
                run("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
            else:
                run("ip", "-n", ns, "addr", "add", f"{self.vip}/32", "dev", "lo")
                sysctl(ns, ipv4__conf__all__arp_ignore=1, ipv4__conf__all__arp_announce=2,
                       ipv4__conf__eth0__arp_ignore=1, ipv4__conf__eth0__arp_announce=2)
            self.servers[ns] = load.start_server(ns, PORT)

    # -- keepalived.conf ---------------------------------------------------------------------------
    def conf(self, i: int, priority: int | None = None) -> str:
        """Director i's keepalived.conf (i = 0 for d1, 1 for d2)."""
        prio = self.priorities[i] if priority is None else priority
        addrs = [f"{self.vip}/32 dev {self.lan_if}"]
        if self.mode == "nat":
            addrs.append(f"{GATEWAY}/24 dev {self.rs_if}")
        sync = (f"    lvs_sync_daemon {self.lan_if} VI_PAIR id {SYNCID}\n" if self.sync else "")
        reals = "".join(f"    real_server {rip} {PORT} {{\n        weight 1\n    }}\n"
                        for rip in self.rips)
        vaddrs = "".join(f"        {a}\n" for a in addrs)
        return (f"global_defs {{\n    router_id fastlvs-pair-d{i + 1}\n{sync}"
                f"{'    nftables' + chr(10) if self.no_accept else ''}}}\n"
                f"vrrp_instance VI_PAIR {{\n    state BACKUP\n    interface {self.lan_if}\n"
                f"{'    no_accept' + chr(10) if self.no_accept else ''}"
                f"    virtual_router_id {VRID}\n    priority {prio}\n"
                f"    advert_int {self.advert_int:g}\n"
                f"    virtual_ipaddress {{\n{vaddrs}    }}\n}}\n"
                f"virtual_server {self.vip} {PORT} {{\n    lb_algo rr\n"
                f"    lb_kind {self.mode.upper()}\n    protocol TCP\n{reals}}}\n")

    def conf_path(self, i: int) -> str:
        return os.path.join(self.tmp, f"keepalived-d{i + 1}.conf")

    def write_conf(self, i: int, priority: int | None = None) -> str:
        path = self.conf_path(i)
        with open(path + ".new", "w") as f:
            f.write(self.conf(i, priority))
        os.replace(path + ".new", path)
        return path

    # -- the directors -----------------------------------------------------------------------------
    def start_director(self, i: int, *extra: str, timeout: float = 30.0) -> Daemon:
        """`fastlvs --keepalived-conf FILE --vrrp` in director i's namespace (waits for
        "ready")."""
        args = ["--mode", self.mode, "-i", self.lan_if]
        if self.rs_if:
            args += ["--rs-interface", self.rs_if]
        if self.backend:
            args += ["--backend", self.backend]
        args += ["--keepalived-conf", self.write_conf(i), "--vrrp", *extra]
        d = Daemon(self.hosts[i], args)
        # a socket of its own: a killed daemon's may still be there
        d.socket_path = os.path.join(self.tmp, f"ctl-d{i + 1}-{next(_seq)}.sock")
        d.args[-1] = d.socket_path
        self.daemons.append(d)
        d.start(timeout=timeout)
        self.running[i] = d
        self.pids.append(d.proc.pid)       # ip netns exec execs: fastlvs's own pid
        return d

    def start(self, timeout: float = 30.0) -> "Pair":
        """d1, then (once it holds the VIP) d2: a known master."""
        self.start_director(0)
        self.wait_holder(0, timeout)
        self.start_director(1)
        self.wait_backup_ready(1, timeout)
        return self

    def has_vip(self, i: int) -> bool:
        out = run("ip", "-n", self.directors[i], "-4", "-o", "addr", "show", "dev",
                  self.lan_if, check=False).stdout
        return f" {self.vip}/32 " in out

    def holders(self) -> list[int]:
        """The running directors that hold the VIP (a crashed director's kernel may keep the
        address its SIGKILLed keepalived never removed: it no longer counts)."""
        return [i for i in (0, 1) if self.running[i] is not None and self.has_vip(i)]

    def wait_holder(self, i: int, timeout: float = 20.0) -> float:
        """Wait until director i alone holds the VIP; the seconds it took."""
        t0 = time.monotonic()
        while self.holders() != [i]:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"d{i + 1} does not hold {self.vip} alone after "
                                   f"{timeout:g}s (holders {self.holders()})\n"
                                   + self.log_tail())
            time.sleep(0.05)
        return time.monotonic() - t0

    def wait_backup_ready(self, i: int, timeout: float = 20.0) -> None:
        """Wait for keepalived's "Entering BACKUP STATE" in director i's log."""
        d = self.running[i]
        end = time.monotonic() + timeout
        while not any("Entering BACKUP STATE" in ln for ln in d.lines):
            if time.monotonic() > end or d.proc.poll() is not None:
                raise TimeoutError(f"d{i + 1} never entered BACKUP\n" + self.log_tail())
            time.sleep(0.05)

    def ns_pids(self, i: int) -> list[int]:
        return [int(p) for p in run("ip", "netns", "pids", self.directors[i],
                                    check=False).stdout.split()]

    def keepalived_pids(self, i: int) -> list[int]:
        out = []
        for pid in self.ns_pids(i):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "keepalived":
                        out.append(pid)
            except FileNotFoundError:
                pass
        return out

    def kill_director(self, i: int) -> None:
        """A crash: SIGKILL to every process of director i (fastlvs and its keepalived at
        once; keepalived gets no chance to give the VIP up)."""
        for pid in self.ns_pids(i):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d = self.running[i]
        if d is not None:
            d.proc.wait(5)
            d._forget()
            self.running[i] = None

    def kill_fastlvs(self, i: int) -> None:
        """SIGKILL to director i's fastlvs alone (its keepalived must follow by itself)."""
        d = self.running[i]
        d.proc.kill()
        d.proc.wait(5)
        d._forget()
        self.running[i] = None

    def link(self, i: int, up: bool) -> None:
        """Director i's LAN cable, pulled or plugged at the switch."""
        run("ip", "-n", self.switch, "link", "set", f"pd{i + 1}", "up" if up else "down")

    def set_priority(self, i: int, priority: int) -> None:
        """Planned switchover: a new priority in director i's file, read on SIGHUP."""
        self.write_conf(i, priority)
        self.running[i].send(signal.SIGHUP)

    def stop_director(self, i: int, timeout: float = 15.0) -> int:
        d = self.running[i]
        self.running[i] = None
        return d.stop(signal.SIGTERM, timeout)

    def counters(self, i: int) -> dict:
        """`fastlvs admin --counters` of director i."""
        return json.loads(self.running[i].admin("--counters").stdout)

    def conns(self, i: int) -> str:
        return self.running[i].admin("-Lnc").stdout

    def log_tail(self, n: int = 15) -> str:
        out = []
        for i, d in enumerate(self.running):
            if d is not None:
                out.append(f"-- d{i + 1}:\n" + "\n".join(d.lines[-n:]))
        return "\n".join(out)

    # -- load --------------------------------------------------------------------------------------
    def load(self, **opts) -> load.LoadRun:
        """A load client in the client namespace towards VIP:PORT (not started)."""
        return load.LoadRun(self.client, self.vip, PORT, **opts)

    # -- teardown ----------------------------------------------------------------------------------
    def destroy(self) -> None:
        for d in list(self.daemons):
            try:
                d.stop(timeout=10)
            except Exception:
                d.kill()
        for i in (0, 1):
            if i < len(self.directors) and self.directors[i] in self.made:
                for pid in self.ns_pids(i):          # a keepalived left by a killed fastlvs
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        for p in self.servers.values():
            if p.poll() is None:
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.servers.clear()
        # a SIGKILLed fastlvs could not remove its keepalived's runtime files, nor its state
        # file (whose undo concerns a namespace deleted below)
        for pid in self.pids:
            for path in (glob.glob(os.path.join(vrrp.RUN_DIR, f"keepalived-vrrp-{pid}*"))
                         + [os.path.join(vrrp.RUN_DIR, f"state-{pid}.json")]):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self.pids.clear()
        for ns in reversed(self.made):
            run("ip", "netns", "del", ns, check=False)
        self.made.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.build()

    def __exit__(self, *exc):
        self.destroy()
