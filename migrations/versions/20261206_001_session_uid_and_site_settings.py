"""Session folders by a unique identifier; the free-disk floor and the clinic's subject code pattern.

Revision ID: 20261206_001
Revises: 20261123_002
Create Date: 2026-12-06

Adds to ``sessions``:

* ``session_uid`` TEXT: the session's unique identifier, which names its folder
  (``sessions/<subject_code>/<session_uid>/``), so that a database restored from a backup, a renumbering or
  two consoles can never give two sessions one folder. 8 to 64 characters of ``0-9 A-Z a-z -``
  (CHECK ``ck_sessions_session_uid``), unique (index ``uq_sessions_session_uid``). Sessions recorded before
  this revision keep NULL and their folder path as it was (``sessions/<subject_code>/<session_id>/``).

Adds to ``system_config`` (only where the key is absent, so a value set by hand is kept):

* ``min_free_disk_mb`` (integer, 1024): no session opens while the data directory's file system has less
  free space than this, in megabytes;
* ``subject_code_pattern`` (string, ``P-YYYY-NNNN``): the form of subject codes: literal letters, digits,
  ``-`` and ``_``, ``YYYY`` for the year the subject was created and one run of ``N`` for its number.

How: ``ALTER TABLE ... ADD COLUMN`` with a named CHECK and a separate unique index edit ``sessions`` in place
(see 20261123_002 for why no batch rebuild). The downgrade drops the index, the column and the two settings.

This file is a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261206_001"
down_revision: str | Sequence[str] | None = "20261123_002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UID_CHECK = (
    "session_uid IS NULL OR (length(session_uid) BETWEEN 8 AND 64 AND session_uid NOT GLOB '*[^0-9A-Za-z-]*')"
)

#: (key, value, type, description) of the settings this revision adds.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "min_free_disk_mb",
        "1024",
        "integer",
        "Free space (MB) the data directory must keep; no session opens below it",
    ),
    (
        "subject_code_pattern",
        "P-YYYY-NNNN",
        "string",
        "Subject codes: literal letters, digits, - and _; YYYY the year; one run of N the number",
    ),
)


def upgrade() -> None:
    """Add ``sessions.session_uid`` with its CHECK and unique index, and the two settings."""
    op.execute(
        f"ALTER TABLE sessions ADD COLUMN session_uid TEXT CONSTRAINT ck_sessions_session_uid CHECK ({UID_CHECK})"
    )
    op.execute("CREATE UNIQUE INDEX uq_sessions_session_uid ON sessions (session_uid)")
    for key, value, kind, description in SETTINGS:
        op.execute(
            "INSERT OR IGNORE INTO system_config (config_key, config_value, config_type, description) "
            f"VALUES ('{key}', '{value}', '{kind}', '{description}')"
        )


def downgrade() -> None:
    """Remove the two settings, the unique index and ``sessions.session_uid`` (the identifiers are lost; the
    folder paths recorded in ``session_folder_path`` still name each session's folder)."""
    for key, _value, _kind, _description in reversed(SETTINGS):
        op.execute(f"DELETE FROM system_config WHERE config_key = '{key}'")
    op.execute("DROP INDEX IF EXISTS uq_sessions_session_uid")
    op.execute("ALTER TABLE sessions DROP COLUMN session_uid")
