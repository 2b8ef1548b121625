"""``tosca protocol``: validate a protocol file, and the protocol library with its versions and approval.

```
tosca protocol validate FILE [--data-dir DIR]
tosca protocol list                                       every protocol, each version with its status
tosca protocol import FILE --name NAME --user ADMIN       a new draft version (or a new protocol)
tosca protocol submit NAME --version N --user ADMIN       offer a draft for approval
tosca protocol approve NAME --version N --user ADMIN      approve (not the version's author)
tosca protocol reject NAME --version N --reason TEXT --user ADMIN
tosca protocol retire NAME --user ADMIN                   no longer offered for treatment; kept
```

The library actions read ADMIN's password from stdin (asked without echo on a terminal) and check it as a
login does, then act through ``control/protocol_approval.py``: ADMIN must be an active admin by the role the
database holds; a version is approved or rejected by an admin who is not its author, and only once; a
rejection needs a reason. Every action and every refusal is an audit row with the old and new status.
``import`` checks the file exactly as ``validate`` does and prints every problem of a refused file on stderr,
storing nothing; importing under an existing name makes that protocol's next draft version. Exit codes: 0
done, 1 refused or failed (``tosca: <reason>`` on stderr), 2 usage.

The file is checked against the data directory's limits when its ``tosca.db`` exists
(``max_laser_power_watts`` from the configuration, the highest power the active laser calibration covers,
the ring range from the active actuator calibration or, where none is active, the default actuator travel),
and otherwise against the defaults (10.0 W, default travel 0..3000 um, ring 2.0 + um/1000 mm). The limits
used are printed first. A valid protocol prints its plan (step, start, duration, power start -> end, ring,
ramp; total time; expected energy) and exits 0. A refused one prints every problem on stderr, one per line as
``FILE: problem``, then ``tosca: FILE: refused (N problems)``, and exits 1. A file that cannot be read gives
a one-line reason and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.errors import one_line
from storage.paths import DataDir
from tui.commands import PasswordInputError, add_data_dir_option, fail, read_password, schema_refusal

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from control.protocol_approval import LibraryEntry
    from control.protocols import Plan, ValidationLimits

#: Largest protocol file read, bytes (a protocol is a few kilobytes; this bounds a mistaken argument); the
#: same bound as ``control.protocol_approval.MAX_PROTOCOL_FILE_BYTES``, kept here so ``tosca`` starts
#: without loading the protocol model.
MAX_FILE_BYTES = 1_000_000
#: The library actions (besides ``validate``).
LIBRARY_ACTIONS = ("list", "import", "submit", "approve", "reject", "retire")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``protocol`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "protocol",
        help="treatment protocols: validate FILE | list | import | submit | approve | reject | retire",
        description="Check protocol files, and keep the protocol library: versions and their approval.",
    )
    actions = parser.add_subparsers(dest="protocol_action", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate",
        help="dry run: print the plan, or every error",
        description="Check a protocol file against the system's limits and print its plan.",
    )
    validate.add_argument("file", type=Path, metavar="FILE", help="protocol JSON file")
    add_data_dir_option(validate)
    listing = actions.add_parser("list", help="every protocol, each version with its approval status")
    add_data_dir_option(listing)
    imported = actions.add_parser(
        "import", help="store a protocol file as a new draft version (password on stdin)"
    )
    imported.add_argument("file", type=Path, metavar="FILE", help="protocol JSON file")
    imported.add_argument("--name", required=True, metavar="NAME", help="the protocol's name")
    for verb, text in (
        ("submit", "offer a draft version for approval"),
        ("approve", "approve a version (not its author)"),
        ("reject", "reject a version with a reason (not its author)"),
        ("retire", "stop offering a protocol for treatment (kept for history)"),
    ):
        sub = actions.add_parser(verb, help=f"{text} (password on stdin)")
        sub.add_argument("name", metavar="NAME")
        if verb != "retire":
            sub.add_argument("--version", dest="number", required=True, type=int, metavar="N")
        if verb == "reject":
            sub.add_argument("--reason", required=True, metavar="TEXT", help="why (recorded, shown)")
        sub.add_argument("--user", required=True, metavar="ADMIN", help="the admin acting")
        add_data_dir_option(sub)
    imported.add_argument("--user", required=True, metavar="ADMIN", help="the admin importing")
    add_data_dir_option(imported)
    return parser


def _read(path: Path) -> str:
    """The file's text; OSError or ValueError with the reason."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from exc


