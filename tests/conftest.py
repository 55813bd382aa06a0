"""Fixtures shared by the test files; the builders they use are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_tiny_manifest


@pytest.fixture
def tiny_manifest(tmp_path: Path) -> Path:
    return write_tiny_manifest(tmp_path / "data")
