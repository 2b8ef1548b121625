"""``tosca calibration``: the rig's calibrations without a wizard (a factory sheet, a rig moved to new
hardware).

```
tosca calibration list                         every stored calibration, the active one of each type marked
tosca calibration import FILE --user ENGINEER  store FILE as the active calibration of its type
tosca calibration export ID                    the calibration ID in the file format, on stdout
```

``import`` reads ENGINEER's password from stdin (asked without echo on a terminal), checks it as a login
does, then checks the file (docs/calibration.md: at least 3 points, finite, none negative, strictly
monotonic, r squared at or above the quality floor) and stores it as the active calibration of its type; the
one before stays stored, inactive. A refusal prints the reason and stores nothing; the import and every
refusal are audit rows. ``export`` prints the same format, so an export imports again. Exit codes: 0 done, 1
refused or failed (``tosca: <reason>`` on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.errors import one_line
from storage.paths import DataDir
from tui.commands import PasswordInputError, add_data_dir_option, fail, read_password, schema_refusal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from control.calibration_records import CalibrationInfo


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``calibration`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calibration",
        help="the rig's calibrations: list | import FILE | export ID",
        description="List, import and export the rig's calibrations.",
    )
    actions = parser.add_subparsers(dest="calibration_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every stored calibration, the active ones marked")
    add_data_dir_option(listing)
    imported = actions.add_parser(
        "import", help="store a calibration file as the active one of its type (password on stdin)"
    )
    imported.add_argument("file", type=Path, metavar="FILE", help="calibration JSON file")
    imported.add_argument("--user", required=True, metavar="ENGINEER", help="the engineer importing")
    add_data_dir_option(imported)
    exported = actions.add_parser("export", help="print a stored calibration in the import format")
    exported.add_argument("calibration_id", type=int, metavar="ID", help="the calibration's id (see list)")
    add_data_dir_option(exported)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``calibration`` action named in ``args``; return the exit code."""
    from control.calibration_records import CalibrationRefused, read_calibration_file
    from storage.errors import StorageError

    data_dir = DataDir(Path(args.data_dir))
    action = args.calibration_action
    try:
        refusal = schema_refusal(data_dir.db_path)
        if refusal is not None:
            return fail(refusal)
        text = read_calibration_file(Path(args.file)) if action == "import" else None
        password = read_password(sys.stdin) if action == "import" else None
        return asyncio.run(_run(data_dir, args, password, text))
    except PasswordInputError as exc:
        return fail(f"calibration {action}: {exc}")
    except CalibrationRefused as exc:
        sys.stdout.flush()
        what = args.file if action == "import" else f"calibration {action}"
        return fail(f"{what}: refused: {one_line(exc)}; nothing stored")
    except (StorageError, OSError) as exc:
        return fail(f"calibration {action} failed: {one_line(exc)}")


async def _run(data_dir: DataDir, args: argparse.Namespace, password: str | None, text: str | None) -> int:
    from control.calibration_records import export_text, get_calibration, list_calibrations
    from storage.engine import create_engine, session_factory

    engine = create_engine(data_dir.db_path)
    try:
        sessions = session_factory(engine)
        action = args.calibration_action
        if action == "list":
            print(format_calibrations(await list_calibrations(sessions)), end="")
            return 0
        if action == "export":
            print(export_text(await get_calibration(sessions, args.calibration_id)), end="")
            return 0
        assert password is not None and text is not None
        return await _import(sessions, args, password, text)
    finally:
        await engine.dispose()


async def _import(
    sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace, password: str, text: str
) -> int:
    from control.accounts import AccountService
    from control.calibration_records import import_calibration
    from control.terminal import detect_terminal

    terminal = detect_terminal()
    login = await AccountService(sessions=sessions, terminal=terminal).login(
        args.user, password, context="calibration_import"
    )
    if not login.ok:
        return fail(f"calibration import: {login.message}")
    calibration_id, parsed = await import_calibration(
        sessions, text, engineer=args.user, source=Path(args.file).name, terminal=terminal
    )
    checked = parsed.checked
    fit = checked.curve.fit
    kind = checked.kind
    print(
        f"calibration #{calibration_id}: {kind.calibration_type} stored as active "
        f"({fit.n} points, {fit.equation(kind.x_key, kind.y_key)}, r squared {fit.r_squared:.4f})"
    )
    print("the calibration it replaces is kept, inactive")
    return 0


def format_calibrations(rows: list[CalibrationInfo]) -> str:
    """The ``tosca calibration list`` table: one line per calibration, the active ones marked."""
    from tui.safe_text import escape_controls

    header = ("ID", "TYPE", "DATE (UTC)", "ACTIVE", "POINTS", "R2", "BY", "SERIAL", "NOTES")
    table = [header]
    for row in rows:
        table.append(
            (
                str(row.calibration_id),
                row.calibration_type,
                f"{row.calibration_date:%Y-%m-%d %H:%M}",
                "active" if row.active else "-",
                str(row.points),
                "-" if row.r_squared is None else f"{row.r_squared:.4f}",
                escape_controls(row.made_by),
                escape_controls(row.device_serial_number or "-"),
                escape_controls(" ".join((row.notes or "").split())),
            )
        )
    if not rows:
        return "no calibrations stored\n"
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in table
    )
