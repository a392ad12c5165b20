"""Throughput of fastlvs against its peers, side by side in one run (root; run `make bench-peers`).

Builds four namespaces: a generator (CPU0) <-veth-> the director (every part on CPU1, its NAPI
threads too) <-veth-> two real servers whose veth drops and counts every IPv4 frame at XDP.
Sends 60-byte UDP frames of 70,000 flows from an XDP live-frames generator, runs every case
(fastlvs DR over AF_XDP and AF_PACKET, NAT, TUN; nftables DNAT; kernel forwarding; an XDP DR
program; bare C forwarders on AF_XDP and AF_PACKET) N times, each bounded in time, and writes
benchmarks/results/peers.json and peers.png. Everything it made is removed in a finally.

    .venv/bin/python benchmarks/peers.py [--reps 5] [--seconds 3] [--cases a,b,...] [--steps N]
    .venv/bin/python benchmarks/peers.py --replot      # table and chart again from results/peers.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(HERE, "peers")
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable

GEN_CPU, DIR_CPU = 0, 1
VIP, VPORT = "10.203.0.10", 8080
CLIENT_NET = "10.201.1.0"           # flow i comes from CLIENT_NET + i // 1024, port 1024 + i % 1024
FLOWS = 70_000
START_TIMEOUT = 20.0


def ip2int(ip: str) -> int:
    return struct.unpack("!I", socket.inet_aton(ip))[0]


def mac2bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def run(*cmd, check=True, timeout=20, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def log(msg: str) -> None:
    print(f"peers: {msg}", file=sys.stderr, flush=True)


# -- build the C peers --------------------------------------------------------------------------
def build(out: str) -> dict[str, str]:
    """Compile the BPF objects and the C tools into `out`; returns name -> path."""
    arch_inc = "/usr/include/" + run("gcc", "-dumpmachine").stdout.strip()
    bins = {}
    for name in ("gen", "sink", "xdp_dr", "xdp_nat", "xdp_tun"):
        obj = os.path.join(out, f"{name}.bpf.o")
        run("clang", "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc, "-I", SRC, "-c",
            os.path.join(SRC, f"{name}.bpf.c"), "-o", obj, timeout=120)
        bins[name] = obj
    for name, libs in (("xdptool", ["-lbpf"]), ("fwd_xsk", ["-lxdp", "-lbpf"]), ("fwd_packet", [])):
        exe = os.path.join(out, name)
        try:
            run("gcc", "-O2", "-g", "-Wall", "-I", SRC, "-o", exe, os.path.join(SRC, f"{name}.c"),
                *libs, timeout=120)
        except RuntimeError as e:     # its cases fail; the others still run
            log(f"{name} not built: {str(e)[-500:]}")
            continue
        bins[name] = exe
    return bins


# -- CPU accounting -----------------------------------------------------------------------------
def cpu_times(cpu: int) -> tuple[float, float]:
    """(busy, steal) seconds of one CPU from /proc/stat. Busy is user..softirq: idle, iowait
    and steal (time the hypervisor gave someone else: a noisy neighbour, not our cost) are
    left out; steal is returned apart so a run can say how much of it there was."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:9]]
                return (sum(v) - v[3] - v[4] - v[7]) / hz, v[7] / hz
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def task_seconds(pids) -> float:
    """utime + stime of these processes (all their threads) and kernel threads."""
    hz, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / hz


