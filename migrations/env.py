"""Alembic environment of the records database (async, SQLite).

Online runs open the database through :func:`storage.engine.create_engine`, so migrations see the same
pragmas as the console (WAL, foreign keys, full sync, busy timeout), and run inside one ``BEGIN IMMEDIATE``
transaction: a failure part-way leaves the schema as it was (SQLite's DDL is transactional once the driver
stops managing transactions itself). A caller that already holds a connection passes it as
``config.attributes["connection"]`` and it is used as is. ``render_as_batch`` is on, because SQLite alters
most things by copying the table.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url

from storage.engine import create_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _db_path() -> Path:
    path = config.attributes.get("db_path")
    if path is not None:
        return Path(path)
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database given to the migration environment (db_path or sqlalchemy.url)")
    database = make_url(url).database
    if not database:
        raise RuntimeError(f"the migration URL {url!r} names no database file")
    return Path(database)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit the migration as SQL text instead of running it."""
    context.configure(
        url=f"sqlite:///{_db_path()}",
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(_db_path())

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so DDL runs inside our transaction.
        dbapi_connection.isolation_level = None

    def on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine, "begin", on_begin)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run the migration against the database, on a given connection or a fresh async engine."""
    given = config.attributes.get("connection")
    if given is not None:
        _run_on(given)
        return
    asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
