"""Scale-out in network namespaces (root only), for `make demo-cluster`, the BGP end-to-end
tests and benchmarks/bgp_withdraw.py: a router running BIRD 2 with ECMP (kernel multipath,
L4 hash), three directors each running fastlvs + its own BIRD (announcing the VIPs it serves
over BGP with BFD), real servers (DR or TUN) and a client with many source addresses. Every
name is unique and `Cluster.destroy()` removes exactly what was made. Nothing is addressed
outside 10.205/16.

    client 10.205.1.2 + .100.. --br1-- router 10.205.1.1 | 10.205.0.1 --br0-- directors .11..
    VIP 10.205.9.100: BGP routes from each director, merged into one ECMP route  --br0-- rs .21..
"""
from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fastlvs.lab.testbed import (Daemon, _env, _seq, in_ns, parse_stats, run, sysctl, teardown,
                                 tx_checksum_off)

FRONT = "10.205.0"
CLIENTS = "10.205.1"
ROUTER_IP, ROUTER_CLIENT_IP, CLIENT_IP = f"{FRONT}.1", f"{CLIENTS}.1", f"{CLIENTS}.2"
VIP = "10.205.9.100"
HTTP_PORT = 80
ROUTER_AS, DIRECTOR_AS = 65000, 65001
FWD_FLAG = {"dr": "-g", "tun": "-i"}

ROUTER_CONF = """\
router id {router_ip};
protocol device {{ scan time 10; }}
protocol kernel {{
    ipv4 {{ import none; export where source = RTS_BGP; }};
    merge paths on;
}}
protocol bfd {{
    interface "*" {{ min rx interval {bfd_ms} ms; min tx interval {bfd_ms} ms; multiplier 3; }};
}}
template bgp director {{
    local {router_ip} as {router_as};
    hold time {hold}; keepalive time 1; connect retry time 1;
    bfd {bfd};
    ipv4 {{ import where net.len = 32; export none; }};
}}
{neighbors}
"""

DIRECTOR_CONF = """\
router id {ip};
protocol device {{ scan time 10; }}
protocol static fastlvs_vips {{
    ipv4;
    include "{include}";
}}
protocol bfd {{
    interface "*" {{ min rx interval {bfd_ms} ms; min tx interval {bfd_ms} ms; multiplier 3; }};
}}
protocol bgp uplink {{
    local {ip} as {director_as};
    neighbor {router_ip} as {router_as};
    hold time {hold}; keepalive time 1; connect retry time 1;
    bfd {bfd};
    ipv4 {{ import none; export where proto = "fastlvs_vips"; next hop self; }};
}}
"""


