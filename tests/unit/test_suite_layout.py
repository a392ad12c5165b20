"""How the tests and benchmarks find each other: every folder of Python files under tests/ and
benchmarks/ is a package, shared helpers are imported by package name (`from tests.core
import packets`), and nothing edits sys.path. A helper imported by its bare name would only
resolve by accident of pytest's rootdir handling, and breaks the scripts run with python -m."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = ("tests", "benchmarks")


def _py_files():
    for tree in TREES:
        yield from sorted((ROOT / tree).rglob("*.py"))


def test_every_folder_of_tests_and_benchmarks_is_a_package():
    folders = {p.parent for p in _py_files()}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders without __init__.py: {missing}"


def test_nothing_edits_sys_path():
    found = []
    for p in _py_files():
        src = p.read_text()
        for node in ast.walk(ast.parse(src, str(p))):
            if isinstance(node, ast.Attribute) and node.attr == "path" \
                    and isinstance(node.value, ast.Name) and node.value.id == "sys":
                found.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"sys.path used at {found}; import by package name instead"


def test_helpers_are_imported_by_package_name():
    """`import packets` or `from helpers import S` names a module of tests/ or benchmarks/
    without its package."""
    local = {p.stem for p in _py_files()} - {"__init__", "conftest"}
    found = []
    for p in _py_files():
        src = p.read_text()
        for node in ast.walk(ast.parse(src, str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:
                if n and n.split(".")[0] in local:
                    found.append(f"{p.relative_to(ROOT)}:{node.lineno} imports `{n}`")
    assert not found, "bare helper imports (write `from tests.<folder> import ...`):\n  " + \
        "\n  ".join(found)
