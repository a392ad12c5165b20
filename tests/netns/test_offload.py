"""The XDP offload against the engine: the steering program is loaded with the engine's
offload map and run once per frame (BPF_PROG_TEST_RUN: nothing attached, no traffic leaves
this process). Frames of an offloaded connection must come out of the program byte for byte
as the engine writes them (DR, NAT both ways, TUN; TCP and UDP; checksums recomputed with
scapy); whatever changes the state or the program does not handle must come back as
XDP_PASS untouched (the socket, the core); a replay of the same traffic with and without the
offload must leave every counter and the connection table the same; the core's expiry and
changes take entries out of the map. Needs root (BPF)."""
from __future__ import annotations

import ctypes
import ipaddress
import mmap
import os
import platform
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tests.core import helpers as H
from tests.core.packets import CLIENT, RS, VIP, reply_tcp, reply_udp, tcp, udp

if os.geteuid() != 0:
    pytest.skip("needs root (BPF)", allow_module_level=True)
core = pytest.importorskip("fastlvs.engine._core")
if not core.XDP_BUILT:
    pytest.skip(core.XDP_MISSING, allow_module_level=True)

XDP_PASS, XDP_TX, XDP_REDIRECT = 2, 3, 4
S = 1_000_000_000
PROBE = 4                   # FL_OFF_PROBE: buckets a flow may live in from its home one
SLOT = struct.Struct("<IIIHHBBHIQ")   # struct fl_off_slot: seq, key, kind, rw, conn, seen


def steer_key(proto, addr, port) -> bytes:
    """struct fl_steer_key (bpf/steer.bpf.c): family, proto, port (network order), addr[4]."""
    return bytes([4, proto]) + port.to_bytes(2, "big") + ipaddress.ip_address(addr).packed \
        + bytes(12)


def setup(fwd, proto=6, rport=None):
    """An engine with the offload on and the keys the program steers by."""
    vport = 80 if proto == 6 else 53
    e = H.engine(fwd=fwd, proto=proto, vport=vport, rport=rport)
    e.offload_enable()
    svc = steer_key(proto, VIP, vport)
    rs = steer_key(proto, RS[0], rport or vport) if fwd == "nat" else None
    return e, svc, rs


def xdp(e, frame, svc, rs=None):
    return e.offload_test_run(frame, svc, rs)


def open_tcp(e, fwd, rport=8080):
    """Handshake through the engine: client SYN, (NAT: the server's SYN-ACK), client ACK."""
    now = time.monotonic_ns()
    assert e.process([tcp("S")], now)
    if fwd == "nat":
        assert e.process([reply_tcp("SA", rport=rport)], now)
    assert e.process([tcp("A")], now)


