"""/metrics over a real Director and engine (each engine): after traffic pushed through the
engine, a scrape parsed with prometheus_client's text parser carries node_exporter's ipvs
metrics (checked against a fixture of node_exporter's own output) and fastlvs's, with the
values the frames sent imply; IPVS's totals outlive a deleted service and -Z of everything
zeroes them, as /proc/net/ip_vs_stats does."""
from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from fastlvs.control.metrics import BACKEND_LABELS, MetricsServer, director_metrics
from fastlvs.engine import contract
from tests.control.control_harness import CLIENT_MAC, LOCAL_MAC

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "node_exporter" / "ipvs.prom"
VIP, CLIENT = "203.0.113.10", "198.51.100.7"
S = 1_000_000_000


def _eth(ip_pkt) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / ip_pkt)


def _iplen(frame: bytes) -> int:
    return len(Ether(frame)[IP])


def scrape(daemon) -> dict:
    """One HTTP GET /metrics through a MetricsServer serviced by this thread under the
    harness's lock, as the daemon's loop does (the director is touched only there; the
    server's worker thread makes the text from its snapshot): {name: family}."""
    with daemon.lock:
        server = MetricsServer(director_metrics(daemon.director), "127.0.0.1", 0,
                               cache_seconds=0)
    got = {}

    def client():
        s = socket.create_connection(server.address, timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        data = b""
        while len(data) < 1 << 24:
            part = s.recv(65536)
            if not part:
                break
            data += part
        s.close()
        got["answer"] = data

    t = threading.Thread(target=client, daemon=True)
    t.start()
    try:
        for _ in range(2000):                       # bounded: 2000 turns of 5 ms at most
            with daemon.lock:
                server.handle_ready()
            t.join(0.005)
            if not t.is_alive():
                break
    finally:
        with daemon.lock:
            server.close()
    head, body = got["answer"].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def value(fams, name, **labels):
    """The value of the one sample of family `name` (the _total suffix of a counter's
    sample included) whose labels include `labels`."""
    fam = fams[name.removesuffix("_total")]
    hits = [s.value for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels, fam.samples)
    return hits[0]


def backend(rip, rport, vport=80, proto="TCP"):
    return dict(local_address=VIP, local_port=str(vport), remote_address=rip,
                remote_port=str(rport), proto=proto, local_mark="")


@pytest.fixture
def traffic(daemon):
    """A DR TCP service (rr over .11 weight 1 and .12 weight 3), a NAT UDP service (.13):
    6 SYNs, 4 datagrams from 4 ports, 2 NAT replies, a truncated frame and one frame to an
    address that is no service. Returns what the frames imply."""
    daemon.ok("-A", "-t", f"{VIP}:80", "-s", "rr")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.11:80", "-g", "-w", "1")
    daemon.ok("-a", "-t", f"{VIP}:80", "-r", "192.0.2.12:80", "-g", "-w", "3")
    daemon.ok("-A", "-u", f"{VIP}:53", "-s", "rr")
    daemon.ok("-a", "-u", f"{VIP}:53", "-r", "192.0.2.13:53", "-m")
    syns = [_eth(IP(src=CLIENT, dst=VIP) / TCP(sport=40000 + i, dport=80, flags="S"))
            for i in range(6)]
    dgrams = [_eth(IP(src=CLIENT, dst=VIP) / UDP(sport=50000 + i, dport=53) / (b"q" * (10 * i)))
              for i in range(4)]
    replies = [bytes(Ether(src="02:00:00:00:01:0d", dst=LOCAL_MAC)
                     / IP(src="192.0.2.13", dst=CLIENT) / UDP(sport=53, dport=50000 + i)
                     / (b"a" * (100 + i))) for i in range(2)]
    truncated = syns[0][:14 + 12]
    stranger = _eth(IP(src=CLIENT, dst="203.0.113.99") / TCP(sport=1, dport=80, flags="S"))
    with daemon.lock:
        daemon.director.set_neighbor(CLIENT, CLIENT_MAC, 1)
        out = daemon.engine.process(syns + dgrams, 1 * S)
        out += daemon.engine.process(replies + [truncated, stranger], 2 * S)
    assert len(out) == 12                   # 6 + 4 forwarded, 2 replies translated
    return {
        "rx": 14, "conns": 10, "inpkts": 10, "outpkts": 2,
        "inbytes": sum(map(_iplen, syns + dgrams)), "outbytes": sum(map(_iplen, replies)),
        "syn_bytes": _iplen(syns[0]),
    }


def test_node_exporter_names_types_help_and_labels_match_its_own_output(daemon, traffic):
    ours = scrape(daemon)
    theirs = {f.name: f for f in text_string_to_metric_families(FIXTURE.read_text())}
    assert len(theirs) == 8
    for name, fam in theirs.items():
        assert name in ours, name
        assert (ours[name].type, ours[name].documentation) == (fam.type, fam.documentation)
        assert {s.name for s in ours[name].samples} == {s.name for s in fam.samples}
        for mine in ours[name].samples:
            for their in fam.samples:
                assert set(mine.labels) == set(their.labels), name
    # a TCP/UDP service's row, as node_exporter fills it from /proc/net/ip_vs
    tcp = [s for s in theirs["node_ipvs_backend_weight"].samples if s.labels["proto"] == "TCP"]
    assert tcp[0].labels["local_mark"] == "" and tcp[0].labels["local_port"] != "0"
    assert tuple(BACKEND_LABELS) == ("local_address", "local_port", "remote_address",
                                     "remote_port", "proto", "local_mark")


def test_ipvs_metrics_are_what_the_frames_imply(daemon, traffic):
    f = scrape(daemon)
    assert value(f, "node_ipvs_connections_total") == traffic["conns"]
    assert value(f, "node_ipvs_incoming_packets_total") == traffic["inpkts"]
    assert value(f, "node_ipvs_outgoing_packets_total") == traffic["outpkts"]
    assert value(f, "node_ipvs_incoming_bytes_total") == traffic["inbytes"]
    assert value(f, "node_ipvs_outgoing_bytes_total") == traffic["outbytes"]
    # rr over the two TCP dests: three SYNs each, SYN_RECV counts as active (as IPVS)
    for rip, weight in (("192.0.2.11", 1), ("192.0.2.12", 3)):
        assert value(f, "node_ipvs_backend_connections_active", **backend(rip, 80)) == 3
        assert value(f, "node_ipvs_backend_connections_inactive", **backend(rip, 80)) == 0
        assert value(f, "node_ipvs_backend_weight", **backend(rip, 80)) == weight
        assert value(f, "fastlvs_backend_incoming_packets_total", **backend(rip, 80)) == 3
        assert value(f, "fastlvs_backend_incoming_bytes_total",
                     **backend(rip, 80)) == 3 * traffic["syn_bytes"]
    udp = backend("192.0.2.13", 53, vport=53, proto="UDP")
    assert value(f, "node_ipvs_backend_connections_active", **udp) == 0
    assert value(f, "node_ipvs_backend_connections_inactive", **udp) == 4   # UDP: inactive
    assert value(f, "fastlvs_backend_outgoing_packets_total", **udp) == 2
    assert value(f, "fastlvs_backend_outgoing_bytes_total", **udp) == traffic["outbytes"]
    assert len(f["node_ipvs_backend_weight"].samples) == 3


def test_fastlvs_metrics_are_the_engines_counters(daemon, traffic):
    f = scrape(daemon)
    assert value(f, "fastlvs_engine_frames_total", counter="rx") == traffic["rx"]
    assert value(f, "fastlvs_engine_frames_total", counter="tx") == 12
    assert value(f, "fastlvs_engine_drops_total", reason="malformed") == 1
    assert value(f, "fastlvs_engine_host_frames_total", reason="no_service") == 1
    assert value(f, "fastlvs_engine_events_total", event="conns_created") == traffic["conns"]
    assert value(f, "fastlvs_conn_entries") == traffic["conns"]
    assert value(f, "fastlvs_conn_capacity") == 4096
    # every engine counter is exported once, with the engine's value
    with daemon.lock:
        st = daemon.engine.stats()
    seen = {}
    for fam, label in (("fastlvs_engine_frames", "counter"), ("fastlvs_engine_drops", "reason"),
                       ("fastlvs_engine_host_frames", "reason"),
                       ("fastlvs_engine_events", "event")):
        for s in f[fam].samples:
            assert s.labels[label] not in seen
            seen[s.labels[label]] = s.value
    assert seen == {k: float(v) for k, v in st.items()}
    assert set(seen) == set(contract.COUNTER_NAMES)
    ok = {s.labels["collector"]: s.value for s in f["fastlvs_scrape_collector_success"].samples}
    assert ok == {"ipvs": 1, "fastlvs": 1, "process": 1}


def test_ring_counters_of_every_interface(daemon, traffic):
    with daemon.lock:
        daemon.director.port_stats = lambda: {
            "eth9": {"backend": "xdp", "rx": 7, "tx": 5, "rx_ring_full": 2, "wakeups": 3,
                     "umem_frame_size": 2048, "queues": {0: {"rx": 7}}}}
    f = scrape(daemon)
    assert value(f, "fastlvs_port_frames_total", interface="eth9", counter="rx") == 7
    assert value(f, "fastlvs_port_frames_total", interface="eth9", counter="tx") == 5
    assert value(f, "fastlvs_port_drops_total", interface="eth9", reason="rx_ring_full") == 2
    assert value(f, "fastlvs_port_events_total", interface="eth9", event="wakeups") == 3
    assert value(f, "fastlvs_port_info", interface="eth9", backend="xdp") == 1
    assert {s.labels.get("event") for s in f["fastlvs_port_events"].samples} == {"wakeups"}


def test_totals_outlive_a_deleted_service_and_zero_all_zeroes_them(daemon, traffic):
    daemon.ok("-D", "-t", f"{VIP}:80")
    f = scrape(daemon)
    assert value(f, "node_ipvs_incoming_packets_total") == traffic["inpkts"]
    assert value(f, "node_ipvs_connections_total") == traffic["conns"]
    assert len(f["node_ipvs_backend_weight"].samples) == 1      # only the UDP dest is left
    daemon.ok("-Z", "-u", f"{VIP}:53")                            # one service: totals stay
    f = scrape(daemon)
    assert value(f, "node_ipvs_incoming_bytes_total") == traffic["inbytes"]
    udp = backend("192.0.2.13", 53, vport=53, proto="UDP")
    assert value(f, "fastlvs_backend_outgoing_packets_total", **udp) == 0
    daemon.ok("-Z")                                               # everything: totals too
    f = scrape(daemon)
    for name in ("connections", "incoming_packets", "outgoing_packets", "incoming_bytes",
                 "outgoing_bytes"):
        assert value(f, f"node_ipvs_{name}_total") == 0, name
    # and they count again from there
    frame = _eth(IP(src=CLIENT, dst=VIP) / UDP(sport=51000, dport=53) / b"x")
    with daemon.lock:
        daemon.engine.process([frame], 3 * S)
    f = scrape(daemon)
    assert value(f, "node_ipvs_incoming_packets_total") == 1
    assert value(f, "node_ipvs_incoming_bytes_total") == _iplen(frame)


def test_a_service_zeroed_deleted_and_added_again_counts_from_zero(daemon, traffic):
    """-Z, then -D and -A of the same service: the kernel makes a new service whose
    counters start at 0; the listing and the totals must not go below what came after."""
    daemon.ok("-Z")
    daemon.ok("-D", "-u", f"{VIP}:53")
    daemon.ok("-A", "-u", f"{VIP}:53", "-s", "rr")
    daemon.ok("-a", "-u", f"{VIP}:53", "-r", "192.0.2.13:53", "-m")
    frame = _eth(IP(src=CLIENT, dst=VIP) / UDP(sport=52000, dport=53) / b"again")
    with daemon.lock:
        daemon.engine.process([frame], 4 * S)
    listing = daemon.ok("-Ln", "--stats", "--exact", "-u", f"{VIP}:53")
    svc_line = next(line for line in listing.splitlines() if line.startswith("UDP"))
    assert svc_line.split()[2:7] == ["1", "1", "0", str(_iplen(frame)), "0"], listing
    f = scrape(daemon)
    assert value(f, "node_ipvs_incoming_packets_total") == 1
    assert value(f, "node_ipvs_connections_total") == 1
