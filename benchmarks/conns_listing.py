"""`-Lnc` of 1,000,000 connections (capacity-2M engine): the longest loop turn and the total
time of the streamed listing, against the one-shot listing of before (measured in the same
run, same engine build).

    .venv/bin/python -m benchmarks.conns_listing [NCONNS]      (from the repository root)

The streamed listing is read by a real `fastlvs admin -Lnc` in another process (stdout to
/dev/null) while this process runs the control server as the daemon's loop does, one
handle_ready() per turn: once back to back (no packet polling between turns), once with the
daemon loop's POLL_MS sleep between turns (what an idle daemon takes).
The one-shot is what the control server did before: the whole text built from
Engine.conns() by format_conns and encoded as one answer, in one turn.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from benchmarks.bench_engine_common import engine, establish
from fastlvs.control import ctl
from fastlvs.control.director import Director
from fastlvs.control.listing import ConnEntry, format_conns
from fastlvs.control.server import MAX_PENDING_OUTPUT, ControlServer
from fastlvs.daemon import POLL_MS


def one_shot(e) -> bytes:
    """The answer line the server built in one turn before the listing was streamed."""
    text = format_conns([ConnEntry(c["proto"] if not c["template"] or c["vport"] else "IP",
                                   c["caddr"], c["cport"], c["vaddr"], c["vport"], c["raddr"],
                                   c["rport"], c["state"], c["expires"])
                         for c in e.conns()])
    return ctl.encode(ctl.ok(text))


def streamed(e, path: str, pace: float = 0.0):
    """(turn durations, their CPU times, total seconds, bytes the admin printed) of one
    streamed -Lnc, with `pace` seconds of sleep between two turns (the daemon's packet
    poll). CPU time apart: on a shared machine a turn's wall time includes preemption."""
    srv = ControlServer(Director(e, lambda ip: (b"\0" * 6, 0)), path)
    out = tempfile.TemporaryFile()
    try:
        start = time.perf_counter()
        admin = subprocess.Popen([sys.executable, "-m", "fastlvs", "admin", "--socket", path,
                                  "-Lnc"], stdout=out)
        turns, cpu = [], []
        while admin.poll() is None:
            busy = srv.streaming
            c = time.thread_time()
            t = time.perf_counter()
            srv.handle_ready()
            if busy or srv.streaming:
                turns.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
                if pace:
                    time.sleep(pace)
            else:
                time.sleep(0.0005)      # waiting for the admin to start or to finish reading
        total = time.perf_counter() - start
        if admin.returncode != 0:
            raise SystemExit(f"admin exited {admin.returncode}")
        return turns, cpu, total, out.tell()
    finally:
        srv.close()
        out.close()


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    e = engine("dr", 2 * n)
    establish(e, n)
    print(f"{e.conn_count():,} connections in a capacity-{2 * n:,} engine")
    # the streamed listings first: the one-shot's million objects would leave the
    # allocator and the collector busy for a while after it
    longest = 0.0
    for pace in (0.0, POLL_MS / 1e3):
        with tempfile.TemporaryDirectory() as d:
            turns, cpu, total, size = streamed(e, os.path.join(d, "ctl.sock"), pace)
        busy = sorted(turns)
        longest = max(longest, busy[-1])
        cpu.sort()
        how = ("back to back" if not pace else
               f"with a {POLL_MS} ms sleep per turn (the daemon's poll)")
        print(f"streamed, {how}: {len(turns):,} turns, longest {max(turns) * 1e3:.2f} ms, "
              f"p99 "
              f"{busy[int(len(busy) * 0.99)] * 1e3:.2f} ms; CPU time of a turn: longest "
              f"{cpu[-1] * 1e3:.2f} ms, p99 {cpu[int(len(cpu) * 0.99)] * 1e3:.2f} ms; "
              f"total {total:.1f} s, "
              f"{size / 2**20:,.1f} MiB printed")
    t = time.perf_counter()
    line = one_shot(e)
    old = time.perf_counter() - t
    over = " > MAX_PENDING_OUTPUT: the client was dropped" if len(line) > MAX_PENDING_OUTPUT \
        else ""
    print(f"one-shot (before): one turn of {old * 1e3:,.0f} ms, answer {len(line) / 2**20:,.1f}"
          f" MiB{over}")
    print(f"longest streamed turn / one-shot turn: {longest / old:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