def engine_bytes(e, frame):
    out = e.process([frame], time.monotonic_ns())
    assert len(out) == 1
    return out[0][2]


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_tcp_established_frames_leave_the_program_as_the_engine_writes_them(fwd):
    rport = 8080 if fwd == "nat" else None
    e, svc, rs = setup(fwd, rport=rport)
    open_tcp(e, fwd)
    assert e.offload_conns() == [(CLIENT, 40000, 80)]
    for payload in (b"", b"GET / HTTP/1.0\r\n\r\n", b"x" * 1001):
        f = tcp("A", payload=payload, ttl=64)          # DF set: TUN's outer id is 0
        action, got = xdp(e, f, svc, rs)
        want = engine_bytes(e, f)
        assert action == XDP_REDIRECT                    # the dest's ifindex is not ours
        assert got == want
        assert H.checksums_ok(got)
        inner = Ether(got).getlayer(IP, 2 if fwd == "tun" else 1)
        assert inner.ttl == 63
        if fwd == "nat":
            assert (inner.dst, inner[TCP].dport) == (RS[0], 8080)
    if fwd == "nat":
        r = reply_tcp("A", payload=b"hello")
        action, got = xdp(e, r, svc, rs)
        assert action == XDP_REDIRECT
        assert got == engine_bytes(e, r)
        assert H.checksums_ok(got)
        assert (Ether(got)[IP].src, Ether(got)[TCP].sport) == (VIP, 80)


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
@pytest.mark.parametrize("zero_csum", [False, True])
def test_udp_frames_leave_the_program_as_the_engine_writes_them(fwd, zero_csum):
    rport = 5353 if fwd == "nat" else None
    e, svc, rs = setup(fwd, proto=17, rport=rport)
    now = time.monotonic_ns()
    e.process([udp(zero_csum=zero_csum)], now)
    if fwd == "nat":
        # a NAT conn is offloaded once both directions were seen
        assert e.offload_conns() == []
        e.process([reply_udp()], now)
    assert e.offload_conns() == [(CLIENT, 40000, 53)]
    f = udp(zero_csum=zero_csum, df=True)
    action, got = xdp(e, f, svc, rs)
    assert action == XDP_REDIRECT
    assert got == engine_bytes(e, f)
    assert H.checksums_ok(got)
    if zero_csum:
        assert Ether(got).getlayer(UDP).chksum == 0       # "no checksum" stays none
    if fwd == "nat":
        r = reply_udp()
        action, got = xdp(e, r, svc, rs)
        assert (action, got) == (XDP_REDIRECT, engine_bytes(e, r))


def test_tun_without_df_differs_from_the_engine_only_in_the_outer_id():
    """The engine numbers outer ids of packets without DF from its own counter, the program
    per CPU: the rest of the bytes are the engine's, checksums valid."""
    e, svc, _ = setup("tun", proto=17)
    e.process([udp()], time.monotonic_ns())
    f = udp(df=False)
    action, got = xdp(e, f, svc)
    want = engine_bytes(e, f)
    assert action == XDP_REDIRECT and len(got) == len(want)
    assert H.checksums_ok(got)
    g, w = Ether(got), Ether(want)
    assert g[IP].flags == w[IP].flags == 0
    g[IP].id = w[IP].id = 0
    g[IP].chksum = w[IP].chksum = 0
    assert bytes(g) == bytes(w)


def test_the_same_interface_is_answered_with_xdp_tx():
    e, svc, _ = setup("dr")
    e.set_dest(1, 1, RS[0], 80, "dr", H.RS_MAC[0], ifindex=1)        # lo: a real device
    open_tcp(e, "dr")
    action, _ = e.offload_test_run(tcp("A"), svc, None, ingress_ifindex=1)
    assert action == XDP_TX


def _passed_cases():
    base = Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:01")
    ip = IP(src=CLIENT, dst=VIP, flags="DF")
    partial = bytearray(tcp("A", payload=b"abcd"))
    # the pseudo-header sum a sender with checksum offload leaves in the field
    words = ipaddress.ip_address(CLIENT).packed + ipaddress.ip_address(VIP).packed
    ps = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, 8, 2))
    ps += 6 + len(partial) - 14 - 20
    while ps >> 16:
        ps = (ps & 0xFFFF) + (ps >> 16)
    partial[14 + 20 + 16:14 + 20 + 18] = ps.to_bytes(2, "big")
    bad_ip = bytearray(tcp("A"))
    bad_ip[14 + 10] ^= 0xFF
    return {
        "SYN": tcp("S"), "FIN": tcp("FA"), "RST": tcp("RA"), "no ACK": tcp("P"),
        "TTL 1": tcp("A", ttl=1),
        "IP options": bytes(base / IP(src=CLIENT, dst=VIP, options=b"\x01\x01\x01\x00")
                            / TCP(sport=40000, dport=80, flags="A")),
        "first fragment": bytes(base / IP(src=CLIENT, dst=VIP, flags="MF")
                                / TCP(sport=40000, dport=80, flags="A") / (b"x" * 64)),
        "802.1Q": bytes(base / Dot1Q(vlan=5) / ip / TCP(sport=40000, dport=80, flags="A")),
        "unknown flow": tcp("A", sport=40001),
        "partial checksum": bytes(partial),
        "bad IP checksum": bytes(bad_ip),
    }


