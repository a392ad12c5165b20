"""A real kernel backup fed by fastlvs's encoder: tests/fixtures/kernel/sync_backup.json (made by
tests/fixtures/kernel/scripts/sync.sh backup under the kernel oracle, Debian's 6.1) records a
6.1 IPVS backup's `ipvsadm -Lnc` and `-Ln` after each step of
tests/fixtures/kernel/scripts/sync_backup_input.json: connections described as data
(sync_backup_feed.py), encoded by fastlvs.sync.protocol, some datagrams spoiled on purpose.
The backup must list exactly what the descriptions say, and what fastlvs's own decoder accepts
from the same bytes, with the timeouts and the active/inactive counts they imply."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastlvs.sync import protocol as P
from tests.fixtures.kernel.scripts import sync_backup_feed as F
from tests.sync.test_kernel_master import hostport, key, row_key, seconds

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "kernel"
REC = json.loads((FIX / "sync_backup.json").read_text())
FEED = json.loads((FIX / "scripts" / "sync_backup_input.json").read_text())
# a backup's own timeout for a conn synced with timeout 0 (ip_vs_proc_conn)
OWN_TIMEOUT = {(17, 0): 300}
TEMPLATE_OWN_TIMEOUT = 180


def test_the_feed_is_what_the_encoder_makes_today():
    assert FEED == json.loads(json.dumps(F.feed()))


def test_recording_is_from_the_oracle_kernel_and_covers_every_step():
    assert REC["kernel"].startswith("6.1.")
    assert [s["step"] for s in REC["steps"]] == [s["step"] for s in FEED["steps"]]
    assert f"syncid={FEED['syncid']}" in REC["daemon"]


def _tables():
    """The table after each step as fastlvs's decoder reads the same datagrams, and the set
    of keys each step (re)synced."""
    table, out = {}, []
    for step in FEED["steps"]:
        touched = set()
        for h in step["datagrams"]:
            for c in P.decode(bytes.fromhex(h), FEED["syncid"]).conns:
                table[key(c)] = c
                touched.add(key(c))
        out.append((dict(table), touched))
    return out


TABLES = _tables()


@pytest.mark.parametrize("i", range(len(FEED["steps"])))
def test_backup_lists_what_was_fed(i):
    table, touched = TABLES[i]
    listed = {row_key(r): r for r in REC["steps"][i]["lnc"]}
    assert set(listed) == set(table), FEED["steps"][i]["step"]
    for k, r in listed.items():
        c = table[k]
        assert r["state"] == c.state_name, k
        timeout = c.timeout or (TEMPLATE_OWN_TIMEOUT if c.template
                                else OWN_TIMEOUT[(c.protocol, c.state)])
        left = seconds(r["expire"])
        assert left <= timeout, k
        if k in touched:        # just synced: the timeout it came with (or its own) is running
            assert left >= timeout - 15, k


def test_descriptions_are_what_the_backup_installed():
    """Independent of the decoder: the install step's descriptions, as ipvsadm prints them."""
    want = {(("IP" if d["protocol"] == 0 else {6: "TCP", 17: "UDP"}[d["protocol"]]),
             hostport(d["caddr"], d["cport"]), hostport(d["vaddr"], d["vport"]),
             hostport(d["daddr"], d["dport"])) for d in F.INSTALL}
    assert {row_key(r) for r in REC["steps"][0]["lnc"]} == want


def test_bad_datagrams_install_only_what_the_decoder_accepts():
    before = {row_key(r) for r in REC["steps"][1]["lnc"]}
    for i in range(2, len(FEED["steps"])):
        step = FEED["steps"][i]
        now = {row_key(r) for r in REC["steps"][i]["lnc"]}
        new = {k[1] for k in now - before}
        got = set()
        for h in step["datagrams"]:
            d = P.decode(bytes.fromhex(h), FEED["syncid"])
            # every one is spoiled somehow (a skippable option is no error, but is noted)
            assert not d.ok or any(c.skipped_options for c in d.conns), step["step"]
            got |= {hostport(c.caddr, c.cport) for c in d.conns}
        assert new == got, step["step"]
        before = now
    # and the kernel agreed with at least one partial datagram (entries before the error kept)
    assert any(k[1] == "10.0.1.2:30104" for k in before)


def test_pe_data_reaches_the_backup():
    shown = [r for r in REC["steps"][0]["lnc_persistent"] if r.get("pe_name")]
    assert [(r["source"], r["pe_name"], r["pe_data"]) for r in shown] == \
        [("10.0.1.3:0", "sip", "call-30051")]


def _dest_key(c: P.SyncConn) -> str:
    if c.fwmark:
        return f"FWM {c.fwmark} -> {hostport(c.daddr, 0)}"
    return f"{c.proto_name} {hostport(c.vaddr, c.vport)} -> {hostport(c.daddr, c.dport)}"


@pytest.mark.parametrize("i", range(len(FEED["steps"])))
def test_backup_counts_synced_conns_by_their_inactive_flag(i):
    table, _ = TABLES[i]
    dests = REC["steps"][i]["dests"]
    counts = {k: {"active": 0, "inact": 0} for k in dests}
    for c in table.values():
        if not c.template and _dest_key(c) in counts:
            counts[_dest_key(c)]["inact" if c.inactive else "active"] += 1
    assert counts == {k: {"active": v["active"], "inact": v["inact"]} for k, v in dests.items()}
