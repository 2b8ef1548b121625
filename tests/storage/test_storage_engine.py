"""Every connection the storage layer opens runs with WAL, foreign keys, full sync and a busy timeout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import PragmaError, connect_sqlite, create_engine, create_sync_engine, session_factory
from storage.engine import apply_pragmas

PRAGMAS = ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")


async def _pragmas(connection: AsyncConnection) -> tuple[object, ...]:
    return tuple([(await connection.execute(text(f"PRAGMA {name}"))).scalar() for name in PRAGMAS])


async def test_pragmas_hold_on_every_pooled_connection(db_path: Path) -> None:
    engine = create_engine(db_path, busy_timeout_ms=1234)
    try:
        # Hold several connections at once so the pool has to open several DB-API connections.
        connections = [await engine.connect() for _ in range(4)]
        try:
            raw = {id(await c.get_raw_connection()) for c in connections}
            assert len(raw) == 4
            values = await asyncio.gather(*(_pragmas(c) for c in connections))
        finally:
            for connection in connections:
                await connection.close()
        assert values == [("wal", 1, 2, 1234)] * 4
        # After the pool is emptied, new connections get the pragmas too.
        await engine.dispose()
        async with engine.connect() as connection:
            assert await _pragmas(connection) == ("wal", 1, 2, 1234)
    finally:
        await engine.dispose()


async def test_foreign_keys_are_enforced_through_a_session(db_path: Path) -> None:
    engine = create_engine(db_path)
    try:
        async with session_factory(engine)() as session:
            with pytest.raises(IntegrityError, match="FOREIGN KEY"):
                await session.execute(
                    text(
                        "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
                        "VALUES (42, 42, '2026-01-01', 'completed')"
                    )
                )
            await session.rollback()
    finally:
        await engine.dispose()


def test_sync_engine_and_plain_connection_get_the_same_pragmas(db_path: Path) -> None:
    engine = create_sync_engine(db_path, busy_timeout_ms=777)
    try:
        with engine.connect() as connection:
            values = tuple(connection.execute(text(f"PRAGMA {name}")).scalar() for name in PRAGMAS)
        assert values == ("wal", 1, 2, 777)
    finally:
        engine.dispose()
    plain = connect_sqlite(db_path, busy_timeout_ms=50)
    try:
        assert tuple(plain.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMAS) == ("wal", 1, 2, 50)
    finally:
        plain.close()


@pytest.mark.parametrize("bad", [-1, 2.5, True, "5000"])
def test_a_bad_busy_timeout_is_refused(db_path: Path, bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="busy_timeout_ms"):
        create_engine(db_path, busy_timeout_ms=bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match="busy_timeout_ms"):
        create_sync_engine(db_path, busy_timeout_ms=bad)  # type: ignore[arg-type]


class _FakeCursor:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.executed: list[str] = []

    def execute(self, sql: str) -> None:
        self.executed.append(sql)

    def fetchone(self) -> tuple[str]:
        return (self.mode,)

    def close(self) -> None:
        self.executed.append("closed")


class _FakeConnection:
    def __init__(self, mode: str) -> None:
        self.cursor_obj = _FakeCursor(mode)

    def cursor(self) -> _FakeCursor:
        return self.cursor_obj


def test_a_connection_that_cannot_use_wal_is_refused() -> None:
    connection = _FakeConnection("delete")
    with pytest.raises(PragmaError, match="WAL"):
        apply_pragmas(connection)
    assert connection.cursor_obj.executed[-1] == "closed"
    assert not any("foreign_keys" in sql for sql in connection.cursor_obj.executed)