# -- the topology -------------------------------------------------------------------------------
class Topo:
    """gen ns: g0 10.201.0.1 | dir ns: d0 10.201.0.2, d1 10.202.1.1, d2 10.202.2.1 |
    rs1 ns: r1 10.202.1.2 | rs2 ns: r2 10.202.2.2. Names carry a per-process tag."""

    def __init__(self):
        t = f"fb{os.getpid() % 10000}"
        self.tag = t
        self.gen, self.dir, self.rs = f"{t}g", f"{t}d", [f"{t}r1", f"{t}r2"]
        self.g0, self.d0, self.dn, self.rn = f"{t}g0", f"{t}d0", [f"{t}d1", f"{t}d2"], [f"{t}r1", f"{t}r2"]
        self.g0_ip, self.d0_ip = "10.201.0.1", "10.201.0.2"
        self.dn_ip = ["10.202.1.1", "10.202.2.1"]
        self.rs_ip = ["10.202.1.2", "10.202.2.2"]
        self.made: list[str] = []
        self.mac: dict[str, str] = {}
        self.queues = 1                 # RX/TX queues of the generator <-> director veth pair

    def ns_all(self):
        return [self.gen, self.dir, *self.rs]

    def nsx(self, ns, *cmd, **kw):
        return run("ip", "netns", "exec", ns, *cmd, **kw)

    def build(self):
        for ns in self.ns_all():
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            for s in ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                      "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
                self.nsx(ns, "sysctl", "-qw", s)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        q = ("numtxqueues", "1", "numrxqueues", "1")     # one queue: the XSK sits on queue 0
        qin = ("numtxqueues", str(self.queues), "numrxqueues", str(self.queues))
        run("ip", "-n", self.gen, "link", "add", self.g0, *qin, "type", "veth", "peer", "name", self.d0,
            *qin, "netns", self.dir)
        for i in range(2):
            run("ip", "-n", self.dir, "link", "add", self.dn[i], *q, "type", "veth", "peer", "name",
                self.rn[i], *q, "netns", self.rs[i])
        links = [(self.gen, self.g0, self.g0_ip, 24), (self.dir, self.d0, self.d0_ip, 24)]
        links += [(self.dir, self.dn[i], self.dn_ip[i], 24) for i in range(2)]
        links += [(self.rs[i], self.rn[i], self.rs_ip[i], 24) for i in range(2)]
        for ns, dev, addr, plen in links:
            run("ip", "-n", ns, "addr", "add", f"{addr}/{plen}", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            self.mac[dev] = json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]["address"]
        # Frames of the generator arrive by ndo_xdp_xmit: the director's veth needs its NAPI,
        # which GRO keeps on even without an XDP program; NAPI threaded so it can be pinned.
        for dev in (self.d0, *self.dn):
            self.nsx(self.dir, "ethtool", "-K", dev, "gro", "on")
            self.nsx(self.dir, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded")
        for i in range(2):
            self.nsx(self.rs[i], "ethtool", "-K", self.rn[i], "gro", "on")
            run("ip", "-n", self.rs[i], "addr", "add", f"{VIP}/32", "dev", "lo")   # DR: RS holds the VIP
            run("ip", "-n", self.rs[i], "route", "add", "default", "via", self.dn_ip[i])
            run("ip", "-n", self.dir, "neigh", "replace", self.rs_ip[i], "lladdr", self.mac[self.rn[i]],
                "dev", self.dn[i], "nud", "permanent")
            run("ip", "-n", self.rs[i], "neigh", "replace", self.dn_ip[i], "lladdr",
                self.mac[self.dn[i]], "dev", self.rn[i], "nud", "permanent")
        run("ip", "-n", self.dir, "route", "add", f"{CLIENT_NET}/24", "via", self.g0_ip)
        run("ip", "-n", self.dir, "neigh", "replace", self.g0_ip, "lladdr", self.mac[self.g0],
            "dev", self.d0, "nud", "permanent")
        run("ip", "-n", self.gen, "addr", "add", f"{CLIENT_NET}/24", "dev", self.g0)
        return self

    def napi_threads(self) -> dict[int, str]:
        """pid -> name of the director veths' NAPI kthreads (`napi/IF-ID`)."""
        from fastlvs.system.napi import napi_threads
        out = {}
        for dev in (self.d0, *self.dn):
            out.update(napi_threads(dev))
        return out

    def pin_napi(self, nice: int | None, fifo: bool = False) -> list[str]:
        """Every director NAPI thread on DIR_CPU; nice=None leaves priorities to whoever set
        them (a `fastlvs --cpu` daemon); fifo puts d0's at SCHED_FIFO 50 instead."""
        done = []
        for pid, comm in self.napi_threads().items():
            run("taskset", "-p", "-c", DIR_CPU, pid, check=False)
            if fifo and comm.startswith(f"napi/{self.d0}-"):
                run("chrt", "-f", "-p", "50", pid, check=False)
            elif nice is not None:
                run("chrt", "-o", "-p", "0", pid, check=False)
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, pid, nice)
            with contextlib.suppress(OSError):
                comm += f" nice {os.getpriority(os.PRIO_PROCESS, pid)}"
            done.append(comm)
        return done

    def destroy(self):
        for ns in reversed(self.made):
            run("ip", "netns", "del", ns, check=False)
        self.made.clear()


# -- processes ----------------------------------------------------------------------------------
class Procs:
    """Every process the benchmark starts; stop() ends each by its own pid, bounded."""

    def __init__(self):
        self.live: list[subprocess.Popen] = []

    def start(self, cmd, cpu=None, **kw) -> subprocess.Popen:
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        p = subprocess.Popen([str(c) for c in cmd], **kw)
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout=5.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                with contextlib.suppress(OSError):
                    f.close()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p)