PASSED = _passed_cases()


@pytest.mark.parametrize("case", sorted(PASSED))
def test_what_the_core_must_see_is_passed_untouched(case):
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    frame = PASSED[case]
    action, got = xdp(e, frame, svc)
    # no socket in the test run's fl_xsks: the redirect to it falls back to XDP_PASS
    assert action == XDP_PASS
    assert got == frame
    e.offload_sync()
    assert e.offload_stats()["frames"] == 0


@pytest.mark.parametrize("flags,state", [("FA", "FIN_WAIT"), ("RA", "CLOSE")])
def test_fin_and_rst_reach_the_core_and_take_the_conn_out(flags, state):
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    for _ in range(3):
        assert xdp(e, tcp("A"), svc)[0] == XDP_REDIRECT
    f = tcp(flags)
    assert xdp(e, f, svc) == (XDP_PASS, f)
    e.process([f], time.monotonic_ns())                 # the socket hands it to the core
    (c,) = e.conns()
    assert c["state"] == state
    assert e.offload_conns() == []
    # what follows is the core's again (it moves the timers of the closing states)
    assert xdp(e, tcp("A"), svc)[0] == XDP_PASS
    # SYN, ACK and FIN by the core, three by the program (folded in when the entry left)
    assert e.dest_stats(1)["inpkts"] == 2 + 3 + 1


def test_expiry_takes_the_entry_out_and_last_seen_keeps_it_alive():
    e, svc, _ = setup("dr")
    t0 = time.monotonic_ns()
    e.process([tcp("S")], t0 - 800 * S)
    e.process([tcp("A")], t0 - 800 * S)                # established 800 s ago by our clock
    assert e.offload_conns()
    # ... but the program forwarded a packet just now: the 900 s run from then
    assert xdp(e, tcp("A"), svc)[0] == XDP_REDIRECT
    assert e.run_timers(t0 + 150 * S) == 0
    assert e.offload_conns() and e.conns(t0 + 150 * S)[0]["expires"] >= 740
    # no packet for longer than the timeout: the core expires it and the map forgets it
    assert e.run_timers(t0 + 1000 * S) == 1
    assert e.offload_conns() == [] and e.conn_count() == 0
    assert xdp(e, tcp("A"), svc)[0] == XDP_PASS
    assert e.offload_stats()["removed"] == 1


def test_weight_zero_keeps_the_entry_and_a_deleted_server_takes_it_out():
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    e.set_dest(1, 1, RS[0], 80, "dr", H.RS_MAC[0], ifindex=10, weight=0)
    assert xdp(e, tcp("A"), svc)[0] == XDP_REDIRECT
    e.del_dest(1)                                        # expire_nodest_conn = 0
    assert e.offload_conns() == [] and e.conn_count() == 1
    f = tcp("A")
    assert xdp(e, f, svc) == (XDP_PASS, f)
    assert e.process([f], time.monotonic_ns()) == []    # the core drops it, as IPVS does
    assert e.stats()["dest_unavailable"] == 1


@pytest.mark.parametrize("fwd", ["dr", "nat", "tun"])
def test_a_new_mac_for_the_server_is_followed_in_place(fwd):
    """The dest's MAC lives in its rewrite entry, not in each conn's slot: a new MAC is
    written there and the conns stay offloaded, their next frames sent to the new MAC with
    the engine's bytes."""
    rport = 8080 if fwd == "nat" else None
    e, svc, rs = setup(fwd, rport=rport)
    open_tcp(e, fwd)
    e.set_dest(1, 1, RS[0], rport or 80, fwd, "02:00:00:00:09:99", ifindex=10)
    assert e.offload_conns() == [(CLIENT, 40000, 80)]
    assert e.offload_stats()["removed"] == 0
    f = tcp("A", payload=b"after")
    action, got = xdp(e, f, svc, rs)
    assert action == XDP_REDIRECT and Ether(got).dst == "02:00:00:00:09:99"
    assert got == engine_bytes(e, f)
    assert H.checksums_ok(got)


