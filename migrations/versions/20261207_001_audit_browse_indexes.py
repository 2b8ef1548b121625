"""Indexes for browsing the audit trail by user, action and outcome, newest first.

Revision ID: 20261207_001
Revises: 20261206_001
Create Date: 2026-12-07

The audit screen and ``tosca audit list`` read ``audit_log`` newest first, a page at a time, by keyset on
``(timestamp, audit_id)``, filtered by user, action or outcome. With only ``idx_audit_timestamp`` a filter
that matches few rows walks the whole time index to fill a page (a user with no rows reads every row). Adds:

* ``idx_audit_user_time`` on ``(username, timestamp)``;
* ``idx_audit_action_time`` on ``(action, timestamp)``;
* ``idx_audit_outcome_time`` on ``(outcome, timestamp)``.

SQLite keeps the row id at the end of each index entry, so each index gives the rows of one user (action,
outcome) already in ``(timestamp, audit_id)`` order. No table or row changes; the downgrade drops the three
indexes. This file is a frozen snapshot: it never imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261207_001"
down_revision: str | Sequence[str] | None = "20261206_001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (index name, column) of each index this revision adds; each is on (column, timestamp).
INDEXES: tuple[tuple[str, str], ...] = (
    ("idx_audit_user_time", "username"),
    ("idx_audit_action_time", "action"),
    ("idx_audit_outcome_time", "outcome"),
)


def upgrade() -> None:
    """Create the three indexes."""
    for name, column in INDEXES:
        op.execute(f"CREATE INDEX {name} ON audit_log ({column}, timestamp)")


def downgrade() -> None:
    """Drop the three indexes."""
    for name, _column in reversed(INDEXES):
        op.execute(f"DROP INDEX IF EXISTS {name}")
