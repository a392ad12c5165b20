"""Print the README's scheduler table from a pytest-benchmark JSON file.

    python benchmarks/report_schedulers.py .benchmarks/schedulers.json
"""
import json
import sys


def main(path: str) -> int:
    data = json.load(open(path))
    rates: dict[str, dict[int, float]] = {}
    build_ms = None
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if b["group"] == "mh-build":
            build_ms = b["stats"]["median"] * 1000
            continue
        rates.setdefault(info["sched"], {})[info["servers"]] = info["decisions"] / b["stats"]["median"]
    sizes = sorted({n for r in rates.values() for n in r})
    print("| scheduler | " + " | ".join(f"{n} servers" for n in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name, r in rates.items():
        print(f"| {name} | " + " | ".join(f"{r[n] / 1000:,.0f} k/s" if n in r else "" for n in sizes)
              + " |")
    if build_ms is not None:
        print(f"\nmh table (4093 slots) for 1024 servers built in {build_ms:.1f} ms (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