def test_a_new_method_for_the_server_takes_its_conns_out_until_the_core_sees_them_again():
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    e.set_dest(1, 1, RS[0], 80, "tun", H.RS_MAC[0], ifindex=10)
    assert e.offload_conns() == []
    assert xdp(e, tcp("A"), svc)[0] == XDP_PASS
    e.process([tcp("A")], time.monotonic_ns())           # the core forwards and installs
    action, got = xdp(e, tcp("A"), svc)
    # the conn keeps the method it was made with
    assert action == XDP_REDIRECT and got == engine_bytes(e, tcp("A"))
    assert Ether(got)[IP].proto == 6


def test_the_table_is_sized_from_the_capacity():
    e = core.Engine(capacity=5000)
    e.offload_enable()
    # NAT: two directions per entry, and the load at most 50%: 4 slots per conn entry, in
    # a power of two of 64-byte buckets (2 slots), plus the configuration and probe tail
    slots = e.offload_max_entries
    assert slots >= 4 * 5000 and slots & (slots - 1) == 0 and slots < 8 * 5000
    assert e.offload_stats()["memory"] >= (slots // 2 + PROBE) * 64


def _engine(offload: bool):
    """3 DR clients on :80, 2 NAT clients on :443, UDP to a TUN service on :53."""
    e = core.Engine(capacity=4096, local_ip=H.LOCAL_IP, local_mac=H.LOCAL_MAC)
    e.set_service(1, 6, VIP, 80)
    e.set_dest(1, 1, RS[0], 80, "dr", H.RS_MAC[0], ifindex=10)
    e.set_service(2, 6, VIP, 443)
    e.set_dest(2, 2, RS[1], 8443, "nat", H.RS_MAC[1], ifindex=11)
    e.set_service(3, 17, VIP, 53)
    e.set_dest(3, 3, RS[2], 53, "tun", H.RS_MAC[2], ifindex=12)
    e.set_gateway_mac(H.GW_MAC, ifindex=2)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    if offload:
        e.offload_enable()
    return e


def _traffic():
    frames = []
    for c in range(3):
        frames.append((80, tcp("S", sport=41000 + c)))
        frames += [(80, tcp("A", sport=41000 + c, payload=b"p" * (10 * k))) for k in range(6)]
    frames.append((80, tcp("FA", sport=41000)))
    frames.append((80, tcp("A", sport=41000)))
    for c in range(2):
        frames.append((443, tcp("S", sport=42000 + c, dport=443)))
        frames.append((None, reply_tcp("SA", rs=RS[1], rport=8443, cport=42000 + c)))
        for k in range(5):
            frames.append((443, tcp("A", sport=42000 + c, dport=443, payload=b"q" * k)))
            frames.append((None, reply_tcp("A", rs=RS[1], rport=8443, cport=42000 + c,
                                           payload=b"r" * (k + 1))))
    frames.append((None, reply_tcp("RA", rs=RS[1], rport=8443, cport=42001)))
    frames += [(53, udp(sport=43000, payload=b"u" * k, df=True)) for k in range(8)]
    return frames


def test_a_replay_with_and_without_the_offload_counts_and_lists_the_same():
    """Each frame goes to the engine without offload, and to the program of the engine with
    it (then to that engine when the program passes it), at the same moment."""
    keys = {80: steer_key(6, VIP, 80), 443: steer_key(6, VIP, 443), 53: steer_key(17, VIP, 53)}
    rs_key = steer_key(6, RS[1], 8443)
    on, off = _engine(True), _engine(False)
    out_on, out_off = [], []
    for port, f in _traffic():
        action, got = on.offload_test_run(f, keys[port] if port else bytes(20), rs_key)
        now = time.monotonic_ns()
        if action in (XDP_TX, XDP_REDIRECT):
            out_on.append(got)
        else:
            out_on += [b for _, _, b in on.process([f], now)]
        out_off += [b for _, _, b in off.process([f], now)]
    assert out_on == out_off
    on.offload_sync()
    assert on.offload_stats()["frames"] > 30                # the program did forward
    assert on.stats() == off.stats()
    for sid in (1, 2, 3):
        assert on.service_stats(sid) == off.service_stats(sid)
        assert on.dest_stats(sid) == off.dest_stats(sid)
    now = time.monotonic_ns()

    def table(e):
        return sorted((c["caddr"], c["cport"], c["vport"], c["state"], c["raddr"], c["rport"],
                       c["expires"]) for c in e.conns(now))
    t_on, t_off = table(on), table(off)
    assert len(t_on) == 6
    assert [r[:-1] for r in t_on] == [r[:-1] for r in t_off]
    # timers run from each last packet: the program's clock read and ours differ by a few ms
    assert all(abs(a[-1] - b[-1]) <= 1 for a, b in zip(t_on, t_off))


def test_metrics_export_the_offload_map():
    # fastlvs_offload_*: what the engine says of its map, parsed as Prometheus reads it
    from prometheus_client.parser import text_string_to_metric_families

    from fastlvs.control.metrics import Metrics, OffloadCollector

    e, _, _ = setup("dr")
    open_tcp(e, "dr")
    m = Metrics()
    m.register("offload", OffloadCollector(e))

    def scrape():
        text = m.render(m.snapshot()).decode()
        return {(s.name, s.labels.get("event")): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}
    got = scrape()
    st = e.offload_stats()
    assert st["installed"] == 1
    assert got["fastlvs_offload_enabled", None] == 1
    assert got["fastlvs_offload_entries", None] == 1
    assert got["fastlvs_offload_map_entries_max", None] == e.offload_max_entries
    assert got["fastlvs_offload_conns_total", "installed"] == 1
    assert got["fastlvs_offload_conns_total", "removed"] == 0
    e.offload_disable()
    got = scrape()
    assert got["fastlvs_offload_enabled", None] == 0
    assert got["fastlvs_offload_entries", None] == 0
    assert got["fastlvs_offload_conns_total", "removed"] == 1


# -- the flow table, read and written as the program sees it (mmapped) -------------------------
def table(e):
    """The engine's fl_offload array, mapped here: [0] the configuration, then buckets."""
    n = e.offload_max_entries // 2 + PROBE
    size = -(-n * 64 // mmap.PAGESIZE) * mmap.PAGESIZE
    return mmap.mmap(e.offload_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def config(m):
    magic, mask, s0, s1 = struct.unpack_from("<IIQQ", m, 0)
    assert magic == 0x464C4F31
    return mask, (s0, s1)


def raw(addr=None, port=None) -> int:
    """An address or port as the program loads it from the packet (x86: little-endian)."""
    if addr is not None:
        return int.from_bytes(ipaddress.ip_address(addr).packed, "little")
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def home(m, saddr, daddr, sport, dport, proto) -> int:
    """The flow's home bucket: off_hash() of bpf/steer.bpf.c, computed here."""
    mask, seed = config(m)
    m64 = (1 << 64) - 1
    ports = raw(port=sport) | raw(port=dport) << 16
    h = ((((raw(saddr) << 32) | raw(daddr)) ^ seed[0]) * 0x9E3779B97F4A7C15) & m64
    h ^= h >> 32
    h ^= ((ports << 32) | proto) ^ seed[1]
    h = (h * 0xC2B2AE3D27D4EB4F) & m64
    h ^= h >> 29
    return 1 + ((h & 0xFFFFFFFF) & mask)


def window(m, *key):
    """The slots (index, fields) of the flow's probe window, in probe order."""
    b = home(m, *key)
    return [(g, SLOT.unpack_from(m, g * 32)) for g in range(2 * b, 2 * (b + PROBE))]


def find(m, saddr, daddr, sport, dport, proto):
    want = (raw(saddr), raw(daddr), raw(port=sport), raw(port=dport), proto)
    hits = [(g, f) for g, f in window(m, saddr, daddr, sport, dport, proto)
            if f[5] != 0 and f[1:6] == want]
    assert len(hits) <= 1
    return hits[0] if hits else (None, None)


def test_a_conn_lives_within_the_probe_window_of_its_hash():
    """The engine's hash and the program's (recomputed here) agree: the program finds the
    flow, and so does this search, in its window only."""
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    m = table(e)
    g, f = find(m, CLIENT, VIP, 40000, 80, 6)
    assert g is not None
    seq, *_, kind, rw, conn, seen = f
    assert seq % 2 == 0 and seq > 0 and kind == 1 and rw >= 1
    assert seen == 0                                     # nothing forwarded by the program yet
    assert xdp(e, tcp("A"), svc)[0] == XDP_REDIRECT
    assert SLOT.unpack_from(m, g * 32)[-1] > 0           # the program stamped its last packet


def test_engines_seed_their_hashes_differently():
    e1, _, _ = setup("dr")
    e2, _, _ = setup("dr")
    (mask1, seed1), (mask2, seed2) = config(table(e1)), config(table(e2))
    assert mask1 == mask2 and seed1 != seed2
    assert seed1 != (0, 0) and seed2 != (0, 0)
    for e in (e1, e2):
        open_tcp(e, "dr")
    assert find(table(e1), CLIENT, VIP, 40000, 80, 6)[0] is not None
    assert find(table(e2), CLIENT, VIP, 40000, 80, 6)[0] is not None


def test_a_slot_being_written_is_a_miss():
    """A slot whose sequence word is odd (the engine writing it) is not used: the frame goes
    to the socket untouched; even again (a write finished), the program forwards."""
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    m = table(e)
    g, f = find(m, CLIENT, VIP, 40000, 80, 6)
    frame = tcp("A", payload=b"torn")
    struct.pack_into("<I", m, g * 32, f[0] + 1)
    assert xdp(e, frame, svc) == (XDP_PASS, frame)
    struct.pack_into("<I", m, g * 32, f[0] + 2)
    action, got = xdp(e, frame, svc)
    assert action == XDP_REDIRECT and got == engine_bytes(e, frame)
    e.offload_sync()
    assert e.offload_stats()["frames"] == 1


def test_a_full_probe_window_leaves_the_conn_to_the_engine():
    """No free slot within the window of the flow's home bucket: the install is refused and
    counted, the engine forwards the conn, and it is installed once a slot is free."""
    e, svc, _ = setup("dr")
    m = table(e)
    slots = window(m, CLIENT, VIP, 40000, 80, 6)
    for n, (g, _) in enumerate(slots):             # other flows (kind DR, rewrite 1)
        SLOT.pack_into(m, g * 32, 2, raw("10.9.9.9") + n, raw(VIP), 1, 1, 6, 1, 1, 0, 0)
    now = time.monotonic_ns()
    assert e.process([tcp("S")], now)
    out = e.process([tcp("A")], now)
    assert len(out) == 1 and Ether(out[0][2]).dst == H.RS_MAC[0].lower()
    st = e.offload_stats()
    assert e.offload_conns() == [] and st["installed"] == 0 and st["refused"] >= 1
    assert xdp(e, tcp("A"), svc)[0] == XDP_PASS
    g, _ = slots[5]
    SLOT.pack_into(m, g * 32, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0)         # one becomes free
    assert len(e.process([tcp("A")], time.monotonic_ns())) == 1
    assert e.offload_conns() == [(CLIENT, 40000, 80)]
    assert find(m, CLIENT, VIP, 40000, 80, 6)[0] == g
    assert xdp(e, tcp("A"), svc)[0] == XDP_REDIRECT


def test_a_removed_conn_comes_back_in_the_same_slot():
    """Expired, a UDP conn's slot is cleared (kind 0, its sequence word moved on by a
    whole write); the flow's next datagram makes a new conn that takes the same slot, and
    the program forwards it as the engine does."""
    e, svc, _ = setup("dr", proto=17)
    t0 = time.monotonic_ns()
    e.process([udp()], t0)
    m = table(e)
    g, f = find(m, CLIENT, VIP, 40000, 53, 17)
    assert g is not None
    assert e.run_timers(t0 + 1000 * S) == 1
    cleared = SLOT.unpack_from(m, g * 32)
    assert cleared[6] == 0 and cleared[0] == f[0] + 2
    assert xdp(e, udp(df=True), steer_key(17, VIP, 53))[0] == XDP_PASS
    e.process([udp()], t0 + 1001 * S)
    g2, f2 = find(m, CLIENT, VIP, 40000, 53, 17)
    assert g2 == g and f2[0] == f[0] + 4
    frame = udp(df=True, payload=b"again")
    action, got = xdp(e, frame, steer_key(17, VIP, 53))
    assert action == XDP_REDIRECT and got == engine_bytes(e, frame)


def test_a_reused_dest_id_starts_its_counters_from_zero():
    """The program counts per rewrite entry (dest, direction); a dest id deleted and set
    again for another server must count only its own packets, as without the offload."""
    engines = []
    for offload in (True, False):
        e = H.engine(fwd="dr", proto=17, vport=53)
        if offload:
            e.offload_enable()
        engines.append(e)
    on, off = engines
    key = steer_key(17, VIP, 53)
    t0 = time.monotonic_ns()

    def send(frame, now):
        for e in engines:
            if e is on:
                action, _ = xdp(e, frame, key)
                if action == XDP_REDIRECT:
                    continue
            e.process([frame], now)

    for k in range(4):
        send(udp(payload=b"a" * k), t0)
    for e in engines:
        e.del_dest(1)
        assert e.run_timers(t0 + 1000 * S) == 1
        e.set_dest(1, 1, RS[1], 53, "dr", H.RS_MAC[1], ifindex=11)
    for k in range(3):
        send(udp(sport=40001, payload=b"b" * k), t0 + 1001 * S)
    on.offload_sync()
    assert on.offload_stats()["frames"] >= 4
    assert on.dest_stats(1) == off.dest_stats(1)
    assert on.dest_stats(1)["inpkts"] == 3
    assert on.stats() == off.stats()


def rewrites(e):
    """The engine's fl_off_rw array, mapped here (its map id is in the table's entry 0)."""
    if platform.machine() != "x86_64":
        pytest.skip("the bpf syscall's number here is x86_64's")
    rw_id = struct.unpack_from("<I", table(e), 24)[0]
    attr = (ctypes.c_uint8 * 128)()                  # union bpf_attr: map_id first
    struct.pack_into("<I", attr, 0, rw_id)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(321, 14, attr, 128)            # __NR_bpf, BPF_MAP_GET_FD_BY_ID
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_MAP_GET_FD_BY_ID")
    try:
        return mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def test_a_rewrite_entry_being_written_is_a_miss():
    """The dest's rewrite entry (its MACs, shared by its conns) under its own sequence
    word: odd, the program passes the frame untouched; even again, it forwards."""
    e, svc, _ = setup("dr")
    open_tcp(e, "dr")
    m = table(e)
    _, f = find(m, CLIENT, VIP, 40000, 80, 6)
    r = rewrites(e)
    off = f[7] * 64
    seq, ifindex = struct.unpack_from("<II", r, off)
    assert seq % 2 == 0 and ifindex == 10
    assert r[off + 8:off + 14] == bytes.fromhex(H.RS_MAC[0].replace(":", ""))
    frame = tcp("A", payload=b"rw")
    struct.pack_into("<I", r, off, seq + 1)
    assert xdp(e, frame, svc) == (XDP_PASS, frame)
    struct.pack_into("<I", r, off, seq + 2)
    action, got = xdp(e, frame, svc)
    assert action == XDP_REDIRECT and got == engine_bytes(e, frame)
