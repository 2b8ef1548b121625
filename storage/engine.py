"""Engines and sessions for the records database.

Every connection, async or not, is put into the state the console relies on before it is used:

* ``journal_mode=WAL``: readers never block the writer, and a crash never leaves a half-written page;
* ``foreign_keys=ON``: SQLite does not enforce foreign keys unless asked, per connection;
* ``synchronous=FULL``: a commit has reached the disk before it returns (a treatment record is never lost);
* ``busy_timeout``: a writer waits this many milliseconds for another writer instead of failing at once.

The pragmas are applied in a ``connect`` event on the (sync) engine, so they hold for every pooled connection,
including ones opened after a connection was recycled.

An encrypted database (:mod:`storage.crypto_db`) is opened the same way, through a creator that hands each
new connection its key before anything else: aiosqlite runs an SQLCipher connection on its thread as it runs
a :mod:`sqlite3` one. The key is looked for when the engine is made, and a missing, malformed or wrong key
refuses there, in one line naming the key file.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as _sa_create_engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage.crypto_db import DatabaseKey, connect_keyed, key_for
from storage.crypto_db import connect as open_database
from storage.errors import PragmaError

#: Default time a writer waits for another writer's lock, in milliseconds.
DEFAULT_BUSY_TIMEOUT_MS: Final = 5000


def _check_busy_timeout(busy_timeout_ms: int) -> int:
    if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int):
        raise TypeError(f"busy_timeout_ms must be an int (milliseconds), got {busy_timeout_ms!r}")
    if busy_timeout_ms < 0:
        raise ValueError(f"busy_timeout_ms must be >= 0 milliseconds, got {busy_timeout_ms}")
    return busy_timeout_ms


def sqlite_url(db_path: Path, *, driver: str = "aiosqlite") -> URL:
    """Return the SQLAlchemy URL of the file ``db_path``; ``driver`` is ``aiosqlite`` or ``pysqlite``."""
    return URL.create(f"sqlite+{driver}", database=str(Path(db_path)))


def apply_pragmas(dbapi_connection: Any, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
    """Set WAL, foreign keys, full sync and the busy timeout (milliseconds) on one DB-API connection.

    Works on a plain :class:`sqlite3.Connection` and on SQLAlchemy's adapted aiosqlite connection. Raises
    :class:`PragmaError` if the journal mode cannot be switched to WAL (for example on a read-only medium).
    """
    timeout = _check_busy_timeout(busy_timeout_ms)
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first, so that switching to WAL waits for a lock instead of failing.
        cursor.execute(f"PRAGMA busy_timeout = {timeout:d}")
        cursor.execute("PRAGMA journal_mode = WAL")
        row = cursor.fetchone()
        mode = str(row[0]).lower() if row else ""
        if mode != "wal":
            shown = mode or "unknown"
            raise PragmaError(f"cannot switch the database to WAL journal mode (it stays in {shown})")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA synchronous = FULL")
    finally:
        cursor.close()


def _install_pragmas(sync_engine: Engine, busy_timeout_ms: int) -> None:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        apply_pragmas(dbapi_connection, busy_timeout_ms)

    event.listen(sync_engine, "connect", on_connect)


def _keyed_creators(db_path: Path, key: DatabaseKey, timeout_ms: int) -> Callable[[], sqlite3.Connection]:
    """A creator of keyed connections to ``db_path``; the key is checked once now (wrong key: refused)."""
    connect_keyed(db_path, key, timeout_s=timeout_ms / 1000).close()

    def create() -> sqlite3.Connection:
        return connect_keyed(db_path, key, timeout_s=timeout_ms / 1000, check_same_thread=False, verify=False)

    return create


def create_engine(db_path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> AsyncEngine:
    """Return an async engine (sqlite+aiosqlite) on the database file ``db_path``.

    ``busy_timeout_ms`` is how long, in milliseconds, a connection waits for another writer's lock. The caller
    owns the engine and must ``await engine.dispose()`` when done (each aiosqlite connection runs a thread).
    An encrypted database is opened with its key (:class:`storage.crypto_db.DatabaseKeyError` when it
    cannot be).
    """
    timeout = _check_busy_timeout(busy_timeout_ms)
    key = key_for(db_path)
    if key is None:
        engine = create_async_engine(sqlite_url(db_path, driver="aiosqlite"))
    else:
        import aiosqlite

        create = _keyed_creators(db_path, key, timeout)

        async def async_creator() -> aiosqlite.Connection:
            return await aiosqlite.Connection(create, iter_chunk_size=64)

        engine = create_async_engine(sqlite_url(db_path, driver="aiosqlite"), async_creator=async_creator)
    _install_pragmas(engine.sync_engine, timeout)
    return engine


def create_sync_engine(db_path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Engine:
    """Return a synchronous engine (sqlite+pysqlite) with the same pragmas, for command-line and maintenance.

    The caller must call ``engine.dispose()`` when done.
    """
    timeout = _check_busy_timeout(busy_timeout_ms)
    key = key_for(db_path)
    url = sqlite_url(db_path, driver="pysqlite")
    if key is None:
        engine = _sa_create_engine(url)
    else:
        engine = _sa_create_engine(url, creator=_keyed_creators(db_path, key, timeout))
    _install_pragmas(engine, timeout)
    return engine


def connect_sqlite(db_path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """Open a :mod:`sqlite3`-style connection with the console's pragmas (for bulk and maintenance work); an
    encrypted database is opened with its key (:func:`storage.crypto_db.connect`)."""
    connection = open_database(db_path, timeout_s=_check_busy_timeout(busy_timeout_ms) / 1000)
    try:
        apply_pragmas(connection, busy_timeout_ms)
    except BaseException:
        connection.close()
        raise
    return connection


async def finish_closing_connections(timeout_s: float = 2.0) -> None:
    """Let the connections SQLAlchemy is still closing finish (call after ``engine.dispose()``).

    A connection whose query was cancelled is closed by SQLAlchemy in a shielded task of its own, some only
    once the cancelled session is garbage-collected: collect now, and wait (at most ``timeout_s``) for those
    closings, so nothing is left running when the loop ends."""
    gc.collect()
    closing = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").endswith("_terminate_graceful_close")
    ]
    if closing:
        await asyncio.wait(closing, timeout=timeout_s)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the session maker for ``engine``; objects stay usable after commit (expire_on_commit=False)."""
    return async_sessionmaker(engine, expire_on_commit=False)
