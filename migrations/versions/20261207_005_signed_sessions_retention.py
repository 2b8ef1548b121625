"""Signed session records and retention: the ``session_records`` chain, the retention permit, the settings.

Revision ID: 20261207_005
Revises: 20261207_004
Create Date: 2026-12-07

Creates:

* ``session_records``: the fourth record chain (same three chain columns as the others), one row per
  finished session's final record (``kind`` ``final``, its summary as JSON), per electronic signature
  (``signature``: signer, printed name, meaning, time and the hash of the session's record) and per signed
  addendum (``addendum``, with the added notes). Append-only by triggers.
* ``retention_permit``: empty except inside the transaction of a retention run. The delete triggers of the
  four chained tables, and the new one on ``sessions``, refuse a delete unless a permit row exists, so only
  the retention job (``storage.retention``) removes records, in one transaction with its signed checkpoints.
* A trigger refusing any change to a session row once the session carries a signature.

``chain_checkpoints`` is rebuilt (same rows, ids, index and triggers) so that its ``chain`` CHECK accepts
``session_records``. Adds the five retention settings (only where absent). The downgrade removes all of it
(the signatures and the checkpoints of the new chain are lost). See ``docs/records-chain.md``. This file is
a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261207_005"
down_revision: str | Sequence[str] | None = "20261207_004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_CHAINS = ("treatment_events", "safety_log", "audit_log")
NO_PERMIT = "NOT EXISTS (SELECT 1 FROM retention_permit)"

#: (key, value, type, description) of the settings this revision adds.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("retention_video_days", "3653", "integer", "Days the raw video of a finished session is kept"),
    ("retention_telemetry_days", "3653", "integer", "Days the telemetry file of a finished session is kept"),
    (
        "retention_sessions_days",
        "3653",
        "integer",
        "Days a finished session is kept: its record, events, signatures and folder",
    ),
    ("retention_safety_days", "3653", "integer", "Days a safety_log row is kept"),
    (
        "retention_audit_days",
        "3653",
        "integer",
        "Days an audit_log row is kept (at least 2192: six years)",
    ),
)


def _checkpoints_table(chains: tuple[str, ...], name: str) -> str:
    listed = ", ".join(f"'{chain}'" for chain in chains)
    return (
        f"CREATE TABLE {name} ("
        "checkpoint_id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, chain TEXT NOT NULL, length INTEGER NOT NULL, "
        "head_hash BLOB NOT NULL, head_row_id INTEGER NOT NULL, created_at DATETIME NOT NULL, "
        "reason TEXT NOT NULL, signature BLOB NOT NULL, "
        f"CONSTRAINT ck_chain_checkpoints_chain CHECK (chain IN ({listed})), "
        "CONSTRAINT ck_chain_checkpoints_length CHECK (length >= 0))"
    )


def _rebuild_checkpoints(chains: tuple[str, ...]) -> None:
    for operation in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS trg_chain_checkpoints_no_{operation}")
    op.execute(_checkpoints_table(chains, "chain_checkpoints_rebuilt"))
    listed = ", ".join(f"'{chain}'" for chain in chains)
    op.execute(
        "INSERT INTO chain_checkpoints_rebuilt SELECT checkpoint_id, chain, length, head_hash, head_row_id, "
        f"created_at, reason, signature FROM chain_checkpoints WHERE chain IN ({listed})"
    )
    op.execute("DROP TABLE chain_checkpoints")
    op.execute("ALTER TABLE chain_checkpoints_rebuilt RENAME TO chain_checkpoints")
    op.create_index("idx_checkpoint_chain", "chain_checkpoints", ["chain", "checkpoint_id"])
    for operation in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER trg_chain_checkpoints_no_{operation.lower()} BEFORE {operation} "
            "ON chain_checkpoints BEGIN SELECT RAISE(ABORT, 'chain_checkpoints is append-only'); END"
        )


def _delete_trigger(table: str, *, permit: bool) -> None:
    op.execute(f"DROP TRIGGER IF EXISTS trg_{table}_no_delete")
    when = f" WHEN {NO_PERMIT}" if permit else ""
    op.execute(
        f"CREATE TRIGGER trg_{table}_no_delete BEFORE DELETE ON {table}{when} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
    )


def upgrade() -> None:
    """Create the session records chain, the permit, the triggers and the settings."""
    op.create_table(
        "session_records",
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("tech_id", sa.Integer(), nullable=True),
        sa.Column("username", sa.Text(), nullable=True),
        sa.Column("printed_name", sa.Text(), nullable=True),
        sa.Column("meaning", sa.Text(), nullable=True),
        sa.Column("record_hash", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("chain_seq", sa.Integer(), nullable=True),
        sa.Column("chain_prev", sa.LargeBinary(), nullable=True),
        sa.Column("chain_mac", sa.LargeBinary(), nullable=True),
        sa.CheckConstraint("kind IN ('final', 'signature', 'addendum')", name="ck_session_records_kind"),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.session_id"]),
        sa.ForeignKeyConstraint(["tech_id"], ["tech_users.tech_id"]),
        sa.PrimaryKeyConstraint("record_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_session_records_session", "session_records", ["session_id", "kind"])
    op.create_table(
        "retention_permit",
        sa.Column("permit_id", sa.Integer(), nullable=False),
        sa.Column("granted_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("permit_id"),
    )
    _rebuild_checkpoints((*OLD_CHAINS, "session_records"))
    for table in (*OLD_CHAINS, "session_records", "sessions"):
        _delete_trigger(table, permit=True)
    op.execute(
        "CREATE TRIGGER trg_session_records_no_update BEFORE UPDATE ON session_records "
        "BEGIN SELECT RAISE(ABORT, 'session_records is append-only'); END"
    )
    op.execute(
        "CREATE TRIGGER trg_sessions_signed_no_update BEFORE UPDATE ON sessions "
        "WHEN EXISTS (SELECT 1 FROM session_records WHERE session_id = OLD.session_id AND kind = 'signature') "
        "BEGIN SELECT RAISE(ABORT, 'a signed session cannot be changed'); END"
    )
    for key, value, kind, description in SETTINGS:
        op.execute(
            "INSERT OR IGNORE INTO system_config (config_key, config_value, config_type, description) "
            f"VALUES ('{key}', '{value}', '{kind}', '{description}')"
        )


def downgrade() -> None:
    """Remove the settings, triggers, permit and the session records chain (signatures are lost)."""
    for key, _value, _kind, _description in reversed(SETTINGS):
        op.execute(f"DELETE FROM system_config WHERE config_key = '{key}'")
    op.execute("DROP TRIGGER IF EXISTS trg_sessions_signed_no_update")
    op.execute("DROP TRIGGER IF EXISTS trg_session_records_no_update")
    op.execute("DROP TRIGGER IF EXISTS trg_session_records_no_delete")
    op.execute("DROP TRIGGER IF EXISTS trg_sessions_no_delete")
    for table in OLD_CHAINS:
        _delete_trigger(table, permit=False)
    _rebuild_checkpoints(OLD_CHAINS)
    op.drop_table("retention_permit")
    op.drop_index("idx_session_records_session", table_name="session_records")
    op.drop_table("session_records")
