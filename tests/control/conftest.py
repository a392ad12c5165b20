"""The `daemon` fixture: a Daemon (control_harness.py) on a socket in the test's temp dir,
over each engine: the extension ("core") and the pure-Python reference ("reference")."""
from __future__ import annotations

import pytest

from tests.control.control_harness import ENGINE_KINDS, Daemon


@pytest.fixture(params=ENGINE_KINDS)
def engine_kind(request):
    return request.param


@pytest.fixture
def daemon(tmp_path, engine_kind):
    d = Daemon(tmp_path / "run" / "fastlvs.sock", engine_kind)
    try:
        yield d
    finally:
        d.stop()
