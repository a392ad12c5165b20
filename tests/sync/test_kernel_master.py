"""fastlvs's decoder and encoder against a real kernel master: tests/fixtures/kernel/
sync_master.json (made by tests/fixtures/kernel/scripts/sync.sh master under the kernel
oracle, Debian's 6.1) holds every sync datagram a 6.1 IPVS master multicast while hand-made
TCP, UDP, persistent, fwmark, sip and IPv6 connections went through its DR and NAT services,
with its `ipvsadm -Lnc` and `-Ln` afterwards. Each datagram must decode cleanly into what the
master listed, and re-encode to the very same bytes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fastlvs.engine import contract
from fastlvs.sync import protocol as P

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
REC = json.loads((FIX / "sync_master.json").read_text())
SYNCID = REC["syncid"]
PAYLOADS = [bytes.fromhex(d["payload"]) for d in REC["datagrams"]]
DECODED = [P.decode(p, SYNCID) for p in PAYLOADS]


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def key(c: P.SyncConn) -> tuple:
    return (c.proto_name, hostport(c.caddr, c.cport), hostport(c.vaddr, c.vport),
            hostport(c.daddr, c.dport))


def row_key(r: dict) -> tuple:
    return (r["pro"], r["source"], r["virtual"], r["destination"])


def seconds(expire: str) -> int:
    m, s = expire.split(":")
    return int(m) * 60 + int(s)


def last_synced() -> dict:
    out = {}
    for d in DECODED:
        for c in d.conns:
            out[key(c)] = c
    return out


def test_recording_is_from_the_oracle_kernel_and_has_every_kind():
    assert REC["kernel"].startswith("6.1.")
    assert REC["sip"] is True and "ipv6_error" not in REC
    kinds = {(c.proto_name, c.template, c.ipv6, c.fwmark != 0, c.pe_data is not None)
             for d in DECODED for c in d.conns}
    assert {("TCP", False, False, False, False), ("UDP", False, False, False, False),
            ("TCP", True, False, False, False), ("IP", True, False, True, False),
            ("UDP", True, False, False, True), ("TCP", False, True, False, False)} <= kinds


@pytest.mark.parametrize("i", range(len(PAYLOADS)))
def test_each_kernel_datagram_decodes_cleanly(i):
    d, sent = DECODED[i], REC["datagrams"][i]
    assert d.ok and d.syncid == SYNCID and d.conns
    assert (sent["dst"], sent["dport"], sent["ttl"]) == (P.SYNC_GROUP, P.SYNC_PORT, 1)
    assert len(PAYLOADS[i]) <= P.sync_maxlen()


@pytest.mark.parametrize("i", range(len(PAYLOADS)))
def test_each_kernel_datagram_re_encodes_byte_for_byte(i):
    assert P.encode_message(SYNCID, DECODED[i].conns) == PAYLOADS[i]


def test_packer_splits_where_the_kernel_split():
    """The kernel closes a message when the next entry does not fit in sync_maxlen, and
    otherwise sends it after at most about 2 s. Fed the same entries, the packer must keep
    every kernel message whole, and close it exactly where the kernel closed a full one."""
    maxlen = P.sync_maxlen()
    full = 0
    for i, d in enumerate(DECODED):
        p = P.SyncPacker(SYNCID, maxlen)
        for c in d.conns:
            assert p.add(c) == [], f"message {i} would have been split"
        if i + 1 < len(DECODED):
            nxt = P.encode_conn(DECODED[i + 1].conns[0])
            fits = len(PAYLOADS[i]) + (-len(PAYLOADS[i]) & 3) + len(nxt) <= maxlen
            closed = p.add(DECODED[i + 1].conns[0])
            assert closed == ([] if fits else [PAYLOADS[i]])
            full += not fits
    assert full >= 1, "no kernel message was closed for being full; the recording lacks one"


def test_master_listing_matches_what_it_synced_last():
    synced = last_synced()
    listed = {row_key(r): r for r in REC["lnc"]}
    assert listed
    for k, r in listed.items():
        c = synced.get(k)
        assert c is not None, f"{k} listed but never synced"
        assert c.state_name == r["state"], k
        assert seconds(r["expire"]) <= c.timeout, k
    # every synced entry whose timeout outlasts the recording is still listed
    for k, c in synced.items():
        if c.timeout >= 60:
            assert k in listed, f"{k} synced ({c.state_name}, {c.timeout} s) but not listed"


def test_pe_data_is_what_the_master_shows():
    shown = {row_key(r): r for r in REC["lnc_persistent"] if r.get("pe_name")}
    synced = last_synced()
    assert shown
    for k, r in shown.items():
        assert synced[k].pe_name == r["pe_name"]
        assert synced[k].pe_data.decode() == r["pe_data"]


def _dest_key(c: P.SyncConn) -> str:
    if c.fwmark:
        return f"FWM {c.fwmark} -> {hostport(c.daddr, 0)}"
    return f"{c.proto_name} {hostport(c.vaddr, c.vport)} -> {hostport(c.daddr, c.dport)}"


def test_flags_carry_the_forwarding_method_and_activity_the_master_counts():
    labels = {fwd_id: label for fwd_id, _opt, label in contract.FWD_METHODS.values()}
    synced = last_synced()
    # -Ln was read just after -Lnc: an entry listed in its last second (00:00) may be gone
    listed = {row_key(r) for r in REC["lnc"] if seconds(r["expire"]) > 0}
    counts = {k: {"active": 0, "inact": 0} for k in REC["dests"]}
    for k, c in synced.items():
        dest = REC["dests"][_dest_key(c)]
        assert labels[c.fwd] == dest["fwd"], k
        if k in listed and not c.template:
            counts[_dest_key(c)]["inact" if c.inactive else "active"] += 1
    assert counts == {k: {"active": v["active"], "inact": v["inact"]}
                      for k, v in REC["dests"].items()}


def test_daemon_maxlen_is_sync_maxlen():
    m = re.search(r"maxlen=(\d+)", REC["daemon"])
    assert m and int(m.group(1)) == P.sync_maxlen()
