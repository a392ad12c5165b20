"""Real local servers for the checker tests, each in a thread on 127.0.0.1 (or ::1), stopped
by the test: a TCP listener, an HTTP(S) server with a settable status and body, UDP echo /
silent / closed ports, a DNS responder built with dpkt, and a self-signed certificate made
with `cryptography`. Every wait is bounded; every server records what it was sent.
"""
from __future__ import annotations

import datetime
import http.server
import socket
import ssl
import subprocess
import sys
import threading

import dpkt


def free_port(kind=socket.SOCK_STREAM, host="127.0.0.1") -> int:
    """A port nobody listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TcpListener:
    """A listening TCP socket; connections are accepted by the kernel's backlog."""

    def __init__(self, host="127.0.0.1", port=0):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def make_cert(tmp_path, name="rs.test"):
    """A self-signed certificate and key for `name`, as PEM files; (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class HttpServer:
    """HTTP/1.0 server answering every GET with `status` and `body`; with `cert` it speaks
    TLS. `requests` holds (path, Host header, raw request head); `sni` the names clients
    sent in their TLS hello."""

    def __init__(self, status=200, body=b"hello\n", cert=None, host="127.0.0.1", port=0,
                 delay=0.0):
        self.status, self.body, self.delay = status, body, delay
        self.requests: list[tuple[str, str | None, bytes]] = []
        self.sni: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Host"),
                                       self.requestline.encode() + b"\r\n" + bytes(self.headers)))
                if outer.delay:
                    threading.Event().wait(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *a):
                pass

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        self.httpd = Server((host, port), Handler)
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*cert)
            ctx.sni_callback = lambda sslsock, name, c: self.sni.append(name)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _UdpThread:
    def __init__(self, host, port, kind=socket.SOCK_DGRAM):
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.peers: list[tuple] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.received.append(data)
            self.peers.append(peer[:2])
            self.handle(data, peer)

    def handle(self, data, peer):
        pass

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


class UdpServer(_UdpThread):
    """Answers each datagram with `reply(data)` (None: silent). Default: an echo."""

    def __init__(self, reply=lambda d: d, host="127.0.0.1", port=0):
        self.reply = reply
        super().__init__(host, port)

    def handle(self, data, peer):
        out = self.reply(data)
        if out is not None:
            self.sock.sendto(out, peer)


class DnsServer(_UdpThread):
    """A DNS responder: parses each query with dpkt and answers with `rcode` (and an A
    record for A queries when rcode is 0). `stray_first` sends a reply with a wrong id, and
    a query echoed back (QR clear), before the real one, as noise the checker must skip."""

    def __init__(self, rcode=0, stray_first=False, silent=False, host="127.0.0.1", port=0):
        self.rcode, self.stray_first, self.silent = rcode, stray_first, silent
        self.queries: list[dpkt.dns.DNS] = []
        super().__init__(host, port)

    def handle(self, data, peer):
        q = dpkt.dns.DNS(data)
        self.queries.append(q)
        if self.silent:
            return
        if self.stray_first:
            self.sock.sendto(bytes(dpkt.dns.DNS(id=(q.id + 1) & 0xFFFF, qr=dpkt.dns.DNS_R,
                                                qd=q.qd, an=[], ns=[], ar=[])), peer)
            self.sock.sendto(data, peer)
        r = dpkt.dns.DNS(id=q.id, qr=dpkt.dns.DNS_R, rcode=self.rcode, qd=q.qd, an=[], ns=[],
                         ar=[])
        r.op |= dpkt.dns.DNS_RA
        if self.rcode == 0 and q.qd and q.qd[0].type == dpkt.dns.DNS_A:
            r.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, cls=dpkt.dns.DNS_IN,
                                    ttl=60, rdata=socket.inet_aton("192.0.2.7"))]
        self.sock.sendto(bytes(r), peer)


# -- a private network namespace, for the answers loopback cannot give -----------------------

_NETNS_SCRIPT = r"""
import asyncio, ctypes, json, sys
CLONE_NEWNET = 0x40000000
if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
    sys.exit("unshare(CLONE_NEWNET) failed: errno %d" % ctypes.get_errno())
from pyroute2 import IPRoute
with IPRoute() as ipr:
    # lo up; a veth pair whose far end holds no address, with a permanent neighbour entry
    # for the silent address: its packets leave and vanish (no one answers, no ARP
    # failure); an unreachable route that the kernel refuses with an error
    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    ipr.link("add", ifname="hc0", kind="veth", peer="hc1")
    idx = ipr.link_lookup(ifname="hc0")[0]
    ipr.addr("add", index=idx, address="198.51.100.1", prefixlen=24)
    ipr.link("set", index=idx, state="up")
    ipr.link("set", index=ipr.link_lookup(ifname="hc1")[0], state="up")
    ipr.neigh("add", dst="198.51.100.2", lladdr="02:00:00:00:00:02", ifindex=idx,
              state=0x80)   # NUD_PERMANENT
    ipr.route("add", dst="203.0.113.0/24", type="unreachable")
from fastlvs.health.checkers import probe
from fastlvs.health.spec import CheckSpec
spec = CheckSpec.from_json(json.loads(sys.argv[1]))
r = asyncio.run(probe(spec))
print(json.dumps([r.ok, r.reason, r.weight]))
"""

SILENT_ADDR = "198.51.100.2"      # on the veth: packets go out and vanish
UNREACHABLE_ADDR = "203.0.113.9"  # an `unreachable` route: the kernel refuses at once


def probe_in_netns(spec, timeout=30):
    """Run one probe in a network namespace of its own (made by unshare in a child process,
    gone when it exits): (ok, reason, weight). Needs root."""
    import json
    r = subprocess.run([sys.executable, "-c", _NETNS_SCRIPT, json.dumps(spec.to_json())],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return tuple(json.loads(r.stdout.strip().splitlines()[-1]))
