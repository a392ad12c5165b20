"""Failover of a fastlvs director pair, measured (root; keepalived installed): connections lost
per failover and the new-connection outage, for DR and NAT, a crashed master (SIGKILL to its
fastlvs and keepalived) and a master whose LAN link goes down; several runs, median and worst.

    .venv/bin/python -m benchmarks.failover [--runs 3] [--modes dr,nat]
        [--events sigkill,linkdown,fastlvs] [--long 200] [--interval 0.05] [--rate 100]
        [--out benchmarks/results/failover.json]

Each run builds a fresh pair (fastlvs.lab.pair: two directors running keepalived --vrrp under
fastlvs, lvs_sync_daemon in their keepalived.conf, advert_int 1, priorities 150/100), opens
--long long-lived connections that exchange a message every --interval plus --rate new
connections per second (fastlvs.lab.load, attempt timeout 1 s), lets them run 2 s, fails the
master, and keeps the load 5 s after the backup holds the VIP. Per run it records:
  lost            long-lived connections lost (reset, or no echo within 15 s)
  new_failed      new connections that failed (refused, reset, no answer within 1 s)
  outage_ms       first to last failed new connection (by start time)
  gap_ms          the longest time between two successful new connections
  takeover_ms     from the failure to the backup holding the VIP (polled every 50 ms)
The VRRP figure beside them is keepalived's own: a backup declares the master dead after
Master_Down_Interval = 3 * advert_int + (256 - priority) / 256 * advert_int (RFC 3768), the
same with the kernel's IPVS behind keepalived; the sync daemon does not change it.
Event `fastlvs` kills fastlvs alone (its keepalived must follow it: SIGTERM by parent-death
signal, so it gives the VIP up at once).

    .venv/bin/python -m benchmarks.failover --sync-load [--sync-rate 50000] [--sync-seconds 2]

Sync under load (DR pair, d1 the sync master, d2 the backup, both from lvs_sync_daemon): a
Python client cannot open 50,000 connections a second, so the new connections are made of
frames: benchmarks/peers/conn_gen.bpf.c, run by the peers' `xdptool gen` (BPF_PROG_TEST_RUN
with live frames, paced inside the run) in a generator namespace on the LAN, sends for each
new flow a client's SYN, its ACK and one more ACK to the VIP through d1's MAC. That is all a
DR director sees of a connection (the replies go from the real servers to the client
directly): the SYN creates the connection, the ACK makes it ESTABLISHED, and the third
packet is where a master with the kernel's default sync_threshold (3) sends it. Sampled every 100 ms through the control sockets: the master's
and the backup's connection entries; at the end the backup's catch-up time after the last
new connection, the largest backlog (connections the master had and the backup not yet),
and the sync traffic (UDP to port 8848, counted by nft in d1's output hook): messages and
bytes per second, bytes per connection.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from fastlvs.lab.pair import PORT, Pair
from fastlvs.lab.testbed import run

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")
GEN_CLIENTS = "10.205.0.0"       # the generated clients' first address (flow i: + i / 1024)
SYNC_SETTLE = 15.0               # bound on waiting for the backup after the generator ends

EVENTS = ("sigkill", "linkdown", "fastlvs")
BEFORE = 2.0
AFTER = 5.0
TAKEOVER = 30.0


def master_down_interval(advert_int: float, priority: int) -> float:
    """RFC 3768's Master_Down_Interval of a backup with `priority`, in seconds."""
    return 3 * advert_int + (256 - priority) / 256 * advert_int


