"""A fresh Debian 12 machine has only what the Makefile installs: every external program that
the daemon, the lab bench, the tests, setup.py, the Makefile's recipes and the benchmarks run
must come from a Debian package in the Makefile's APT_PKGS (BENCH_APT_PKGS for programs only
the benchmarks run). Programs are found in the source, not listed by hand: subprocess calls
and the project's run() wrappers with a literal program, `ip netns exec NS prog`, `sh -c`
scripts, shutil.which("prog"), command lists assigned to `cmd`, and Makefile recipe lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# program -> the Debian 12 package that ships it; ESSENTIAL: in every Debian install
# (Essential: yes or Priority: required), so no target needs to install it.
ESSENTIAL = "(essential)"
PACKAGES = {
    "ip": "iproute2", "tc": "iproute2", "ss": "iproute2", "bridge": "iproute2",
    "nft": "nftables",
    "ethtool": "ethtool",
    "sysctl": "procps",
    "conntrack": "conntrack",
    "clang": "clang", "llc": "llvm", "llvm-strip": "llvm",
    "gcc": "gcc", "make": "make", "pkg-config": "pkg-config",
    "python3": "python3",
    "ping": "iputils-ping",
    "iperf3": "iperf3", "trafgen": "netsniff-ng", "keepalived": "keepalived",
    "bird": "bird2", "birdc": "bird2", "nginx": "nginx", "haproxy": "haproxy",
    "curl": "curl",
    "sh": ESSENTIAL, "/bin/sh": ESSENTIAL, "bash": ESSENTIAL, "cat": ESSENTIAL, "echo": ESSENTIAL,
    "true": ESSENTIAL,
    "mkdir": ESSENTIAL, "rm": ESSENTIAL, "touch": ESSENTIAL, "grep": ESSENTIAL,
    "taskset": ESSENTIAL, "chrt": ESSENTIAL, "mount": ESSENTIAL, "umount": ESSENTIAL,
    "dpkg-query": ESSENTIAL, "apt-get": ESSENTIAL, "kill": ESSENTIAL, "sleep": ESSENTIAL,
}

# subprocess's functions, and the project's wrappers around them (testbed.run,
# netns_support.run, peers.run/.nsx/procs.start): the command is their arguments, or a list
# as the first one; the value is where the program sits among them
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}
WRAPPERS = {"run": 0, "Popen": 0, "start": 0, "nsx": 1}
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while",
               "case", "esac", "test", "[", "]", "exit", "true", "false", "set", "cd",
               "export", "command", "read", "printf", "!", "{", "}", "return", "local"}


def _runner_index(func) -> int | None:
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id == "subprocess":
            return 0 if func.attr in SUBPROCESS else None
        return WRAPPERS.get(func.attr)
    return WRAPPERS.get(getattr(func, "id", None))


def _const(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _template(node):
    """A shell script given as a string or f-string, placeholders made into plain words."""
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
    return _const(node)


def shell_programs(script: str) -> list[str]:
    """The commands of a shell script or recipe line (first word of each simple command)."""
    out = []
    for part in re.split(r"&&|\|\||[;|()\n`]|\$\(", script):
        words = part.strip().lstrip("@-").split()
        if words[:1] == ["for"]:           # `for VAR in LIST`: the command follows `do`
            continue
        while words and (words[0] in SHELL_WORDS or "=" in words[0]):
            words.pop(0)
        if words and re.fullmatch(r"[A-Za-z][\w.+-]*", words[0]):
            out.append(words[0])
    return out


def command_programs(args: list[ast.expr]) -> list[str]:
    """Programs a command line runs: its own, and the one behind `ip netns exec NS`,
    `taskset -c N`, `sh -c SCRIPT`."""
    words = [_const(a) for a in args if not isinstance(a, ast.Starred)]
    prog = words[0] if words else None
    if prog is None or prog.startswith("-"):
        return []
    out = [prog]
    if prog == "ip" and words[1:3] == ["netns", "exec"] and len(args) > 4:
        out += command_programs(args[4:])
    elif prog == "taskset" and words[1:2] == ["-c"] and len(args) > 3:
        out += command_programs(args[3:])
    elif prog in ("sh", "bash") and words[1:2] == ["-c"] and len(args) > 2:
        out += shell_programs(_template(args[2]) or "")
    return out


def python_programs(path: Path) -> list[tuple[str, int]]:
    """(program, line) for every external program the Python file runs."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        args = None
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            at = _runner_index(f)
            if name == "which" and node.args and _const(node.args[0]):
                found.append((_const(node.args[0]), node.lineno))
            elif at is not None and len(node.args) > at:
                first = node.args[at]
                args = first.elts if isinstance(first, (ast.List, ast.Tuple)) else node.args[at:]
        elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)) \
                and any(isinstance(t, ast.Name) and "cmd" in t.id for t in node.targets):
            args = node.value.elts
        if args:
            found += [(p, node.lineno) for p in command_programs(args)]
    return found


