"""The daemon as users meet it, in every forwarding mode (dr, nat, tun) over both backends
(AF_XDP, AF_PACKET): real HTTP over separate TCP connections spread as the scheduler says,
`-Ln --stats` equal to what the client's own nft counters saw, long-lived connections that
survive adding, reweighting and removing servers, weight 0 draining, UDP flows sticking to
one server, SIGHUP reloads that keep established connections, and SIGTERM/SIGINT exits that
leave nothing attached. The cluster is built once per mode; each test starts its own daemon.
"""
import collections
import os
import signal
import socket
import time

import pytest

from tests.e2e.e2e_support import BACKENDS, LongLived, assert_clean
from fastlvs.lab.testbed import HTTP_PORT, UDP_PORT

if os.geteuid() != 0:
    pytest.skip("needs root (namespaces, XDP)", allow_module_level=True)
pytest.importorskip("fastlvs.engine._core")

N_REQUESTS = 300

def vs(bed, port=HTTP_PORT):
    return f"{bed.vip}:{port}"


def rs(bed, name, port=HTTP_PORT):
    return f"{bed.rip_of(name)}:{port}"


def fwd_flag(bed):
    return {"dr": "-g", "nat": "-m", "tun": "-i"}[bed.mode]


def requests(bed, n):
    """n HTTP/1.0 requests, each over its own new TCP connection: {server name: count}."""
    got = collections.Counter()
    for _ in range(n):
        got[bed.http_get(timeout=3.0)] += 1
    return got