async def _limits_from(db_path: Path) -> ValidationLimits:
    from control.protocols import load_limits
    from storage import create_engine, session_factory

    engine = create_engine(db_path)
    try:
        return await load_limits(session_factory(engine))
    finally:
        await engine.dispose()


def _limits(data_dir: DataDir) -> tuple[ValidationLimits, str]:
    import asyncio

    from control.protocols import default_limits

    if data_dir.db_path.is_file():
        return asyncio.run(_limits_from(data_dir.db_path)), f"limits from {data_dir.db_path}"
    return default_limits(), f"default limits (no database at {data_dir.db_path})"


def format_plan(plan: Plan) -> list[str]:
    """The plan as text lines: a table of steps (seconds, watts, mm), the total time and the expected
    energy."""
    from control.protocols import format_number

    header = ("step", "start s", "duration s", "power W", "ring mm", "ramp")
    rows = [
        (
            str(step.number),
            f"{format_number(step.start_s)}",
            f"{format_number(step.duration_s)}",
            f"{format_number(step.power_start_w)} -> {format_number(step.power_end_w)}",
            f"{format_number(step.ring_size_mm)}",
            step.ramp,
        )
        for step in plan.steps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(header), line(tuple("-" * w for w in widths))]
    lines += [line(r) for r in rows]
    lines.append(f"total time: {format_number(plan.total_duration_s)} s")
    lines.append(f"maximum power: {format_number(plan.max_power_w)} W")
    lines.append(f"expected energy: {format_number(plan.expected_energy_j)} J")
    return lines