class Rule:
    def __init__(self):
        self.prereqs: list[str] = []
        self.recipe: list[tuple[str, int]] = []      # (line, line number)
        self.vars: dict[str, str] = {}               # target-specific variables


def makefile_rules(text: str) -> dict[str, Rule]:
    """target -> its prerequisites (order-only included), recipe lines (continuations
    joined) and target-specific variables."""
    rules: dict[str, Rule] = {}
    current: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line, start = lines[i], i + 1
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()
        i += 1
        if line.startswith("\t"):
            for t in current:
                rules[t].recipe.append((line.strip(), start))
            continue
        m = re.match(r"^([^:#=\t][^:#=]*?)\s*:(?![:=])\s*(.*)$", line)
        if not m:
            if line.strip() and not line.startswith("#"):
                current = []
            continue
        names = m.group(1).split()
        var = re.match(r"^(\w+)\s*:?=\s*(.*)$", m.group(2))
        for t in names:
            rules.setdefault(t, Rule())
            if var:
                rules[t].vars[var.group(1)] = var.group(2)
            else:
                rules[t].prereqs += [w for w in m.group(2).split() if w != "|"]
        current = [] if var else names
    return rules


def makefile_var(text: str, name: str) -> list[str]:
    m = re.search(rf"^{name}\s*:?=(.*)$", text, re.M)
    return m.group(1).split() if m else []


def installed_lists(rules: dict[str, Rule], target: str) -> set[str]:
    """The package-list variables whose packages `make target` installs first: those named
    in an apt-get recipe of the target or a prerequisite (target-specific variables
    expanded)."""
    seen, todo, lists = set(), [target], set()
    while todo:
        t = todo.pop()
        if t in seen or t not in rules:
            continue
        seen.add(t)
        todo += rules[t].prereqs
        body = " ".join(line for line, _ in rules[t].recipe)
        if "apt-get" in body:
            for name, value in rules[t].vars.items():
                body = body.replace(f"$({name})", value)
            lists |= set(re.findall(r"\$\((\w*PKGS)\)", body))
    return lists


def makefile_programs(text: str) -> list[tuple[str, str, int]]:
    """(program, target, line) of every command in the Makefile's recipes. The venv's
    python ($(PY)) is the project's own; $(PYTHON) is the system python3."""
    out = []
    for target, rule in makefile_rules(text).items():
        for line, n in rule.recipe:
            line = line.replace("$(PYTHON)", "python3")
            line = re.sub(r"(?<!\$)\$\(\w+\)", "_make_var_", line).replace("$$", "$")
            out += [(p, target, n) for p in shell_programs(line)]
    return out


def all_runs() -> dict[str, set[str]]:
    """program -> the files (and Makefile targets) that run it."""
    runs: dict[str, set[str]] = {}
    files = [ROOT / "setup.py"]
    for tree in ("src", "tests", "benchmarks"):
        files += sorted((ROOT / tree).rglob("*.py"))
    # the kernel-oracle jobs run inside the oracle's own guest image, never on this machine
    guest = ROOT / "tests" / "fixtures" / "kernel" / "scripts"
    files = [f for f in files if guest not in f.parents]
    for path in files:
        for prog, line in python_programs(path):
            runs.setdefault(prog, set()).add(f"{path.relative_to(ROOT)}:{line}")
    for prog, target, line in makefile_programs((ROOT / "Makefile").read_text()):
        runs.setdefault(prog, set()).add(f"Makefile:{line} ({target})")
    return runs


