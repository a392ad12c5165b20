"""SCTP services in the engine against Linux 6.1's IPVS (tests/fixtures/kernel/fwmark_sctp.json,
made by tests/fixtures/kernel/scripts/fwmark_sctp.sh on the kernel oracle): the recorded
frames are replayed through an engine with the same addresses, and after every chunk the
conn's state and timer must be those `ipvsadm -Lnc` showed, and what the engine forwards must
be, byte for byte from the IP header on, what the kernel forwarded (NAT rewrites the ports
and recomputes the CRC32c; DR leaves the packet). Plus malformed SCTP and the CRC check."""
import json
import pathlib
import struct

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData, SCTPChunkInit, crc32c

import fastlvs.engine._core as core
import fastlvs.engine.reference as reference

ENGINES = {"core": core.Engine, "reference": reference.Engine}
Engine = core.Engine


@pytest.fixture(params=list(ENGINES), autouse=True)
def engine_kind(request, monkeypatch):
    """Every test runs on the extension and on the pure-Python reference engine."""
    monkeypatch.setitem(globals(), "Engine", ENGINES[request.param])
    return request.param

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "kernel" / "fwmark_sctp.json"
KERNEL = json.loads(FIXTURE.read_text())
S = 1_000_000_000
VIP, RS_NAT, RS_DR = "10.0.1.101", "10.0.2.2", "10.0.2.3"
RS_MAC = "02:00:00:00:02:02"


def sctp_engine():
    e = Engine(capacity=4096, local_ip="10.0.2.1", local_mac="02:00:00:00:02:01")
    e.set_service(1, "sctp", VIP, 7000)
    e.set_dest(1, 1, RS_NAT, 7001, "nat", RS_MAC, ifindex=11)
    e.set_service(2, "sctp", VIP, 7100)
    e.set_dest(2, 2, RS_DR, 7100, "dr", RS_MAC, ifindex=11)
    e.set_gateway_mac("02:00:00:00:01:02", ifindex=10)
    e.set_scheduler_callback(lambda svcs, flows: list(svcs))    # service i has dest i
    return e


def sctp_steps():
    return [st for st in KERNEL["steps"] if st["step"] != "after 5 s"
            and st["step"][1] == "sctp"]


def kernel_line(st, cport):
    got = [ln.split() for ln in st["conns"] if f":{cport} " in ln]
    return got[0] if got else None


def expire_s(text):
    m, s = text.split(":")
    return int(m) * 60 + int(s)


def crc_ok(frame: bytes) -> bool:
    l4 = frame[34:]
    return struct.unpack("<I", l4[8:12])[0] == struct.unpack(
        "<I", struct.pack(">I", crc32c(l4[:8] + b"\0" * 4 + l4[12:])))[0]


def test_fixture_was_recorded_on_a_kernel():
    assert KERNEL["kernel"].startswith("6.1")
    assert len(sctp_steps()) > 30


