"""Fragmented datagrams to a virtual service: reassembled in the engine's bounded area,
forwarded once complete in DR, NAT and TUN, and cut again as the 6.1 kernel cuts them
(tests/fixtures/kernel/frags.json, recorded by tests/fixtures/kernel/scripts/frags.py).
Every output is re-parsed with scapy, its checksums recomputed and its datagram rebuilt."""
from __future__ import annotations

import json
import pathlib
import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import fastlvs.engine._core as core
from tests.core import packets as P
from tests.core.helpers import S, engine

ORACLE = json.loads((pathlib.Path(__file__).parents[1] / "fixtures" / "kernel"
                     / "frags.json").read_text())


# -- building and checking fragments ------------------------------------------------------------

def datagram(size=2000, sport=40000, dport=53, ipid=4242, src=P.CLIENT, dst=P.VIP, ttl=64,
             tag=7, zero_csum=False):
    payload = bytes((i * 13 + tag) & 0xFF for i in range(size))
    u = UDP(sport=sport, dport=dport)
    if zero_csum:
        u.chksum = 0
    return IP(bytes(IP(src=src, dst=dst, id=ipid, ttl=ttl) / u / Raw(payload))), payload


def cut(ip, pieces, src_mac=P.CLIENT_MAC):
    """Frames carrying ip's payload at the [start, end) byte ranges `pieces`."""
    body = bytes(ip.payload)
    out = []
    for start, end in pieces:
        h = ip.copy()
        h.remove_payload()
        h.flags = (ip.flags & 2) | (1 if end < len(body) else 0)
        h.frag = start // 8
        h.len = None
        h.chksum = None
        out.append(bytes(Ether(src=src_mac, dst=P.LOCAL_MAC) / IP(bytes(h / Raw(body[start:end])))))
    return out


def even(ip, size):
    n = len(bytes(ip.payload))
    return [(o, min(o + size, n)) for o in range(0, n, size)]


def ip_csum_ok(frame):
    """The (outer) IP header checksum, recomputed: a fragment's UDP checksum covers the
    whole datagram, so it is checked on the rebuilt datagram (udp_ok)."""
    ip = Ether(frame)[IP]
    c = ip.copy()
    del c.chksum
    return IP(bytes(c)).chksum == ip.chksum


def outputs(res):
    """The frames of process()'s result, in order."""
    return [data for _i, _ifx, data in res]


def rebuild(frames):
    """{(src, dst, id, proto): IP packet} from `frames` (fragments joined, checked on the way:
    no gap, no overlap, exactly one last piece, every IP header checksum right)."""
    groups = {}
    for fr in frames:
        assert ip_csum_ok(fr)
        ip = Ether(fr)[IP]
        key = (ip.src, ip.dst, ip.id, ip.proto)
        groups.setdefault(key, []).append(ip)
    whole = {}
    for key, ips in groups.items():
        ips.sort(key=lambda p: p.frag)
        data = b""
        for k, p in enumerate(ips):
            assert p.frag * 8 == len(data), f"gap or overlap at {p.frag * 8}"
            assert bool(p.flags.MF) == (k + 1 < len(ips))
            assert len(bytes(p.payload)) == p.len - p.ihl * 4
            data += bytes(p.payload)
        h = ips[0].copy()
        h.remove_payload()
        h.flags = h.flags & 2
        h.frag = 0
        h.len = None
        h.chksum = None
        whole[key] = IP(bytes(h / Raw(data)))
    return whole


def udp_ok(ip):
    """The UDP checksum of a whole datagram, recomputed (0 = none is fine)."""
    u = ip[UDP]
    if u.chksum == 0:
        return True
    c = ip.copy()
    del c[UDP].chksum
    return IP(bytes(c))[UDP].chksum == u.chksum


def single(whole):
    assert len(whole) == 1, whole
    return next(iter(whole.values()))


# -- against the kernel's recording ------------------------------------------------------------

def oracle_engine(mode, mtu):
    t = ORACLE["topology"]
    e = core.Engine(capacity=4096, local_ip="10.0.1.1", local_mac=P.LOCAL_MAC, mtu=mtu)
    for i, (m, port) in enumerate(sorted(t["ports"].items(), key=lambda kv: kv[1])):
        e.set_service(i + 1, "udp", t["vip"], port)
        e.set_dest(i + 1, i + 1, t["rip"], port, m, P.RS_MAC[0], ifindex=10)
    e.set_gateway_mac(P.GW_MAC, ifindex=2)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))
    return e


