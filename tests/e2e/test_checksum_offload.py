"""A client that keeps TX checksum offload on (as containers and VMs on a host do): its
veth hands on frames whose TCP/UDP checksum holds only the pseudo-header sum. fastlvs must
complete them, or the real servers drop every one. Real HTTP and UDP requests in DR, NAT and
TUN over both backends, with the client's offload on for the whole test."""
import json
import os
import socket

import pytest

from tests.e2e.e2e_support import BACKENDS
from fastlvs.lab.testbed import in_ns, set_tx_checksum, tx_checksum

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

N = 20


@pytest.fixture
def offload_on(bed):
    set_tx_checksum(bed.client, "eth0", True)
    try:
        assert tx_checksum(bed.client, "eth0")
        yield
    finally:
        set_tx_checksum(bed.client, "eth0", False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_succeed_with_client_checksum_offload_on(bed, start, offload_on, backend):
    d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
    got = [bed.http_get(timeout=3.0) for _ in range(N)]
    assert sorted(set(got)) == bed.rs_names, got
    with in_ns(bed.client):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("0.0.0.0", 0))
        names = {bed.udp_ask(sock, b"offload %d" % i) for i in range(N)}
    finally:
        sock.close()
    assert len(names) == 1 and names <= set(bed.rs_names)      # one UDP flow, one server
    counters = json.loads(d.admin("--counters").stdout)
    # the frames really arrived partial: fastlvs completed at least every request's SYN
    assert counters["engine"]["csum_completed"] >= N, counters["engine"]
