"""Is `fastlvs replay` byte-identical between two builds? Runs the replay of every capture the
tests use (and, with --bench, a larger capture under each scheduler) with two interpreters,
each with its own fastlvs installed, and compares per case: the exit code, the output pcap and
`-Ln` listing byte for byte (--stats and --list are added where the test did not ask for
them), the --stats JSON without its timing ("seconds"), and any other stdout and stderr with
the output folder's name made neutral.

    .venv/bin/python benchmarks/replay_identical.py OLD_PYTHON NEW_PYTHON [--captures DIR]
        [--bench FRAMES] [--keep DIR]

e.g. OLD_PYTHON = a checkout of the earlier revision's .venv/bin/python (built there with
`make build`), NEW_PYTHON = this checkout's. Without --captures, NEW_PYTHON writes the
captures first (python -m tests.replay.make_captures, from this checkout). Prints
`identical` or `different: ...` per case; exits 1 on any difference, 2 on bad arguments."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds",)


def replay(python: str, case: Path, run: Path) -> dict:
    """One side's results for one case: exit code, outputs, normalised stdout/stderr."""
    run.mkdir(parents=True)
    spec = json.loads((case / "case.json").read_text())
    args = list(spec["args"])
    # the counters and the final table are compared too, where the test did not ask for them
    if "--stats" not in args:
        args.append("--stats")
    if "--list" not in args:
        args += ["--list", "{run}/list"]
    args = [a.replace("{case}", str(case)).replace("{run}", str(run)) for a in args]
    r = subprocess.run([python, "-m", "fastlvs", *args], capture_output=True, text=True,
                       timeout=600, cwd=run)
    try:
        stdout = json.loads(r.stdout)
        for key in TIMING:
            stdout.pop(key, None)
    except ValueError:
        stdout = r.stdout
    files = {p.name: p.read_bytes() for p in sorted(run.iterdir())}
    return {"exit code": r.returncode, "stdout": stdout,
            "stderr": r.stderr.replace(str(run), "{run}"), "files": files}


def differences(old: dict, new: dict) -> list[str]:
    out = []
    for key in ("exit code", "stdout", "stderr"):
        if old[key] != new[key]:
            if isinstance(old[key], dict) and isinstance(new[key], dict):
                keys = sorted(k for k in old[key].keys() | new[key].keys()
                              if old[key].get(k) != new[key].get(k))
                out.append(f"stats {keys}")
            else:
                out.append(f"{key} {old[key]!r} -> {new[key]!r}"[:200])
    for name in sorted(old["files"].keys() | new["files"].keys()):
        a, b = old["files"].get(name), new["files"].get(name)
        if a != b:
            out.append(f"{name} " + ("missing on one side" if a is None or b is None else
                                     f"{len(a)} -> {len(b)} bytes"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="python of the earlier build")
    ap.add_argument("new", help="python of this build")
    ap.add_argument("--captures", type=Path, help="folder written by tests.replay.make_captures")
    ap.add_argument("--bench", type=int, default=20000, metavar="FRAMES",
                    help="frames of the per-scheduler benchmark capture (0: none; default 20000)")
    ap.add_argument("--keep", type=Path, help="keep both sides' outputs in this folder")
    a = ap.parse_args(argv)
    # absolute, but not resolved: a venv's python is a symlink that must stay in the venv
    a.old, a.new = os.path.abspath(a.old), os.path.abspath(a.new)
    for py in (a.old, a.new):
        if not (os.path.isfile(py) and os.access(py, os.X_OK)):
            print(f"replay_identical: {py} is not an executable interpreter", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        captures = a.captures
        if captures is None:
            captures = work / "captures"
            r = subprocess.run([a.new, "-m", "tests.replay.make_captures", str(captures),
                                "--bench", str(a.bench)], cwd=ROOT, capture_output=True,
                               text=True)
            if not captures.is_dir() or not any(captures.iterdir()):
                print(f"replay_identical: no captures written:\n{r.stdout}{r.stderr}",
                      file=sys.stderr)
                return 2
            if r.returncode != 0:
                print(f"note: tests/replay did not all pass under {a.new}:\n{r.stdout[-2000:]}")
        cases = sorted(p for p in captures.iterdir() if (p / "case.json").is_file())
        if not cases:
            print(f"replay_identical: no cases in {captures}", file=sys.stderr)
            return 2
        bad = 0
        for case in cases:
            old = replay(a.old, case, work / "old" / case.name)
            new = replay(a.new, case, work / "new" / case.name)
            diff = differences(old, new)
            bad += bool(diff)
            print(f"{case.name}: " + ("different: " + "; ".join(diff) if diff else "identical"))
        print(f"{len(cases) - bad} of {len(cases)} identical")
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
