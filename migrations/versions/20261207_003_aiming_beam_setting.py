"""The aiming beam's setting: whether it stays on while the treatment laser emits.

Revision ID: 20261207_003
Revises: 20261207_002
Create Date: 2026-12-07

Adds to ``system_config`` (only where the key is absent, so a value set by hand is kept):

* ``aiming_beam_during_emission`` (boolean, ``true``): the safety board's aiming beam stays on while the
  treatment laser emits; ``false`` switches it off when emission starts (the operator switches it on again).

No table changes; the downgrade removes the setting. This file is a frozen snapshot: it never imports the
models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261207_003"
down_revision: str | Sequence[str] | None = "20261207_002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (key, value, type, description) of the settings this revision adds.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "aiming_beam_during_emission",
        "true",
        "boolean",
        "Whether the aiming beam stays on while the treatment laser emits (false: it goes off)",
    ),
)


def upgrade() -> None:
    """Add the setting where it is absent."""
    for key, value, kind, description in SETTINGS:
        op.execute(
            "INSERT OR IGNORE INTO system_config (config_key, config_value, config_type, description) "
            f"VALUES ('{key}', '{value}', '{kind}', '{description}')"
        )


def downgrade() -> None:
    """Remove the setting."""
    for key, _value, _kind, _description in reversed(SETTINGS):
        op.execute(f"DELETE FROM system_config WHERE config_key = '{key}'")