def service_line(stats, port):
    for line in stats.splitlines():
        if line.startswith("UDP") and line.split()[1].endswith(f":{port}"):
            return [int(x) for x in line.split()[2:]]
    raise AssertionError(port)


def ip_frames(recorded, rip_only=None):
    out = []
    for d in recorded:
        if "ip_len" not in d or d.get("proto") == 1:
            continue
        if rip_only and d["ip_dst"] != rip_only:
            continue
        out.append(bytes.fromhex(d["hex"]))
    return out


CLIENT_CASES = [c for c in ORACLE["cases"] if not c["name"].startswith("nat_reply")]


@pytest.mark.parametrize("case", CLIENT_CASES, ids=lambda c: f"{c['mode']}-{c['name']}")
def test_as_the_kernel(case):
    """Each recorded case, replayed byte for byte: the same fragments leave (length, offset,
    MF, DF, IP id, addresses and bytes), the same datagram, the same service counters."""
    mode = case["mode"]
    port = ORACLE["topology"]["ports"][mode]
    e = oracle_engine(mode, case["mtu_to_rs"])
    sent = [bytes.fromhex(d["hex"]) for d in case["sent"]]
    # one frame per batch: fragments of a datagram arrive in different batches
    res = []
    for k, fr in enumerate(sent):
        res += e.process([fr], (1 + k) * S)
    ours = outputs(res)
    theirs = ip_frames(case["to_rs"])
    assert len(ours) == len(theirs)
    first_ttl = Ether(sent[0])[IP].ttl if Ether(sent[0])[IP].frag == 0 else None
    for o, t in zip(ours, theirs):
        assert ip_csum_ok(o)
        oi, ti = Ether(o)[IP], Ether(t)[IP]
        assert (oi.src, oi.dst, oi.len, oi.frag, int(oi.flags), oi.proto) == \
            (ti.src, ti.dst, ti.len, ti.frag, int(ti.flags), ti.proto)
        if mode != "tun":
            assert oi.id == ti.id
        # TTL: the first fragment's for all (the kernel then takes one off, which the TTL
        # work on the forwarding path does for every packet)
        assert oi.ttl in (ti.ttl, ti.ttl + 1)
        assert bytes(oi.payload) == bytes(ti.payload) or mode == "tun"
        if mode == "tun" and oi.frag == 0:
            inner_o, inner_t = IP(bytes(oi.payload)), IP(bytes(ti.payload))
            assert (inner_o.id, inner_o.len, inner_o.src, inner_o.dst) == \
                (inner_t.id, inner_t.len, inner_t.src, inner_t.dst)
    if first_ttl is not None and ours:
        assert len({Ether(o)[IP].ttl for o in ours if mode != "tun"} or {0}) == 1
    for dg in case["to_rs_datagrams"]:
        if not dg.get("complete") or "payload_hex" not in dg:
            continue
        got = rebuild(ours)
        if mode == "tun":
            got = {k: IP(bytes(v.payload)) for k, v in got.items()}
        payloads = {bytes(v[UDP].payload).hex() for v in got.values()}
        assert dg["payload_hex"] in payloads
        assert all(udp_ok(v) for v in got.values())
    # -Ln --stats of the mode's service: conns, inpkts, inbytes (of reassembled datagrams)
    conns, inpkts, _outpkts, inbytes, _outbytes = service_line(case["stats"], port)
    sid = sorted(ORACLE["topology"]["ports"].values()).index(port) + 1
    st = e.service_stats(sid)
    assert (st["conns"], st["inpkts"], st["inbytes"]) == (conns, inpkts, inbytes)
    # -Lnc: one entry per datagram forwarded, to the real server
    sports = {Ether(f)[UDP].sport for f in sent if Ether(f)[IP].frag == 0}
    assert len(e.conns()) == len([l for l in case["conns"]
                                  if any(f":{p} " in l.split()[3] + " " for p in sports)])
    if "missing" in case["name"]:
        # the kernel gave up after ipfrag_time (3 s there, 30 s here): so do we
        assert e.frag_stats()["queues"] == 1
        e.process([P.udp(dport=9)], 40 * S)
        assert e.stats()["frag_timeout"] == 1
        assert e.frag_stats()["queues"] == 0 and e.frag_stats()["blocks"] == 0
    if case["name"] == "overlap":
        assert e.stats()["frag_bad"] == 1 and e.frag_stats()["queues"] == 0


