"""`fastlvs replay` end to end: rules file + pcap in, pcap + JSON + ipvsadm listing out. Every
output frame is parsed again with scapy and its checksums recomputed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
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


@pytest.mark.parametrize("rules", ["-A -t [::1]:80 -s rr\n"])
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
    (["--local-ip", "192.0.2.2"], "--local-ip: two IPv4 addresses"),
    (["--local-ip", "2001:db8::zz"], "--local-ip"),
    (["--neighbor", "2001:db8::1=02:00"], "--neighbor"),
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


# -- IPv6 ----------------------------------------------------------------------------------------
VIP6, LOCAL6 = "2001:db8:1::100", "2001:db8:2::1"
RS6 = ["2001:db8:2::11", "2001:db8:2::12"]
CLIENT6 = "2001:db8:1::2"
MAC6 = {RS6[0]: "02:00:00:00:06:11", RS6[1]: "02:00:00:00:06:12", CLIENT6: CLIENT_MAC}


def _replay6(tmp_path, rules, frames, *extra):
    neigh = []
    for ip, mac in MAC6.items():
        neigh += ["--neighbor", f"{ip}={mac}"]
    return _replay(tmp_path, rules, frames, "--local-ip", LOCAL6, *neigh, *extra,
                   neighbors=())


def _syn6(sport, ts, dport=80, flags="S", hlim=64, payload=b""):
    return ts, (Ether(src=CLIENT_MAC, dst=LOCAL_MAC) / IPv6(src=CLIENT6, dst=VIP6, hlim=hlim)
                / TCP(sport=sport, dport=dport, flags=flags, seq=1) / payload)


def _csum6_ok(pkt):
    from tests.core.test_engine_ipv6 import checksums_ok6
    return checksums_ok6(bytes(pkt))


def test_ipv6_replay_in_every_mode(tmp_path):
    """DR rewrites MACs only, NAT66 rewrites address and port both ways, TUN wraps in IPv6
    (next header 41) from --local-ip's v6 address; hop limits one less; checksums valid."""
    rules = f"""-A -t [{VIP6}]:80 -s rr
-a -t [{VIP6}]:80 -r [{RS6[0]}]:80 -g
-A -t [{VIP6}]:81 -s rr
-a -t [{VIP6}]:81 -r [{RS6[1]}]:8081 -m
-A -t [{VIP6}]:82 -s rr -p 60 -M 64
-a -t [{VIP6}]:82 -r [{RS6[0]}]:82 -i
"""
    reply = (Ether(src=MAC6[RS6[1]], dst=LOCAL_MAC) / IPv6(src=RS6[1], dst=CLIENT6)
             / TCP(sport=8081, dport=1001, flags="SA"))
    frames = [_syn6(1000, 1.0, 80), _syn6(1001, 1.1, 81), (1.2, reply), _syn6(1002, 1.3, 82)]
    r = _replay6(tmp_path, rules, frames, "--stats", "--list", str(tmp_path / "Ln"))
    assert r.returncode == 0, r.stderr
    out = rdpcap(str(tmp_path / "out.pcap"))
    assert len(out) == 4 and all(_csum6_ok(p) for p in out)
    dr, nat, back, tun = out
    assert dr.dst == MAC6[RS6[0]] and dr[IPv6].dst == VIP6 and dr[IPv6].hlim == 63
    assert (nat[IPv6].dst, nat[TCP].dport) == (RS6[1], 8081)
    assert (back.dst, back[IPv6].src, back[TCP].sport) == (CLIENT_MAC, VIP6, 81)
    assert (tun[IPv6].nh, tun[IPv6].src, tun[IPv6].dst) == (41, LOCAL6, RS6[0])
    inner = IPv6(bytes(tun[IPv6].payload))
    assert (inner.src, inner.dst, inner.hlim, inner[TCP].sport) == (CLIENT6, VIP6, 63, 1002)
    stats = json.loads(r.stdout)
    assert stats["engine"]["conns_created"] == 3
    assert [d["dest"] for s in stats["services"] for d in s["dests"]] == [
        f"[{RS6[0]}]:80", f"[{RS6[1]}]:8081", f"[{RS6[0]}]:82"]
    listing = (tmp_path / "Ln").read_text()
    assert f"TCP  [{VIP6}]:82 rr persistent 60 mask 64" in listing
    assert f"  -> [{RS6[1]}]:8081" in listing


def test_ipv6_replay_with_both_families_and_a_v6_gateway(tmp_path):
    rules = f"""-A -t {VIP}:80 -s rr
-a -t {VIP}:80 -r {RS1}:8080 -m
-A -t [{VIP6}]:80 -s rr
-a -t [{VIP6}]:80 -r [{RS6[0]}]:8080 -m
"""
    gw6, gw6_mac = "2001:db8:1::fe", "02:00:00:00:06:fe"
    far = "2001:db8:99::7"
    frames = [_syn("198.51.100.1", 5, 1.0),
              (1.1, Ether(src=gw6_mac, dst=LOCAL_MAC) / IPv6(src=far, dst=VIP6)
               / TCP(sport=6, dport=80, flags="S")),
              (1.2, Ether(src=MAC6[RS6[0]], dst=LOCAL_MAC) / IPv6(src=RS6[0], dst=far)
               / TCP(sport=8080, dport=6, flags="SA"))]
    r = _replay6(tmp_path, rules, frames, "--neighbor",
                 f"{RS1}={MAC[RS1]}", "--neighbor", f"[{gw6}]={gw6_mac}", "--gateway", gw6)
    assert r.returncode == 0, r.stderr
    v4, v6, back = rdpcap(str(tmp_path / "out.pcap"))
    assert v4[IP].dst == RS1 and v6[IPv6].dst == RS6[0]
    assert (back.dst, back[IPv6].src, back[IPv6].dst) == (gw6_mac, VIP6, far)
    assert all(_csum6_ok(p) for p in (v6, back))
