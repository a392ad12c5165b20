"""`fastlvs replay` end to end: rules file + pcap in, pcap + JSON + ipvsadm listing out. Every
output frame is parsed again with scapy and its checksums recomputed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter, rdpcap

LOCAL_IP, LOCAL_MAC = "192.0.2.1", "02:00:00:00:00:01"
VIP = "203.0.113.10"
RS1, RS2 = "192.0.2.11", "192.0.2.12"
MAC = {RS1: "02:00:00:00:01:11", RS2: "02:00:00:00:01:12", "192.0.2.254": "02:00:00:00:00:fe"}
CLIENT_MAC = "02:00:00:00:00:aa"


def _write_pcap(path, frames):
    w = PcapWriter(str(path), linktype=1, nano=True, sync=True)
    for ts, pkt in frames:
        pkt.time = ts
        w.write(pkt)
    w.close()


def _syn(client, sport, ts, dport=80, flags="S", proto="tcp"):
    ip = IP(src=client, dst=VIP, flags="DF")
    l4 = TCP(sport=sport, dport=dport, flags=flags, seq=1) if proto == "tcp" else \
        UDP(sport=sport, dport=dport) / b"hello"
    return ts, Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / ip / l4


def _replay(tmp_path, rules: str, frames, *extra, neighbors=(RS1, RS2)):
    (tmp_path / "rules").write_text(rules)
    _write_pcap(tmp_path / "in.pcap", frames)
    cmd = [sys.executable, "-m", "fastlvs", "replay", "--rules", str(tmp_path / "rules"),
           "--in", str(tmp_path / "in.pcap"), "--out", str(tmp_path / "out.pcap"),
           "--local-ip", LOCAL_IP, "--local-mac", LOCAL_MAC, *extra]
    for ip in neighbors:
        cmd += ["--neighbor", f"{ip}={MAC[ip]}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)




RR_DR = f"""# two real servers added in this order: IPVS lists them newest first
-A -t {VIP}:80 -s rr
-a -t {VIP}:80 -r {RS1}:80 -g -w 1
-a -t {VIP}:80 -r {RS2}:80 -g -w 1
"""


def _ip_but_ttl(ip):
    """The IP packet's bytes without its TTL and header checksum."""
    b = bytes(ip)
    return b[:8] + b[9:10] + b[12:]


def _ip_csum_ok(pkt):
    raw = Ether(bytes(pkt))
    carried = raw[IP].chksum
    del raw[IP].chksum
    return Ether(bytes(raw))[IP].chksum == carried


def test_dr_replay_rewrites_macs_only_and_follows_the_kernels_list_order(tmp_path):
    """rr starts at the head of the list, and `-a` inserts at the head: the server added
    last gets the first connection. DR changes the MACs and, as IPVS forwards, decrements
    the TTL (tests/fixtures/kernel/ttl.json); nothing else."""
    frames = [_syn(f"198.51.100.{i}", 40000 + i, 1000.0 + i) for i in range(1, 5)]
    r = _replay(tmp_path, RR_DR, frames, "--list", str(tmp_path / "list"))
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert [p[Ether].dst for p in out] == [MAC[RS2], MAC[RS1], MAC[RS2], MAC[RS1]]
    for (ts, sent), got in zip(frames, out):
        assert got[Ether].src == LOCAL_MAC
        assert _ip_but_ttl(got[IP]) == _ip_but_ttl(sent[IP])   # only TTL and checksum changed
        assert got[IP].ttl == sent[IP].ttl - 1 and _ip_csum_ok(got)
        assert float(got.time) == pytest.approx(ts)      # stamped with its cause's time
    listing = (tmp_path / "list").read_text().splitlines()
    assert listing[3] == f"TCP  {VIP}:80 rr"
    # each got two SYNs: SYN_RECV is an active state
    assert listing[4].split() == ["->", f"{RS1}:80", "Route", "1", "2", "0"]
    assert listing[5].split() == ["->", f"{RS2}:80", "Route", "1", "2", "0"]