def test_nat_reply_as_the_kernel():
    """A real server's fragmented NAT reply is reassembled, rewritten (VIP:vport as source,
    the UDP checksum of the whole datagram) and cut again, as recorded."""
    opener = next(c for c in ORACLE["cases"]
                  if c["mode"] == "nat" and c["name"] == "in_order_small")
    reply = next(c for c in ORACLE["cases"] if c["name"] == "nat_reply_fragmented")
    e = oracle_engine("nat", 1500)
    e.process([bytes.fromhex(d["hex"]) for d in opener["sent"]], 1 * S)
    res = e.process([bytes.fromhex(d["hex"]) for d in reply["sent"]], 2 * S)
    ours = outputs(res)
    theirs = [f for f in ip_frames(reply["to_client"]) if Ether(f)[IP].proto == 17]
    assert len(ours) == len(theirs) == 2
    for o, t in zip(ours, theirs):
        oi, ti = Ether(o)[IP], Ether(t)[IP]
        assert (oi.src, oi.dst, oi.id, oi.len, oi.frag, int(oi.flags)) == \
            (ti.src, ti.dst, ti.id, ti.len, ti.frag, int(ti.flags))
        assert bytes(oi.payload) == bytes(ti.payload)
    ip = single(rebuild(ours))
    assert udp_ok(ip) and ip[UDP].sport == 5002
    # counted once, at its reassembled length (2008 + 20)
    _c, _i, outpkts, _ib, outbytes = service_line(reply["stats"], 5002)
    st = e.service_stats(2)
    assert (st["outpkts"], st["outbytes"]) == (outpkts, outbytes) == (1, 2028)


# -- our own cases ------------------------------------------------------------------------------

MODES = [("dr", None), ("nat", 5353), ("tun", None)]


def mode_engine(fwd, rport, frag_mem=None, **kw):
    e = engine(fwd, proto=17, vport=53, rport=rport, **kw)
    if frag_mem is None:
        return e
    # the same set-up with a smaller reassembly area
    small = core.Engine(capacity=4096, local_ip=P.LOCAL_IP, local_mac=P.LOCAL_MAC,
                        frag_mem=frag_mem)
    small.set_service(1, 17, P.VIP, 53)
    small.set_dest(1, 1, P.RS[0], rport or 53, fwd, P.RS_MAC[0], ifindex=10)
    small.set_scheduler_callback(lambda svcs, flows: [1] * len(flows))
    return small


def inner_of(ip, fwd):
    return IP(bytes(ip.payload)) if fwd == "tun" else ip


@pytest.mark.parametrize("fwd,rport", MODES)
@pytest.mark.parametrize("order", ["in_order", "reversed", "shuffled"])
def test_datagram_arrives_whole(fwd, rport, order):
    ip, payload = datagram(3000)
    frames = cut(ip, even(ip, 1480 if order == "in_order" else 512))
    if order == "reversed":
        frames.reverse()
    elif order == "shuffled":
        random.Random(5).shuffle(frames)
    e = mode_engine(fwd, rport)
    v = e.process_verdicts(frames, 1 * S)
    assert [x[:2] for x in v[:-1]] == [("drop", "frag_held")] * (len(frames) - 1)
    assert v[-1][0] == "tx"
    got = inner_of(single(rebuild(v[-1][3])), fwd)
    assert bytes(got[UDP].payload) == payload and udp_ok(got)
    assert got[UDP].dport == (rport or 53) and got.id == 4242
    assert got.dst == (P.RS[0] if fwd == "nat" else P.VIP)
    st = e.stats()
    assert (st["frag_held"], st["frag_reasm"], st["conns_created"]) == (len(frames) - 1, 1, 1)
    assert e.service_stats(1)["inbytes"] == 3028 and e.service_stats(1)["inpkts"] == 1
    assert e.frag_stats()["queues"] == 0 and e.frag_stats()["blocks"] == 0