def settle(d, want_conns, key, timeout=3.0):
    """The stats once the director has counted `want_conns` connections of service `key`
    and its packet counters stopped moving (the last ACKs of the closes are in flight)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st = d.stats()
        cur = st.get(key)
        if cur and cur["conns"] >= want_conns and last == st:
            return st
        if time.monotonic() > deadline:
            return st
        last = st
        time.sleep(0.15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_http_spread_and_stats(bed, start, counters, backend):
    # wrr with weights 1, 2, 3: over whole cycles of 6 the kernel's wrr gives exactly
    # 1/6, 2/6, 3/6 whatever its starting point; 300 = 50 cycles.
    d = start("--rules", bed.write_rules(bed.rules([1, 2, 3], sched="wrr")), backend=backend)
    t0 = time.monotonic()
    got = requests(bed, N_REQUESTS)
    elapsed = time.monotonic() - t0
    assert dict(got) == {"rs1": 50, "rs2": 100, "rs3": 150}, got

    key = ("TCP", vs(bed))
    st = settle(d, N_REQUESTS, key)[key]
    sent = counters.read()
    out_pkts, out_bytes = sent["tcp_out"]
    in_pkts, in_bytes = sent["tcp_in"]
    assert st["conns"] == N_REQUESTS
    # per real server: the director's count of connections is what the client saw
    for name, n in got.items():
        assert st["dests"][rs(bed, name)]["conns"] == n, (name, st["dests"])
    for field in ("inpkts", "inbytes", "outpkts", "outbytes"):    # the service = its dests
        assert sum(x[field] for x in st["dests"].values()) == st[field], (field, st)
    # In: every packet and byte (IP length) the client sent to the VIP, no more, no less.
    assert (st["inpkts"], st["inbytes"]) == (out_pkts, out_bytes), (st, sent, elapsed)
    if bed.mode == "nat":
        # replies come back through the director: Out = what the client received
        assert (st["outpkts"], st["outbytes"]) == (in_pkts, in_bytes), (st, sent)
    else:
        assert (st["outpkts"], st["outbytes"]) == (0, 0), st      # replies go direct
        assert in_pkts > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_connection_of_a_client_never_seen(bed, start, counters, backend):
    # Neither side knows the other's MAC: the client ARPs for the VIP on its first SYN and
    # the director's kernel learns the client from that request while fastlvs already
    # forwards. The first exchange must not wait for a retransmission (1 s for a SYN/ACK).
    from fastlvs.lab.testbed import run
    run("ip", "-n", bed.client, "neigh", "flush", "dev", "eth0")
    for dev in bed.director_ifaces():
        run("ip", "-n", bed.director, "neigh", "flush", "dev", dev)
    d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr", udp=False)),
              backend=backend)
    run("ip", "-n", bed.director, "neigh", "flush", "dev", bed.lan_if)
    t0 = time.monotonic()
    first = bed.http_get(timeout=3.0)
    elapsed = time.monotonic() - t0
    assert first in bed.rs_names
    assert elapsed < 0.5, f"first connection took {elapsed:.2f} s"
    key = ("TCP", vs(bed))
    st = settle(d, 1, key)[key]
    sent = counters.read()
    assert (st["inpkts"], st["inbytes"]) == sent["tcp_out"], (st, sent)
    if bed.mode == "nat":
        assert (st["outpkts"], st["outbytes"]) == sent["tcp_in"], (st, sent)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_lived_survive_add_reweight_remove(bed, start, backend):
    d = start("--rules", bed.write_rules(bed.rules({"rs1": 1, "rs2": 1}, sched="rr",
                                                   udp=False)), backend=backend)
    ll = LongLived(bed, 4)
    try:
        assert set(ll.servers) == {"rs1", "rs2"}, ll.servers      # rr alternates
        ll.wait_rounds(2)
        d.admin("-a", "-t", vs(bed), "-r", rs(bed, "rs3"), fwd_flag(bed), "-w", "1")
        ll.wait_rounds(3)
        d.admin("-e", "-t", vs(bed), "-r", rs(bed, "rs1"), fwd_flag(bed), "-w", "3")
        ll.wait_rounds(3)
        # IPVS (expire_nodest_conn=0, its default; recorded on 6.1) drops the packets of a
        # deleted server's connections and keeps their entries until they time out
        on_rs2 = {i for i, srv in enumerate(ll.servers) if srv == "rs2"}
        assert len(on_rs2) == 2, ll.servers
        d.admin("-d", "-t", vs(bed), "-r", rs(bed, "rs2"))
        answered = [len(a) for a in ll.answers]
        deadline = time.monotonic() + 6
        while len(ll.errors) < len(on_rs2) and time.monotonic() < deadline:
            time.sleep(0.1)
        # a request already on its way may still have been answered, none after it
        assert all(len(ll.answers[i]) <= answered[i] + 1 for i in on_rs2), ll.answers
        assert len(ll.errors) == len(on_rs2) and all(
            "rs2" in e for e in ll.errors), ll.errors
        conns = [c for c in d.admin("-Lnc").stdout.splitlines() if rs(bed, "rs2") in c]
        assert len(conns) == len(on_rs2) and all("ESTABLISHED" in c for c in conns), conns
        table = d.table()[("TCP", vs(bed))]["dests"]
        assert set(table) == {rs(bed, "rs1"), rs(bed, "rs3")}
        assert table[rs(bed, "rs1")]["weight"] == 3
        new = requests(bed, 40)
        assert "rs2" not in new and set(new) == {"rs1", "rs3"}, new
        others = [i for i in range(len(ll.answers)) if i not in on_rs2]
        before = [len(ll.answers[i]) for i in others]
        deadline = time.monotonic() + 5
        while (any(len(ll.answers[i]) < b + 2 for i, b in zip(others, before))
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        ll.stop()
    ll.errors = []                   # the deleted server's, checked above
    ll.answers = [a for i, a in enumerate(ll.answers) if i not in on_rs2]
    ll.check(min_answers=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_zero_drains(bed, start, backend):
    d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr", udp=False)),
              backend=backend)
    ll = LongLived(bed, 6)
    try:
        assert collections.Counter(ll.servers) == {"rs1": 2, "rs2": 2, "rs3": 2}, ll.servers
        d.admin("-e", "-t", vs(bed), "-r", rs(bed, "rs1"), fwd_flag(bed), "-w", "0")
        new = requests(bed, 30)
        assert "rs1" not in new and sum(new.values()) == 30, new    # no new connections
        ll.wait_rounds(3)                                          # old ones carry on
        dests = d.table()[("TCP", vs(bed))]["dests"]
        assert dests[rs(bed, "rs1")]["weight"] == 0
        assert dests[rs(bed, "rs1")]["active"] == 2, dests       # ...and are still counted
    finally:
        ll.stop()
    ll.check(min_answers=4)
    # once its clients closed them, the quiesced server has no active connection left
    deadline = time.monotonic() + 3
    while True:
        dests = d.table()[("TCP", vs(bed))]["dests"]
        if dests[rs(bed, "rs1")]["active"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert dests[rs(bed, "rs1")]["active"] == 0, dests


@pytest.mark.parametrize("backend", BACKENDS)
def test_udp_flows_stick(bed, start, counters, backend):
    d = start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr")), backend=backend)
    socks = [bed.socket(socket.SOCK_DGRAM) for _ in range(9)]
    try:
        seen = [[bed.udp_ask(s, b"flow%d-%d" % (i, k)) for k in range(8)]
                for i, s in enumerate(socks)]
        for k in range(2):                     # and again, interleaved across the flows
            for i, s in enumerate(socks):
                seen[i].append(bed.udp_ask(s, b"again%d-%d" % (i, k)))
    finally:
        for s in socks:
            s.close()
    for i, names in enumerate(seen):
        assert set(names) == {names[0]}, (i, names)               # one flow, one server
    assert collections.Counter(n[0] for n in seen) == {"rs1": 3, "rs2": 3, "rs3": 3}
    key = ("UDP", vs(bed, UDP_PORT))
    st = settle(d, 9, key)[key]
    sent = counters.read()
    assert st["conns"] == 9
    assert (st["inpkts"], st["inbytes"]) == sent["udp_out"] == (90, st["inbytes"])
    if bed.mode == "nat":
        assert (st["outpkts"], st["outbytes"]) == sent["udp_in"] == (90, st["outbytes"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sighup_reload_keeps_established(bed, start, backend):
    path = bed.write_rules(bed.rules({"rs1": 1, "rs2": 1}, sched="rr", udp=False))
    d = start("--rules", path, backend=backend)
    ll = LongLived(bed, 4)
    try:
        ll.wait_rounds(2)
        bed.write_rules(bed.rules({"rs1": 2, "rs2": 1, "rs3": 1}, sched="rr", udp=False))
        n_lines = len(d.lines)
        d.send(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while not any("reload" in ln for ln in d.lines[n_lines:]):
            assert time.monotonic() < deadline, d.stderr
            time.sleep(0.05)
        ll.wait_rounds(3)
        dests = d.table()[("TCP", vs(bed))]["dests"]
        assert set(dests) == {rs(bed, n) for n in ("rs1", "rs2", "rs3")}, dests
        assert dests[rs(bed, "rs1")]["weight"] == 2
        assert "rs3" in requests(bed, 12)
        ll.wait_rounds(2)
    finally:
        ll.stop()
    ll.check(min_answers=7)
    assert d.proc.poll() is None, d.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_signal_leaves_nothing(bed, start, backend, sig):
    # the one-line quick start: --vip/--rs instead of a rules file
    args = ["--vip", f"tcp:{vs(bed)}", "-s", "wrr"]
    for name, w in (("rs1", 1), ("rs2", 2)):
        args += ["--rs", f"{rs(bed, name)}@{w}"]
    d = start(*args, backend=backend)
    assert bed.xdp_attached() != [] if backend == "xdp" else "fastlvs" in bed.nft_tables()
    assert set(requests(bed, 6)) == {"rs1", "rs2"}
    rc = d.stop(sig)
    assert rc == 0, d.stderr
    assert_clean(bed, d)
    # the kernel has the VIP again: nothing of fastlvs's steering is left
    with pytest.raises(OSError):
        bed.http_get(timeout=0.5)


def _mac(ns, dev):
    import json

    from fastlvs.lab.testbed import run
    return json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]["address"]


def _tap(bed, port):
    """An AF_PACKET socket on a bridge port of the switch namespace (sees what the bridge
    sends to the host behind that port)."""
    from fastlvs.lab.testbed import in_ns
    with in_ns(bed.switch):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))   # ETH_P_ALL
        s.bind((port, 0))
    s.setblocking(False)
    return s


def _outgoing_ipv4(sock):
    """IPv4 frames the port transmitted (towards its host), as (eth dst, eth src, IP bytes)."""
    out = []
    for _ in range(20000):
        try:
            fr, addr = sock.recvfrom(65536)
        except BlockingIOError:
            return out
        if addr[2] == socket.PACKET_OUTGOING and fr[12:14] == b"\x08\x00":
            mac = lambda b: ":".join(f"{x:02x}" for x in b)     # noqa: E731
            out.append((mac(fr[0:6]), mac(fr[6:12]), fr[14:]))
    return out


def _ip(pkt):
    """(proto, src, dst, sport, dport) of an IPv4 packet with a 20-byte header."""
    return (pkt[9], socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]),
            int.from_bytes(pkt[20:22], "big"), int.from_bytes(pkt[22:24], "big"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_on_the_wire(bed, start, backend):
    # What the bridge carries, per mode, as LVS users expect to see it with tcpdump:
    #  DR : to the RS the client's packet unchanged (client -> VIP:80), only the MACs
    #       rewritten (director -> RS); the RS answers the client directly from the VIP.
    #  TUN: to the RS IPv4-in-IPv4 from the director's address to the RIP around the
    #       client's packet to VIP:80; the RS (after its XDP decapsulator) answers directly.
    #  NAT: to the RS client -> RIP:80 from the director's RS-side MAC; to the client
    #       VIP:80 -> client from the director's client-side MAC.
    from fastlvs.lab.testbed import CLIENT_IP, DIRECTOR_IP
    start("--rules", bed.write_rules(bed.rules([1, 1, 1], sched="rr", udp=False)),
          backend=backend)
    rs_taps = [_tap(bed, f"pr{i + 1}") for i in range(len(bed.rs))]
    client_tap = _tap(bed, "pc")
    try:
        got = requests(bed, 6)
        time.sleep(0.2)
        to_rs = [_outgoing_ipv4(s) for s in rs_taps]
        to_client = _outgoing_ipv4(client_tap)
    finally:
        for s in rs_taps + [client_tap]:
            s.close()
    assert dict(got) == {"rs1": 2, "rs2": 2, "rs3": 2}
    d_lan = _mac(bed.director, bed.lan_if)
    d_rs = _mac(bed.director, bed.rs_if) if bed.rs_if else d_lan
    rs_macs = [_mac(ns, "eth0") for ns in bed.rs]
    for i, frames in enumerate(to_rs):
        # frames the director forwarded to this RS (the switch also carries ARP etc.)
        fwd = [(dst, src, p) for dst, src, p in frames if src == d_rs and dst == rs_macs[i]
               and p[9] in (4, 6)]
        assert len(fwd) >= 2 * 3, (bed.rs_names[i], len(frames))    # >= SYN, GET, ACK x 2
        for _, _, p in fwd:
            if bed.mode == "tun":
                assert p[9] == 4 and _ip(p)[1:3] == (DIRECTOR_IP, bed.rips[i])
                p = p[20:]
            expect_dst = bed.rips[i] if bed.mode == "nat" else bed.vip
            assert _ip(p)[:3] == (6, CLIENT_IP, expect_dst) and _ip(p)[4] == HTTP_PORT
    answers = [(src, p) for _, src, p in to_client if p[9] == 6 and _ip(p)[3] == HTTP_PORT]
    assert answers
    for src, p in answers:
        assert _ip(p)[1:3] == (bed.vip, CLIENT_IP)
        if bed.mode == "nat":
            assert src == d_lan                    # replies come back through the director
        else:
            assert src in rs_macs                  # ...or straight from the real servers


def _threaded(bed, ifname):
    from fastlvs.lab.testbed import run
    return run("ip", "netns", "exec", bed.director, "cat",
               f"/sys/class/net/{ifname}/threaded").stdout.strip()


def _set_threaded(bed, ifname, value, check=True):
    from fastlvs.lab.testbed import run
    run("ip", "netns", "exec", bed.director, "sh", "-c",
        f"echo {value} > /sys/class/net/{ifname}/threaded", check=check)


def _napi_threads(ifname):
    from fastlvs.system.napi import napi_threads as threads
    return set(threads(ifname))


@pytest.mark.parametrize("was_threaded", [False, True])
def test_cpu_option_places_napi_and_restores_it(bed, start, was_threaded):
    from fastlvs.lab.testbed import run
    # --cpu N: the daemon on N; the NAPI of the interfaces it serves threaded, on N, at nice
    # 19 (so under a flood it does not starve the daemon it feeds); all of it undone at exit.
    cpu = max(os.sched_getaffinity(0))
    ifs = [bed.lan_if] + ([bed.rs_if] if bed.rs_if else [])
    if was_threaded:
        for i in ifs:      # a veth has NAPI (to thread) without XDP only with GRO on
            run("ip", "netns", "exec", bed.director, "ethtool", "-K", i, "gro", "on")
            _set_threaded(bed, i, 1)
    try:
        before = {i: _threaded(bed, i) for i in ifs}
        old = set().union(*(_napi_threads(i) for i in ifs))
        d = start("--vip", f"tcp:{vs(bed)}", "--rs", rs(bed, "rs1"), "--rs", rs(bed, "rs2"),
                  "--cpu", str(cpu))
        assert set(requests(bed, 4)) == {"rs1", "rs2"}
        assert os.sched_getaffinity(d.proc.pid) == {cpu}
        for i in ifs:
            assert _threaded(bed, i) == "1", i
        placed = set().union(*(_napi_threads(i) for i in ifs))
        if not was_threaded:
            placed -= old          # a same-named interface elsewhere keeps its own threads
        assert placed, "no NAPI thread to place"
        for pid in placed:
            assert os.sched_getaffinity(pid) == {cpu}
            assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        assert d.stop(signal.SIGTERM) == 0, d.stderr
        assert {i: _threaded(bed, i) for i in ifs} == before
        for pid in placed:
            try:
                assert os.getpriority(os.PRIO_PROCESS, pid) == 0
                assert os.sched_getaffinity(pid) != {cpu} or os.cpu_count() == 1
            except ProcessLookupError:
                assert not was_threaded      # threads of a mode we switched on end with it
    finally:
        for i in ifs:          # fails harmlessly where no NAPI is left to switch
            _set_threaded(bed, i, 0, check=False)
            run("ip", "netns", "exec", bed.director, "ethtool", "-K", i, "gro", "off")


@pytest.mark.parametrize("jumbo", [False, True])
def test_counters_show_the_rings_and_their_frame_size(bed, start, jumbo):
    # `admin --counters` has a section per ring. The UMEM's chunks are 2048 bytes when every
    # interface's frames fit one (faster), 4096 when any interface of the namespace could
    # bring a bigger frame (here a veth with MTU 9000).
    import json

    from fastlvs.lab.testbed import run
    if jumbo:
        run("ip", "-n", bed.director, "link", "add", "jumbo0", "mtu", "9000", "type", "veth",
            "peer", "name", "jumbo1")
    try:
        d = start("--vip", f"tcp:{vs(bed)}", "--rs", rs(bed, "rs1"), "--rs", rs(bed, "rs2"))
        assert set(requests(bed, 4)) == {"rs1", "rs2"}
        ports = json.loads(d.admin("--counters").stdout)["ports"]
        lan = ports[bed.lan_if]
        assert lan["backend"] == "xdp" and lan["rx"] >= 4 * 3      # SYN, ACK, FIN at least
        assert lan["redirected"] >= lan["rx"] and lan["rx_ring_full"] == 0
        assert {p["umem_frame_size"] for p in ports.values()} == {4096 if jumbo else 2048}
    finally:
        if jumbo:
            run("ip", "-n", bed.director, "link", "del", "jumbo0", check=False)


def test_cpu_option_where_napi_cannot_be_threaded(bed, start):
    # AF_PACKET on a veth without XDP or GRO: the interface has no NAPI to thread. --cpu
    # still pins the daemon, says in one line what it could not place, and forwards.
    cpu = max(os.sched_getaffinity(0))
    d = start("--vip", f"tcp:{vs(bed)}", "--rs", rs(bed, "rs1"), "--cpu", str(cpu),
              backend="packet")
    assert set(requests(bed, 3)) == {"rs1"}
    assert os.sched_getaffinity(d.proc.pid) == {cpu}
    assert _threaded(bed, bed.lan_if) == "0"
    assert any(f"--cpu: {bed.lan_if}: NAPI not placed" in ln for ln in d.lines), d.lines