def wait_line(p: subprocess.Popen, stream, word: str, timeout=START_TIMEOUT) -> str:
    """Read lines of `stream` until one contains `word` (the text read so far is returned)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None and not select.select([stream], [], [], 0)[0]:
            break
        r, _, _ = select.select([stream], [], [], 0.2)
        if r:
            line = stream.readline()
            if not line:
                continue
            seen.append(line)
            if word in line:
                return "".join(seen)
    raise RuntimeError(f"{p.args}: no '{word}' within {timeout}s (rc {p.poll()}): {''.join(seen)[-2000:]}")


class Sink:
    """xdptool attach on one real server's veth; count() = IPv4 frames dropped so far."""

    def __init__(self, procs: Procs, ns, dev, bins):
        self.p = procs.start(["ip", "netns", "exec", ns, bins["xdptool"], "attach", dev, bins["sink"]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, bufsize=1)
        wait_line(self.p, self.p.stdout, "ready", 10)

    def count(self) -> int:
        self.p.stdin.write("c\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], 5)
        if not r:
            raise RuntimeError("sink did not answer")
        return int(self.p.stdout.readline())


# -- cases --------------------------------------------------------------------------------------
class Case:
    """One contender: setup(ctx) starts it (returns the processes to stop), teardown undoes the
    namespace state it changed. `path` groups cases by I/O path for the ratios."""

    def __init__(self, name, label, setup, path=None, dst=VIP, tuned=False, napi="harness"):
        self.name, self.label, self.setup, self.path, self.dst, self.tuned = name, label, setup, path, dst, tuned
        # who sets the NAPI threads' priority: "harness" (--napi-nice), "self" (fastlvs --cpu
        # does it; the harness only pins) or "default" (the kernel's nice 0)
        self.napi = napi


def _fwd_on(t: Topo):
    t.nsx(t.dir, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _vip_local(t: Topo):
    t.nsx(t.dir, "ip", "addr", "add", f"{VIP}/32", "dev", t.d0)


def setup_kernel(ctx):
    t = ctx.topo
    _fwd_on(t)
    t.nsx(t.dir, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
    t.nsx(t.dir, "ip", "route", "add", f"{VIP}/32", "nexthop", "via", t.rs_ip[0], "dev", t.dn[0],
          "nexthop", "via", t.rs_ip[1], "dev", t.dn[1])
    return []


def setup_nft(ctx):
    t = ctx.topo
    _fwd_on(t)
    _vip_local(t)
    rules = (f"table ip {t.tag} {{ chain pre {{ type nat hook prerouting priority dstnat; "
             f"ip daddr {VIP} udp dport {VPORT} dnat to numgen inc mod 2 map "
             f"{{ 0 : {t.rs_ip[0]}, 1 : {t.rs_ip[1]} }}\n}}\n}}\n")
    t.nsx(t.dir, "nft", "-f", "-", input=rules)
    return []


def _dr_cfg(t: Topo) -> str:
    return struct.pack("<IHH6s6s6s6s", ip2int(VIP), VPORT, 2,
                       *(mac2bytes(t.mac[r]) for r in t.rn), *(mac2bytes(t.mac[d]) for d in t.dn)).hex()


def _fwd_cfg(t: Topo) -> str:
    return (bytes.fromhex(_dr_cfg(t))
            + struct.pack("<III", *(ip2int(ip) for ip in t.rs_ip), ip2int(t.d0_ip))).hex()


def xdp_setup(prog: str):
    """A stateless in-kernel XDP forwarder (benchmarks/peers/PROG.bpf.c) on the ingress veth."""
    def setup(ctx):
        t = ctx.topo
        cfg = _dr_cfg(t) if prog == "xdp_dr" else _fwd_cfg(t)
        p = ctx.procs.start(["ip", "netns", "exec", t.dir, ctx.bins["xdptool"], "attach", t.d0,
                             ctx.bins[prog], cfg, *t.dn],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, bufsize=1)
        wait_line(p, p.stdout, "ready", 10)
        return [p]
    return setup


setup_xdp_dr = xdp_setup("xdp_dr")


def _tune_busy_poll(t: Topo, on: bool):
    """napi_defer_hard_irqs / gro_flush_timeout on the ingress veth: with SO_PREFER_BUSY_POLL the
    application's polls, not the softirq, drive its NAPI."""
    defer, flush = ("2", "200000") if on else ("0", "0")
    t.nsx(t.dir, "sh", "-c", f"echo {defer} > /sys/class/net/{t.d0}/napi_defer_hard_irqs; "
                             f"echo {flush} > /sys/class/net/{t.d0}/gro_flush_timeout")


def _fwd_args(t: Topo):
    return [t.d0, *t.dn, *(t.mac[r] for r in t.rn)]


def bare_xsk_setup(busy_poll: bool):
    def setup(ctx):
        t = ctx.topo
        _tune_busy_poll(t, busy_poll)
        extra = [] if busy_poll else ["--no-busy-poll"]
        p = ctx.procs.start(["ip", "netns", "exec", t.dir, ctx.bins["fwd_xsk"], *_fwd_args(t), *extra],
                            cpu=DIR_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_line(p, p.stderr, "ready", 10)
        return [p]
    return setup


def setup_bare_packet(ctx):
    t = ctx.topo
    _packet_drop(t)
    p = ctx.procs.start(["ip", "netns", "exec", t.dir, ctx.bins["fwd_packet"], *_fwd_args(t)],
                        cpu=DIR_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_line(p, p.stderr, "ready", 10)
    return [p]


def _packet_drop(t: Topo):
    """What fastlvs's AF_PACKET backend installs: a netdev-ingress drop of the service's frames,
    so the kernel does not also handle what the ring forwards."""
    t.nsx(t.dir, "nft", "-f", "-", input=f"table netdev {t.tag}b {{ chain in {{ type filter hook ingress "
                                            f"device {t.d0} priority 0; ip daddr {VIP} udp dport {VPORT} drop\n}}\n}}\n")


def fastlvs_setup(mode, backend=None, busy_poll=False, cpu=True, offload="off"):
    def setup(ctx):
        t = ctx.topo
        _vip_local(t)
        if busy_poll:
            _tune_busy_poll(t, True)
        sock = os.path.join(ctx.tmp, f"fastlvs-{mode}.sock")
        cmd = ["ip", "netns", "exec", t.dir, PY, "-m", "fastlvs", "--mode", mode, "-i", t.d0,
               "--vip", f"udp:{VIP}:{VPORT}", *(x for ip in t.rs_ip for x in ("--rs", f"{ip}:{VPORT}")),
               "--socket", sock]
        if backend:
            cmd += ["--backend", backend]
        # the director's veths are veths: --offload auto leaves it off there, so say it
        cmd += ["--offload", offload]
        if busy_poll:
            cmd += ["--busy-poll"]
        if cpu:
            cmd += ["--cpu", str(DIR_CPU)]
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
        p = ctx.procs.start(cmd, cpu=DIR_CPU, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
        wait_line(p, p.stderr, "ready", START_TIMEOUT)
        ctx.admin = [PY, "-m", "fastlvs", "admin", "--socket", sock, "-Ln", "--stats"]
        return [p]
    return setup


CASES = [
    Case("fastlvs_dr_xdp", "fastlvs DR\nAF_XDP", fastlvs_setup("dr", "xdp"), path="xdp", napi="self"),
    Case("fastlvs_dr_xdp_nocpu", "fastlvs DR AF_XDP\nwithout --cpu", fastlvs_setup("dr", "xdp", cpu=False),
         napi="default"),
    Case("fastlvs_dr_xdp_bp", "fastlvs DR\nAF_XDP busy-poll", fastlvs_setup("dr", "xdp", True),
         path="xdp", tuned=True, napi="self"),
    Case("fastlvs_dr_packet", "fastlvs DR\nAF_PACKET", fastlvs_setup("dr", "packet"), path="packet",
         napi="self"),
    Case("fastlvs_nat", "fastlvs NAT\nAF_XDP", fastlvs_setup("nat"), napi="self"),
    Case("fastlvs_tun", "fastlvs TUN\nAF_XDP", fastlvs_setup("tun"), napi="self"),
    # busy polling with its NAPI thread at nice 19 collapsed (0.04 Mpps): this loop never
    # sleeps, so the thread that owns the NAPI hardly runs; it keeps the kernel's nice 0
    Case("bare_xsk", "bare C AF_XDP\nbusy-poll, NAPI nice 0", bare_xsk_setup(True), path="xdp", tuned=True,
         napi="default"),
    Case("bare_xsk_nobp", "bare C\nAF_XDP", bare_xsk_setup(False), path="xdp"),
    Case("bare_packet", "bare C\nAF_PACKET", setup_bare_packet, path="packet"),
    Case("nft_dnat", "nftables\nDNAT", setup_nft),
    Case("kernel_fwd", "kernel\nforwarding", setup_kernel),
    Case("xdp_dr", "XDP DR\nin kernel", setup_xdp_dr),
    # the XDP offload: established flows forwarded by fastlvs's own XDP program (a UDP DR/TUN
    # flow after its first datagram; a NAT one only once a reply came, which never happens
    # here: the sinks answer nothing). The forwarding runs in the ingress NAPI, as the XDP
    # peers' does, so its NAPI gets the harness's priority (--napi-nice), like theirs.
    Case("fastlvs_dr_offload", "fastlvs DR\nXDP offload",
         fastlvs_setup("dr", "xdp", cpu=False, offload="on")),
    Case("fastlvs_nat_offload", "fastlvs NAT\nXDP offload",
         fastlvs_setup("nat", "xdp", cpu=False, offload="on")),
    Case("fastlvs_tun_offload", "fastlvs TUN\nXDP offload",
         fastlvs_setup("tun", "xdp", cpu=False, offload="on")),
    Case("xdp_nat", "XDP NAT\nin kernel", xdp_setup("xdp_nat")),
    Case("xdp_tun", "XDP TUN\nin kernel", xdp_setup("xdp_tun")),
]


class Ctx:
    def __init__(self, topo, procs, bins, tmp):
        self.topo, self.procs, self.bins, self.tmp = topo, procs, bins, tmp
        self.admin = None
        self.sinks = []
        self.own_pids: list[int] = []     # the director's processes and NAPI threads


def reset_dir(t: Topo):
    """Undo every case's changes to the director namespace."""
    t.nsx(t.dir, "nft", "flush", "ruleset", check=False)
    t.nsx(t.dir, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    t.nsx(t.dir, "ip", "route", "del", f"{VIP}/32", check=False)
    t.nsx(t.dir, "ip", "addr", "del", f"{VIP}/32", "dev", t.d0, check=False)
    t.nsx(t.dir, "conntrack", "-F", check=False) if shutil.which("conntrack") else None
    _tune_busy_poll(t, False)
    for dev in (t.d0, *t.dn):       # nothing may stay attached between cases
        t.nsx(t.dir, "ip", "link", "set", "dev", dev, "xdp", "off", check=False)


def gen_cfg(t: Topo, rate_mpps: float) -> str:
    interval = int(1000 / rate_mpps) if rate_mpps > 0 else 0
    return struct.pack("<QIIIH6s6s6x", interval, ip2int(CLIENT_NET), ip2int(VIP), FLOWS, VPORT,
                       mac2bytes(t.mac[t.d0]), mac2bytes(t.mac[t.g0])).hex()


def one_run(ctx: Ctx, rate_mpps: float, warmup: float, seconds: float) -> dict:
    """The generator at `rate_mpps` (0: as fast as it goes) for warmup + seconds; delivered pps
    at the sinks and CPU1's busy time per delivered packet over the measured window."""
    t = ctx.topo
    total = warmup + seconds + 0.3
    g = ctx.procs.start(["ip", "netns", "exec", t.gen, ctx.bins["xdptool"], "gen", t.g0, ctx.bins["gen"],
                         gen_cfg(t, rate_mpps), f"{total:.2f}"],
                        cpu=GEN_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(warmup)
        c0, (b0, s0), o0, w0 = (sum(s.count() for s in ctx.sinks), cpu_times(DIR_CPU),
                                task_seconds(ctx.own_pids), time.monotonic())
        time.sleep(seconds)
        c1, (b1, s1), o1, w1 = (sum(s.count() for s in ctx.sinks), cpu_times(DIR_CPU),
                                task_seconds(ctx.own_pids), time.monotonic())
        out, err = g.communicate(timeout=total + 10)
    finally:
        ctx.procs.stop(g)
    try:
        gen = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"generator: {err.strip()}") from None
    pkts, secs = c1 - c0, w1 - w0
    return {"pps": pkts / secs, "us_per_packet": (b1 - b0) / pkts * 1e6 if pkts else None,
            "own_us_per_packet": (o1 - o0) / pkts * 1e6 if pkts else None,
            "director_cpu": (b1 - b0) / secs, "steal": (s1 - s0) / secs, "rate_pps": rate_mpps * 1e6,
            "offered_pps": gen["sent"] / gen["seconds"], "seconds": secs}


def lossless(ctx: Ctx, sat_pps: float, args) -> tuple[dict | None, list]:
    """The highest paced rate delivered with at most LOSS loss, by bisection between 0 and 2.5x
    the saturated rate (an overloaded director wastes work on frames it then drops, so the rate
    it sustains is higher than what it delivers under a flood)."""
    lo, hi = 0.0, max(2.5 * sat_pps, 0.1e6)
    rate, best, probes = max(sat_pps, 0.05e6), None, []
    for _ in range(args.steps):
        r = one_run(ctx, rate / 1e6, args.probe_warmup, args.probe)
        ok = r["pps"] >= (1 - LOSS) * rate
        probes.append({"rate_pps": rate, "pps": r["pps"], "ok": ok})
        if ok:
            lo, best = rate, r
        else:
            hi = rate
        rate = (lo + hi) / 2
    return best, probes


LOSS = 0.05


class OutOfTime(BaseException):
    """Raised by SIGALRM/SIGTERM: not an Exception, so no case's error handler swallows it."""


def run_rep(ctx: Ctx, case: Case, res: dict, rep: int, args) -> None:
    """One repetition of one case: start it, a flood run, the lossless search, stop it."""
    t = ctx.topo
    reset_dir(t)
    started = []
    try:
        started = case.setup(ctx)
        time.sleep(0.3)
        nice = {"harness": args.napi_nice, "self": None, "default": 0}[case.napi]
        res["napi"] = t.pin_napi(nice, fifo=case.tuned and args.napi_fifo)
        ctx.own_pids = [p.pid for p in started] + list(t.napi_threads())
        sat = one_run(ctx, args.rate, args.warmup, args.seconds)
        best, probes = lossless(ctx, sat["pps"], args) if args.steps else (None, [])
        if ctx.admin:
            st = t.nsx(t.dir, *ctx.admin, check=False, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
            res["admin_stats"] = st.stdout[-2000:]
            cn = t.nsx(t.dir, *ctx.admin[:-2], "--counters", check=False, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
            with contextlib.suppress(ValueError, KeyError):
                c = json.loads(cn.stdout)
                # how the director's frames went: to the socket (the engine) or the offload
                res["admin_counters"] = {"offload": c.get("offload"), "ports": {
                    k: {f: v.get(f) for f in ("rx", "redirected", "offloaded", "passed")}
                    for k, v in c["ports"].items()}}
        for p in started:
            if p.poll() is not None:
                raise RuntimeError(f"{case.name}: process exited early: {p.args}")
        res["runs"].append({"saturated": sat, "lossless": best, "probes": probes})
        ll = (f"{best['pps'] / 1e6:.3f} Mpps at <= {LOSS:.0%} loss ({best['us_per_packet']:.2f} µs/packet), "
              if best else "")
        log(f"{case.name} #{rep + 1}: {sat['pps'] / 1e6:.3f} Mpps delivered of {sat['offered_pps'] / 1e6:.2f} "
            f"Mpps offered ({sat['us_per_packet'] or 0:.2f} µs/packet); {ll}")
    except Exception as e:         # one failed case must not lose the others
        res.setdefault("errors", []).append(str(e)[-1500:])
        log(f"{case.name} #{rep + 1}: FAILED: {str(e)[-800:]}")
    finally:
        for p in started:
            ctx.procs.stop(p)
        ctx.admin = None
        ctx.own_pids = []
        reset_dir(t)


def summarize(res: dict) -> dict:
    for kind in ("saturated", "lossless"):
        runs = [r[kind] for r in res["runs"] if r[kind]]
        if runs:
            pps = [r["pps"] for r in runs]
            us = [r["us_per_packet"] for r in runs if r["us_per_packet"]]
            own = [r["own_us_per_packet"] for r in runs if r.get("own_us_per_packet")]
            res[kind] = {"median_pps": statistics.median(pps), "min_pps": min(pps), "max_pps": max(pps),
                         "median_us_per_packet": statistics.median(us) if us else None,
                         "median_own_us_per_packet": statistics.median(own) if own else None,
                         "max_steal": max((r.get("steal") or 0 for r in runs), default=0)}
    return res


# -- the in-memory engine numbers ---------------------------------------------------------------
def engine_numbers(tmp: str, timeout: int) -> dict:
    out = os.path.join(tmp, "engine.json")
    r = run(PY, "-m", "pytest", os.path.join(HERE, "test_engine_bench.py"), "-q", "--benchmark-only",
            f"--benchmark-json={out}", "-p", "no:cacheprovider", check=False, timeout=timeout,
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    if not os.path.exists(out):
        return {"error": (r.stdout + r.stderr)[-1500:]}
    data = json.load(open(out))
    rows = {}
    for b in data["benchmarks"]:
        frames = b.get("extra_info", {}).get("frames")
        row = {"median_s": b["stats"]["median"], "extra": b.get("extra_info", {})}
        if frames:
            row["ns_per_packet"] = b["stats"]["median"] / frames * 1e9
            row["mpps"] = frames / b["stats"]["median"] / 1e6
        rows[b["name"]] = row
    return rows


# -- report -------------------------------------------------------------------------------------
PAIRS = [("fastlvs_dr_xdp", "bare_xsk_nobp", 0.90), ("fastlvs_dr_xdp_bp", "bare_xsk", 0.90),
         ("fastlvs_dr_packet", "bare_packet", 0.90), ("fastlvs_dr_xdp", "nft_dnat", 1.00),
         ("fastlvs_dr_xdp_bp", "nft_dnat", 1.00), ("bare_xsk", "nft_dnat", None),
         ("bare_xsk_nobp", "nft_dnat", None), ("fastlvs_dr_xdp", "fastlvs_dr_xdp_nocpu", None),
         ("fastlvs_dr_offload", "xdp_dr", 0.80), ("fastlvs_dr_offload", "nft_dnat", 4.00),
         ("fastlvs_nat_offload", "xdp_nat", 0.80), ("fastlvs_tun_offload", "xdp_tun", 0.80),
         ("fastlvs_dr_offload", "fastlvs_dr_xdp", None)]


def ratios(results: dict) -> dict:
    """The targets' ratios of medians, for the lossless rate and under a flood; and "paired",
    the median over repetitions of run i of a / run i of b (the two ran a few seconds apart,
    so a slow spell of the machine weighs less)."""
    out = {}
    for kind in ("saturated", "lossless"):
        by = {c["name"]: c[kind]["median_pps"] for c in results["cases"] if c.get(kind)}
        if not by:
            continue
        for a, b, goal in PAIRS:
            key = f"{kind}: {a} / {b}" + (f" (goal >= {goal:.2f})" if goal else "")
            out[key] = by[a] / by[b] if a in by and b in by else None
    runs = {c["name"]: [r["saturated"]["pps"] for r in c["runs"]] for c in results["cases"]}
    for a, b, goal in PAIRS:
        pairs = list(zip(runs.get(a, []), runs.get(b, [])))
        key = f"paired saturated: {a} / {b}" + (f" (goal >= {goal:.2f})" if goal else "")
        out[key] = statistics.median(x / y for x, y in pairs) if pairs else None
    return out


def merge(results: dict, others: list[dict]) -> None:
    """Pool the runs of `others` (earlier peers.json of the same cases) into `results`: each
    case's runs are appended file by file, so that the paired ratios still divide runs that
    ran side by side, and its medians are recomputed over all of them."""
    by = {c["name"]: c for c in results["cases"]}
    for o in others:
        if {c["name"] for c in o["cases"]} != set(by):
            raise KeyError(f"the merged runs must have the same cases (from {o.get('date')})")
        for c in o["cases"]:
            by[c["name"]]["runs"].extend(c["runs"])
        results.setdefault("merged_from", []).append(o.get("date"))
        results["reps"] += o["reps"]
    for c in results["cases"]:
        summarize(c)


def chart(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in results["cases"] if c.get("lossless") or c.get("saturated")]
    fig, ax = plt.subplots(figsize=(13, 6))
    kinds = [k for k in (("saturated", 1.0, None), ("lossless", 0.45, "//"))
             if any(c.get(k[0]) for c in cases)]
    w = 0.8 / len(kinds)
    for k, (kind, alpha, hatch) in enumerate(kinds):
        xs, med, lo, hi, colors, notes = [], [], [], [], [], []
        for i, c in enumerate(cases):
            st = c.get(kind)
            if not st:
                continue
            m = st["median_pps"] / 1e6
            xs.append(i + (k - (len(kinds) - 1) / 2) * w)
            med.append(m)
            lo.append(m - st["min_pps"] / 1e6)
            hi.append(st["max_pps"] / 1e6 - m)
            colors.append("#1f77b4" if c["name"].startswith("fastlvs") else
                          "#7f7f7f" if c["name"].startswith("bare") else "#d62728")
            us = st.get("median_us_per_packet")
            notes.append(f"{m:.2f}" + (f"\n{us:.2f}µs" if us else ""))
        bars = ax.bar(xs, med, w, yerr=[lo, hi], capsize=3, color=colors, alpha=alpha, hatch=hatch,
                      label=(f"highest paced rate with <= {LOSS:.0%} loss" if kind == "lossless"
                             else "delivered under a ~9 Mpps flood"))
        for bar, note, top in zip(bars, notes, hi):
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height() + top), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(cases)), [c["label"] for c in cases], fontsize=8)
    offered = (f"at {results['rate_mpps']} Mpps offered" if results.get("rate_mpps")
               else "under a flood")
    ax.set_ylabel(f"delivered Mpps {offered} (median; bars: min-max)")
    ax.set_title(f"60-byte UDP, {FLOWS:,} flows, veth, director on one core (CPU{DIR_CPU}); "
                 f"{results['reps']} runs per case; fastlvs with --cpu {DIR_CPU} unless marked;\n"
                 f"labels: Mpps and director CPU µs/packet "
                 f"({', '.join([results['date'], *results.get('merged_from', [])])}, "
                 f"kernel {results['kernel']})", fontsize=9)
    from matplotlib.patches import Patch
    handles = [Patch(color="#1f77b4", label="fastlvs"), Patch(color="#7f7f7f", label="bare C forwarder"),
               Patch(color="#d62728", label="kernel peers")]
    handles += [Patch(facecolor="white", edgecolor="black", hatch=h, alpha=a,
                      label=("delivered (main run)" if k == "saturated" else
                             f"highest paced rate with <= {LOSS:.0%} loss"))
                for k, a, h in kinds if len(kinds) > 1]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: dict) -> str:
    lines = [f"{'case':20} {'flood Mpps med/min/max':>27} {'µs/pkt CPU1/own':>15}   "
             f"{'lossless Mpps med/min/max':>24} {'µs/pkt CPU1/own':>15}"]
    for c in results["cases"]:
        cells = []
        for kind in ("saturated", "lossless"):
            st = c.get(kind)
            cells.append(f"{st['median_pps'] / 1e6:7.3f} {st['min_pps'] / 1e6:7.3f} {st['max_pps'] / 1e6:7.3f}"
                         f"   {st['median_us_per_packet'] or 0:7.2f}/{st.get('median_own_us_per_packet') or 0:5.2f}"
                         if st else f"{'-':>37}")
        steal = (c.get("saturated") or {}).get("max_steal") or 0
        lines.append(f"{c['name']:20} {cells[0]}      {cells[1]}"
                     + (f"   (CPU1 stolen by the host: up to {steal:.0%})" if steal >= 0.01 else ""))
        for e in c.get("errors", [])[:1]:
            lines.append(f"{'':20} error: {e[:150]}")
    for k, v in results["ratios"].items():
        lines.append(f"{k}: {v:.2f}" if v is not None else f"{k}: n/a")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7, help="runs per case (default 7)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (default 3)")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds of traffic before measuring")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered Mpps of the main run, paced inside the generator (default 0: a flood)")
    ap.add_argument("--steps", type=int, default=0,
                    help="bisection steps of a lossless-rate search per run (default 0: flood only; "
                         "on a shared machine one noisy probe sinks the search, see README-peers.md)")
    ap.add_argument("--probe", type=float, default=1.0, help="measured seconds per search probe")
    ap.add_argument("--probe-warmup", type=float, default=0.5, help="seconds before each probe")
    ap.add_argument("--napi-nice", type=int, default=19,
                    help="nice of the director's NAPI threads for the non-fastlvs cases (default 19, "
                         "what `fastlvs --cpu` sets; 0 is the kernel's default)")
    ap.add_argument("--napi-fifo", action="store_true",
                    help="SCHED_FIFO for the ingress NAPI thread in the tuned cases (hurts here)")
    ap.add_argument("--cases", help="comma-separated subset of: " + ",".join(c.name for c in CASES))
    ap.add_argument("--no-engine", action="store_true", help="skip the in-memory engine benchmark")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="directory of peers.json/png")
    ap.add_argument("--max-minutes", type=float, default=30.0,
                    help="stop (and tear down) after this long, whatever is left (default 30)")
    ap.add_argument("--replot", action="store_true",
                    help="no run: recompute the ratios, table and chart from OUT/peers.json")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="with --replot: first add these earlier peers.json files' runs to OUT/peers.json's "
                         "(pooled medians over all of them; run i of a file still pairs with run i of the same file)")
    args = ap.parse_args(argv)
    if args.merge and not args.replot:
        ap.error("--merge goes with --replot")
    if args.replot:
        path = os.path.join(args.out, "peers.json")
        try:
            results = json.load(open(path))
            if args.merge:
                merge(results, [json.load(open(m)) for m in args.merge])
        except (OSError, ValueError, KeyError) as e:
            log(f"--replot: {e}")
            return 2
        results["ratios"] = ratios(results)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        chart(results, os.path.join(args.out, "peers.png"))
        print(table(results))
        return 0
    if os.geteuid() != 0:
        log("needs root (namespaces, XDP)")
        return 2
    cases = CASES
    if args.cases:
        want = args.cases.split(",")
        unknown = set(want) - {c.name for c in CASES}
        if unknown:
            ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in want]
    os.makedirs(args.out, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "kernel": os.uname().release,
               "reps": args.reps, "seconds": args.seconds, "warmup": args.warmup, "flows": FLOWS,
               "frame_bytes": 60, "loss": LOSS, "steps": args.steps, "napi_nice": args.napi_nice, "rate_mpps": args.rate, "cpus": os.cpu_count(),
               "director_cpu": DIR_CPU, "generator_cpu": GEN_CPU, "cases": []}
    topo, procs = Topo(), Procs()
    tmp = tempfile.mkdtemp(prefix="fastlvs-peers-")

    def out_of_time(signum, frame):
        raise OutOfTime(f"stopped: --max-minutes {args.max_minutes} reached or SIGTERM")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.signal(signal.SIGTERM, out_of_time)      # a killed run still removes what it made
    signal.alarm(max(1, int(args.max_minutes * 60)))
    try:
        log(f"building the C peers in {tmp}")
        bins = build(tmp)
        topo.build()
        ctx = Ctx(topo, procs, bins, tmp)
        ctx.sinks = [Sink(procs, topo.rs[i], topo.rn[i], bins) for i in range(2)]
        # Repetitions round-robin over the cases, so that a slow spell of the (shared) machine
        # hits every case rather than all runs of one; each round starts one case later, as
        # the host throttles this VM (steal) right after the heaviest case, and that must not
        # always fall on the same case.
        res = {c.name: {"name": c.name, "label": c.label, "path": c.path, "runs": []} for c in cases}
        for rep in range(args.reps):
            k = rep % len(cases)
            for case in cases[k:] + cases[:k]:
                run_rep(ctx, case, res[case.name], rep, args)
        results["cases"] = [summarize(res[c.name]) for c in cases]
    except OutOfTime as e:
        log(f"{e}; everything made was removed, no results written")
        shutil.rmtree(tmp, ignore_errors=True)
        return 3
    finally:
        signal.alarm(0)
        procs.stop_all()
        topo.destroy()
    if not args.no_engine:
        log("in-memory engine benchmark (benchmarks/test_engine_bench.py)")
        results["engine"] = engine_numbers(tmp, timeout=900)
    shutil.rmtree(tmp, ignore_errors=True)
    results["ratios"] = ratios(results)
    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump(results, f, indent=1)
    try:
        chart(results, os.path.join(args.out, "peers.png"))
    except ImportError:
        log("matplotlib missing: no chart (pip install '.[bench]')")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
