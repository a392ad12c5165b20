"""The `daemon` fixture: a Daemon (control_harness.py) on a socket in the test's temp dir."""
from __future__ import annotations

import pytest

from tests.control.control_harness import Daemon


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "run" / "fastlvs.sock")
    try:
        yield d
    finally:
        d.stop()
