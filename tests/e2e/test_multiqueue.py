"""Multi-queue interfaces: the director's veths have four RX queues and a veth hands each
flow to the RX queue its sender hashed it to, so many flows spread over all of them. Every
flow of many (TCP and UDP, DR and NAT, both backends) must be answered by a real server and
none by the director's kernel: no RST and no ICMP unreachable reaches the client (nft
counters in its namespace). With AF_XDP each queue has its own socket, and the per-queue
counters show that more than one queue carried traffic; AF_PACKET's one socket per interface
sees every queue as it is.
"""
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.e2e_support import BACKENDS, DECAP_SRC
from fastlvs.lab import testbed as tbmod
from fastlvs.lab.testbed import HTTP_PORT, UDP_PORT, run

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

QUEUES = 4
N_TCP = 96
N_UDP = 48


@pytest.fixture(scope="module", params=["dr", "nat"])
def bed(request):
    tb = tbmod.Testbed(request.param, n_rs=3, decap_src=DECAP_SRC, queues=QUEUES).build()
    try:
        yield tb
    finally:
        tb.destroy()


class KernelAnswers:
    """nft counters in the client namespace: TCP RSTs and ICMP destination-unreachables
    the client received, from any source."""

    TABLE = "flkernel"

    def __init__(self, tb):
        self.tb = tb
        run("ip", "netns", "exec", tb.client, "nft", "-f", "-", input=f"""
table ip {self.TABLE} {{
  chain in {{ type filter hook input priority 0; policy accept;
    tcp flags & rst == rst counter comment "rst"
    icmp type destination-unreachable counter comment "unreachable"
  }}
}}
""")

    def read(self) -> dict:
        out = run("ip", "netns", "exec", self.tb.client, "nft", "-j", "list", "table", "ip",
                  self.TABLE).stdout
        got = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            for e in (rule or {}).get("expr", []):
                if "counter" in e:
                    got[rule["comment"]] = e["counter"]["packets"]
        return got

    def close(self):
        run("ip", "netns", "exec", self.tb.client, "nft", "delete", "table", "ip",
            self.TABLE, check=False)


@pytest.fixture
def kernel_answers(bed):
    k = KernelAnswers(bed)
    try:
        yield k
    finally:
        k.close()


def tcp_flow(bed, i):
    try:
        return bed.http_get(timeout=2.0)
    except (OSError, RuntimeError) as e:
        return f"error: {e!r}"


def udp_flow(bed, i):
    s = bed.socket(socket.SOCK_DGRAM)
    try:
        # a source port of its own: an ephemeral one may be handed out again after close,
        # and the same 5-tuple is the same connection (UDP entries live 300 s)
        s.bind(("", 21000 + i))
        return bed.udp_ask(s, b"flow%d" % i, timeout=2.0)
    except (OSError, RuntimeError) as e:
        return f"error: {e!r}"
    finally:
        s.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_rx_queue_is_served(bed, start, kernel_answers, backend):
    d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
    # concurrent flows, each on its own source port (bounded: 2 s per flow at most)
    with ThreadPoolExecutor(16) as pool:
        tcp = list(pool.map(lambda i: tcp_flow(bed, i), range(N_TCP)))
        udp = list(pool.map(lambda i: udp_flow(bed, i), range(N_UDP)))
    failed = [a for a in tcp + udp if a not in bed.rs_names]
    assert not failed, f"{len(failed)} of {N_TCP + N_UDP} flows failed: {failed[:5]}"
    assert kernel_answers.read() == {"rst": 0, "unreachable": 0}
    st = d.stats()
    assert st[("TCP", f"{bed.vip}:{HTTP_PORT}")]["conns"] == N_TCP
    assert st[("UDP", f"{bed.vip}:{UDP_PORT}")]["conns"] == N_UDP
    if backend == "xdp":
        ports = json.loads(d.admin("--counters").stdout)["ports"]
        for ifname in bed.director_ifaces():
            queues = ports[ifname]["queues"]
            assert sorted(queues, key=int) == [str(q) for q in range(QUEUES)], queues
            busy = [q for q, c in queues.items() if c["rx"] > 0]
            # client requests on lan0; NAT replies on rsnet0
            if ifname == bed.lan_if or bed.mode == "nat":
                assert len(busy) >= 2, (ifname, {q: c["rx"] for q, c in queues.items()})
            assert ports[ifname]["rx"] == sum(c["rx"] for c in queues.values())
        print(f"{bed.mode}: {N_TCP}/{N_TCP} TCP and {N_UDP}/{N_UDP} UDP flows answered; "
              + "; ".join(f"{i} rx per queue "
                          f"{[ports[i]['queues'][str(q)]['rx'] for q in range(QUEUES)]}"
                          for i in bed.director_ifaces()))
