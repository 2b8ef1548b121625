"""The record chain's verifications as the audit trail keeps them: each ``tosca audit verify`` of the live
database appends one ``records_verify`` row (outcome ``success`` with the counts per chain, or ``failure``
with the first failure), and the admin's and engineer's home screens show the newest.

The row is itself chained, after the rows it verified: the next verification covers it.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from storage.chain_verify import VerifyResult, open_read_only
from storage.errors import StorageError
from storage.maintenance import record_audit

#: ``audit_log.action`` of a verification of the records.
ACTION_RECORDS_VERIFY: Final = "records_verify"


@dataclass(frozen=True, slots=True)
class LastVerification:
    """The newest verification recorded: when (naive UTC), whether every chain verified, and one line
    saying what was found (the rows per chain, or the first failure)."""

    at: datetime
    ok: bool
    summary: str

    def describe(self) -> str:
        """One line for a screen, e.g. ``intact on 2026-12-07 07:00 UTC: audit_log 120 rows, ...``."""
        when = self.at.strftime("%Y-%m-%d %H:%M UTC")
        return f"{'intact' if self.ok else 'FAILED'} on {when}: {self.summary}"


def record_verification(db_path: Path, result: VerifyResult) -> None:
    """Append the ``records_verify`` audit row of ``result`` (a verification of ``db_path`` itself).

    Raises:
        StorageError: the row could not be written (the verification's own result stands).
    """
    if result.failure is None:
        details: dict[str, object] = {"rows": {count.chain: count.rows for count in result.counts}}
    else:
        details = {"failure": result.failure.kind, "message": result.failure.message}
    record_audit(db_path, ACTION_RECORDS_VERIFY, "success" if result.ok else "failure", details=details)


def last_verification(db_path: Path) -> LastVerification | None:
    """The newest ``records_verify`` row of ``db_path`` (None: never verified, or no such database)."""
    try:
        connection = open_read_only(db_path)
    except StorageError:
        return None
    try:
        row = connection.execute(
            "SELECT timestamp, outcome, details FROM audit_log WHERE action = ? "
            "ORDER BY audit_id DESC LIMIT 1",
            (ACTION_RECORDS_VERIFY,),
        ).fetchone()
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    if row is None:
        return None
    timestamp, outcome, details_text = row
    try:
        details = json.loads(details_text or "{}")
    except ValueError:
        details = {}
    if outcome == "success":
        rows = details.get("rows", {}) if isinstance(details, dict) else {}
        summary = ", ".join(f"{chain} {count} rows" for chain, count in rows.items()) or "no rows"
    else:
        message = details.get("message") if isinstance(details, dict) else None
        summary = str(message) if message else "see the audit trail"
    at = timestamp if isinstance(timestamp, datetime) else datetime.fromisoformat(str(timestamp))
    return LastVerification(at=at, ok=outcome == "success", summary=summary)


__all__ = ["ACTION_RECORDS_VERIFY", "LastVerification", "last_verification", "record_verification"]