@pytest.mark.parametrize("fwd,rport", MODES)
def test_cut_to_the_largest_fragment_and_the_mtu(fwd, rport):
    """Output fragments are no larger than the largest one received, nor than the MTU."""
    ip, payload = datagram(5000)
    for size, mtu, expect in ((512, 1500, 532), (1480, 1000, 996), (1480, 1500, 1500)):
        e = mode_engine(fwd, rport, mtu=mtu)
        out = outputs(e.process(cut(ip, even(ip, size)), 1 * S))
        lens = [Ether(o)[IP].len for o in out]
        assert max(lens) == expect
        assert all((Ether(o)[IP].len - 20) % 8 == 0 for o in out[:-1])
        assert bytes(inner_of(single(rebuild(out)), fwd)[UDP].payload) == payload


def test_small_datagram_in_small_fragments_leaves_cut_the_same():
    ip, _ = datagram(100)
    e = mode_engine("dr", None)
    out = outputs(e.process(cut(ip, [(0, 64), (64, 108)]), 1 * S))
    assert [Ether(o)[IP].len for o in out] == [84, 64]


def test_interleaved_datagrams_and_batches():
    a, pa = datagram(1200, sport=40001, ipid=1, tag=1)
    b, pb = datagram(1200, sport=40002, ipid=2, tag=2)
    fa, fb = cut(a, even(a, 400)), cut(b, even(b, 400))
    e = mode_engine("nat", 5353)
    order = [fa[0], fb[0], fb[1], fa[1], fb[2], fb[3], fa[2], fa[3]]
    out = []
    for k, fr in enumerate(order):            # each in its own batch
        out += outputs(e.process([fr], (1 + k) * S))
    whole = rebuild(out)
    assert {bytes(w[UDP].payload) for w in whole.values()} == {pa, pb}
    assert all(udp_ok(w) for w in whole.values())
    assert e.stats()["conns_created"] == 2


def test_duplicate_is_ignored_overlap_discards():
    ip, payload = datagram(1000)
    f = cut(ip, even(ip, 256))
    e = mode_engine("dr", None)
    v = e.process_verdicts([f[0], f[1], f[1], f[2], f[3]], 1 * S)
    assert v[2][:2] == ("drop", "frag_bad")
    assert bytes(single(rebuild(v[-1][3]))[UDP].payload) == payload
    # a piece inside what is held, across two fragments received in a row: a duplicate too
    e = mode_engine("dr", None)
    dup = cut(ip, [(128, 384)])[0]
    v = e.process_verdicts([f[0], f[1], dup, f[2], f[3]], 1 * S)
    assert v[2][:2] == ("drop", "frag_bad") and v[-1][0] == "tx"
    # overlapping: the datagram is gone, later pieces start a new one that never completes
    e = mode_engine("dr", None)
    v = e.process_verdicts(cut(ip, [(0, 512), (504, 1008)]) + f[1:], 1 * S)
    assert all(x[0] == "drop" for x in v)
    assert e.stats()["frag_bad"] == 1 and e.stats()["frag_reasm"] == 0


def test_inconsistent_lengths_discard():
    ip, _ = datagram(1000)
    e = mode_engine("dr", None)
    last_short = cut(ip, [(512, 1008)])[0]
    other_end = cut(ip, [(256, 512)])[0]
    # a second "last" fragment ending elsewhere
    v = e.process_verdicts([last_short, cut(datagram(1200)[0], [(1008, 1208)])[0]], 1 * S)
    assert v[1][:2] == ("drop", "frag_bad")
    assert e.frag_stats()["queues"] == 0
    # an MF piece beyond the known end
    e = mode_engine("dr", None)
    beyond = cut(datagram(2000)[0], [(1008, 1504)])[0]
    v = e.process_verdicts([last_short, other_end, beyond], 1 * S)
    assert v[2][:2] == ("drop", "frag_bad") and e.frag_stats()["queues"] == 0
    # MF with a length that is not a multiple of 8, IP options: refused alone
    e = mode_engine("dr", None)
    odd = cut(ip, [(0, 100)])[0]
    odd = bytes(Ether(odd) / b"")
    h = Ether(odd)[IP]
    h.flags = 1
    bad = bytes(Ether(src=P.CLIENT_MAC, dst=P.LOCAL_MAC) / IP(bytes(h)))
    opts = Ether(cut(ip, [(0, 256)])[0])
    opts[IP].options = [b"\x01\x01\x01\x00"]
    opts[IP].ihl = None
    opts[IP].len = None
    opts[IP].chksum = None
    v = e.process_verdicts([bad, bytes(opts)], 1 * S)
    assert [x[:2] for x in v] == [("drop", "frag_bad")] * 2


def test_missing_piece_expires_after_ipfrag_time():
    ip, _ = datagram(1000)
    f = cut(ip, even(ip, 256))
    e = mode_engine("dr", None)
    e.process([f[0], f[2], f[3]], 1 * S)
    assert e.frag_stats()["queues"] == 1 and e.frag_stats()["blocks"] == 1
    e.process([P.udp(dport=9)], 30 * S)          # 29 s later: still held
    assert e.stats()["frag_timeout"] == 0
    assert e.process([f[1]], 30 * S)              # and completes
    e = mode_engine("dr", None)
    e.process([f[0], f[2], f[3]], 1 * S)
    e.process([P.udp(dport=9)], 31 * S)          # ipfrag_time is over: expired, memory back
    assert e.stats()["frag_timeout"] == 1
    assert e.frag_stats()["queues"] == 0 and e.frag_stats()["blocks"] == 0
    assert e.process([f[1]], 32 * S) == []        # the late piece starts a new queue
    assert e.frag_stats()["queues"] == 1


def test_flood_of_first_fragments_is_bounded():
    """Spoofed first fragments fill the area and no further: memory is what was allocated,
    the excess is refused and counted, a genuine datagram gets through once they expire;
    and a single source cannot take more than its share."""
    e = mode_engine("dr", None, frag_mem=64 * 1024)
    fs = e.frag_stats()
    assert (fs["queues_max"], fs["blocks_max"]) == (16, 64)
    rng = random.Random(1)
    flood = []
    for k in range(500):
        src = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        fip, _ = datagram(3000, src=src, ipid=k)
        flood.append(cut(fip, [(0, 1480)])[0])
    v = e.process_verdicts(flood, 1 * S)
    held = sum(1 for x in v if x[1] == "frag_held")
    assert held <= 16 and e.stats()["frag_no_room"] == 500 - held
    assert e.frag_stats()["queues"] <= 16 and e.frag_stats()["blocks"] <= 64
    ip, payload = datagram(3000)
    assert e.process(cut(ip, even(ip, 1480)), 2 * S) == [] or held < 16
    out = outputs(e.process(cut(ip, even(ip, 1480)), 32 * S))
    assert bytes(single(rebuild(out))[UDP].payload) == payload
    # one source alone: a quarter of the queues
    e = mode_engine("dr", None, frag_mem=64 * 1024)
    one = [cut(datagram(3000, ipid=k)[0], [(0, 1480)])[0] for k in range(100)]
    e.process(one, 1 * S)
    assert e.frag_stats()["queues"] == e.frag_stats()["src_queue_limit"] == 4
    other, pother = datagram(3000, src="198.51.100.99")
    out = outputs(e.process(cut(other, even(other, 1480)), 2 * S))
    assert bytes(single(rebuild(out))[UDP].payload) == pother


def test_zero_udp_checksum_stays_zero_through_nat():
    ip, payload = datagram(2000, zero_csum=True)
    e = mode_engine("nat", 5353)
    got = single(rebuild(outputs(e.process(cut(ip, even(ip, 1480)), 1 * S))))
    assert got[UDP].chksum == 0 and bytes(got[UDP].payload) == payload


def test_not_ours_passes_and_bad_datagram_is_dropped():
    e = mode_engine("dr", None)
    other, _ = datagram(2000, dst="203.0.113.99")
    v = e.process_verdicts(cut(other, even(other, 1480)), 1 * S)
    assert [x[:2] for x in v] == [("pass", "fragment")] * 2
    # a UDP length longer than the datagram: reassembled, then dropped as malformed
    ip, _ = datagram(1000)
    raw = bytearray(bytes(ip))
    raw[24:26] = (3000).to_bytes(2, "big")
    v = e.process_verdicts(cut(IP(bytes(raw)), even(ip, 512)), 1 * S)
    assert v[-1][:2] == ("drop", "malformed") and e.stats()["frag_reasm"] == 1


def test_new_flow_scheduled_in_python_and_by_hash():
    ip, payload = datagram(2000)
    seen = []
    e = mode_engine("dr", None, sched=lambda svcs, flows: seen.extend(flows) or [1] * len(flows))
    out = outputs(e.process(cut(ip, even(ip, 1480)), 1 * S))
    # scheduled on the reassembled 5-tuple: the first fragment's ports
    assert [f[2] for f in seen] == [40000] and [f[4] for f in seen] == [53]
    assert bytes(single(rebuild(out))[UDP].payload) == payload
    e = mode_engine("dr", None)
    e.set_hash_table(1, [1] * 16, "sh")
    out = outputs(e.process(cut(ip, even(ip, 1480)), 1 * S))
    assert bytes(single(rebuild(out))[UDP].payload) == payload


def test_frag_mem_bounds_are_checked():
    with pytest.raises(ValueError, match="frag_mem"):
        core.Engine(capacity=16, frag_mem=1024)


def test_loaded_batches_reassemble_and_keep_the_area():
    """The benchmark path (_testing.Loaded: frames restored each run): each run reassembles
    every datagram again, and loading frames leaves the reassembly area alone."""
    from fastlvs.engine._testing import Loaded
    e = mode_engine("dr", None)
    frames = []
    for k in range(40):
        ip, _ = datagram(2500, sport=41000 + k, ipid=k)
        frames += cut(ip, even(ip, 1480))
    assert Loaded(e, frames).process(1 * S) == 40
    lone = cut(datagram(2500, ipid=999)[0], [(0, 1480)])
    assert Loaded(e, lone + frames).process(2 * S) == 40
    assert e.stats()["frag_reasm"] == 80 and e.stats()["frag_out"] == 160
    assert e.frag_stats()["queues"] == 1          # the lone first piece, still waiting


@pytest.mark.parametrize("frag_mem", [None, 128 * 1024])
def test_random_fragment_sets_never_give_wrong_output(frag_mem):
    """Random cuts of random datagrams, shuffled, some pieces duplicated, overlapping,
    dropped or from a spoofed twin, across batches: whatever leaves is a whole datagram that
    was sent (payload, UDP checksum, every header checksum), at most once per datagram that
    was complete, and the area is empty once ipfrag_time has passed."""
    rng = random.Random(11)
    e = mode_engine("nat", 5353, frag_mem=frag_mem)
    sent = {}
    frames = []
    for k in range(300):
        size = rng.choice([9, 100, 700, 1500, 3000, 9000])
        # 30 clients: one alone may hold only a quarter of the queues
        ip, payload = datagram(size, sport=20000 + k, ipid=k, tag=k,
                               src=f"198.51.100.{k % 30 + 1}")
        sent[20000 + k] = payload
        n = len(bytes(ip.payload))
        # at least one cut: a whole datagram is not a fragment (forwarded as it is)
        cuts = sorted({0, n, rng.randrange(8, n) // 8 * 8}
                      | {rng.randrange(1, n) // 8 * 8 for _ in range(rng.randrange(4))})
        pieces = [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]
        roll = rng.random()
        if roll < 0.1 and len(pieces) > 1:
            pieces.pop(rng.randrange(len(pieces)))                   # a piece lost
        elif roll < 0.2:
            pieces.append(pieces[rng.randrange(len(pieces))])        # a duplicate
        elif roll < 0.3 and pieces[0][1] > 16:
            a, b = pieces[0]
            pieces.append((a + 8, b + 8 if b + 8 <= n else b))       # an overlap
        frames += cut(ip, pieces)
    rng.shuffle(frames)
    out = []
    for k in range(0, len(frames), 37):
        out += outputs(e.process(frames[k:k + 37], (1 + k // 37) * S))
    got = rebuild(out)
    seen = set()
    for w in got.values():
        assert udp_ok(w)
        sport = w[UDP].sport
        assert sport not in seen and bytes(w[UDP].payload) == sent[sport]
        assert w.dst == P.RS[0] and w[UDP].dport == 5353
        seen.add(sport)
    st = e.stats()
    assert st["frag_reasm"] == len(seen)
    if frag_mem is None:
        # about 70% of the sets are whole; the default area holds all of them at once
        assert len(seen) > 150 and st["frag_no_room"] == 0
    else:
        # a small area: most are refused, and what is refused is counted
        assert st["frag_no_room"] > 0 and e.frag_stats()["blocks"] <= 128
    # a batch expires at most 64 queues (the next ones the next batch), the timers all
    before = e.frag_stats()["queues"]
    e.process([P.udp(dport=9)], 100 * S)
    assert before - e.frag_stats()["queues"] == min(before, 64)
    e.run_timers(100 * S)
    assert e.frag_stats()["queues"] == 0 and e.frag_stats()["blocks"] == 0
