"""`fastlvs replay` throughput on a large capture, next to the cost of merely reading and
writing the same pcap with the same library (the floor any replay pays).

    .venv/bin/python benchmarks/replay_bench.py [--frames 1000000] [--flows 10000]

Builds IN.pcap in a temp dir: `--flows` TCP connections (SYN, then data packets) from distinct
clients to one DR service of 4 real servers (wlc), interleaved; prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import dpkt

VIP = bytes([203, 0, 113, 10])
LOCAL_MAC = bytes.fromhex("020000000001")
CLIENT_MAC = bytes.fromhex("0200000000aa")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frame(client: int, sport: int, flags: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0,
                     client.to_bytes(4, "big"), VIP)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    return LOCAL_MAC + CLIENT_MAC + b"\x08\x00" + ip + tcp


def make_pcap(path: str, frames: int, flows: int) -> None:
    syn = [_frame(0xC6120000 + i, 1024 + i % 60000, 0x02) for i in range(flows)]
    ack = [_frame(0xC6120000 + i, 1024 + i % 60000, 0x10) for i in range(flows)]
    with open(path, "wb") as fh:
        w = dpkt.pcap.Writer(fh, nano=True)
        t = 1_000_000.0
        for n in range(frames):
            i = n % flows
            w.writepkt(syn[i] if n < flows else ack[i], ts=t + n * 1e-6)


def copy_pcap(src: str, dst: str) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        w = dpkt.pcap.Writer(fo, nano=True)
        for ts, buf in dpkt.pcap.UniversalReader(fi):
            w.writepkt(buf, ts=ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pin, pout, pcopy = (os.path.join(d, n) for n in ("in.pcap", "out.pcap", "copy.pcap"))
        rules = os.path.join(d, "rules")
        with open(rules, "w") as fh:
            fh.write("-A -t 203.0.113.10:80 -s wlc\n")
            for i in range(1, 5):
                fh.write(f"-a -t 203.0.113.10:80 -r 192.0.2.{10 + i}:80 -g -w {i}\n")
        make_pcap(pin, args.frames, args.flows)
        t0 = time.perf_counter()
        copy_pcap(pin, pcopy)
        t_copy = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "fastlvs", "replay", "--rules", rules, "--in", pin,
               "--out", pout, "--local-ip", "192.0.2.1", "--local-mac", "02:00:00:00:00:01",
               "--stats"]
        for i in range(1, 5):
            cmd += ["--neighbor", f"192.0.2.{10 + i}=02:00:00:00:01:{10 + i:02x}"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        t_replay = time.perf_counter() - t0
        stats = json.loads(r.stdout)
    print(json.dumps({
        "frames": args.frames, "flows": args.flows,
        "frames_out": stats["frames_out"],
        "replay_seconds": round(t_replay, 3),
        "replay_frames_per_s": round(args.frames / t_replay),
        "read_write_only_seconds": round(t_copy, 3),
        "read_write_only_frames_per_s": round(args.frames / t_copy),
        "replay_over_read_write": round(t_replay / t_copy, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
