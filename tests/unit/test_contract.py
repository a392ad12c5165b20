"""The engine's contract (fastlvs.engine.contract) stands alone and is consistent with itself;
what reads it (model, director, lab) takes its facts from it. No build needed."""
import ast
import pathlib
import re

from fastlvs.engine import contract as K

SRC = pathlib.Path(K.__file__)
_CY_IMPORT = re.compile(r"^\s*(from\s+\S*_testing\s+c?import|c?import\s+\S*_testing)", re.M)


def test_contract_imports_nothing():
    tree = ast.parse(SRC.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id in ("__import__", "exec", "eval")]
    assert imports == [] and calls == []


def test_forwarding_methods():
    ids = [m[0] for m in K.FWD_METHODS.values()]
    assert len(set(ids)) == len(ids) and K.FWD_NONE not in ids and K.FWD_NAT_OUT not in ids
    assert K.FWD_NAMES == ("dr", "nat", "tun")
    assert [K.fwd_id(n) for n in K.FWD_NAMES] == [K.FWD_DR, K.FWD_NAT, K.FWD_TUN]
    assert {m[1] for m in K.FWD_METHODS.values()} == {"-g", "-m", "-i"}
    assert set(K.FWD_ALIASES.values()) <= set(ids)
    assert not set(K.FWD_ALIASES) & set(K.FWD_NAMES)


def test_hash_kinds_and_flag_bits():
    assert K.SCHED_CALLBACK not in K.HASH_KINDS.values()
    assert len(set(K.HASH_KINDS.values())) == len(K.HASH_KINDS)
    assert K.sched_flag_bits(set()) == 0
    assert K.sched_flag_bits({"sh-fallback", "sh-port"}) == K.SCHED_F_FALLBACK | K.SCHED_F_PORT
    assert K.sched_flag_bits({"mh-port", "unknown"}) == K.SCHED_F_PORT
    assert K.SCHED_F_FALLBACK & K.SCHED_F_PORT == 0


def test_counter_names_and_limits():
    assert len(set(K.COUNTER_NAMES)) == len(K.COUNTER_NAMES)
    assert all(n.isidentifier() and n.islower() for n in K.COUNTER_NAMES)
    assert K.CAPACITY_MIN <= K.CAPACITY_DEFAULT <= K.CAPACITY_MAX
    assert K.MTU_MIN <= K.MTU_DEFAULT <= K.MTU_MAX
    assert 1 <= K.BATCH_DEFAULT <= K.BATCH_MAX
    assert len({K.VERDICT_DROP, K.VERDICT_TX, K.VERDICT_PENDING, K.VERDICT_PASS}) == 4


def test_the_control_plane_reads_the_contract():
    from fastlvs.control import director
    from fastlvs.control.model import FwdMethod
    from fastlvs.lab import testbed
    assert [m.value for m in FwdMethod] == list(K.FWD_NAMES)
    for m in FwdMethod:
        assert (K.fwd_id(m.value), m.option, m.label) == K.FWD_METHODS[m.value]
        assert director._FWD[m] == K.fwd_id(m.value)
    assert testbed.MODES == K.FWD_NAMES
    assert testbed.FWD_FLAG == {n: m[1] for n, m in K.FWD_METHODS.items()}


def test_the_product_never_imports_the_test_tools():
    # fastlvs.engine._testing (Loaded, PassThrough, transmit, the C hashes) is for tests and
    # benchmarks only: no module of the package names it, Python or Cython
    root = SRC.parent.parent
    users = []
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".pyx", ".pxi", ".pxd") or path.stem == "_testing":
            continue
        text = path.read_text()
        if path.suffix == ".py":
            names = [a.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import)
                     for a in n.names]
            names += [f"{n.module}.{a.name}" for n in ast.walk(ast.parse(text))
                      if isinstance(n, ast.ImportFrom) and n.module for a in n.names]
            if any("_testing" in name for name in names):
                users.append(path)
        elif _CY_IMPORT.search(text):
            users.append(path)
    assert users == []
