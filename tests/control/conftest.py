"""The `daemon` fixture: a Daemon (control_harness.py) on a socket in the test's temp dir."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from control_harness import Daemon  # noqa: E402


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "run" / "fastlvs.sock")
    try:
        yield d
    finally:
        d.stop()
