"""Session records that prove themselves: the final record of each finished session, electronic signatures
and signed addenda, kept in the ``session_records`` chain (docs/records-chain.md, "Session records").

A session's *record* is its summary (the session row's final columns, the telemetry file's SHA-256 among
them), its treatment events and, once written, its post-treatment notes. :func:`record_hash` is the SHA-256
of its canonical encoding. Three kinds of row hold it:

* ``final``: written in the transaction that finishes the session; its ``summary`` is the summary's JSON and
  its hash covers the summary and the events (notes come later);
* ``signature``: a person's electronic signature (who, printed name, meaning, when) over the whole record,
  notes included;
* ``addendum``: notes added after the record was signed, in ``notes``, signed the same way; the hash covers
  the record and the addendum.

Each row is appended through :mod:`storage.chain` (so it is chained, MAC'd and checkpointed like the audit
trail) and the database's triggers refuse to change or delete it, and refuse any change to a session row
once it is signed. :func:`check_records` recomputes every hash against the session as stored now and names
the first that differs. This module checks no password: the caller (``control.signing``) does.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from storage.chain import TABLES, Executor, append, encode_values, stored_timestamp

#: The prefix of a session record's encoding (its version).
RECORD_PREFIX: Final = b"tosca-session-record-v1\n"
#: The session row's columns in the record, in this order (part of the encoding).
SUMMARY_COLUMNS: Final = (
    "session_id",
    "session_uid",
    "subject_id",
    "tech_id",
    "protocol_id",
    "protocol_name",
    "start_time",
    "end_time",
    "duration_seconds",
    "status",
    "abort_reason",
    "treatment_site",
    "total_laser_on_time_seconds",
    "avg_power_watts",
    "max_power_watts",
    "total_energy_joules",
    "telemetry_path",
    "telemetry_line_count",
    "telemetry_sha256",
    "video_path",
)
#: The meanings a signature may carry (21 CFR 11.50: what the signature means).
#: The meaning of the treating technician's own signature (only they may give it).
PERFORMED_BY: Final = "performed by"
MEANINGS: Final = (PERFORMED_BY, "reviewed by", "approved by")
#: The meaning asked for at the end of a session.
DEFAULT_MEANING: Final = PERFORMED_BY

RecordKind = Literal["final", "signature", "addendum"]


class SignatureError(ValueError):
    """A signature or record cannot be written (no such session, still open, unknown meaning); one line."""


@dataclass(frozen=True, slots=True)
class SessionSignature:
    """One signature or signed addendum as the session view shows it."""

    record_id: int
    session_id: int
    kind: str
    signed_at: datetime
    username: str | None
    printed_name: str | None
    meaning: str | None
    record_hash: str
    notes: str | None

    def describe(self) -> str:
        """One line, e.g. ``performed by Jane Doe (jdoe), 2026-12-07 10:02 UTC``."""
        who = self.printed_name or self.username or "unknown"
        login = f" ({self.username})" if self.username and self.username != who else ""
        label = "addendum " if self.kind == "addendum" else ""
        return f"{label}{self.meaning or 'signed'} {who}{login}, {self.signed_at:%Y-%m-%d %H:%M} UTC"


def _summary_values(executor: Executor, session_id: int) -> list[Any] | None:
    rows = executor.fetch(
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM sessions WHERE session_id = ?", (session_id,)
    )
    return list(rows[0]) if rows else None


def _notes(executor: Executor, session_id: int) -> str | None:
    rows = executor.fetch("SELECT post_treatment_notes FROM sessions WHERE session_id = ?", (session_id,))
    return rows[0][0] if rows else None


def _base(executor: Executor, session_id: int) -> tuple[Any, str] | None:
    """The SHA-256 state after the summary and the events, and the summary's JSON; None for no session."""
    values = _summary_values(executor, session_id)
    if values is None:
        return None
    summary = encode_values(values)
    digest = hashlib.sha256(RECORD_PREFIX)
    digest.update(summary.encode("ascii") + b"\n")
    events = TABLES["treatment_events"]
    cursor = executor.stream(
        f"SELECT {', '.join(events.columns)} FROM treatment_events WHERE session_id = {int(session_id)} "
        "ORDER BY event_id"
    )
    update = digest.update
    for row in cursor:
        update(encode_values(row).encode("ascii") + b"\n")
    return digest, summary


def record_digest(
    executor: Executor,
    session_id: int,
    *,
    notes: bool,
    addendum: str | None = None,
    base: tuple[Any, str] | None = None,
) -> tuple[str, str] | None:
    """``(hash, summary JSON)`` of the session's record as stored now: the summary and the events, with the
    notes when ``notes``, and ``addendum`` appended; None when there is no such session. ``base`` is the
    session's :func:`_base`, when already computed."""
    found = base if base is not None else _base(executor, session_id)
    if found is None:
        return None
    digest, summary = found[0].copy(), found[1]
    if notes:
        digest.update(b"notes\n" + encode_values([_notes(executor, session_id)]).encode("ascii") + b"\n")
    if addendum is not None:
        digest.update(b"addendum\n" + encode_values([addendum]).encode("ascii") + b"\n")
    return digest.hexdigest(), summary


def record_hash(
    executor: Executor, session_id: int, *, notes: bool, addendum: str | None = None
) -> str | None:
    """The SHA-256 (hex) of the session's record (see :func:`record_digest`); None for no such session."""
    found = record_digest(executor, session_id, notes=notes, addendum=addendum)
    return None if found is None else found[0]


