"""The tamper-evident record chain: chain columns on the three append-only tables, and signed checkpoints.

Revision ID: 20261207_002
Revises: 20261207_001
Create Date: 2026-12-07

Adds to each of ``audit_log``, ``safety_log`` and ``treatment_events`` (nullable, no default, so the seed's
sample INSERTs still run unchanged):

* ``chain_seq`` INTEGER: the row's position in its table's chain (1, 2, ... without gaps);
* ``chain_prev`` BLOB: the previous position's hash (32 bytes);
* ``chain_mac`` BLOB: the row's own HMAC-SHA-256 (32 bytes), which is also its hash in the chain.

Creates ``chain_checkpoints`` (append-only by triggers, like the three tables): one row per chain and moment,
holding the chain's length, its head hash, the id of the head row, the time, why it was taken and an Ed25519
signature. See ``docs/records-chain.md`` for the encoding and for how rows written before this revision are
sealed (at first open, not here: the keys live outside the database and this file never reads them).

``ALTER TABLE ... ADD COLUMN`` edits the tables in place, so their rows, ids and triggers stay as they are.
The downgrade drops the table and the columns (the chain and its checkpoints are lost, the records kept).
This file is a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261207_002"
down_revision: str | Sequence[str] | None = "20261207_001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHAINED_TABLES = ("audit_log", "safety_log", "treatment_events")
CHAIN_COLUMNS = (
    ("chain_seq", sa.Integer()),
    ("chain_prev", sa.LargeBinary()),
    ("chain_mac", sa.LargeBinary()),
)


def upgrade() -> None:
    """Add the chain columns and the checkpoint table with its append-only triggers."""
    for table in CHAINED_TABLES:
        for name, kind in CHAIN_COLUMNS:
            op.add_column(table, sa.Column(name, kind, nullable=True))
    op.create_table(
        "chain_checkpoints",
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.LargeBinary(), nullable=False),
        sa.Column("head_row_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "chain IN ('treatment_events', 'safety_log', 'audit_log')", name="ck_chain_checkpoints_chain"
        ),
        sa.CheckConstraint("length >= 0", name="ck_chain_checkpoints_length"),
        sa.PrimaryKeyConstraint("checkpoint_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_checkpoint_chain", "chain_checkpoints", ["chain", "checkpoint_id"])
    for operation in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER trg_chain_checkpoints_no_{operation.lower()} BEFORE {operation} "
            "ON chain_checkpoints BEGIN SELECT RAISE(ABORT, 'chain_checkpoints is append-only'); END"
        )


def downgrade() -> None:
    """Drop the checkpoint table and the chain columns (the records themselves are kept)."""
    for operation in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS trg_chain_checkpoints_no_{operation}")
    op.drop_index("idx_checkpoint_chain", table_name="chain_checkpoints")
    op.drop_table("chain_checkpoints")
    for table in CHAINED_TABLES:
        for name, _kind in reversed(CHAIN_COLUMNS):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
