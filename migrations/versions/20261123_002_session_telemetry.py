"""Session telemetry: where a session's JSON-lines telemetry file is, how many lines it has, its SHA-256.

Revision ID: 20261123_002
Revises: 20261123_001
Create Date: 2026-11-23

Adds to ``sessions``:

* ``telemetry_path`` TEXT: the session's telemetry file;
* ``telemetry_line_count`` INTEGER, NULL or >= 0 (CHECK ``ck_sessions_telemetry_line_count``);
* ``telemetry_sha256`` TEXT, NULL or 64 lower-case hex digits (CHECK ``ck_sessions_telemetry_sha256``).

How: SQLite's ``ALTER TABLE ... ADD COLUMN`` accepts a named CHECK constraint on the new column (and checks it
against existing rows), and ``DROP COLUMN`` removes a column together with its own CHECK. Both edit the table in
place, so the seed views, the append-only triggers, the foreign keys of ``treatment_events``,
``session_recordings`` and ``safety_log``, and the AUTOINCREMENT counter of ``sessions`` are untouched.

A batch rebuild (copy, drop, rename) is deliberately not used here: the migration runs in one transaction with
foreign keys on (``PRAGMA foreign_keys`` cannot be switched off inside a transaction), so dropping ``sessions``
while events refer to it counts violations that the renamed copy never clears, and the commit fails.

This file is a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261123_002"
down_revision: str | Sequence[str] | None = "20261123_001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (column, declared type, CHECK constraint name, CHECK expression), in the order they are added.
COLUMNS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("telemetry_path", "TEXT", None, None),
    (
        "telemetry_line_count",
        "INTEGER",
        "ck_sessions_telemetry_line_count",
        "telemetry_line_count IS NULL OR telemetry_line_count >= 0",
    ),
    (
        "telemetry_sha256",
        "TEXT",
        "ck_sessions_telemetry_sha256",
        "telemetry_sha256 IS NULL OR (length(telemetry_sha256) = 64 AND telemetry_sha256 NOT GLOB '*[^0-9a-f]*')",
    ),
)


def upgrade() -> None:
    """Add the three telemetry columns and their named CHECK constraints to ``sessions``."""
    for column, declared, check_name, check in COLUMNS:
        constraint = f" CONSTRAINT {check_name} CHECK ({check})" if check_name else ""
        op.execute(f"ALTER TABLE sessions ADD COLUMN {column} {declared}{constraint}")


def downgrade() -> None:
    """Remove the telemetry columns with their CHECK constraints (the recorded values are lost)."""
    for column, _declared, _check_name, _check in reversed(COLUMNS):
        op.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
