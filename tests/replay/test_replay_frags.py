"""`fastlvs replay` of a capture holding fragmented UDP datagrams: each is written once,
reassembled and cut again, when its last piece came (and stamped with that piece's time);
a datagram missing a piece is not written and is counted as expired."""
from __future__ import annotations

import json

import pytest

from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from tests.replay.test_replay import CLIENT_MAC, LOCAL_MAC, MAC, RS1, VIP, _replay


def test_fragmented_datagrams_replay_whole(tmp_path):
    rules = f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS1}:5353 -m\n"
    frames = []
    payloads = {}
    for k, sport in enumerate((41000, 41001, 41002)):
        payload = bytes((i * 3 + k) & 0xFF for i in range(3000))
        payloads[sport] = payload
        ip = IP(bytes(IP(src="198.51.100.9", dst=VIP, id=500 + k) / UDP(sport=sport, dport=53)
                      / Raw(payload)))
        pieces = [Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / f for f in fragment(ip, fragsize=1480)]
        if k == 1:
            pieces.reverse()
        if k == 2:
            pieces = pieces[:-1]                  # never completed
        frames += [(10.0 + k + j / 10, p) for j, p in enumerate(pieces)]
    frames.append((100.0, Ether(src=CLIENT_MAC, dst=LOCAL_MAC)
                   / IP(src="198.51.100.9", dst=VIP) / UDP(sport=41009, dport=53) / b"tick"))
    r = _replay(tmp_path, rules, frames, "--stats")
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    frags = [p for p in out if p[IP].id in (500, 501)]
    assert [(p[IP].id, p[IP].frag * 8, p[IP].len) for p in frags] == \
        [(500, 0, 1500), (500, 1480, 1500), (500, 2960, 68),
         (501, 0, 1500), (501, 1480, 1500), (501, 2960, 68)]
    assert all(p[Ether].dst == MAC[RS1] and p[IP].dst == RS1 for p in frags)
    # stamped with the time of the piece that completed each
    assert [float(frags[i].time) for i in (0, 3)] == pytest.approx([10.2, 11.2])
    for ipid, sport in ((500, 41000), (501, 41001)):
        data = b"".join(bytes(p[IP].payload)[:p[IP].len - 20] for p in frags if p[IP].id == ipid)
        udp = UDP(data)
        assert udp.dport == 5353 and bytes(udp.payload) == payloads[sport]
        ck = udp.chksum
        check = IP(src="198.51.100.9", dst=RS1, proto=17) / UDP(data)
        del check[UDP].chksum
        assert IP(bytes(check))[UDP].chksum == ck
    eng = json.loads(r.stdout)["engine"]
    assert (eng["frag_reasm"], eng["frag_timeout"], eng["frag_out"]) == (2, 1, 6)
