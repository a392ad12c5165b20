"""`--metrics` through the real daemon in a DR cluster: after real HTTP traffic, a scrape
(from inside the director's namespace, on its loopback) parsed with prometheus_client's
parser says what `fastlvs admin -Ln --stats` says, under node_exporter's names; clients that
never finish their request do not keep it from answering; the port is closed at exit; a port
in use stops the daemon before it touches the network (one line, exit 2)."""
import os
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.e2e_support import assert_clean, make_bed
from fastlvs.lab.testbed import HTTP_PORT, Daemon, in_ns

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

N_REQUESTS = 30


@pytest.fixture(scope="module")
def bed():
    tb = make_bed("dr")
    try:
        yield tb
    finally:
        tb.destroy()


def free_port(tb) -> int:
    with in_ns(tb.director):
        s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def connect(tb, port, timeout=5.0) -> socket.socket:
    with in_ns(tb.director):
        s = socket.socket()
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s


def scrape(tb, port) -> dict:
    s = connect(tb, port)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: fastlvs\r\n\r\n")
        data = b""
        while len(data) < 1 << 24:
            part = s.recv(65536)
            if not part:
                break
            data += part
    finally:
        s.close()
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(fams, name, **labels):
    fam = fams[name.removesuffix("_total")]
    hits = [s.value for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (name, labels)
    return hits[0]


def settled_stats(d, key, want, timeout=5.0):
    """-Ln --stats once the service has `want` connections and two reads agree."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st = d.stats()
        if st.get(key, {}).get("conns", 0) >= want and st == last:
            return st
        if time.monotonic() > deadline:
            return st
        last = st
        time.sleep(0.2)


def test_a_scrape_says_what_the_listing_says(bed):
    port = free_port(bed)
    d = bed.start_daemon("--rules", bed.write_rules(bed.rules([1, 2, 3], sched="wrr",
                                                               udp=False)),
                         "--metrics", f"127.0.0.1:{port}")
    slow = []
    try:
        for _ in range(N_REQUESTS):
            bed.http_get(timeout=3.0)
        key = ("TCP", f"{bed.vip}:{HTTP_PORT}")
        st = settled_stats(d, key, N_REQUESTS)[key]
        for _ in range(5):                      # clients that never finish asking
            s = connect(bed, port)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            slow.append(s)
        f = scrape(bed, port)
        assert sample(f, "node_ipvs_connections_total") == st["conns"] == N_REQUESTS
        assert sample(f, "node_ipvs_incoming_packets_total") == st["inpkts"]
        assert sample(f, "node_ipvs_incoming_bytes_total") == st["inbytes"]
        assert sample(f, "node_ipvs_outgoing_packets_total") == 0          # DR: replies direct
        for i, (rip, weight) in enumerate(zip(bed.rips, (1, 2, 3))):
            labels = dict(local_address=bed.vip, local_port=str(HTTP_PORT),
                          remote_address=rip, remote_port=str(HTTP_PORT), proto="TCP",
                          local_mark="")
            assert sample(f, "node_ipvs_backend_weight", **labels) == weight
            assert sample(f, "fastlvs_backend_connections_total",
                          **labels) == st["dests"][f"{rip}:{HTTP_PORT}"]["conns"]
        assert sample(f, "fastlvs_port_frames_total", interface=bed.lan_if, counter="rx") > 0
        assert sample(f, "fastlvs_port_info", interface=bed.lan_if, backend="xdp") == 1
        assert sample(f, "fastlvs_conn_capacity") > 0
    finally:
        for s in slow:
            s.close()
        assert d.stop() == 0
    assert_clean(bed, d)
    with pytest.raises(ConnectionRefusedError):
        connect(bed, port).close()


def test_a_metrics_port_in_use_stops_the_daemon_with_one_line(bed):
    with in_ns(bed.director):
        holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        d = Daemon(bed, ["--mode", "dr", "-i", bed.lan_if, "--vip", f"{bed.vip}:80",
                         "--rs", f"{bed.rips[0]}:80", "--metrics", f"127.0.0.1:{port}"])
        bed.daemons.append(d)
        d.start(wait_ready=False)
        assert d.wait(15) == 2
        assert d.lines == [f"fastlvs: --metrics 127.0.0.1:{port}: Address already in use"]
        assert_clean(bed, d)
    finally:
        holder.close()
