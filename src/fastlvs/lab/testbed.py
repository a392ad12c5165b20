"""A whole LVS cluster in network namespaces, for the end-to-end tests, `make demo` and the
latency benchmark (root only): a switch namespace with Linux bridges, a client, a director and
2-3 real servers attached to them by veths, the servers' HTTP and UDP echo processes, the
`fastlvs` daemon run inside the director namespace, and client helpers that open their sockets
in the client namespace. Every name is unique (prefix + pid + counter) and `Testbed.destroy()`
deletes exactly what was made, also after a failure. Nothing is addressed outside 10.201/16
(and, with `ipv6=True`, fd20:201::/48: the same layout in IPv6 only, LAN fd20:201::/64,
NAT's real servers on fd20:201:1::/64, VIP fd20:201::100).

Layout (LAN 10.201.0.0/24 on bridge br0; NAT puts the real servers on 10.201.1.0/24, br1):

    client 10.201.0.1 --+                        DR/TUN: rs1..rsN 10.201.0.11.. on br0,
    director 10.201.0.2 +-- br0                          VIP on lo, arp_ignore=1/arp_announce=2
      VIP 10.201.0.100/32 on lan0                  TUN: an XDP program on each RS strips IPIP
    NAT: director rsnet0 10.201.1.2 -- br1 -- rs1..rsN 10.201.1.11.., default route via .2

Servers (`python -m fastlvs.lab.testbed serve NAME ...`): HTTP on port 80 answering its NAME
(HTTP/1.0 closes after one answer, HTTP/1.1 keeps the connection), and a UDP echo on port 53
answering "NAME <payload>", bound to each of its addresses (so the answer leaves from the
address the request was sent to, the VIP in DR/TUN).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from fastlvs.engine import contract

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_seq = itertools.count()

LAN = "10.201.0"
RSNET = "10.201.1"
CLIENT_IP = f"{LAN}.1"
DIRECTOR_IP = f"{LAN}.2"
DIRECTOR_RS_IP = f"{RSNET}.2"
VIP = f"{LAN}.100"
LAN6 = "fd20:201:"
RSNET6 = "fd20:201:1:"
CLIENT_IP6 = f"{LAN6}:1"
DIRECTOR_IP6 = f"{LAN6}:2"
DIRECTOR_RS_IP6 = f"{RSNET6}:2"
VIP6 = f"{LAN6}:100"
HTTP_PORT = 80
UDP_PORT = 53
MODES = contract.FWD_NAMES
FWD_FLAG = {name: m[1] for name, m in contract.FWD_METHODS.items()}


def run(*cmd, check=True, timeout=20, input=None):
    """Run a command; RuntimeError with its stderr when it fails and check is true."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r