class Cluster:
    """Routers, directors, real servers and a client in namespaces. `build()` makes the
    network, starts the real servers and every BIRD (no fastlvs yet); `start_director(i)`
    runs fastlvs on director i; `destroy()` stops everything and removes every namespace
    (safe after a partial build). `mode` "dr" or "tun" (TUN needs `decap_src`, the real
    servers' XDP decapsulator); `sched` and `flags` make the service VIP:80. `sync`: each
    director runs the IPVS sync daemon as master and as backup on its LAN (one multicast
    group: every director installs every other's connections)."""

    def __init__(self, n_directors: int = 3, n_rs: int = 3, mode: str = "dr",
                 sched: str = "mh", flags: str = "", clients: int = 64,
                 decap_src: str | None = None, bfd: bool = True, hold: int = 3,
                 sync: bool = False, prefix: str = "fc"):
        if mode not in FWD_FLAG:
            raise ValueError("mode must be dr or tun")
        if mode == "tun" and not decap_src:
            raise ValueError("TUN mode needs decap_src (the real servers' XDP decapsulator)")
        self.mode, self.sched, self.flags = mode, sched, flags
        self.decap_src, self.bfd, self.hold = decap_src, bfd, hold
        self.sync = sync            # full-mesh connection sync: every director master + backup
        tag = f"{prefix}{os.getpid() % 100000}x{next(_seq)}"
        self.tag = tag
        self.switch, self.router, self.client = f"{tag}sw", f"{tag}rt", f"{tag}c"
        self.directors = [f"{tag}d{i + 1}" for i in range(n_directors)]
        self.director_ips = [f"{FRONT}.{11 + i}" for i in range(n_directors)]
        self.rs = [f"{tag}r{i + 1}" for i in range(n_rs)]
        self.rs_names = [f"rs{i + 1}" for i in range(n_rs)]
        self.rips = [f"{FRONT}.{21 + i}" for i in range(n_rs)]
        self.client_ips = [f"{CLIENTS}.{100 + i}" for i in range(clients)]
        self.vip = VIP
        self.tmp = tempfile.mkdtemp(prefix=f"{tag}-")
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.birds: dict[str, str] = {}              # namespace -> its BIRD's pid file
        self.daemons: list[Daemon] = []
        self.fastlvs: dict[int, Daemon] = {}         # director index -> its running fastlvs
        self.servers: dict[int, subprocess.Popen] = {}   # real server index -> its process

    # -- building -------------------------------------------------------------------------------
    def build(self) -> "Cluster":
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __enter__(self):
        return self.build()

    def __exit__(self, *exc):
        self.destroy()

    def _veth(self, sw_name, ns, dev, bridge):
        run("ip", "-n", self.switch, "link", "add", sw_name, "type", "veth", "peer", "name",
            dev, "netns", ns)
        run("ip", "-n", self.switch, "link", "set", "dev", sw_name, "master", bridge, "up")

    def _addr(self, ns, dev, *cidrs):
        for cidr in cidrs:
            run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        run("ip", "-n", ns, "link", "set", "dev", dev, "up")

    def _build(self):
        for ns in (self.switch, self.router, self.client, *self.directors, *self.rs):
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            sysctl(ns, ipv6__conf__all__disable_ipv6=1, ipv6__conf__default__disable_ipv6=1,
                   ipv4__conf__all__rp_filter=0, ipv4__conf__default__rp_filter=0)
            run("ip", "-n", ns, "link", "set", "dev", "lo", "up")
        for br in ("br0", "br1"):
            run("ip", "-n", self.switch, "link", "add", br, "type", "bridge",
                "forward_delay", "0", "stp_state", "0")
            run("ip", "-n", self.switch, "link", "set", "dev", br, "up")
        # the router: ECMP over the directors, flows hashed on their L4 5-tuple
        self._veth("prf", self.router, "front", "br0")
        self._veth("prc", self.router, "cli", "br1")
        self._addr(self.router, "front", f"{ROUTER_IP}/24")
        self._addr(self.router, "cli", f"{ROUTER_CLIENT_IP}/24")
        sysctl(self.router, ipv4__ip_forward=1, ipv4__fib_multipath_hash_policy=1)
        # the client: many source addresses, so ECMP has flows to spread
        self._veth("pc", self.client, "eth0", "br1")
        self._addr(self.client, "eth0", f"{CLIENT_IP}/24",
                   *[f"{ip}/24" for ip in self.client_ips])
        run("ip", "-n", self.client, "route", "add", "default", "via", ROUTER_CLIENT_IP)
        tx_checksum_off(self.client, "eth0")
        for i, (ns, ip) in enumerate(zip(self.directors, self.director_ips)):
            self._veth(f"pd{i + 1}", ns, "lan0", "br0")
            self._addr(ns, "lan0", f"{ip}/24")
            # the VIP is the director's (fastlvs serves what is local), routed to it by BGP
            run("ip", "-n", ns, "addr", "add", f"{self.vip}/32", "dev", "lo")
            sysctl(ns, ipv4__ip_forward=0)
            run("ip", "-n", ns, "route", "add", "default", "via", ROUTER_IP)
        for i, (ns, rip) in enumerate(zip(self.rs, self.rips)):
            self._veth(f"pr{i + 1}", ns, "eth0", "br0")
            self._addr(ns, "eth0", f"{rip}/24")
            tx_checksum_off(ns, "eth0")
            # LVS-DR/TUN real server: the VIP on lo, never answered by ARP; replies go to the
            # client straight through the router
            run("ip", "-n", ns, "addr", "add", f"{self.vip}/32", "dev", "lo")
            sysctl(ns, ipv4__conf__all__arp_ignore=1, ipv4__conf__all__arp_announce=2,
                   ipv4__conf__eth0__arp_ignore=1, ipv4__conf__eth0__arp_announce=2)
            run("ip", "-n", ns, "route", "add", "default", "via", ROUTER_IP)
            if self.mode == "tun":
                obj = self._decap_obj(rip)
                run("ip", "-n", ns, "link", "set", "dev", "eth0", "xdpgeneric", "obj", obj,
                    "sec", "xdp")
            self._start_server(ns, self.rs_names[i], [rip, self.vip])
        self._start_birds()

    def _decap_obj(self, rip: str) -> str:
        clang = shutil.which("clang")
        if clang is None:
            raise RuntimeError("clang not found: the TUN real servers' decapsulator needs it")
        obj = os.path.join(self.tmp, f"decap-{rip}.o")
        be = int.from_bytes(socket.inet_aton(rip), "little")
        arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
        run(clang, "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc,
            f"-DFL_RS_ADDR={be:#010x}", "-c", self.decap_src, "-o", obj)
        return obj

    def stop_server(self, i: int) -> None:
        """SIGKILL real server i's HTTP process (its port closes: health checks fail)."""
        p = self.servers.pop(i)
        p.kill()
        p.wait(5)

    def start_server(self, i: int) -> None:
        self._start_server(self.rs[i], self.rs_names[i], [self.rips[i], self.vip])

    def _start_server(self, ns, name, addrs):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "fastlvs.lab.testbed", "serve",
               name, *addrs]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env())
        self.procs.append(p)
        self.servers[self.rs.index(ns)] = p
        line = p.stdout.readline()
        if "serving" not in line:
            p.kill()
            raise RuntimeError(f"server {name} did not start: {line!r}")

    def _bird_files(self, ns):
        return (os.path.join(self.tmp, f"{ns}.conf"), os.path.join(self.tmp, f"{ns}.ctl"),
                os.path.join(self.tmp, f"{ns}.pid"))

    def include_of(self, i: int) -> str:
        return os.path.join(self.tmp, f"{self.directors[i]}-vips.conf")

    def bird_socket(self, i: int) -> str:
        return self._bird_files(self.directors[i])[1]

    def _bird(self, ns, text):
        conf, ctl, pid = self._bird_files(ns)
        with open(conf, "w") as f:
            f.write(text)
        run("ip", "netns", "exec", ns, "bird", "-c", conf, "-s", ctl, "-P", pid)
        self.birds[ns] = pid

    def _start_birds(self):
        common = dict(router_ip=ROUTER_IP, router_as=ROUTER_AS, director_as=DIRECTOR_AS,
                      hold=self.hold, bfd="on" if self.bfd else "off", bfd_ms=100)
        neighbors = "\n".join(f"protocol bgp d{i + 1} from director {{ neighbor {ip} as "
                              f"{DIRECTOR_AS}; }}" for i, ip in enumerate(self.director_ips))
        self._bird(self.router, ROUTER_CONF.format(neighbors=neighbors, **common))
        for i, (ns, ip) in enumerate(zip(self.directors, self.director_ips)):
            inc = self.include_of(i)
            open(inc, "w").close()                   # BIRD refuses a missing include
            self._bird(ns, DIRECTOR_CONF.format(ip=ip, include=inc, **common))
        deadline = time.monotonic() + 20
        while self.established() < len(self.directors):
            if time.monotonic() > deadline:
                raise RuntimeError("BGP sessions did not come up: "
                                   + self.birdc(self.router, "show protocols"))
            time.sleep(0.1)

    def birdc(self, ns, command: str) -> str:
        ctl = self._bird_files(ns)[1]
        return run("birdc", "-s", ctl, *command.split(), check=False).stdout

    def established(self) -> int:
        """BGP sessions of the router that are Established."""
        text = self.birdc(self.router, "show protocols")
        return sum(1 for line in text.splitlines() if line.startswith("d") and "Established"
                   in line)

    # -- the directors ---------------------------------------------------------------------------
    def rules(self) -> str:
        flag = FWD_FLAG[self.mode]
        head = f"-A -t {self.vip}:{HTTP_PORT} -s {self.sched}"
        if self.flags:
            head += f" -b {self.flags}"
        return "\n".join([head] + [f"-a -t {self.vip}:{HTTP_PORT} -r {rip}:{HTTP_PORT} {flag}"
                                   for rip in self.rips]) + "\n"

    def start_director(self, i: int, *args, backend: str = "xdp") -> Daemon:
        """fastlvs on director i, announcing through its BIRD; waits for "ready". The
        services are rules() unless `args` name --keepalived-conf."""
        rules = os.path.join(self.tmp, "rules")
        with open(rules, "w") as f:
            f.write(self.rules())
        table = [] if "--keepalived-conf" in args else ["--rules", rules]
        node = _Node(self.directors[i], self.tmp, self.daemons)
        d = Daemon(node, ["--mode", self.mode, "-i", "lan0", "--backend", backend,
                          *table, "--bird-include", self.include_of(i),
                          "--bird-socket", self.bird_socket(i), *args])
        d.socket_path = os.path.join(self.tmp, f"{self.directors[i]}.sock")
        d.args[d.args.index("--socket") + 1] = d.socket_path
        self.daemons.append(d)
        d.start()
        self.fastlvs[i] = d
        if self.sync:
            for role in ("backup", "master"):
                d.admin("--start-daemon", role, "--mcast-interface", "lan0", "--syncid", "1")
        return d

    def stop_director(self, i: int, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal director i's fastlvs and wait for its exit status (SIGKILL: a crash)."""
        d = self.fastlvs.pop(i)
        if sig == signal.SIGKILL:
            d.kill()
            return -9
        return d.stop(sig, timeout)

    def cut_link(self, i: int) -> None:
        """Take director i's interface down: the machine is gone without a word (no BGP
        message, no TCP reset), so only the router's BFD or BGP hold timer can notice."""
        run("ip", "-n", self.directors[i], "link", "set", "dev", "lan0", "down")

    def nexthops(self) -> list[str]:
        """The router's kernel next hops for the VIP (the directors ECMP spreads over)."""
        text = run("ip", "-n", self.router, "route", "show", f"{self.vip}/32").stdout
        return sorted(re.findall(r"via (\S+)", text))

    def wait_nexthops(self, want: int, timeout: float = 60.0, step: float = 0.01) -> float:
        """Seconds until the router has `want` next hops for the VIP; TimeoutError after
        `timeout` (generous: a restarted director on a loaded 2-core machine once took
        over 20 s to start and announce)."""
        t0 = time.monotonic()
        while len(self.nexthops()) != want:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"router has next hops {self.nexthops()}, not {want}")
            time.sleep(step)
        return time.monotonic() - t0

    def spread(self) -> dict[str, int]:
        """{director namespace: connections it scheduled} of every running fastlvs."""
        out = {}
        for i, d in sorted(self.fastlvs.items()):
            stats = parse_stats(d.admin("-Ln", "--stats", "--exact").stdout)
            out[self.directors[i]] = sum(s["conns"] for s in stats.values())
        return out

    def cpu_seconds(self) -> dict[int, float]:
        """{director index: CPU seconds (user + system) its fastlvs used so far}."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for i, d in self.fastlvs.items():
            pid = _child_pid(d.proc.pid)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[i] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def inpkts(self) -> dict[int, int]:
        out = {}
        for i, d in self.fastlvs.items():
            stats = parse_stats(d.admin("-Ln", "--stats", "--exact").stdout)
            out[i] = sum(s["inpkts"] for s in stats.values())
        return out

    # -- the client ------------------------------------------------------------------------------
    def client_socket(self, src: str | None = None) -> socket.socket:
        with in_ns(self.client):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if src:
            s.bind((src, 0))
        return s

    def requests(self, n: int, timeout: float = 3.0) -> dict[str, int]:
        """n one-shot HTTP/1.0 requests to the VIP, source addresses in turn: {answer: count}
        (an answer is the real server's name, or "error")."""
        out: dict[str, int] = {}
        for k in range(n):
            s = self.client_socket(self.client_ips[k % len(self.client_ips)])
            s.settimeout(timeout)
            try:
                s.connect((self.vip, HTTP_PORT))
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                name = data.split(b"\r\n\r\n", 1)[1].decode().strip()
            except (OSError, IndexError):
                name = "error"
            finally:
                s.close()
            out[name] = out.get(name, 0) + 1
        return out

    def long_lived(self, n: int) -> "LongLived":
        return LongLived(self, n)

    # -- teardown --------------------------------------------------------------------------------
    def destroy(self) -> None:
        for d in list(self.daemons):
            try:
                d.stop(timeout=5)
            except Exception:
                d.kill()
        self.daemons.clear()
        self.fastlvs.clear()
        for pidfile in self.birds.values():
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        self.birds.clear()
        teardown(self.procs, self.made, self.tmp)


class _Node:
    """What testbed.Daemon needs of its bench: the namespace, a temp dir, the daemon list."""

    def __init__(self, director: str, tmp: str, daemons: list):
        self.director, self.tmp, self.daemons = director, tmp, daemons


def _child_pid(pid: int) -> int:
    # `ip netns exec` execs the program in place: the pid is fastlvs's own
    return pid


class LongLived:
    """n HTTP/1.1 keep-alive connections to the VIP from the client's addresses in turn,
    each asked again by `probe()`: a connection is broken when a request gets an error, a
    reset, no answer within the timeout, or a different real server's name."""

    def __init__(self, cl: Cluster, n: int, timeout: float = 10.0):
        self.cl = cl
        self.socks: list[socket.socket] = []
        self.server: list[str | None] = []
        self.broken: set[int] = set()
        for k in range(n):
            s = cl.client_socket(cl.client_ips[k % len(cl.client_ips)])
            s.settimeout(timeout)
            s.connect((cl.vip, HTTP_PORT))
            s.setblocking(False)
            self.socks.append(s)
            self.server.append(None)
        self.probe(timeout)
        if self.broken:
            raise RuntimeError(f"{len(self.broken)} of {n} connections failed at once")

    def probe(self, timeout: float = 10.0) -> int:
        """One request on every connection not yet broken; returns how many are broken
        now (in all)."""
        sel = selectors.DefaultSelector()
        bufs: dict[int, bytes] = {}
        for k, s in enumerate(self.socks):
            if k in self.broken:
                continue
            try:
                s.send(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
            except OSError:
                self.broken.add(k)
                continue
            bufs[k] = b""
            sel.register(s, selectors.EVENT_READ, k)
        deadline = time.monotonic() + timeout
        while bufs and time.monotonic() < deadline:
            for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                k = key.data
                try:
                    chunk = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self.broken.add(k)
                    sel.unregister(key.fileobj)
                    del bufs[k]
                    continue
                bufs[k] += chunk
                head, sep, body = bufs[k].partition(b"\r\n\r\n")
                m = re.search(rb"Content-Length: (\d+)", head)
                if sep and m and len(body) >= int(m.group(1)):
                    name = body[:int(m.group(1))].decode().strip()
                    if self.server[k] is None:
                        self.server[k] = name
                    elif self.server[k] != name:
                        self.broken.add(k)
                    sel.unregister(key.fileobj)
                    del bufs[k]
        for k in bufs:                     # no answer in time
            self.broken.add(k)
        sel.close()
        return len(self.broken)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def demo(out=sys.stdout) -> int:
    """Build the cluster, show the spread of new connections over the directors, then what
    the loss of one does to 300 long-lived connections, and its return."""
    def say(text):
        print(text, file=out, flush=True)

    with Cluster() as cl:
        say(f"router {cl.router}: ECMP for VIP {cl.vip} over directors "
            f"{', '.join(cl.director_ips)} (BIRD 2, BGP + BFD, L4 hash)")
        for i in range(len(cl.directors)):
            cl.start_director(i)
        t = cl.wait_nexthops(len(cl.directors))
        say(f"all {len(cl.directors)} directors announce the VIP "
            f"(router next hops {cl.nexthops()}, {t:.2f} s after the last start)")
        answers = cl.requests(600)
        say(f"600 new connections from {len(cl.client_ips)} client addresses: real servers "
            f"{dict(sorted(answers.items()))}")
        say("scheduled per director: " + ", ".join(f"{ns}={n}" for ns, n in cl.spread().items()))
        ll = cl.long_lived(300)
        say(f"300 long-lived connections open; SIGKILL of fastlvs on {cl.directors[1]}")
        t0 = time.monotonic()
        cl.stop_director(1, signal.SIGKILL)
        cl.wait_nexthops(len(cl.directors) - 1)
        gone = time.monotonic() - t0
        say(f"  the router dropped it after {gone * 1000:.0f} ms (next hops {cl.nexthops()})")
        say(f"  broken long-lived connections: {ll.probe()} of 300 (mh + sloppy_tcp: "
            f"the others carry on on the same real server)")
        cl.start_director(1)
        cl.wait_nexthops(len(cl.directors))
        say(f"{cl.directors[1]} is back: broken now {ll.probe()} of 300")
        answers = cl.requests(300)
        say("new connections per director: "
            + ", ".join(f"{ns}={n}" for ns, n in cl.spread().items()))
        ll.close()
    return 0


if __name__ == "__main__":
    sys.exit(demo())