def one_run(mode: str, event: str, n_long: int, interval: float, rate: float) -> dict:
    pair = Pair(mode).build()
    try:
        pair.start()
        lr = pair.load(long=n_long, interval=interval, rate=rate, duration=120,
                       echo_timeout=15.0, attempt_timeout=1.0)
        lr.start()
        try:
            time.sleep(BEFORE)
            t_event = time.time()
            t0 = time.monotonic()
            if event == "sigkill":
                pair.kill_director(0)
            elif event == "linkdown":
                pair.link(0, False)
            else:
                pair.kill_fastlvs(0)
            pair.wait_holder(1, TAKEOVER)
            takeover = time.monotonic() - t0
            time.sleep(AFTER)
            s = lr.stop()
        finally:
            lr.kill()
    finally:
        pair.destroy()
    return {"mode": mode, "event": event, "opened": s["long"]["opened"],
            "lost": s["long"]["lost"], "lost_by_reason": s["long"]["lost_by_reason"],
            "new_attempts": s["new"]["attempts"], "new_failed": s["new"]["failed"],
            "new_failed_by_reason": {k: v for k, v in s["new"]["failed_by_reason"].items() if v},
            "first_failure_after_event_ms": (round(s["outage"]["first_failure_ms"]
                                                   - (t_event - s["start_unix"]) * 1000, 1)
                                             if s["outage"]["first_failure_ms"] is not None
                                             else None),
            "last_failure_after_takeover_ms": (round(s["outage"]["last_failure_ms"]
                                                     - (t_event - s["start_unix"]) * 1000
                                                     - takeover * 1000, 1)
                                               if s["outage"]["last_failure_ms"] is not None
                                               else None),
            "outage_ms": s["outage"]["window_ms"], "gap_ms": s["outage"]["longest_gap_ms"],
            "takeover_ms": round(takeover * 1000, 1), "max_stall_ms": s["long"]["max_stall_ms"]}


def _ip2int(ip: str) -> int:
    return struct.unpack("!I", socket.inet_aton(ip))[0]


def _mac(ns: str, dev: str) -> bytes:
    link = json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]
    return bytes.fromhex(link["address"].replace(":", ""))


def _build_gen(out: str) -> tuple[str, str]:
    """conn_gen.bpf.o and xdptool, compiled into `out` (nothing binary is kept)."""
    arch_inc = "/usr/include/" + run("gcc", "-dumpmachine").stdout.strip()
    obj = os.path.join(out, "conn_gen.bpf.o")
    run("clang", "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc, "-I", PEERS, "-c",
        os.path.join(PEERS, "conn_gen.bpf.c"), "-o", obj, timeout=120)
    exe = os.path.join(out, "xdptool")
    run("gcc", "-O2", "-g", "-Wall", "-I", PEERS, "-o", exe, os.path.join(PEERS, "xdptool.c"),
        "-lbpf", timeout=120)
    return obj, exe


SYNC_COUNT = """
table inet flsynccount {
  chain out { type filter hook output priority 0; policy accept;
    udp dport 8848 counter comment "sync_out"
  }
  chain in { type filter hook input priority 0; policy accept;
    udp dport 8848 counter comment "sync_in"
  }
}
"""


def _sync_counter(ns: str) -> tuple[int, int]:
    """(packets, bytes) of UDP to port 8848 leaving namespace ns (IP length)."""
    out = run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet",
              "flsynccount").stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == "sync_out":
            for e in rule["expr"]:
                if "counter" in e:
                    return e["counter"]["packets"], e["counter"]["bytes"]
    return 0, 0


def _udp_rcvbuf_errors(ns: str) -> int | None:
    """The kernel's Udp RcvbufErrors in namespace ns (/proc/net/snmp: datagrams dropped
    for a full socket buffer)."""
    lines = [ln.split() for ln in run("ip", "netns", "exec", ns, "cat",
                                      "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Udp:")]
    if len(lines) >= 2 and "RcvbufErrors" in lines[0]:
        return int(lines[1][lines[0].index("RcvbufErrors")])
    return None


