"""Writes every `fastlvs replay` run of tests/replay/ into a folder, as files: each run's rules
file, input capture and arguments, so two builds can replay the same inputs and be compared
byte for byte (benchmarks/replay_identical.py). The cases are not copied from the tests: the
tests run once with their replay command recorded, so a new test brings its capture along.

    .venv/bin/python -m tests.replay.make_captures DIR [--bench FRAMES]

DIR/<case>/case.json holds the argument list, with {case} for the case's folder (the inputs)
and {run} for a folder of the replaying side's own (the outputs). --bench adds, per scheduler,
a DR service of 4 weighted servers over a FRAMES-frame capture of many flows (the capture of
benchmarks/replay_bench.py)."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
OUTPUT_FLAGS = ("--out", "--list")           # the arguments after these are written, not read
# twos draws at random: the same build gives different choices run to run
BENCH_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo",
                    "ovf", "mh")


class _Recorder:
    """A stand-in for the test module's `subprocess` that writes down each replay it runs."""

    def __init__(self, out: Path, basetemp: str):
        self.out, self.basetemp, self.test, self.count = out, basetemp, "", {}

    def __getattr__(self, name):
        return getattr(subprocess, name)

    def run(self, cmd, *a, **kw):
        if "replay" in cmd:
            self._record([str(c) for c in cmd[cmd.index("replay"):]])
        return subprocess.run(cmd, *a, **kw)

    def _record(self, argv):
        n = self.count[self.test] = self.count.get(self.test, 0) + 1
        name = re.sub(r"[^\w.-]+", "_", self.test).strip("_")[:90] + (f"-{n}" if n > 1 else "")
        case = self.out / name
        case.mkdir(parents=True)
        args = []
        for i, arg in enumerate(argv):
            if arg.startswith(self.basetemp):
                base = Path(arg).name
                if argv[i - 1] in OUTPUT_FLAGS:
                    arg = "{run}/" + base
                else:
                    shutil.copyfile(arg, case / base)
                    arg = "{case}/" + base
            args.append(arg)
        (case / "case.json").write_text(json.dumps({"test": self.test, "args": args}, indent=1))


class _Plugin:
    def __init__(self, recorder: _Recorder):
        self.recorder = recorder

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        self.recorder.test = item.nodeid.split("::", 1)[-1]
        saved = getattr(item.module, "subprocess", None)
        item.module.subprocess = self.recorder
        try:
            yield
        finally:
            item.module.subprocess = saved


def record_tests(out: Path) -> int:
    """Runs tests/replay once with the recorder; pytest's exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        basetemp = str(Path(tmp) / "t")
        rec = _Recorder(out, basetemp)
        return pytest.main(["-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                            str(HERE)], plugins=[_Plugin(rec)])


def write_bench(out: Path, frames: int) -> None:
    from benchmarks.replay_bench import make_pcap
    flows = max(1, frames // 10)
    shared = out / "bench_capture.pcap"
    make_pcap(str(shared), frames, flows)
    for sched in BENCH_SCHEDULERS:
        case = out / f"bench_{sched}"
        case.mkdir()
        shutil.copyfile(shared, case / "in.pcap")
        rules = [f"-A -t 203.0.113.10:80 -s {sched}"]
        rules += [f"-a -t 203.0.113.10:80 -r 192.0.2.{10 + i}:80 -g -w {i}" for i in range(1, 5)]
        (case / "rules").write_text("\n".join(rules) + "\n")
        args = ["replay", "--rules", "{case}/rules", "--in", "{case}/in.pcap",
                "--out", "{run}/out.pcap", "--local-ip", "192.0.2.1",
                "--local-mac", "02:00:00:00:00:01", "--stats", "--list", "{run}/list"]
        for i in range(1, 5):
            args += ["--neighbor", f"192.0.2.{10 + i}=02:00:00:00:01:{10 + i:02x}"]
        (case / "case.json").write_text(json.dumps({"test": f"bench {sched}", "args": args},
                                                   indent=1))
    shared.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="an empty or new folder")
    ap.add_argument("--bench", type=int, default=0, metavar="FRAMES",
                    help="add the benchmark capture with FRAMES frames, once per scheduler")
    a = ap.parse_args(argv)
    a.dir.mkdir(parents=True, exist_ok=True)
    if any(a.dir.iterdir()):
        print(f"make_captures: {a.dir} is not empty", file=sys.stderr)
        return 2
    rc = record_tests(a.dir)
    if a.bench:
        write_bench(a.dir, a.bench)
    cases = sorted(p.name for p in a.dir.iterdir())
    print(f"{len(cases)} cases in {a.dir} (tests/replay exit code {int(rc)})")
    return 0 if rc == 0 and cases else 1


if __name__ == "__main__":
    sys.exit(main())
