"""The house's import boundaries, read from the source (no build, nothing imported): every
module under src/fastlvs is parsed and its import statements resolved to module names. One
test per rule; a failure names the importing file, the line and the import statement (and,
for the extension rule, the chain of module-level imports that reaches it).
A planted package in a temp dir checks that every rule can fail."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
EXTENSION = "fastlvs.engine._core"


class Imp(NamedTuple):
    importer: str       # the importing module, e.g. fastlvs.system.netlink
    target: str         # the module the statement loads, e.g. fastlvs.control.model
    path: str           # the importing file, relative to src/
    line: int
    text: str           # the statement as written
    module_level: bool  # runs when the importer is imported (not inside a def)

    def __str__(self):
        return f"{self.path}:{self.line} `{self.text}` ({self.importer} -> {self.target})"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def scan(root: Path = SRC) -> tuple[dict[str, Path], list[Imp]]:
    """Every module under root/fastlvs (.py, and the extension's .pyx by name) and every
    import statement of the .py modules, resolved."""
    mods = {module_name(root, p): p for p in sorted((root / "fastlvs").rglob("*.py"))}
    known = set(mods) | {module_name(root, p) for p in (root / "fastlvs").rglob("*.pyx")}
    imps = []
    for name, path in mods.items():
        src = path.read_text()
        tree = ast.parse(src, str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, top in _walk(tree):
            for target in _targets(node, package, known):
                imps.append(Imp(name, target, str(path.relative_to(root)), node.lineno,
                                " ".join(ast.get_source_segment(src, node).split()), top))
    return mods, imps


def _walk(tree):
    """(import node, runs at import time) pairs; `if TYPE_CHECKING:` bodies never run."""
    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                yield from visit(child, False)
            else:
                yield from visit(child, top)
    yield from visit(tree, True)


def _targets(node, package: str, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.module == "__future__":
        return []
    if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module
    # `from pkg import name` loads pkg.name when that is a module, else just pkg
    subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
    return subs or [mod]


def within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def loaded_by(root: str, imps: list[Imp]) -> dict[str, list[Imp]]:
    """Every module importing `root` loads (module-level imports, parent packages
    included, followed through fastlvs), each with the chain of imports that loads it."""
    by_importer: dict[str, list[Imp]] = {}
    for i in imps:
        if i.module_level:
            by_importer.setdefault(i.importer, []).append(i)
    chains = {root: []}
    todo = [root]
    while todo:
        mod = todo.pop()
        for i in by_importer.get(mod, []):
            parts = i.target.split(".")
            for n in range(1, len(parts) + 1):       # importing a.b.c runs a and a.b first
                t = ".".join(parts[:n])
                if t not in chains:
                    chains[t] = chains[mod] + [i]
                    if t.startswith("fastlvs"):
                        todo.append(t)
    return chains


# -- the rules, as functions of a scan so the planted package can exercise them --------------

def schedulers_offences(imps):
    return [i for i in imps if within(i.importer, "fastlvs.schedulers")
            and within(i.target, "fastlvs") and not within(i.target, "fastlvs.schedulers")]


def contract_offences(imps):
    return [i for i in imps if i.importer == "fastlvs.engine.contract"]


def face_direct_offences(imps):
    return [i for i in imps if i.importer in ("fastlvs.cli", "fastlvs.admin")
            and within(i.target, EXTENSION)]


def face_chain_offences(imps):
    out = []
    for face in ("fastlvs.cli", "fastlvs.admin"):
        chain = loaded_by(face, imps).get(EXTENSION)
        if chain is not None:
            out.append(f"{face} loads {EXTENSION} at import time through:\n    "
                       + "\n    ".join(str(i) for i in chain))
    return out


def system_offences(imps):
    return [i for i in imps if within(i.importer, "fastlvs.system")
            and within(i.target, "fastlvs.control")]


def lab_offences(imps):
    return [i for i in imps if within(i.target, "fastlvs.lab")
            and not within(i.importer, "fastlvs.lab")]


def health_offences(imps):
    return [i for i in imps if within(i.importer, "fastlvs.health")
            and any(within(i.target, p) for p in ("fastlvs.control", "fastlvs.system",
                                                  "fastlvs.engine", "fastlvs.daemon"))]


def engine_offences(imps):
    return [i for i in imps if within(i.importer, "fastlvs.engine")
            and (within(i.target, "fastlvs.control") or within(i.target, "fastlvs.system"))]


# a Python-level import line; `cimport` lines (C declarations) do not match
_PY_IMPORT = re.compile(r"\s*(?:from\s+([\w.]+)\s+import\s|import\s+([\w.]+))")


def extension_offences(root: Path = SRC):
    """Python-level imports in the extension's Cython sources (.pyx, .pxi, .pxd) that reach
    the control plane or the system layer."""
    out = []
    for path in sorted((root / "fastlvs" / "engine").rglob("*.px[id]")) + \
            sorted((root / "fastlvs" / "engine").rglob("*.pyx")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _PY_IMPORT.match(line)
            target = m and (m.group(1) or m.group(2))
            if target and (within(target, "fastlvs.control") or within(target, "fastlvs.system")):
                out.append(f"{path.relative_to(root)}:{n} `{line.strip()}`")
    return out


def _fail(rule: str, offences) -> None:
    assert not offences, rule + ":\n  " + "\n  ".join(str(o) for o in offences)


@pytest.fixture(scope="module")
def imps():
    mods, imps = scan()
    assert "fastlvs.control.director" in mods and len(imps) > 50    # the scan saw the house
    return imps


def test_schedulers_import_nothing_of_fastlvs_outside_schedulers(imps):
    _fail("the scheduler library imports fastlvs outside fastlvs.schedulers",
          schedulers_offences(imps))


def test_engine_contract_imports_nothing(imps):
    _fail("engine/contract.py imports", contract_offences(imps))


def test_cli_and_admin_never_import_the_extension(imps):
    _fail("cli.py/admin.py import the extension", face_direct_offences(imps))


def test_cli_and_admin_do_not_load_the_extension_through_module_level_imports(imps):
    _fail("the face loads the extension when imported", face_chain_offences(imps))


def test_cli_and_admin_import_when_the_extension_cannot_load():
    """The same rule at run time (dynamic imports included): with the extension made
    unimportable, both modules import and `fastlvs admin --help` works."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == {EXTENSION!r}:
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import fastlvs.cli, fastlvs.admin
        assert {EXTENSION!r} not in sys.modules
        fastlvs.cli.main(["admin", "--help"])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_system_imports_nothing_of_control(imps):
    _fail("system/ imports control/", system_offences(imps))


def test_nothing_outside_lab_imports_lab(imps):
    _fail("the runtime package imports the test bench (lab/)", lab_offences(imps))


def test_health_imports_nothing_of_control_system_engine_or_daemon(imps):
    _fail("health/ imports control/, system/, engine/ or daemon.py", health_offences(imps))


def test_engine_python_modules_import_neither_control_nor_system(imps):
    _fail("engine/ imports control/ or system/", engine_offences(imps))


def test_extension_sources_import_neither_control_nor_system():
    _fail("the extension's sources import control/ or system/", extension_offences())


PLANTED = {
    "fastlvs/__init__.py": "",
    "fastlvs/cli.py": "import fastlvs.admin\n",
    "fastlvs/admin.py": "from fastlvs.control import listing\n"
                        "def later():\n    from fastlvs.engine import _core\n",
    "fastlvs/control/__init__.py": "",
    "fastlvs/control/listing.py": "from ..engine import helpers\n",
    "fastlvs/engine/__init__.py": "",
    "fastlvs/engine/_core.pyx": "from fastlvs.system.nft import X\nfrom libc.string cimport memcpy\n",
    "fastlvs/engine/helpers.py": "from . import _core\nimport fastlvs.system.nft\n",
    "fastlvs/engine/contract.py": "from __future__ import annotations\nimport os\n",
    "fastlvs/schedulers/__init__.py": "from fastlvs.schedulers import base\n",
    "fastlvs/schedulers/base.py": "from fastlvs.control.model import X\n",
    "fastlvs/system/__init__.py": "",
    "fastlvs/system/nft.py": "def f():\n    from fastlvs.control import director\n",
    "fastlvs/daemon.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from fastlvs.lab import testbed\n",
    "fastlvs/lab/__init__.py": "",
    "fastlvs/lab/testbed.py": "from fastlvs import daemon\n",
    "fastlvs/health/__init__.py": "",
    "fastlvs/health/spec.py": "import json\n",
    "fastlvs/health/worker.py": "from . import spec\nfrom fastlvs import daemon\n"
                                "def later():\n    from ..engine import helpers\n",
}


def test_every_rule_catches_a_planted_offence(tmp_path):
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    _, imps = scan(tmp_path)
    assert [(i.importer, i.target) for i in schedulers_offences(imps)] == \
        [("fastlvs.schedulers.base", "fastlvs.control.model")]
    assert [i.text for i in contract_offences(imps)] == ["import os"]
    assert [(i.importer, i.target, i.line) for i in face_direct_offences(imps)] == \
        [("fastlvs.admin", EXTENSION, 3)]
    chain = face_chain_offences(imps)
    assert len(chain) == 2 and "fastlvs/control/listing.py:1" in chain[0] \
        and "fastlvs/engine/helpers.py:1" in chain[0] and chain[0].startswith("fastlvs.cli")
    assert [(i.importer, i.target) for i in system_offences(imps)] == \
        [("fastlvs.system.nft", "fastlvs.control")]       # director.py is not planted
    assert [(i.importer, i.target) for i in lab_offences(imps)] == \
        [("fastlvs.daemon", "fastlvs.lab.testbed")]
    assert [(i.importer, i.target) for i in engine_offences(imps)] == \
        [("fastlvs.engine.helpers", "fastlvs.system.nft")]
    assert [(i.importer, i.target) for i in health_offences(imps)] == \
        [("fastlvs.health.worker", "fastlvs.daemon"),
         ("fastlvs.health.worker", "fastlvs.engine.helpers")]
    assert extension_offences(tmp_path) == \
        ["fastlvs/engine/_core.pyx:1 `from fastlvs.system.nft import X`"]
