"""Approval state of protocol versions: draft, submitted, approved or rejected, by whom and when.

Revision ID: 20261207_004
Revises: 20261207_003
Create Date: 2026-12-07

Adds to ``protocol_versions`` (``ALTER TABLE ... ADD COLUMN``, so rows, ids and the version data stay as they
are):

* ``status`` TEXT NOT NULL DEFAULT 'draft', one of ``draft``, ``submitted``, ``approved``, ``rejected``
  (CHECK ``ck_protocol_versions_status``);
* ``submitted_by_tech_id`` / ``submitted_at``, ``approved_by_tech_id`` / ``approved_at``,
  ``rejected_by_tech_id`` / ``rejected_at`` and ``rejection_reason`` (NULL until that step happens).

Version 1 of each of the four protocols shipped with the console, installed by the system (no author), becomes
``approved`` with ``approved_at`` set and no approving user: approved by the system. Every other existing
version stays a draft, to be submitted and approved by an admin. ``protocol_data`` is never changed. The
downgrade drops the columns (the approval history is lost, the versions kept). This file is a frozen
snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261207_004"
down_revision: str | Sequence[str] | None = "20261207_003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The names of the protocols shipped with the console at this revision.
SHIPPED_NAMES: tuple[str, ...] = (
    "Seed example (60 s at 5 W, 30 s ramp to 8 W)",
    "Constant 3 W, 120 s, 3.0 mm ring",
    "Linear ramp 2 W to 6 W over 90 s, 3.5 mm ring",
    "Warm-up, plateau, wide ring, taper (140 s)",
)

#: Each added column as its SQLite definition.
COLUMNS: tuple[tuple[str, str], ...] = (
    (
        "status",
        "TEXT NOT NULL DEFAULT 'draft' CONSTRAINT ck_protocol_versions_status "
        "CHECK (status IN ('draft', 'submitted', 'approved', 'rejected'))",
    ),
    ("submitted_by_tech_id", "INTEGER REFERENCES tech_users (tech_id)"),
    ("submitted_at", "DATETIME"),
    ("approved_by_tech_id", "INTEGER REFERENCES tech_users (tech_id)"),
    ("approved_at", "DATETIME"),
    ("rejected_by_tech_id", "INTEGER REFERENCES tech_users (tech_id)"),
    ("rejected_at", "DATETIME"),
    ("rejection_reason", "TEXT"),
)


def upgrade() -> None:
    """Add the columns; approve the shipped protocols' first versions as the system."""
    for name, definition in COLUMNS:
        op.execute(f"ALTER TABLE protocol_versions ADD COLUMN {name} {definition}")
    names = ", ".join("'" + name.replace("'", "''") + "'" for name in SHIPPED_NAMES)
    op.execute(
        "UPDATE protocol_versions SET status = 'approved', approved_at = CURRENT_TIMESTAMP "
        "WHERE version = 1 AND created_by_tech_id IS NULL AND protocol_id IN "
        f"(SELECT protocol_id FROM protocols WHERE created_by_tech_id IS NULL AND protocol_name IN ({names}))"
    )


def downgrade() -> None:
    """Drop the added columns."""
    for name, _definition in reversed(COLUMNS):
        op.execute(f"ALTER TABLE protocol_versions DROP COLUMN {name}")