def _status(executor: Executor, session_id: int) -> str:
    rows = executor.fetch("SELECT status FROM sessions WHERE session_id = ?", (session_id,))
    if not rows:
        raise SignatureError(f"no session with id {session_id}")
    status = str(rows[0][0])
    if status not in ("completed", "aborted"):
        raise SignatureError(f"session {session_id} is still {status}: only a finished session is signed")
    return status


def append_final(executor: Executor, session_id: int, now: datetime) -> int:
    """Chain the final record of the just-finished session ``session_id`` (in the caller's transaction,
    after its summary was written); returns the row's id."""
    _status(executor, session_id)
    found = record_digest(executor, session_id, notes=False)
    assert found is not None
    digest, summary = found
    return append(
        executor,
        "session_records",
        ("session_id", "kind", "recorded_at", "record_hash", "summary"),
        [(session_id, "final", stored_timestamp(now), digest, summary)],
    )


def append_signature(
    executor: Executor,
    session_id: int,
    *,
    tech_id: int,
    username: str,
    printed_name: str,
    meaning: str,
    now: datetime,
    addendum: str | None = None,
) -> int:
    """Chain a signature (or, with ``addendum``, a signed addendum) of the finished session ``session_id``
    by the person named, in the caller's transaction; returns the row's id. The caller has checked the
    person's password. :class:`SignatureError` for an unknown meaning, a session still open or none."""
    if meaning not in MEANINGS:
        raise SignatureError(f"a signature means one of {', '.join(MEANINGS)}; not {meaning!r}")
    if not printed_name.strip():
        raise SignatureError("a signature needs the signer's printed name")
    if addendum is not None and not addendum.strip():
        raise SignatureError("an addendum needs its notes")
    _status(executor, session_id)
    digest = record_hash(executor, session_id, notes=True, addendum=addendum)
    assert digest is not None
    return append(
        executor,
        "session_records",
        (
            "session_id",
            "kind",
            "recorded_at",
            "tech_id",
            "username",
            "printed_name",
            "meaning",
            "record_hash",
            "notes",
        ),
        [
            (
                session_id,
                "addendum" if addendum is not None else "signature",
                stored_timestamp(now),
                tech_id,
                username,
                printed_name,
                meaning,
                digest,
                addendum,
            )
        ],
    )


def is_signed(executor: Executor, session_id: int) -> bool:
    """True once the session carries a signature (its row can no longer change)."""
    return bool(
        executor.fetch(
            "SELECT 1 FROM session_records WHERE session_id = ? AND kind = 'signature' LIMIT 1", (session_id,)
        )
    )


def _as_datetime(value: object) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def signatures_of(executor: Executor, session_id: int) -> list[SessionSignature]:
    """The signatures and signed addenda of the session, oldest first."""
    rows = executor.fetch(
        "SELECT record_id, session_id, kind, recorded_at, username, printed_name, meaning, record_hash, "
        "notes FROM session_records WHERE session_id = ? AND kind IN ('signature', 'addendum') "
        "ORDER BY record_id",
        (session_id,),
    )
    return [
        SessionSignature(
            record_id=int(row[0]),
            session_id=int(row[1]),
            kind=str(row[2]),
            signed_at=_as_datetime(row[3]),
            username=row[4],
            printed_name=row[5],
            meaning=row[6],
            record_hash=str(row[7]),
            notes=row[8],
        )
        for row in rows
    ]


def signatures_sqlite(connection: sqlite3.Connection, session_id: int) -> list[SessionSignature]:
    """:func:`signatures_of` through a plain :mod:`sqlite3` connection; [] before the table exists."""
    from storage.chain import SqliteExecutor

    try:
        return signatures_of(SqliteExecutor(connection), session_id)
    except sqlite3.OperationalError:
        return []


def check_records(executor: Executor) -> str | None:
    """Recompute the hash of every session record row against its session as stored now; None when all
    match, else one line naming the first row that does not and why."""
    rows = executor.fetch(
        "SELECT record_id, session_id, kind, recorded_at, printed_name, meaning, record_hash, summary, notes "
        "FROM session_records ORDER BY record_id"
    )
    bases: dict[int, tuple[Any, str] | None] = {}
    for record_id, session_id, kind, recorded_at, printed_name, meaning, stored, summary, notes in rows:
        addendum = notes if kind == "addendum" else None
        sid = int(session_id)
        if sid not in bases:
            bases[sid] = _base(executor, sid)
        base = bases[sid]
        found = (
            None
            if base is None
            else record_digest(executor, sid, notes=kind != "final", addendum=addendum, base=base)
        )
        label = "addendum" if kind == "addendum" else "signature"
        what = (
            f"final record {record_id}"
            if kind == "final"
            else f"{label} {record_id} ({meaning} {printed_name}, {str(recorded_at)[:19]})"
        )
        if found is None:
            return f"session {session_id}: {what}: the session is missing"
        digest, current = found
        if kind == "final" and summary != current:
            return (
                f"session {session_id}: {what}: the session's summary differs from the one chained at its end"
            )
        if digest != stored:
            return (
                f"session {session_id}: {what}: the session's record no longer matches what was "
                f"{'recorded at its end' if kind == 'final' else 'signed'} (altered)"
            )
    return None


__all__ = [
    "DEFAULT_MEANING",
    "MEANINGS",
    "PERFORMED_BY",
    "RECORD_PREFIX",
    "SUMMARY_COLUMNS",
    "SessionSignature",
    "SignatureError",
    "append_final",
    "append_signature",
    "check_records",
    "is_signed",
    "record_digest",
    "record_hash",
    "signatures_of",
    "signatures_sqlite",
]
