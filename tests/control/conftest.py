"""Fixtures for the account tests: a real migrated SQLite file per test, a drivable clock, cheap hashing."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from account_fixtures import CHEAP, TERMINAL, FakeClock
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import AccountService
from storage import DataDir, create_engine, session_factory


@pytest.fixture
def db_path(tmp_path: Path, migrated_template: Path) -> Path:
    target = DataDir(tmp_path / "data").ensure().db_path
    shutil.copyfile(migrated_template, target)
    return target


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 14, 9, 30, 0))


@pytest.fixture
async def sessions(db_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(db_path)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def service(sessions: async_sessionmaker[AsyncSession], clock: FakeClock) -> AccountService:
    return AccountService(sessions=sessions, terminal=TERMINAL, clock=clock, hashing=CHEAP)
