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

Widens ``subjects``' CHECK ``ck_subjects_subject_code`` from the seed's ``P-YYYY-NNNN`` to any code of 1 to 32
characters of ``A-Z a-z 0-9 - _`` (a clinic's own pattern; the console checks codes against the pattern, and
the CHECK keeps codes safe as folder names). Every existing code passes the wider rule.

Adds to ``system_config`` (only where the key is absent, so a value set by hand is kept):

* ``min_free_disk_mb`` (integer, 1024): no session opens while the data directory's file system has less
  free space than this, in megabytes;
* ``subject_code_pattern`` (string, ``P-YYYY-NNNN``): the form of subject codes: literal letters, digits,
  ``-`` and ``_``, ``YYYY`` for the year the subject was created and one run of ``N`` for its number.

How: ``ALTER TABLE ... ADD COLUMN`` with a named CHECK and a separate unique index edit ``sessions`` in place
(see 20261123_002 for why no batch rebuild). The CHECK of ``subjects`` is replaced in the table's stored
definition (``PRAGMA writable_schema``, then a new ``schema_version``), the procedure SQLite documents for
changing CHECK constraints without copying a table that others refer to; the table's data is not touched.
The downgrade refuses while a code outside ``P-YYYY-NNNN`` exists (it would break the narrower CHECK), then
puts the seed's CHECK back and drops the index, the column and the two settings.

This file is a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261206_001"
down_revision: str | Sequence[str] | None = "20261123_002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEED_CODE_CHECK = "subject_code GLOB 'P-[0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9]'"
WIDE_CODE_CHECK = "length(subject_code) BETWEEN 1 AND 32 AND subject_code NOT GLOB '*[^A-Za-z0-9_-]*'"

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


def _replace_subjects_check(old: str, new: str) -> None:
    """Replace the CHECK expression ``old`` by ``new`` in the stored definition of ``subjects``."""
    connection = op.get_bind()
    sql = connection.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subjects'"
    ).scalar_one()
    if old not in sql:
        raise RuntimeError(f"the subjects table's CHECK is not the expected {old!r}; changed by hand?")
    version = int(connection.exec_driver_sql("PRAGMA schema_version").scalar_one())
    connection.exec_driver_sql("PRAGMA writable_schema = ON")
    connection.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'subjects'",
        (sql.replace(old, new),),
    )
    connection.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    connection.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade() -> None:
    """Widen the subject code CHECK, add ``sessions.session_uid`` with its CHECK and unique index, and the two
    settings."""
    _replace_subjects_check(SEED_CODE_CHECK, WIDE_CODE_CHECK)
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
    connection = op.get_bind()
    other = connection.exec_driver_sql(
        f"SELECT subject_code FROM subjects WHERE NOT ({SEED_CODE_CHECK}) LIMIT 1"
    ).scalar_one_or_none()
    if other is not None:
        raise RuntimeError(
            f"subject code {other!r} is not of the form P-YYYY-NNNN, which the earlier schema requires"
        )
    _replace_subjects_check(WIDE_CODE_CHECK, SEED_CODE_CHECK)
