"""A backup, a verification or a research export made in a process of its own, for the controller.

The controller makes them for a remote console (``control/controller/remote.py``) and must not share its
interpreter lock with them: writing an export holds the lock in long stretches (a 10-minute session's
telemetry turned into CSV and JSON, its power trace drawn), which would hold off the event loop that runs the
safety supervisor. So it starts ``python -m storage.records_job``, writes one JSON request on its standard
input and reads one JSON answer from its standard output. The process first leaves the controller's
real-time scheduling (if it inherited it), takes nice 10 and the CPUs the controller is not pinned to; it has
its own SQLite connections (short read transactions; each audit row one short write transaction).

Request: ``{"job": "backup" | "verify" | "export" | "audit_export", "data_dir": ..., "user": ...,
"terminal": ..., "origin": {...}}`` plus, for ``verify``, ``"name"``; for ``export``, ``"session_id"`` or
``"since"`` and ``"until"`` (ISO, naive UTC), ``"formats"``, ``"folder"`` (a plain name or null) and
``"identified"``; for ``audit_export``, the filters ``"user_filter"``, ``"action"``, ``"outcome"``,
``"since"``, ``"until"`` and ``"text"`` (each null for none). Answer:
``{"result": {...}}``, or ``{"error": "one line"}`` (exit status 1).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from storage.background import yield_to_the_controller
from storage.errors import StorageError, one_line
from storage.paths import DataDir

#: The nice value the job takes.
JOB_NICE = 10


def run_job(request: dict[str, Any]) -> dict[str, Any]:
    """Do the job ``request`` asks for; its answer (raises StorageError or OSError when refused)."""
    data = DataDir(Path(request["data_dir"]))
    user = str(request["user"])
    terminal = str(request["terminal"])
    origin = dict(request.get("origin") or {})
    job = request.get("job")
    if job == "backup":
        from storage.backups import make_backup

        entry = make_backup(data, user=user, terminal=terminal, origin=origin)
        return {
            "name": entry.name,
            "size_bytes": entry.size,
            "verified": entry.verified is True,
            "note": entry.verified_text,
        }
    if job == "verify":
        from storage.backups import verify_backup

        name = str(request["name"])
        ok, note = verify_backup(data, name, user=user, terminal=terminal, origin=origin)
        return {"name": name, "ok": ok, "note": note}
    if job == "export":
        return _export(data, request, user, terminal, origin)
    if job == "audit_export":
        return _audit_export(data, request, user, terminal, origin)
    raise StorageError(f"unknown job {job!r}")


def _export(
    data: DataDir, request: dict[str, Any], user: str, terminal: str, origin: dict[str, Any]
) -> dict[str, Any]:
    from storage.export import export_range, export_session, share_with_records_group

    folder = request.get("folder")
    target = data.root / "exports" / str(folder) if folder else None
    formats = list(request.get("formats") or []) or None
    identified = bool(request.get("identified"))
    options: dict[str, Any] = {
        "target": target,
        "formats": formats,
        "identified": identified,
        "user": user,
        "terminal": terminal,
        "origin": origin,
    }
    if request.get("session_id") is not None:
        result = export_session(data, int(request["session_id"]), **options)
    else:
        since = datetime.fromisoformat(str(request["since"]))
        until = datetime.fromisoformat(str(request["until"]))
        result = export_range(data, since, until, **options)
    share_with_records_group(result.folder, data.db_path)
    files = sorted(str(p.relative_to(result.folder)) for p in result.folder.rglob("*") if p.is_file())
    return {
        "folder": result.folder.name,
        "path": str(result.folder),
        "sessions": list(result.sessions),
        "skipped": list(result.skipped),
        "files": files,
        "identified": result.identified,
        "description": result.describe(),
    }


def _audit_export(
    data: DataDir, request: dict[str, Any], user: str, terminal: str, origin: dict[str, Any]
) -> dict[str, Any]:
    """The audit trail's rows matching the request's filters, as a CSV file under ``exports/``, readable by
    the records group; removed again (and refused) when its audit row cannot be written."""
    from storage.audit_query import AuditFilter, export_csv, record_action
    from storage.export import share_with_records_group

    filters = AuditFilter.build(
        user=request.get("user_filter"),
        action=request.get("action"),
        outcome=request.get("outcome"),
        since=request.get("since"),
        until=request.get("until"),
        text=request.get("text"),
    )
    result = export_csv(data.db_path, data.root / "exports", filters)
    try:
        share_with_records_group(result.path, data.db_path)
        record_action(
            data.db_path,
            "audit_export",
            "success",
            user=user,
            terminal=terminal,
            details={**origin, "file": str(result.path), "rows": result.rows, "filters": filters.describe()},
        )
    except StorageError:
        result.path.unlink(missing_ok=True)
        raise
    return {"file": result.path.name, "path": str(result.path), "rows": result.rows}


def main() -> int:
    """Read one request on standard input, answer on standard output; 0 done, 1 refused."""
    yield_to_the_controller(JOB_NICE)
    try:
        request = json.loads(sys.stdin.read())
        if not isinstance(request, dict):
            raise StorageError("the request is not a JSON object")
        answer: dict[str, Any] = {"result": run_job(request)}
        status = 0
    except (StorageError, OSError, ValueError, KeyError, TypeError) as exc:
        answer = {"error": one_line(exc)}
        status = 1
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
