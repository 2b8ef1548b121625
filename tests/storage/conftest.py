"""Fixtures for the storage tests: a database migrated once per run, copied for each test."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from storage_support import Child

from storage import DataDir, create_engine, session_factory


@pytest.fixture
def data_dir(tmp_path: Path, migrated_template: Path) -> DataDir:
    """A data directory whose database is a fresh copy of the migrated template."""
    target = DataDir(tmp_path / "data").ensure()
    shutil.copyfile(migrated_template, target.db_path)
    return target


@pytest.fixture
def db_path(data_dir: DataDir) -> Path:
    return data_dir.db_path


@pytest.fixture
async def engine(db_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_path)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def child() -> Iterator[type[Child]]:
    """Start children with ``child(code, *args)``; every one is killed and reaped at the end of the test."""
    started: list[Child] = []

    class Tracked(Child):
        def __init__(self, code: str, *args: str) -> None:
            super().__init__(code, *args)
            started.append(self)

    yield Tracked
    for item in started:
        item.close()