def _validate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from control.calibration import CalibrationError
    from control.protocols import LimitsError, ProtocolError, check_protocol, protocol_type
    from storage.errors import StorageError

    path = Path(args.file)
    data_dir = DataDir(Path(args.data_dir))
    try:
        text = _read(path)
    except FileNotFoundError:
        return fail(f"{path}: no such file")
    except (OSError, ValueError) as exc:
        return fail(f"cannot read {path}: {one_line(exc)}")
    try:
        limits, origin = _limits(data_dir)
    except SQLAlchemyError as exc:
        # The driver's own message ("no such table: ...") without SQLAlchemy's statement and links.
        reason = getattr(exc, "orig", None) or exc
        return fail(f"cannot read the limits from {data_dir.db_path}: {one_line(reason)}")
    except (LimitsError, CalibrationError, StorageError, sqlite3.Error, OSError) as exc:
        return fail(f"cannot read the limits from {data_dir.db_path}: {one_line(exc)}")
    print(f"{origin}: {limits.describe()}")
    try:
        plan = check_protocol(text, limits)
    except ProtocolError as exc:
        sys.stdout.flush()
        for error in exc.errors:
            print(f"{path}: {error}", file=sys.stderr)
        count = len(exc.errors)
        return fail(f"{path}: refused ({count} problem{'s' if count != 1 else ''})")
    steps = len(plan.steps)
    print(f"{path}: ok ({protocol_type(plan.definition)}, {steps} step{'s' if steps != 1 else ''})")
    for text_line in format_plan(plan):
        print(text_line)
    sys.stdout.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``protocol`` action named in ``args``; return the exit code."""
    if args.protocol_action == "validate":
        return _validate(args)
    if args.protocol_action in LIBRARY_ACTIONS:
        return _library(args)
    return fail(f"unknown protocol action {args.protocol_action!r}")


def _library(args: argparse.Namespace) -> int:
    from control.protocol_approval import ApprovalRefused
    from storage.errors import StorageError

    data_dir = DataDir(Path(args.data_dir))
    action = args.protocol_action
    try:
        refusal = schema_refusal(data_dir.db_path)
        if refusal is not None:
            return fail(refusal)
        password = read_password(sys.stdin) if action != "list" else None
        return asyncio.run(_library_run(data_dir, args, password))
    except PasswordInputError as exc:
        return fail(f"protocol {action}: {exc}")
    except ApprovalRefused as exc:
        sys.stdout.flush()
        if len(exc.errors) > 1 or (action == "import" and exc.errors[0] != str(exc)):
            for error in exc.errors:
                print(error, file=sys.stderr)
            count = len(exc.errors)
            return fail(f"{args.file}: refused ({count} problem{'s' if count != 1 else ''}); nothing stored")
        return fail(f"protocol {action}: {one_line(exc)}")
    except (StorageError, OSError) as exc:
        return fail(f"protocol {action} failed: {one_line(exc)}")


async def _library_run(data_dir: DataDir, args: argparse.Namespace, password: str | None) -> int:
    from storage.engine import create_engine, session_factory

    engine = create_engine(data_dir.db_path)
    try:
        sessions = session_factory(engine)
        if args.protocol_action == "list":
            from control.protocol_approval import list_library

            print(format_library(await list_library(sessions)), end="")
            return 0
        assert password is not None
        return await _act(sessions, args, password)
    finally:
        await engine.dispose()


async def _act(sessions: async_sessionmaker[AsyncSession], args: argparse.Namespace, password: str) -> int:
    from control import protocol_approval as library
    from control.accounts import AccountService
    from control.terminal import detect_terminal
    from tui.safe_text import escape_controls

    action = args.protocol_action
    terminal = detect_terminal()
    login = await AccountService(sessions=sessions, terminal=terminal).login(
        args.user, password, context=f"protocol_{action}"
    )
    if not login.ok:
        return fail(f"protocol {action}: {login.message}")
    if action == "import":
        # Read after the login, so that a file refused unread is audited as the admin's refused import.
        made = await library.import_protocol_file(
            sessions, Path(args.file), name=args.name, admin=args.user, terminal=terminal
        )
        what = "new protocol" if made.created_protocol else "next version"
        print(
            f"{escape_controls(made.name)} v{made.version}: stored as a draft ({what}, {made.protocol_type})"
        )
        print("an admin other than the author must approve it before it is used for treatment")
        return 0
    if action == "retire":
        await library.retire_protocol(sessions, args.name, admin=args.user, terminal=terminal)
        print(f"{escape_controls(args.name)}: retired; no longer offered for treatment (kept for history)")
        return 0
    new = {"submit": library.SUBMITTED, "approve": library.APPROVED}.get(action, library.REJECTED)
    change = await library.change_version_status(
        sessions,
        args.name,
        args.number,
        new,
        admin=args.user,
        reason=args.reason if new == library.REJECTED else None,
        terminal=terminal,
    )
    print(f"{escape_controls(change.name)} v{change.version}: {change.old_status} -> {change.new_status}")
    return 0


def format_library(entries: list[LibraryEntry]) -> str:
    """The ``tosca protocol list`` table: one line per version, newest last, with who wrote it, who decided
    and the rejection reason; a retired protocol is marked."""
    from tui.safe_text import escape_controls

    header = ("PROTOCOL", "V", "STATUS", "AUTHOR", "DECIDED BY", "NOTE")
    rows = [header]
    for entry in entries:
        name = escape_controls(entry.name) + ("" if entry.active else " (retired)")
        for version in entry.versions:
            decided = version.approved_by or version.rejected_by or version.submitted_by or ""
            note = version.rejection_reason or ""
            if entry.approved is not None and version.version == entry.approved.version and entry.active:
                note = "used for treatment"
            rows.append(
                (
                    name,
                    str(version.version),
                    version.status,
                    escape_controls(version.created_by),
                    escape_controls(decided),
                    escape_controls(note),
                )
            )
        if not entry.versions:
            rows.append((name, "-", "no version", "", "", ""))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )
