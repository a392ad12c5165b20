"""The sync wire format on its own (no kernel, no build): encode/decode round trips for every
kind of entry, the master's packing (alignment, sync_maxlen, the one-byte count), the MTU rule
for sync_maxlen, every drop reason the decoder has, and a seeded fuzz of mangled datagrams
that must each end in a result, never an exception."""
from __future__ import annotations

import dataclasses
import json
import random
import struct
from pathlib import Path

import pytest

from fastlvs.engine import contract
from fastlvs.engine.reference import TCP_STATE_NAMES
from fastlvs.sync import protocol as P

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"


def tcp(cport=1000, **kw):
    d = dict(protocol=6, caddr="10.0.1.2", cport=cport, vaddr="10.0.1.1", vport=80,
             daddr="10.0.2.2", dport=80, flags=0x83, state=1, timeout=900)
    d.update(kw)
    return P.SyncConn(**d)


KINDS = {
    "v4 tcp dr": tcp(),
    "v4 udp nat": tcp(protocol=17, flags=0x100, state=0, timeout=300, vport=53, dport=53),
    "template": tcp(cport=0, flags=0x1183, state=1, timeout=300),
    "fwmark template": tcp(protocol=0, cport=0, vaddr="0.0.0.7", vport=0, dport=0, flags=0x1183,
                           fwmark=7, timeout=120),
    "seq data": tcp(flags=0x600, in_seq=(1, 2, 3), out_seq=(4, 5, 0xFFFFFFFF)),
    "pe data": tcp(protocol=17, cport=0, flags=0x1100, state=0, timeout=60, pe_data=b"call-1",
                   pe_name="sip"),
    "v6": tcp(caddr="2001:db8:1::2", vaddr="2001:db8:1::1", daddr="2001:db8:2::2"),
    "v6 seq and pe": tcp(caddr="2001:db8:1::2", vaddr="2001:db8:1::1", daddr="2001:db8:2::2",
                         flags=0x1600, in_seq=(7, 8, 9), out_seq=(1, 2, 3), pe_data=b"x" * 255,
                         pe_name="sip"),
}


@pytest.mark.parametrize("name", KINDS)
def test_round_trip(name):
    c = KINDS[name]
    m = P.encode_message(9, [c, c])
    d = P.decode(m, 9)
    assert d.ok and d.syncid == 9
    assert d.conns == [c, c]
    reserved, syncid, size, count, version, spare = P.HEADER.unpack_from(m)
    assert (reserved, syncid, size, count, version, spare) == (0, 9, len(m), 2, 1, 0)


def test_entry_layout_field_by_field():
    """Offsets as ip_vs_sync_v4 has them, read back by hand."""
    e = P.encode_conn(tcp(cport=0x1234, flags=0x10183, state=4, timeout=120, fwmark=0xABCDEF01))
    assert len(e) == 36
    assert e[0] == 0 and e[1] == 6
    assert struct.unpack_from("!H", e, 2)[0] == 36          # version 0, size 36
    assert struct.unpack_from("!I", e, 4)[0] == 0x10183     # flags, 32 bits (HASHED cleared)
    assert struct.unpack_from("!HHHH", e, 8) == (4, 0x1234, 80, 80)
    assert struct.unpack_from("!II", e, 16) == (0xABCDEF01, 120)
    assert e[24:36] == bytes([10, 0, 1, 2, 10, 0, 1, 1, 10, 0, 2, 2])
    assert P.encode_conn(tcp(flags=0x83 | P.IP_VS_CONN_F_HASHED)) == P.encode_conn(tcp())
    v6 = P.encode_conn(KINDS["v6"])
    assert len(v6) == 72 and v6[0] == 1


def test_options_order_and_lengths():
    e = P.encode_conn(KINDS["v6 seq and pe"])
    assert e[72:74] == bytes((1, 24))
    assert e[98:100] == bytes((2, 255))
    assert e[355:357] == bytes((3, 3)) and e[357:360] == b"sip"
    assert struct.unpack_from("!H", e, 2)[0] == len(e) == 360
    # sequence data only when the flags ask for it; pe name only with pe data
    assert len(P.encode_conn(tcp(in_seq=(1, 2, 3)))) == 36
    assert len(P.encode_conn(tcp(pe_name="sip"))) == 36


def test_padding_goes_between_entries_never_after_the_last():
    pe = KINDS["pe data"]            # 36 + 2+6 + 2+3 = 49 bytes
    m = P.encode_message(1, [pe, tcp(), pe])
    assert len(m) == 8 + 49 + 3 + 36 + 49
    assert m[8 + 49:8 + 52] == b"\0\0\0"
    assert P.decode(m, 1).conns == [pe, tcp(), pe]


def test_packer_fills_to_maxlen_like_the_kernel():
    p = P.SyncPacker(3, P.sync_maxlen())
    out = []
    for i in range(41):
        out += p.add(tcp(cport=i))
    assert len(out) == 1 and len(out[0]) == 8 + 40 * 36 == 1448   # a 41st would make 1484
    assert [c.cport for c in P.decode(out[0]).conns] == list(range(40))
    rest = p.flush()
    assert [c.cport for c in P.decode(rest[0]).conns] == [40]
    assert p.flush() == []


def test_packer_gives_an_oversized_entry_its_own_message():
    p = P.SyncPacker(3, 100)
    big = KINDS["v6 seq and pe"]
    assert p.add(tcp()) == []
    out = p.add(big)                 # closes the first message
    assert len(out) == 1 and P.decode(out[0]).conns == [tcp()]
    out = p.add(tcp(cport=5))        # the big one was alone and full
    assert P.decode(out[0]).conns == [big] and len(out[0]) == 8 + 360
    assert P.decode(p.flush()[0]).conns == [tcp(cport=5)]


def test_packer_closes_at_255_entries():
    p = P.SyncPacker(3, 65535 - 28)
    out = []
    for i in range(300):
        out += p.add(tcp(cport=i))
    out += p.flush()
    assert [P.HEADER.unpack_from(m)[3] for m in out] == [255, 45]


def test_encode_refuses_what_does_not_fit():
    for bad in (tcp(cport=70000), tcp(daddr="2001:db8::1"), tcp(timeout=-1),
                tcp(pe_data=b"x" * 256, pe_name="sip"), tcp(pe_data=b"x", pe_name="n" * 17)):
        with pytest.raises(P.EncodeError):
            P.encode_conn(bad)
    with pytest.raises(P.EncodeError):
        P.SyncPacker(256)
    with pytest.raises(P.EncodeError):
        P.encode_message(1, [tcp(cport=i) for i in range(50)], maxlen=1472)


def test_sync_maxlen_follows_start_sync_thread():
    assert P.sync_maxlen(9000, master=True) == 1472            # a master ignores the MTU
    assert P.sync_maxlen(9000, master=False) == 8972
    assert P.sync_maxlen(1000, master=False) == 1472           # a backup reads at least 1472
    assert P.sync_maxlen(1500, master=True, ipv6_group=True) == 1452
    assert P.sync_maxlen(master=True, requested=100) == 100
    assert P.sync_maxlen(master=False, requested=100) == 1024
    assert P.sync_maxlen(master=True, requested=70000) == 65507


def test_state_and_fwd_names_are_the_engines():
    assert P.TCP_STATES == tuple(TCP_STATE_NAMES)
    assert tcp(state=4).state_name == "FIN_WAIT"
    assert KINDS["v4 udp nat"].state_name == "UDP"
    assert KINDS["template"].state_name == "ASSURED"
    assert tcp(cport=0, flags=0x1183, state=0).state_name == "NONE"
    assert tcp(state=11).state_name == "ERR!"
    assert KINDS["fwmark template"].proto_name == "IP"
    assert tcp().fwd == contract.FWD_DR
    assert KINDS["v4 udp nat"].fwd == contract.FWD_NAT
    assert tcp(flags=0x2).fwd == contract.FWD_TUN
    assert tcp(flags=0x1).fwd is None
    assert all(P.FWD_FROM_FLAGS[P.FLAGS_FROM_FWD[f]] == f for f in P.FLAGS_FROM_FWD)
    assert tcp(flags=0x2183 | 0x40).backup_flags == 0x1a3 and not tcp().inactive


# -- bad datagrams: one reason each, earlier entries kept as the kernel keeps them --------------

def msg(*entries, syncid=7, count=None, version=1, reserved=0, spare=0, size=None):
    body = b""
    for e in entries:
        body += b"\0" * (-len(body) & 3) + e
    n = 8 + len(body)
    return P.HEADER.pack(reserved, syncid, n if size is None else size,
                         len(entries) if count is None else count, version, spare) + body


def entry(c=None, size=None, options=b"", etype=None, ver=0):
    e = P.encode_conn(c or tcp()) + options
    e = bytes([e[0] if etype is None else etype]) + e[1:]
    return e[:2] + struct.pack("!H", (ver << 12) | (len(e) if size is None else size)) + e[4:]


GOOD = entry(tcp(cport=1))
CASES = {
    "empty": (b"", P.DROP_SHORT, 0),
    "three bytes": (b"\0\7\0", P.DROP_SHORT, 0),
    "size field too big": (msg(GOOD, size=52), P.DROP_SIZE, 0),
    "size field too small": (msg(GOOD, size=40), P.DROP_SIZE, 0),
    "foreign syncid": (msg(GOOD, syncid=8), P.DROP_SYNCID, 0),
    "v0 header only": (bytes((0, 7, 0, 4)), P.DROP_VERSION, 0),
    "version 2": (msg(GOOD, version=2), P.DROP_VERSION, 0),
    "reserved set (a v0 count)": (msg(GOOD, reserved=1), P.DROP_VERSION, 0),
    "spare set": (msg(GOOD, spare=1), P.DROP_VERSION, 0),
    "count 255, one entry": (msg(GOOD, count=255), P.DROP_TRUNCATED, 1),
    "count 2, entry and 20 bytes": (msg(GOOD, b"\0" * 20, count=2), P.DROP_TRUNCATED, 1),
    "entry size past the end": (msg(GOOD, entry(size=40)), P.DROP_ENTRY_OVERRUN, 1),
    "entry version 1": (msg(GOOD, entry(ver=1)), P.DROP_ENTRY_VERSION, 1),
    "entry type 2": (msg(GOOD, entry(etype=2)), P.DROP_ENTRY_TYPE, 1),
    "entry size below the fixed part": (msg(GOOD, entry(size=20)), P.DROP_ENTRY_SIZE, 1),
    "v6 type on a v4-sized entry": (msg(GOOD, entry(etype=1)), P.DROP_ENTRY_SIZE, 1),
    "option cut after its type": (msg(GOOD, entry(options=b"\x02")), P.DROP_OPT_TRUNCATED, 1),
    "option of length 0": (msg(GOOD, entry(options=b"\x02\x00")), P.DROP_OPT_LENGTH, 1),
    "option past the entry": (msg(GOOD, entry(options=b"\x02\x09ab")), P.DROP_OPT_LENGTH, 1),
    "seq data of 20 bytes": (msg(GOOD, entry(options=b"\x01\x14" + b"\0" * 20)),
                             P.DROP_OPT_SEQ, 1),
    "seq data twice": (msg(GOOD, entry(options=(b"\x01\x18" + b"\0" * 24) * 2)),
                       P.DROP_OPT_SEQ, 1),
    "pe data twice": (msg(GOOD, entry(options=b"\x02\x01a\x02\x01b")), P.DROP_OPT_PE_DATA, 1),
    "pe name of 17": (msg(GOOD, entry(options=b"\x03\x11" + b"n" * 17)), P.DROP_OPT_PE_NAME, 1),
    "pe name twice": (msg(GOOD, entry(options=b"\x03\x03sip\x03\x03sip")), P.DROP_OPT_PE_NAME, 1),
}
SKIPS = {
    "unknown protocol": (entry(tcp(protocol=99)), P.SKIP_PROTOCOL),
    "tcp state 11": (entry(tcp(state=11)), P.SKIP_STATE),
    "udp state 1": (entry(tcp(protocol=17, state=1)), P.SKIP_STATE),
    "unknown mandatory option": (entry(options=b"\x09\x02ab"), P.SKIP_OPTION),
    "mandatory option, then a malformed one": (entry(options=b"\x09\x02ab\x01\x01"),
                                               P.SKIP_OPTION),
    "pe data without a name": (entry(options=b"\x02\x03abc"), P.SKIP_PE),
    "unknown pe": (entry(options=b"\x02\x03abc\x03\x03xyz"), P.SKIP_PE),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_datagram_gives_its_reason(name):
    data, reason, kept = CASES[name]
    d = P.decode(data, 7)
    assert d.error == reason
    assert [c.cport for c in d.conns] == [1] * kept


@pytest.mark.parametrize("name", SKIPS)
def test_bad_entry_is_skipped_and_the_next_read(name):
    bad, reason = SKIPS[name]
    d = P.decode(msg(bad, GOOD), 7)
    assert d.error is None and d.skipped == [reason]
    assert [c.cport for c in d.conns] == [1]


def test_syncid_zero_takes_any_and_template_state_is_not_checked():
    assert P.decode(msg(GOOD, syncid=200), 0).ok
    d = P.decode(msg(entry(tcp(flags=0x1183, state=9))), 7)
    assert d.ok and d.conns[0].state_name == "ERR!"
    d = P.decode(msg(entry(options=bytes((73, 2)) + b"ab")), 7)    # skippable unknown option
    assert d.ok and d.conns[0].skipped_options == (73,)
    d = P.decode(msg(entry(options=bytes((65, 24)) + b"\0" * 24)), 7)  # 65 & ~64 = seq data
    assert d.conns[0].in_seq == (0, 0, 0)


def test_trailing_bytes_after_the_counted_entries_are_ignored():
    d = P.decode(msg(GOOD, b"junk", count=1), 7)
    assert d.ok and len(d.conns) == 1


def _corpus():
    out = [bytes.fromhex(d["payload"])
           for d in json.loads((FIX / "sync_master.json").read_text())["datagrams"]]
    feed = json.loads((FIX / "scripts" / "sync_backup_input.json").read_text())
    out += [bytes.fromhex(h) for s in feed["steps"] for h in s["datagrams"]]
    out += [P.encode_message(7, [KINDS[k] for k in KINDS])]
    return out


def _mangle(rng: random.Random, m: bytes) -> bytes:
    b = bytearray(m)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 8)]
        else:
            b = bytearray(rng.randbytes(rng.randint(0, 80)))
    if len(b) >= 4 and rng.random() < 0.7:     # most get past the size check
        b[2:4] = struct.pack("!H", len(b) & 0xFFFF)
    return bytes(b)


def _as_written(c: P.SyncConn) -> P.SyncConn:
    """What an encoder sends for a decoded conn: never HASHED, sequence data only when the
    flags ask for it (zeros if they ask and none came)."""
    seq = bool(c.flags & P.IP_VS_CONN_F_SEQ_MASK)
    return dataclasses.replace(c, flags=c.flags & ~P.IP_VS_CONN_F_HASHED,
                               in_seq=(c.in_seq or (0, 0, 0)) if seq else None,
                               out_seq=(c.out_seq or (0, 0, 0)) if seq else None)


def test_fuzz_mangled_datagrams_never_raise():
    rng = random.Random(20261203)
    corpus = _corpus()
    seen = set()
    for _ in range(4000):
        data = _mangle(rng, rng.choice(corpus))
        d = P.decode(data, rng.choice((0, 7)))
        assert d.error is None or d.error in P.DROP_REASONS
        assert d.error != P.DROP_INTERNAL, data.hex()
        assert set(d.skipped) <= set(P.SKIP_REASONS)
        seen.add(d.error)
        seen.update(d.skipped)
        for c in d.conns:       # whatever is accepted can be written again
            assert P.decode(P.encode_message(7, [c]), 7).conns == [_as_written(c)]
    # the fuzz reached deep into entries, not just the header checks
    assert {P.DROP_SIZE, P.DROP_ENTRY_OVERRUN, P.DROP_TRUNCATED, None} <= seen
    assert len(seen) >= 10, seen