def test_sctp_associations_follow_the_kernel_states_timers_and_bytes():
    e = sctp_engine()
    now = 10 * S
    checked = 0
    for st in sctp_steps():
        side, _, _, sport, _, dport, chunks = st["step"]
        cport = sport if side == "c" else dport
        sent = bytes.fromhex(st["sent"])
        now += S // 2
        verdicts = e.process_verdicts([sent], now)
        # what the kernel forwarded, the engine forwards identically (IP header on)
        kernel_out = st["at_rs"] if side == "c" else st["at_client"]
        if "badcrc" in chunks:
            # the kernel gives a corrupted packet a fresh CRC; the engine drops it
            assert verdicts[0][0] == "drop" and verdicts[0][1] == "bad_checksum"
            continue
        if kernel_out and kernel_line(st, cport):
            assert verdicts[0][0] == "tx", (st["step"], verdicts)
            ours = verdicts[0][3]
            theirs = bytes.fromhex(kernel_out[0])
            assert ours[14:] == theirs[14:], st["step"]
            assert crc_ok(ours)
            if side == "c":
                assert ours[:6] == bytes.fromhex(RS_MAC.replace(":", ""))
        else:
            assert verdicts[0][0] != "tx", st["step"]
        line = kernel_line(st, cport)
        mine = [c for c in e.conns(now + 4 * S // 10) if c["cport"] == cport
                and c["proto"] == "SCTP"]
        if line is None:
            assert mine == [], st["step"]
            continue
        assert len(mine) == 1
        assert mine[0]["state"] == line[2], st["step"]
        # the guest's -Lnc ran about 0.4 s after the frame, under emulation: a second late
        # at most (the timers themselves are 2, 4, 61 and 900 s)
        assert 0 <= mine[0]["expires"] - expire_s(line[1]) <= 1, st["step"]
        assert f"{mine[0]['raddr']}:{mine[0]['rport']}" == line[5]
        checked += 1
    assert checked == 30
    # counted as the kernel counts them, once the INIT1 entry (4 s) has gone: 5 inactive
    # on the NAT service's server, the one DR association inactive too
    e.run_timers(now + 6 * S)
    ln = KERNEL["ipvsadm_Ln_after"]
    assert "10.0.2.2:7001                Masq    1      0          5" in ln
    assert e.dest_counters(1)[:2] == (0, 5)
    assert e.dest_counters(2)[:2] == (0, 1)


def test_first_chunk_not_init_is_left_to_the_host():
    e = sctp_engine()
    f = bytes(Ether() / IP(src="10.0.1.2", dst=VIP) / SCTP(sport=1, dport=7000, tag=5)
              / SCTPChunkData(data=b"x"))
    v = e.process_verdicts([f], S)
    assert v[0][0] == "pass" and v[0][1] == "sctp_not_init"
    assert e.conns(S) == []


@pytest.mark.parametrize("cut", [
    lambda b: b[:34 + 12],                          # common header only, no chunk
    lambda b: b[:34 + 14],                          # half a chunk header
    lambda b: b[:34 + 14] + b"\x00\x02",            # chunk length 2 (< 4)
    lambda b: b[:34 + 14] + b"\x04\x00" + b[34 + 16:],   # chunk length past the packet
])
def test_malformed_sctp_is_dropped_and_counted(cut):
    e = sctp_engine()
    good = bytes(Ether() / IP(src="10.0.1.2", dst=VIP) / SCTP(sport=1, dport=7000)
                 / SCTPChunkInit(init_tag=1))
    bad = bytearray(cut(good))
    # keep the IP header honest: only the SCTP part is broken
    bad = bytes(Ether(bytes(bad[:14])) / IP(src="10.0.1.2", dst=VIP, proto=132)
                / bytes(bad[34:]))
    v = e.process_verdicts([bad], S)
    assert v[0][0] == "drop" and v[0][1] == "malformed"
    assert e.stats()["malformed"] == 1
    assert e.conns(S) == []


def test_nat_with_the_same_port_keeps_the_crc_and_dr_leaves_the_packet():
    e = Engine(capacity=64, local_ip="10.0.2.1", local_mac="02:00:00:00:02:01")
    e.set_service(1, "sctp", VIP, 7000)
    e.set_dest(1, 1, RS_NAT, 7000, "nat", RS_MAC, ifindex=11)
    e.set_scheduler_callback(lambda svcs, flows: [1] * len(flows))
    f = bytes(Ether() / IP(src="10.0.1.2", dst=VIP) / SCTP(sport=5, dport=7000)
              / SCTPChunkInit(init_tag=9))
    out = e.process_verdicts([f], S)[0]
    assert out[0] == "tx"
    assert out[3][34 + 8:34 + 12] == f[34 + 8:34 + 12]      # no port change: CRC as it came
    assert Ether(out[3])[IP].dst == RS_NAT and crc_ok(out[3])
    e2 = sctp_engine()
    f = bytes(Ether() / IP(src="10.0.1.2", dst=VIP) / SCTP(sport=5, dport=7100)
              / SCTPChunkInit(init_tag=9))
    out = e2.process_verdicts([f], S)[0]
    assert out[0] == "tx" and out[3][15:] == f[15:22] + bytes([f[22] - 1]) + out[3][23:]
    assert out[3][34:] == f[34:]
