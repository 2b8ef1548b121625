"""What the configuration's tests read back from the database: a stored setting and the config_change rows."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from console_fixtures import DATA_DIR


def stored(key: str) -> str | None:
    """The text ``system_config`` holds for ``key`` (None: no row)."""
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        row = db.execute("SELECT config_value FROM system_config WHERE config_key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def config_audits() -> list[tuple[str, str, dict[str, Any]]]:
    """Every ``config_change`` audit row, oldest first: outcome, username and details."""
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT outcome, username, details FROM audit_log WHERE action = 'config_change' "
            "ORDER BY audit_id"
        ).fetchall()
    return [(str(o), str(u), json.loads(d)) for o, u, d in rows]
