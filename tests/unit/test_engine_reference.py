"""The pure-Python reference engine with no build at all: it imports only the engine's
contract (and the standard library), and a Director runs on it end to end: ipvsadm commands,
new flows scheduled in Python and by a hash table, NAT both ways with valid checksums, the
listings and counters, a deleted real server's conns, and expiry by frame time."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

import fastlvs.engine.reference as reference
import fastlvs.engine.reference_sync as reference_sync
from fastlvs.control.director import Director
from fastlvs.control.ipvsadm import parse_command
from fastlvs.control.model import NoRoute

S = 1_000_000_000
VIP = "203.0.113.10"
LOCAL_MAC = "02:00:00:00:00:01"
CLIENT_MAC = "02:00:00:00:00:aa"
RS = {f"192.0.2.{i}": bytes([2, 0, 0, 0, 1, i]) for i in (11, 12, 13)}


def test_reference_imports_nothing_of_fastlvs_but_the_contract():
    """Imported in a fresh interpreter where the extension, scapy and dpkt cannot load: only
    fastlvs, fastlvs.engine, the contract and the reference itself come in, and no
    compiled module of fastlvs or of any installed package."""
    code = textwrap.dedent("""
        import importlib.abc, importlib.machinery, sys, sysconfig
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "fastlvs.engine._core" or name.split(".")[0] in ("scapy", "dpkt"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        before = set(sys.modules)
        import fastlvs.engine.reference
        e = fastlvs.engine.reference.Engine(capacity=16)
        new = set(sys.modules) - before
        print(sorted(m for m in new if m.split(".")[0] == "fastlvs"))
        stdlib = sysconfig.get_paths()["stdlib"]
        print(sorted(m for m in new if isinstance(getattr(sys.modules[m], "__loader__", None),
                                                  importlib.machinery.ExtensionFileLoader)
                     and not (sys.modules[m].__file__ or "").startswith(stdlib)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['fastlvs', 'fastlvs.engine', 'fastlvs.engine.contract', 'fastlvs.engine.reference', "
        "'fastlvs.engine.reference_sctp', 'fastlvs.engine.reference_sync']",
        "[]"]


def _imports_outside_stdlib(path):
    tree = ast.parse(open(path).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(f"{node.module}.{a.name}" if node.module == "fastlvs.engine"
                         else node.module for a in node.names)
    return {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}


def test_reference_source_imports_only_the_stdlib_and_the_contract():
    outside = _imports_outside_stdlib(reference.__file__)
    assert outside == {"fastlvs.engine.contract", "fastlvs.engine.reference_sync",
                       "fastlvs.engine.reference_sctp"}, outside
    # its SCTP part: the standard library only
    assert _imports_outside_stdlib(reference.__file__.replace("reference.py",
                                                              "reference_sctp.py")) == set()
    # its sync part: the contract, its SCTP part (timeouts), and the wire format once sync
    # is used
    outside = _imports_outside_stdlib(reference_sync.__file__)
    assert outside == {"fastlvs.engine.contract", "fastlvs.engine.reference_sctp",
                       "fastlvs.sync"}, outside


# -- a Director on the reference engine ----------------------------------------------------------

def nexthop(ip):
    if ip not in RS:
        raise NoRoute(f"{ip} is not a neighbour")
    return RS[ip], 10 + int(ip.rsplit(".", 1)[1])


@pytest.fixture
def director():
    engine = reference.Engine(capacity=256, batch=64, local_ip="192.0.2.1",
                              local_mac=LOCAL_MAC)
    d = Director(engine, nexthop)
    engine.set_neighbor("198.51.100.7", CLIENT_MAC, 3)
    engine.set_gateway_mac("02:00:00:00:00:fe", 2)
    return d


def run(d, *argv):
    return d.execute(parse_command(list(argv)))


def syn(i, proto="tcp", client="198.51.100.7", dport=80, flags="S"):
    l4 = TCP(sport=40000 + i, dport=dport, flags=flags) if proto == "tcp" else \
        UDP(sport=40000 + i, dport=dport) / b"q"
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IP(src=client, dst=VIP) / l4)


def checksums_ok(frame):
    pkt = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in pkt:
            got = pkt[layer].chksum
            again = Ether(frame)
            del again[layer].chksum
            if layer is not IP:
                del again[IP].chksum
            if Ether(bytes(again))[layer].chksum != got:
                return False
    return True


def dest_lines(d):
    """{(service line, rs): (forward, weight, active, inactive)} of `ipvsadm -Ln`."""
    out, svc = {}, None
    for line in d.list().splitlines():
        if line.startswith(("TCP", "UDP")):
            svc = line.split()[1]
        elif line.startswith("  -> ") and not line.startswith("  -> RemoteAddress"):
            f = line.split()
            out[(svc, f[1])] = (f[2], int(f[3]), int(f[4]), int(f[5]))
    return out


def test_a_director_forwards_lists_and_expires_on_the_reference_engine(director):
    d, e = director, director.engine
    run(d, "-A", "-t", f"{VIP}:80", "-s", "wlc")
    run(d, "-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:8080", "-m", "-w", "1")
    run(d, "-a", "-t", f"{VIP}:80", "-r", "192.0.2.12:8080", "-m", "-w", "2")
    run(d, "-A", "-u", f"{VIP}:53", "-s", "sh")
    run(d, "-a", "-u", f"{VIP}:53", "-r", "192.0.2.13:53", "-g")

    # 30 SYNs in one batch: wlc, with the counters moved per flow, gives 10 and 20
    out = e.process([syn(i) for i in range(30)], 1 * S)
    assert len(out) == 30
    by_rs = {}
    for _, ifindex, frame in out:
        p = Ether(frame)
        assert checksums_ok(frame)
        assert p[TCP].dport == 8080 and p[IP].src == "198.51.100.7"
        assert (p.dst, ifindex) == (":".join(f"{b:02x}" for b in RS[p[IP].dst]),
                                    10 + int(p[IP].dst.rsplit(".", 1)[1]))
        by_rs[p[IP].dst] = by_rs.get(p[IP].dst, 0) + 1
    assert by_rs == {"192.0.2.11": 10, "192.0.2.12": 20}
    assert dest_lines(d)[(f"{VIP}:80", "192.0.2.12:8080")] == ("Masq", 2, 20, 0)

    # the RS's answer goes back to the client from VIP:80
    rs_of = {Ether(f)[TCP].sport: Ether(f)[IP].dst for _, _, f in out}
    reply = bytes(Ether(src="02:00:00:00:01:0b", dst=LOCAL_MAC)
                  / IP(src=rs_of[40000], dst="198.51.100.7")
                  / TCP(sport=8080, dport=40000, flags="SA"))
    (_, ifindex, back), = e.process([reply], 2 * S)
    p = Ether(back)
    assert (ifindex, p.dst, p[IP].src, p[TCP].sport) == (3, CLIENT_MAC, VIP, 80)
    assert checksums_ok(back)

    # UDP by sh, served from the table the director handed the engine: one client, one RS
    asked = []
    d.engine.set_scheduler_callback(lambda s, f: asked.append(f) or d._schedule_batch(s, f))
    out = e.process([syn(i, "udp", dport=53) for i in range(5)], 3 * S)
    assert {Ether(f)[IP].dst for _, _, f in out} == {VIP}          # DR: only MACs change
    assert {Ether(f).dst for _, _, f in out} == {"02:00:00:00:01:0d"}
    assert asked == []
    assert dest_lines(d)[(f"{VIP}:53", "192.0.2.13:53")] == ("Route", 1, 0, 5)

    # a deleted real server's conns are dropped (as IPVS 6.1) and left to time out; new
    # flows avoid it
    run(d, "-d", "-t", f"{VIP}:80", "-r", "192.0.2.11:8080")
    victim = next(p for p, rs in rs_of.items() if rs == "192.0.2.11")
    assert e.process([syn(victim - 40000, flags="A")], 4 * S) == []
    assert e.stats()["dest_unavailable"] == 1
    out = e.process([syn(100 + i) for i in range(4)], 4 * S)
    assert {Ether(f)[IP].dst for _, _, f in out} == {"192.0.2.12"}

    counters = d.counters()
    assert counters["engine"]["conns_created"] == 30 + 5 + 4
    assert counters["conn_entries"] == 39
    assert len(d.list_conns().splitlines()) == 2 + 39       # a title and a header

    # SYN_RECV lasts 60 s (the RS's SYN+ACK leaves it there; the dropped ACK changed
    # nothing), udp 300 s
    assert e.run_timers(70 * S) == 30 + 4
    assert e.run_timers(400 * S) == 5
    assert dest_lines(d)[(f"{VIP}:80", "192.0.2.12:8080")] == ("Masq", 2, 0, 0)
    assert e.run_timers(2000 * S) == 0
    assert e.conn_count() == 0 and e.conns() == []


def test_a_scheduler_error_reaches_the_caller_after_the_batch(director):
    d, e = director, director.engine
    run(d, "-A", "-t", f"{VIP}:80", "-s", "rr")
    run(d, "-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g")

    def broken(svcs, flows):
        raise RuntimeError("scheduler down")
    e.set_scheduler_callback(broken)
    with pytest.raises(RuntimeError, match="scheduler down"):
        e.process([syn(0), syn(1)], 1 * S)
    assert e.stats()["callback_error"] == 2 and e.conn_count() == 0
    e.set_scheduler_callback(d._schedule_batch)
    assert len(e.process([syn(0)], 2 * S)) == 1


def test_the_reference_is_not_the_extension():
    """What these tests ran on: the reference, whether or not the extension is built."""
    assert reference.Engine.__module__ == "fastlvs.engine.reference"
    assert os.path.basename(reference.__file__) == "reference.py"