def bench_only(where: set[str]) -> bool:
    return all(w.startswith("benchmarks/") or w.endswith("(bench-peers)") for w in where)


def test_the_scan_finds_the_programs_we_know_are_run():
    runs = all_runs()
    assert {"ip", "nft", "ethtool", "clang", "sysctl"} <= set(runs), sorted(runs)
    assert any(w.startswith("src/fastlvs/system/nft.py") for w in runs["nft"])
    assert any(w.startswith("Makefile") for w in runs["apt-get"])


def test_every_program_run_has_a_known_debian_package():
    unknown = {p: sorted(w) for p, w in all_runs().items() if p not in PACKAGES}
    assert not unknown, ("programs run with no Debian package in PACKAGES (add them here and "
                         f"to the Makefile): {unknown}")


def test_every_program_run_is_installed_by_the_makefile():
    text = (ROOT / "Makefile").read_text()
    apt = set(makefile_var(text, "APT_PKGS"))
    bench = apt | set(makefile_var(text, "BENCH_APT_PKGS"))
    missing = []
    for prog, where in sorted(all_runs().items()):
        pkg = PACKAGES.get(prog)
        if pkg is None or pkg == ESSENTIAL:
            continue
        if pkg not in (bench if bench_only(where) else apt):
            var = "BENCH_APT_PKGS" if bench_only(where) else "APT_PKGS"
            missing.append(f"{prog} (Debian package {pkg}, not in {var}) run by "
                           + ", ".join(sorted(where)))
    assert not missing, "\n".join(missing)


def test_each_target_installs_what_it_runs_first():
    """`make test` and `make demo` install APT_PKGS before they run anything (through
    build -> venv -> deps); `make bench-peers` installs BENCH_APT_PKGS as well."""
    rules = makefile_rules((ROOT / "Makefile").read_text())
    for target in ("build", "test", "demo", "demo-sched", "bench", "bench-sched"):
        assert "APT_PKGS" in installed_lists(rules, target), f"make {target} skips APT_PKGS"
    assert {"APT_PKGS", "BENCH_APT_PKGS"} <= installed_lists(rules, "bench-peers")


def test_the_scanner_sees_every_shape(tmp_path):
    """Each way of running a program that the scan claims to read."""
    src = tmp_path / "x.py"
    src.write_text(
        "import shutil, subprocess\n"
        "subprocess.run(['ethtool', '-K', dev])\n"
        "run('ip', 'netns', 'exec', ns, 'ping', '-c1', addr)\n"
        "t.nsx(t.dir, 'conntrack', '-F')\n"
        "shutil.which('clang')\n"
        "cmd = ['taskset', '-c', '1', 'iperf3', '-s']\n"
        "run('ip', 'netns', 'exec', ns, 'sh', '-c', f'echo 1 > /x; sysctl -w a={v} && tc qdisc')\n"
        "run('--socket', path)\n"
        "fuzz.run(4000, seed=7)\n")
    assert sorted(p for p, _ in python_programs(src)) == sorted(
        ["ethtool", "ip", "ping", "conntrack", "clang", "taskset", "iperf3", "ip", "sh",
         "echo", "sysctl", "tc"])
    mk = ("A_PKGS := a b\nB_PKGS := c\n\nt: dep\n\t@x=1; for p in $(A); do \\\n"
          "\t  dpkg-query -W $$p || true; done\n\t$(PY) -m pytest\n"
          "\t$(PYTHON) -m venv v && keepalived -n | grep x\n"
          "# a comment\ndep: L = $(A_PKGS)\ndep other: | u\n\tapt-get install $(L)\n"
          "u:\n\techo $(B_PKGS)\n")
    assert makefile_programs(mk) == [("dpkg-query", "t", 5), ("python3", "t", 8),
                                     ("keepalived", "t", 8), ("grep", "t", 8),
                                     ("apt-get", "dep", 12), ("apt-get", "other", 12),
                                     ("echo", "u", 14)]
    rules = makefile_rules(mk)
    assert installed_lists(rules, "t") == {"A_PKGS"}       # u echoes B_PKGS, installs nothing
    assert installed_lists(rules, "other") == set()        # L is set for dep only
