"""Fixtures for the console tests: each test runs in its own directory with a migrated database in ./data."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from console_fixtures import DATA_DIR, FakeClock

from storage import DataDir


@pytest.fixture
def data_dir(tmp_path: Path, migrated_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``./data`` inside this test's own directory, holding a fresh migrated database."""
    monkeypatch.chdir(tmp_path)
    DataDir(DATA_DIR).ensure()
    shutil.copyfile(migrated_template, DATA_DIR / "tosca.db")
    return DATA_DIR


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 14, 9, 30, 0))