def test_nat_replay_rewrites_both_directions_with_valid_checksums(tmp_path):
    rules = f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS1}:5353 -m\n"
    client = "198.51.100.9"
    req = _syn(client, 33333, 5.0, dport=53, proto="udp")
    reply = (6.0, Ether(src=MAC[RS1], dst=LOCAL_MAC) / IP(src=RS1, dst=client)
             / UDP(sport=5353, dport=33333) / b"answer")
    r = _replay(tmp_path, rules, [req, reply], "--gateway", "192.0.2.254", "--stats",
                neighbors=(RS1, "192.0.2.254"))
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)                   # the whole of stdout is one JSON object
    assert stats["frames_in"] == 2 and stats["frames_out"] == 2
    svc = stats["services"][0]
    assert (svc["conns"], svc["inpkts"], svc["outpkts"]) == (1, 1, 1)
    fwd, back = rdpcap(str(tmp_path / "out.pcap"))
    assert (fwd[IP].dst, fwd[UDP].dport, fwd[Ether].dst) == (RS1, 5353, MAC[RS1])
    assert (back[IP].src, back[UDP].sport, back[IP].dst) == (VIP, 53, client)
    assert back[Ether].dst == MAC["192.0.2.254"]          # the client is behind the gateway
    for p in (fwd, back):
        raw = Ether(bytes(p))
        for layer in (IP, UDP):
            carried = raw[layer].chksum
            del raw[layer].chksum
            assert Ether(bytes(raw))[layer].chksum == carried, (layer.__name__, p.summary())


def test_frames_that_are_not_virtual_service_traffic_are_not_written(tmp_path):
    frames = [_syn("198.51.100.1", 40000, 1.0, dport=22),      # no such service
              _syn("198.51.100.1", 40001, 2.0, flags="A"),      # not a SYN of an unknown flow
              _syn("198.51.100.1", 40002, 3.0)]
    r = _replay(tmp_path, RR_DR, frames, "--stats")
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert len(out) == 1 and out[0][TCP].sport == 40002
    eng = json.loads(r.stdout)["engine"]
    assert eng["no_service"] == 1 and eng["tcp_not_syn"] == 1


def test_timeouts_follow_the_capture_clock(tmp_path):
    """A UDP conn expires 300 s after its last packet (IPVS's udp timeout): a datagram of
    the same flow 301 s later is a new connection and rr moves it to the next server."""
    rules = f"-A -u {VIP}:53 -s rr\n-a -u {VIP}:53 -r {RS1} -g\n-a -u {VIP}:53 -r {RS2} -g\n"
    frames = [_syn("198.51.100.1", 1111, 100.0, dport=53, proto="udp"),
              _syn("198.51.100.1", 1111, 399.0, dport=53, proto="udp"),
              _syn("198.51.100.1", 1111, 700.0, dport=53, proto="udp")]
    r = _replay(tmp_path, rules, frames, "--stats")
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert [p[Ether].dst for p in out] == [MAC[RS2], MAC[RS2], MAC[RS1]]
    assert json.loads(r.stdout)["services"][0]["conns"] == 2


