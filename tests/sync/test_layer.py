"""sync/ is a layer of its own: it may read the engine's contract and nothing else of fastlvs
(no control plane, system, daemon or extension), checked from the source with the house's
import scanner; a planted offence shows the check can fail."""
from __future__ import annotations

from tests.unit.test_layers import scan, within

ALLOWED = ("fastlvs.sync", "fastlvs.engine.contract")


def sync_offences(imps):
    return [i for i in imps if within(i.importer, "fastlvs.sync")
            and within(i.target, "fastlvs") and not any(within(i.target, a) for a in ALLOWED)]


def test_sync_imports_only_itself_and_the_engine_contract():
    mods, imps = scan()
    assert "fastlvs.sync.protocol" in mods
    assert any(i.importer == "fastlvs.sync.protocol" and i.target == "fastlvs.engine.contract"
               for i in imps)
    offences = sync_offences(imps)
    assert not offences, "\n".join(map(str, offences))


def test_a_planted_offence_is_caught(tmp_path):
    pkg = tmp_path / "fastlvs"
    (pkg / "sync").mkdir(parents=True)
    (pkg / "control").mkdir()
    for f in ("__init__.py", "sync/__init__.py", "control/__init__.py", "control/model.py"):
        (pkg / f).write_text("")
    (pkg / "sync" / "bad.py").write_text("from fastlvs.control import model\n")
    _, imps = scan(tmp_path)
    assert [i.target for i in sync_offences(imps)] == ["fastlvs.control.model"]
