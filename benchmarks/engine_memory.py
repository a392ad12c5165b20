"""Resident memory of an Engine with 1,000,000 and 10,000,000 entries, filled with conns.

    .venv/bin/python -m benchmarks.engine_memory [1000000 10000000]     (from the repository root)

Each size runs in a child process so that RSS is measured alone."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(n: int) -> None:
    from benchmarks.bench_engine_common import engine, establish
    before = rss_kib()
    e = engine("dr", n)
    establish(e, n)
    after = rss_kib()
    print(f"{n:>11,} entries: entry {e.entry_size} B, table {e.memory_bytes() / 2**20:,.0f} MiB, "
          f"conns {e.conn_count():,}, RSS growth {(after - before) / 1024:,.0f} MiB "
          f"(total {after / 1024:,.0f} MiB)")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return 0
    sizes = [int(x) for x in sys.argv[1:]] or [1_000_000, 10_000_000]
    for n in sizes:
        subprocess.run([sys.executable, "-m", "benchmarks.engine_memory", "--child", str(n)],
                       check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