@pytest.mark.parametrize("rules,expect", [
    (f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -g -w -1\n", ":2: "),
    (f"-A -t {VIP}:80 -s nope\n", ":1: "),
    (f"-a -t {VIP}:80 -r {RS1}:80 -g\n", ":1: "),
    (f"-A -t {VIP}:99999 -s rr\n", ":1: "),
])
def test_a_bad_rules_line_is_named_with_exit_2(tmp_path, rules, expect):
    r = _replay(tmp_path, rules, [_syn("198.51.100.1", 1, 1.0)])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(str(tmp_path / "rules") + expect)
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize("rules", ["-A -t [2001:db8::1]:80 -s rr\n"])
def test_a_service_the_engine_cannot_forward_is_one_line(tmp_path, rules):
    r = _replay(tmp_path, rules, [_syn("198.51.100.1", 1, 1.0)])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "not supported" in r.stderr
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize("args,expect", [
    (["--local-mac", "zz:00:00:00:00:01"], "--local-mac"),
    (["--neighbor", "192.0.2.11"], "--neighbor"),
    (["--gateway", "192.0.2.99"], "--gateway 192.0.2.99"),
    (["--mtu", "20"], "--mtu"),
    (["--capacity", "-1"], "--capacity"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, expect):
    r = _replay(tmp_path, RR_DR, [_syn("198.51.100.1", 1, 1.0)], *args)
    assert r.returncode == 2, r.stdout
    assert r.stderr.count("\n") == 1 and expect in r.stderr and "Traceback" not in r.stderr


def test_a_real_server_without_next_hop_is_refused(tmp_path):
    r = _replay(tmp_path, RR_DR, [_syn("198.51.100.1", 1, 1.0)], neighbors=(RS1,))
    assert r.returncode == 2
    assert "192.0.2.12" in r.stderr and r.stderr.count("\n") == 1


def test_a_file_that_is_not_a_pcap_is_refused(tmp_path):
    (tmp_path / "rules").write_text(RR_DR)
    (tmp_path / "in.pcap").write_bytes(b"this is not a capture at all")
    r = subprocess.run([sys.executable, "-m", "fastlvs", "replay", "--rules",
                        str(tmp_path / "rules"), "--in", str(tmp_path / "in.pcap"), "--out",
                        str(tmp_path / "o.pcap"), "--local-ip", LOCAL_IP, "--local-mac",
                        LOCAL_MAC, "--neighbor", f"{RS1}={MAC[RS1]}", "--neighbor",
                        f"{RS2}={MAC[RS2]}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a pcap" in r.stderr and "Traceback" not in r.stderr


def test_tun_replay_encapsulates_and_answers_frag_needed_past_the_mtu(tmp_path):
    """TUN wraps the packet (TTL decremented, as IPVS does) in an outer IPv4 header (proto 4,
    src = our IP, dst = RIP, DF and the TTL copied); a DF packet that would exceed --mtu with those 20 bytes is not
    forwarded but answered with ICMP 3/4 carrying next-hop MTU = mtu - 20, as IPVS does."""
    from scapy.layers.inet import ICMP
    rules = f"-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -i\n"
    client = "198.51.100.4"
    small = _syn(client, 40000, 1.0)
    ts, big = _syn(client, 40000, 2.0, flags="A")
    big = big / (b"x" * 1000)
    r = _replay(tmp_path, rules, [small, (ts, big)], "--mtu", "1000", "--stats",
                neighbors=(RS1,))
    assert r.returncode == 0, r.stderr
    enc, icmp = rdpcap(str(tmp_path / "out.pcap"))
    outer = Ether(bytes(enc))[IP]
    assert (outer.src, outer.dst, outer.proto, outer.flags.DF) == (LOCAL_IP, RS1, 4, True)
    inner = IP(bytes(outer.payload))
    assert _ip_but_ttl(inner) == _ip_but_ttl(small[1][IP])     # only TTL and checksum changed
    assert inner.ttl == outer.ttl == small[1][IP].ttl - 1
    assert outer.len == len(bytes(small[1][IP])) + 20
    reply = Ether(bytes(icmp))
    assert (reply[IP].src, reply[IP].dst) == (VIP, client)
    assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, 980)
    for layer in (IP, ICMP):
        raw = Ether(bytes(icmp))
        carried = raw[layer].chksum
        del raw[layer].chksum
        assert Ether(bytes(raw))[layer].chksum == carried
    raw = Ether(bytes(enc))
    del raw[IP].chksum
    assert Ether(bytes(raw))[IP].chksum == outer.chksum
    assert json.loads(r.stdout)["engine"]["frag_needed_sent"] == 1