def sync_load(rate: float, seconds: float) -> dict:
    """The sync-under-load measurement (see the module docstring)."""
    from fastlvs.control import ctl

    tmp = tempfile.mkdtemp(prefix="flsyncgen-")
    pair = Pair("dr", n_rs=2, prefix="fs")
    try:
        obj, xdptool = _build_gen(tmp)
        pair.build().start()
        gen = f"{pair.tag}g"
        run("ip", "netns", "add", gen)
        pair.made.append(gen)
        pair._veth("pg", gen, "eth0", "br0")
        # live frames leave by ndo_xdp_xmit: the switch side needs its NAPI (GRO keeps it)
        run("ip", "netns", "exec", pair.switch, "ethtool", "-K", "pg", "gro", "on")
        run("ip", "-n", gen, "link", "set", "eth0", "up")
        for ns in pair.directors:
            run("ip", "netns", "exec", ns, "nft", "-f", "-", input=SYNC_COUNT)
        flows = int(rate * (seconds + 1)) + 1024         # no flow comes twice
        cfg = struct.pack("<QIIIH6s6s6x", int(1e9 / (3 * rate)), _ip2int(GEN_CLIENTS),
                          _ip2int(pair.vip), flows, PORT, _mac(pair.directors[0], pair.lan_if),
                          _mac(gen, "eth0")).hex()
        master = ctl.Client(pair.running[0].socket_path)
        backup = ctl.Client(pair.running[1].socket_path)

        def entries(c):
            return c.call("counters")["result"]["conn_entries"]

        m0, b0 = entries(master), entries(backup)
        p0, by0 = _sync_counter(pair.directors[0])
        t0 = time.monotonic()
        g = subprocess.Popen(["ip", "netns", "exec", gen, xdptool, "gen", "eth0", obj, cfg,
                              f"{seconds:.2f}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        samples = []
        gen_end = None
        settle_end = t0 + seconds + SYNC_SETTLE
        while time.monotonic() < settle_end:
            m, b = entries(master) - m0, entries(backup) - b0
            samples.append((round(time.monotonic() - t0, 3), m, b))
            if gen_end is None and g.poll() is not None:
                # the generator's own end (a sample can take long under load)
                gen_end = time.monotonic() - t0
            if gen_end is not None and b >= m and m > 0:
                break
            time.sleep(0.1)
        out, err = g.communicate(timeout=seconds + 10)
        if gen_end is None:
            gen_end = time.monotonic() - t0
        p2, by2 = _sync_counter(pair.directors[0])
        try:
            sent = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"generator: {err.strip()}") from None
        m_final, b_final = samples[-1][1], samples[-1][2]
        rcvbuf = _udp_rcvbuf_errors(pair.directors[1])
        ms = master.call("counters")["result"].get("sync", {})
        bs = backup.call("counters")["result"].get("sync", {})
        caught = next((t for t, m, b in samples if t >= gen_end and b >= m_final), None)
        # a conn that never got its third packet is never sent (sync_threshold): the backup
        # is level once it holds every entry the master sent
        level = next((t for t, m, b in samples if t >= gen_end
                      and b >= (ms.get("sent_conns") or 0)), None)
        first = next(((t, b) for t, m, b in samples if t >= gen_end), (None, None))
        master.close()
        backup.close()
        return {
            "offered_conns_per_s": round(sent["sent"] / 3 / sent["seconds"]),
            "gen_seconds": round(sent["seconds"], 3),
            "master_conns": m_final, "backup_conns": b_final,
            "master_conns_per_s": round(m_final / sent["seconds"]),
            "max_backlog_conns": max(m - b for _, m, b in samples),
            "catch_up_ms_after_last": (round((caught - gen_end) * 1000) if caught is not None
                                       else None),
            "backup_has_all_sent_ms_after_last": (round((level - gen_end) * 1000)
                                                  if level is not None else None),
            "backup_conns_first_sample_after_last": first[1],
            "first_sample_ms_after_last": (round((first[0] - gen_end) * 1000)
                                           if first[0] is not None else None),
            # the sync traffic of the run's connections, per second of the run
            "sync_msgs_per_s": round((p2 - p0) / sent["seconds"]),
            "sync_bytes_per_s": round((by2 - by0) / sent["seconds"]),
            "sync_bytes_per_conn": round((by2 - by0) / m_final, 1) if m_final else None,
            # what the same messages come to at the asked rate (the wire cost is per conn)
            "sync_bytes_per_s_at_rate": round((by2 - by0) / m_final * rate) if m_final else None,
            "sync_msgs_per_s_at_rate": round((p2 - p0) / m_final * rate) if m_final else None,
            "sync_msgs_total": p2 - p0,
            # the master's engine: entries and messages made and handed to its socket
            "master_sent_conns": ms.get("sent_conns"), "master_sent_msgs": ms.get("sent"),
            "master_queue_overflow": ms.get("queue_overflow"),
            "master_send_dropped": ms.get("daemons", {}).get("send_dropped"),
            # the backup: datagrams read, entries in them, installed (new) and updated
            "backup_received_msgs": bs.get("received"),
            "backup_received_conns": bs.get("received_conns"),
            "backup_installed": bs.get("installed"), "backup_updated": bs.get("updated"),
            # datagrams the backup's kernel dropped: its socket buffer was full
            "backup_udp_rcvbuf_errors": rcvbuf,
            "samples": samples,
        }
    finally:
        pair.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def aggregate(runs: list[dict]) -> dict:
    """Median and worst of each figure over the runs of one (mode, event)."""
    out = {}
    for key in ("lost", "new_failed", "outage_ms", "gap_ms", "takeover_ms"):
        vals = [r[key] for r in runs if r[key] is not None]
        out[key] = {"median": statistics.median(vals) if vals else None,
                    "worst": max(vals) if vals else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="dr,nat")
    ap.add_argument("--events", default="sigkill,linkdown")
    ap.add_argument("--long", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "failover.json"))
    ap.add_argument("--sync-load", action="store_true",
                    help="measure sync under load instead (see the docstring)")
    ap.add_argument("--sync-rate", type=float, default=50000.0)
    ap.add_argument("--sync-seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("failover: needs root (namespaces)", file=sys.stderr)
        return 2
    if args.sync_load:
        r = sync_load(args.sync_rate, args.sync_seconds)
        samples = r.pop("samples")
        print(json.dumps(r, indent=1))
        out = args.out.replace("failover.json", "failover_sync.json")
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            json.dump({**r, "samples": samples}, f, indent=1)
        return 0
    modes = args.modes.split(",")
    events = args.events.split(",")
    bad = [e for e in events if e not in EVENTS] + [m for m in modes if m not in ("dr", "nat")]
    if bad:
        print(f"failover: unknown mode or event: {', '.join(bad)}", file=sys.stderr)
        return 2
    results = {"runs": [], "summary": {},
               "vrrp_master_down_s": master_down_interval(1.0, 100)}
    for _ in range(args.runs):                   # round-robin: a slow spell hits every case
        for mode in modes:
            for event in events:
                r = one_run(mode, event, args.long, args.interval, args.rate)
                print(json.dumps(r), flush=True)
                results["runs"].append(r)
    print(f"\n{'case':<18}{'lost':>12}{'new failed':>14}{'outage ms':>16}{'gap ms':>16}"
          f"{'takeover ms':>16}   (median / worst of {args.runs})")
    for mode in modes:
        for event in events:
            agg = aggregate([r for r in results["runs"]
                             if r["mode"] == mode and r["event"] == event])
            results["summary"][f"{mode}/{event}"] = agg
            cells = "".join(f"{_fmt(agg[k]):>{w}}" for k, w in
                            (("lost", 12), ("new_failed", 14), ("outage_ms", 16),
                             ("gap_ms", 16), ("takeover_ms", 16)))
            print(f"{mode + '/' + event:<18}{cells}")
    print(f"VRRP Master_Down_Interval (advert_int 1, backup priority 100): "
          f"{results['vrrp_master_down_s'] * 1000:.0f} ms")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


def _fmt(a: dict) -> str:
    if a["median"] is None:
        return "-"
    return f"{a['median']:g} / {a['worst']:g}"


if __name__ == "__main__":
    sys.exit(main())
