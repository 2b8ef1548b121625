"""The controller's daily care of the records: a checkpoint when a day passed without one and the retention
run, only while no session is open, off the event loop; a refusal is logged and tried again later."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from signing_fixtures import Finished, copy_template, finished_session

from control.controller.records_upkeep import RecordsUpkeep
from control.system_config import DEFAULTS, retention_policy
from storage import DataDir, create_engine, session_factory
from storage.chain_verify import verify_database
from storage.retention import RetentionPolicy
from tests.support import FakeClock


@pytest.fixture
async def done(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Finished]:
    data_dir = copy_template(migrated_template, DataDir(tmp_path / "data"))
    engine = create_engine(data_dir.db_path)
    try:
        yield await finished_session(session_factory(engine), data_dir)
    finally:
        await engine.dispose()


def _reasons(db: Path) -> list[str]:
    connection = sqlite3.connect(str(db))
    try:
        return [
            r for (r,) in connection.execute("SELECT reason FROM chain_checkpoints ORDER BY checkpoint_id")
        ]
    finally:
        connection.close()


def _newest_checkpoint(db: Path) -> datetime:
    connection = sqlite3.connect(str(db))
    try:
        return datetime.fromisoformat(
            connection.execute("SELECT max(created_at) FROM chain_checkpoints").fetchone()[0]
        )
    finally:
        connection.close()


def _upkeep(done: Finished, clock: FakeClock, idle: list[bool]) -> RecordsUpkeep:
    async def policy() -> RetentionPolicy:
        return retention_policy(DEFAULTS)

    return RecordsUpkeep(done.data_dir.db_path, done.data_dir.root, lambda: idle[0], policy, clock=clock)


async def test_a_day_without_a_checkpoint_makes_one_and_runs_retention_only_when_idle(done: Finished) -> None:
    db = done.data_dir.db_path
    clock = FakeClock(_newest_checkpoint(db) + timedelta(hours=23))
    idle = [True]
    upkeep = _upkeep(done, clock, idle)
    before = _reasons(db)
    # Less than a day since the session's end checkpoint: no checkpoint, but retention has never run.
    first = await upkeep.once()
    assert _reasons(db) == before
    assert first[-1] == "nothing to prune"
    clock.advance(timedelta(hours=2))  # a day and an hour since the last checkpoint
    idle[0] = False  # a session is open: nothing at all
    assert await upkeep.once() == []
    assert _reasons(db) == before
    idle[0] = True
    done_now = await upkeep.once()
    assert done_now == ["daily checkpoint of 4 chains"]  # retention ran less than a day ago
    assert _reasons(db) == [*before, "daily", "daily", "daily", "daily"]
    assert verify_database(db).failure is None


async def test_a_clock_set_backwards_is_refused_and_tried_again_an_hour_later(done: Finished) -> None:
    clock = FakeClock(datetime(2026, 1, 1, 8, 0))  # before the session of 2026-03-14
    upkeep = _upkeep(done, clock, [True])
    refused = await upkeep.once()
    assert refused[-1].startswith(
        "refused: the clock reads 2026-01-01 08:00 UTC, earlier than the newest record"
    )
    clock.advance(timedelta(minutes=59))
    assert await upkeep.once() == []
    clock.now = _newest_checkpoint(done.data_dir.db_path) + timedelta(days=2)
    assert (await upkeep.once())[-1] == "nothing to prune"