@contextlib.contextmanager
def in_ns(name):
    """Run the block in network namespace `name` (this thread only), then come back. Sockets
    made inside stay in that namespace for their whole life, whichever thread uses them."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(back, CLONE_NEWNET)
        os.close(fd)
        os.close(back)


SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17


def _ethtool_value(ns, dev, cmd, value=0):
    import array
    import fcntl
    import struct

    with in_ns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        buf = array.array("B", struct.pack("II", cmd, value))
        ifr = struct.pack("16sP", dev.encode(), buf.buffer_info()[0]).ljust(40, b"\0")
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
        return struct.unpack("II", buf.tobytes())[1]
    finally:
        s.close()


def set_tx_checksum(ns, dev, on: bool) -> None:
    """`ethtool -K DEV tx on|off` inside ns (without ethtool). With it on, a veth hands its
    peer packets whose TCP/UDP checksum is left for "the hardware" (CHECKSUM_PARTIAL), as
    containers and VMs on this host send them; fastlvs completes such checksums."""
    _ethtool_value(ns, dev, ETHTOOL_STXCSUM, 1 if on else 0)


def tx_checksum(ns, dev) -> bool:
    """Whether DEV in ns has TX checksum offload on (`ethtool -k DEV`'s tx-checksumming)."""
    return bool(_ethtool_value(ns, dev, ETHTOOL_GTXCSUM))


def tx_checksum_off(ns, dev):
    """`ethtool -K DEV tx off` inside ns: the testbed's senders compute full checksums, as a
    real NIC puts them on the wire (turns TSO off too: no frames above the MTU). The
    offload case has its own test (tests/e2e/test_checksum_offload.py)."""
    set_tx_checksum(ns, dev, False)


def sysctl(ns, **values):
    """Write net.* sysctls of namespace ns (`ipv4__conf__all__rp_filter=0` style keys):
    /proc/sys/net shows the namespace of whoever opens it."""
    with in_ns(ns):
        for key, value in values.items():
            with open("/proc/sys/net/" + key.replace("__", "/"), "w") as f:
                f.write(str(value))


def _addrport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


# -- the servers (run inside a real server's namespace) -------------------------------------------
def serve(name: str, udp_addrs: list[str], http_port=HTTP_PORT, udp_port=UDP_PORT) -> None:
    """HTTP + UDP echo answering with `name`, until SIGTERM. Prints "serving" when ready."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = (name + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"      # keep-alive when the client speaks 1.1

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 512
        allow_reuse_address = True
        daemon_threads = True

    if any(":" in a for a in udp_addrs):
        Server.address_family = socket.AF_INET6
    httpd = Server(("::" if Server.address_family == socket.AF_INET6 else "0.0.0.0",
                    http_port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def echo(sock):
        while True:
            data, peer = sock.recvfrom(65535)      # datagrams larger than the MTU too
            sock.sendto(name.encode() + b" " + data, peer)

    for addr in udp_addrs:
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, udp_port))
        threading.Thread(target=echo, args=(s,), daemon=True).start()
    # SIGTERM keeps its default action (the process ends at once, wherever its threads are)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print("serving", flush=True)
    while True:
        signal.pause()


# -- the topology ---------------------------------------------------------------------------------
def teardown(procs: list, made: list, tmp: str) -> None:
    """End `procs` (SIGTERM, then SIGKILL after 3 s, pipes closed), delete the namespaces in
    `made` (newest first) and the scratch folder `tmp`: the last step of every lab bench's
    destroy(), which must work after a failed build too."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=3)
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
    procs.clear()
    for ns in reversed(made):
        run("ip", "netns", "del", ns, check=False)
    made.clear()
    shutil.rmtree(tmp, ignore_errors=True)


class Testbed:
    """One cluster for one forwarding mode. `build()` makes it (and starts the servers),
    `destroy()` removes every namespace it made and stops every process it started; both
    are safe after a partial build. `decap_src` is the TUN decapsulator's C source (needed
    in TUN mode only; compiled once per real server with clang). `queues`: RX/TX queues of
    the director's veths (both ends); a veth delivers a frame on the RX queue of the TX
    queue its sender hashed the flow to, so with several queues flows spread over them."""

    def __init__(self, mode: str, n_rs: int = 3, decap_src: str | None = None,
                 prefix: str = "fl", queues: int = 1, ipv6: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if mode == "tun" and not decap_src:
            raise ValueError("TUN mode needs decap_src (the real servers' XDP decapsulator)")
        self.mode = mode
        self.decap_src = decap_src
        self.queues = queues
        tag = f"{prefix}{os.getpid() % 100000}x{next(_seq)}"
        self.tag = tag
        self.switch, self.client, self.director = f"{tag}sw", f"{tag}c", f"{tag}d"
        self.rs = [f"{tag}r{i + 1}" for i in range(n_rs)]
        self.rs_names = [f"rs{i + 1}" for i in range(n_rs)]
        self.ipv6 = ipv6
        if ipv6:
            net = RSNET6 if mode == "nat" else LAN6
            self.rips = [f"{net}:{11 + i}" for i in range(n_rs)]
            self.vip = VIP6
            self.client_ip, self.director_ip, self.director_rs_ip, plen, host = (
                CLIENT_IP6, DIRECTOR_IP6, DIRECTOR_RS_IP6, 64, 128)
        else:
            net = RSNET if mode == "nat" else LAN
            self.rips = [f"{net}.{11 + i}" for i in range(n_rs)]
            self.vip = VIP
            self.client_ip, self.director_ip, self.director_rs_ip, plen, host = (
                CLIENT_IP, DIRECTOR_IP, DIRECTOR_RS_IP, 24, 32)
        self._plen, self._host = plen, host
        self.lan_if = "lan0"
        self.rs_if = "rsnet0" if mode == "nat" else None
        self.tmp = tempfile.mkdtemp(prefix=f"{tag}-")
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.servers: dict[str, subprocess.Popen] = {}     # real server name -> its process
        self.daemons: list[Daemon] = []

    # names as the tests read them
    @property
    def namespaces(self):
        return [self.switch, self.client, self.director, *self.rs]

    def name_of(self, rip: str) -> str:
        return self.rs_names[self.rips.index(rip)]

    def rip_of(self, name: str) -> str:
        return self.rips[self.rs_names.index(name)]

    def build(self) -> "Testbed":
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def _veth(self, sw_name, ns, dev, bridge, queues=1):
        q = ("numtxqueues", str(queues), "numrxqueues", str(queues))
        run("ip", "-n", self.switch, "link", "add", sw_name, *q, "type", "veth", "peer",
            "name", dev, *q, "netns", ns)
        run("ip", "-n", self.switch, "link", "set", sw_name, "master", bridge, "up")

    def _build(self):
        for ns in self.namespaces:
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            if self.ipv6:
                # no duplicate address detection: addresses usable at once
                sysctl(ns, ipv6__conf__all__accept_dad=0, ipv6__conf__default__accept_dad=0,
                       ipv4__conf__all__rp_filter=0, ipv4__conf__default__rp_filter=0)
            else:
                sysctl(ns, ipv6__conf__all__disable_ipv6=1,
                       ipv6__conf__default__disable_ipv6=1,
                       ipv4__conf__all__rp_filter=0, ipv4__conf__default__rp_filter=0)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        bridges = ["br0", "br1"] if self.mode == "nat" else ["br0"]
        for br in bridges:
            run("ip", "-n", self.switch, "link", "add", br, "type", "bridge",
                "forward_delay", "0", "stp_state", "0")
            run("ip", "-n", self.switch, "link", "set", br, "up")
        self._veth("pc", self.client, "eth0", "br0")
        self._veth("pd", self.director, self.lan_if, "br0", self.queues)
        if self.mode == "nat":
            self._veth("pdn", self.director, self.rs_if, "br1", self.queues)
        rs_bridge = "br1" if self.mode == "nat" else "br0"
        for i, ns in enumerate(self.rs):
            self._veth(f"pr{i + 1}", ns, "eth0", rs_bridge)
        for ns in (self.client, *self.rs):
            tx_checksum_off(ns, "eth0")
        self._addr(self.client, "eth0", f"{self.client_ip}/{self._plen}")
        self._addr(self.director, self.lan_if, f"{self.director_ip}/{self._plen}")
        # The director owns the VIP (fastlvs's rule in every mode: it answers ARP/ND for it).
        # An IPv6 VIP is deprecated (preferred_lft 0): still ours to receive on, never
        # chosen as the source of the director's own connections (it would win the
        # longest-prefix rule towards the real servers, which hold the VIP too).
        run("ip", "-n", self.director, "addr", "add", f"{self.vip}/{self._host}", "dev",
            self.lan_if, *(["preferred_lft", "0"] if self.ipv6 else []))
        if self.mode == "nat":
            self._addr(self.director, self.rs_if, f"{self.director_rs_ip}/{self._plen}")
            # fastlvs forwards VIP traffic; the kernel must not route between the segments
            sysctl(self.director, ipv4__ip_forward=0)
        for ns, rip in zip(self.rs, self.rips):
            self._addr(ns, "eth0", f"{rip}/{self._plen}")
            if self.mode == "nat":
                run("ip", "-n", ns, "route", "add", "default", "via", self.director_rs_ip)
            else:
                # LVS-DR/TUN real server: the VIP on lo, never announced nor answered by
                # ARP (IPv6: neighbour discovery answers only for the receiving link's own)
                run("ip", "-n", ns, "addr", "add", f"{self.vip}/{self._host}", "dev", "lo",
                    *(["preferred_lft", "0"] if self.ipv6 else []))
                sysctl(ns, ipv4__conf__all__arp_ignore=1, ipv4__conf__all__arp_announce=2,
                       ipv4__conf__eth0__arp_ignore=1, ipv4__conf__eth0__arp_announce=2)
            if self.mode == "tun":
                obj = self._decap_obj(rip)
                run("ip", "-n", ns, "link", "set", "dev", "eth0", "xdpgeneric", "obj", obj,
                    "sec", "xdp")
        for ns, name, rip in zip(self.rs, self.rs_names, self.rips):
            addrs = [rip] if self.mode == "nat" else [rip, self.vip]
            self._start_server(ns, name, addrs)
        self._wait_reachable()

    def _addr(self, ns, dev, cidr):
        run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        run("ip", "-n", ns, "link", "set", dev, "up")

    def _decap_obj(self, rip: str) -> str:
        clang = shutil.which("clang")
        if clang is None:
            raise RuntimeError("clang not found: the TUN real servers' decapsulator needs it")
        obj = os.path.join(self.tmp, f"decap-{rip.replace(':', '_')}.o")
        arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
        if ":" in rip:
            # IPv6-in-IPv6 to this address: its four words, network order as __u32s
            packed = socket.inet_pton(socket.AF_INET6, rip)
            defs = ["-DFL_RS_ADDR=0"] + [
                f"-DFL_RS6_W{i}={int.from_bytes(packed[4 * i:4 * i + 4], 'little'):#010x}"
                for i in range(4)]
        else:
            be = int.from_bytes(socket.inet_aton(rip), "little")   # network order as a __u32
            defs = [f"-DFL_RS_ADDR={be:#010x}"]
        run(clang, "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc, *defs,
            "-c", self.decap_src, "-o", obj)
        return obj

    def stop_server(self, name: str) -> None:
        """Kill real server `name`'s HTTP/UDP process (SIGKILL: a crash, its port closes)."""
        p = self.servers.pop(name)
        p.kill()
        p.wait(5)

    def start_server(self, name: str) -> None:
        """Start real server `name`'s process again (after stop_server)."""
        i = self.rs_names.index(name)
        rip = self.rips[i]
        self._start_server(self.rs[i], name, [rip] if self.mode == "nat" else [rip, self.vip])

    def _start_server(self, ns, name, addrs):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "fastlvs.lab.testbed", "serve",
               name, *addrs]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env())
        self.procs.append(p)
        self.servers[name] = p
        # poll, not select: a test process may hold fds past select's 1024
        poller = select.poll()
        poller.register(p.stdout, select.POLLIN)
        line = p.stdout.readline() if poller.poll(15_000) else ""
        if "serving" not in line:
            p.kill()
            raise RuntimeError(f"server {name} did not start: {line!r} {p.stderr.read()}")

    def _wait_reachable(self, timeout=5.0):
        # The bridge forwards at once (no STP); make sure every RS's HTTP server answers on
        # its own address from the director's side before anyone measures anything.
        for rip in self.rips:
            deadline = time.monotonic() + timeout
            while True:
                with in_ns(self.director):
                    s = socket.socket(socket.AF_INET6 if ":" in rip else socket.AF_INET)
                s.settimeout(1.0)
                try:
                    s.connect((rip, HTTP_PORT))
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{rip}:{HTTP_PORT} unreachable from the "
                                           f"director: {e}") from None
                    time.sleep(0.05)
                finally:
                    s.close()

    def destroy(self) -> None:
        for d in list(self.daemons):        # a clean stop first: it detaches what it attached
            try:
                d.stop(timeout=5)
            except Exception:
                d.kill()
        teardown(self.procs, self.made, self.tmp)

    def __enter__(self):
        return self.build()

    def __exit__(self, *exc):
        self.destroy()

    # -- what the director's namespace holds ----------------------------------------------------
    def director_ifaces(self) -> list[str]:
        return [self.lan_if] + ([self.rs_if] if self.rs_if else [])

    def xdp_attached(self) -> list[str]:
        """Director interfaces that have an XDP program attached."""
        out = []
        for dev in self.director_ifaces():
            text = run("ip", "-n", self.director, "-d", "link", "show", "dev", dev).stdout
            if "prog/xdp" in text or " xdp" in text.split("\n", 1)[0]:
                out.append(dev)
        return out

    def nft_tables(self) -> str:
        return run("ip", "netns", "exec", self.director, "nft", "list", "tables").stdout

    # -- rules ----------------------------------------------------------------------------------
    def rules(self, weights: dict[str, int] | list[int], sched="wrr", udp=True,
              persistent: int | None = None) -> str:
        """ipvsadm-save text: the TCP service VIP:80 (and UDP VIP:53) with the real servers
        given as {name: weight} or a list of weights for rs1, rs2, ..."""
        if isinstance(weights, (list, tuple)):
            weights = dict(zip(self.rs_names, weights))
        flag = FWD_FLAG[self.mode]
        lines = []
        protos = [("-t", HTTP_PORT)] + ([("-u", UDP_PORT)] if udp else [])
        for popt, port in protos:
            head = f"-A {popt} {self.vs(port)} -s {sched}"
            if persistent is not None:
                head += f" -p {persistent}"
            lines.append(head)
            for name, w in weights.items():
                lines.append(f"-a {popt} {self.vs(port)} -r "
                             f"{_addrport(self.rip_of(name), port)} {flag} -w {w}")
        return "\n".join(lines) + "\n"

    def vs(self, port=HTTP_PORT) -> str:
        """VIP:port as ipvsadm writes it (an IPv6 VIP in brackets)."""
        return _addrport(self.vip, port)

    def write_rules(self, text: str, name="rules") -> str:
        path = os.path.join(self.tmp, name)
        with open(path + ".new", "w") as f:
            f.write(text)
        os.replace(path + ".new", path)
        return path

    # -- the daemon -----------------------------------------------------------------------------
    def start_daemon(self, *args, backend="xdp", timeout=20.0, wait_ready=True) -> "Daemon":
        """`fastlvs --mode MODE -i lan0 [--rs-interface rsnet0] --backend B ARGS` in the
        director namespace, with its own control socket; waits for "ready" on stderr."""
        cmd = ["--mode", self.mode, "-i", self.lan_if]
        if self.rs_if:
            cmd += ["--rs-interface", self.rs_if]
        if backend:
            cmd += ["--backend", backend]
        d = Daemon(self, cmd + list(args))
        self.daemons.append(d)
        d.start(timeout=timeout, wait_ready=wait_ready)
        return d

    # -- client side ----------------------------------------------------------------------------
    def socket(self, type=socket.SOCK_STREAM) -> socket.socket:
        """A socket living in the client namespace."""
        with in_ns(self.client):
            return socket.socket(socket.AF_INET6 if self.ipv6 else socket.AF_INET, type)

    def http_get(self, ip=None, port=HTTP_PORT, timeout=3.0) -> str:
        """One HTTP/1.0 request over a new TCP connection: the server's name."""
        s = self.socket()
        try:
            s.settimeout(timeout)
            s.connect((ip or self.vip, port))
            s.sendall(b"GET / HTTP/1.0\r\nHost: fastlvs\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"bad HTTP answer: {data[:80]!r}")
        return body.decode().strip()

    def keepalive(self, ip=None, port=HTTP_PORT, timeout=3.0) -> "KeepAlive":
        return KeepAlive(self.socket(), ip or self.vip, port, timeout)

    def udp_ask(self, sock: socket.socket, payload: bytes, ip=None, port=UDP_PORT,
                timeout=2.0) -> str:
        """Send one datagram from `sock` (a client-namespace UDP socket) and return the name
        in the answer."""
        sock.settimeout(timeout)
        sock.sendto(payload, (ip or self.vip, port))
        data, peer = sock.recvfrom(65535)
        if peer[0] != (ip or self.vip):
            raise RuntimeError(f"answer from {peer}, expected {(ip or self.vip)}")
        name, _, echoed = data.partition(b" ")
        if echoed != payload:
            raise RuntimeError(f"echo mismatch: {data!r}")
        return name.decode()


class KeepAlive:
    """One persistent HTTP/1.1 connection: `ask()` sends a request and returns the name."""

    def __init__(self, sock, ip, port, timeout):
        self.sock = sock
        sock.settimeout(timeout)
        sock.connect((ip, port))
        self.buf = b""

    def ask(self) -> str:
        self.sock.sendall(b"GET / HTTP/1.1\r\nHost: fastlvs\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the server")
            rest += chunk
        self.buf = rest[length:]
        return rest[:length].decode().strip()

    def close(self):
        self.sock.close()


class Daemon:
    """The `fastlvs` daemon process in the director namespace. stderr is collected by a
    thread (`lines`); `admin()` runs `fastlvs admin --socket PATH ...`; `stop()` sends a
    signal and waits (bounded) for the exit status."""

    def __init__(self, tb: Testbed, args: list[str]):
        self.tb = tb
        self.socket_path = os.path.join(tb.tmp, f"ctl{len(tb.daemons)}.sock")
        self.args = args + ["--socket", self.socket_path]
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout=20.0, wait_ready=True):
        cmd = ["ip", "netns", "exec", self.tb.director, sys.executable, "-m", "fastlvs",
               *self.args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=_env())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not wait_ready:
            return
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                rc = self.proc.poll()
                self.kill()
                raise RuntimeError(f"fastlvs did not become ready (exit {rc}): "
                                   + " | ".join(self.lines[-10:]))

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if "ready" in line:
                self._ready.set()

    def wait(self, timeout=20.0) -> int:
        """Exit status of a daemon expected to exit by itself (bad configuration)."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(3)
        self._forget()
        return rc

    def admin(self, *args, check=True, input=None) -> subprocess.CompletedProcess:
        r = run(sys.executable, "-m", "fastlvs", "admin", "--socket", self.socket_path,
                *args, check=False, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"fastlvs admin {' '.join(args)}: exit {r.returncode}: "
                               f"{r.stderr.strip()}")
        return r

    def stats(self) -> dict:
        """`-Ln --stats --exact` parsed: {("TCP", "VIP:PORT"): {"conns":.., "inpkts":..,
        "outpkts":.., "inbytes":.., "outbytes":.., "dests": {"RIP:PORT": {...}}}}."""
        return parse_stats(self.admin("-Ln", "--stats", "--exact").stdout)

    def table(self) -> dict:
        """`-Ln` parsed (see parse_list)."""
        return parse_list(self.admin("-Ln").stdout)

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._forget()

    def _forget(self):
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        if self in self.tb.daemons:
            self.tb.daemons.remove(self)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


def parse_stats(text: str) -> dict:
    """ipvsadm -Ln --stats [--exact] output -> nested dict (see Daemon.stats)."""
    out: dict = {}
    cur = None
    keys = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] in ("TCP", "UDP", "SCTP") and len(parts) >= 7:
            cur = out[(parts[0], parts[1])] = dict(zip(keys, map(_num, parts[2:7])))
            cur["dests"] = {}
        elif parts[0] == "->" and cur is not None and len(parts) >= 7 and ":" in parts[1]:
            cur["dests"][parts[1]] = dict(zip(keys, map(_num, parts[2:7])))
    return out


def parse_list(text: str) -> dict:
    """ipvsadm -Ln output -> {("TCP", "VIP:PORT"): {"sched": .., "dests": {"RIP:PORT":
    {"fwd": .., "weight": .., "active": .., "inactive": ..}}}}."""
    out: dict = {}
    cur = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("TCP", "UDP", "SCTP"):
            cur = out[(parts[0], parts[1])] = {"sched": parts[2], "dests": {}}
        elif parts and parts[0] == "->" and cur is not None and len(parts) >= 6 \
                and parts[2] != "Forward":
            cur["dests"][parts[1]] = {"fwd": parts[2], "weight": int(parts[3]),
                                      "active": int(parts[4]), "inactive": int(parts[5])}
    return out


def _num(text: str) -> int:
    mult = {"K": 1000, "M": 1000 ** 2, "G": 1000 ** 3, "T": 1000 ** 4}
    if text[-1:] in mult:
        return int(float(text[:-1]) * mult[text[-1]])
    return int(text)


def _env():
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # .../src
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1], argv[2:] or ["0.0.0.0"])
        return 0
    print("usage: python -m fastlvs.lab.testbed serve NAME [UDP-ADDR ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
