"""``tosca protocol validate FILE``: a dry run of a protocol file, with no hardware.

```
tosca protocol validate FILE [--data-dir DIR]
```

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
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.paths import DataDir
from tui.commands import add_data_dir_option, fail

if TYPE_CHECKING:
    from control.protocols import Plan, ValidationLimits

#: Largest protocol file read, bytes (a protocol is a few kilobytes; this bounds a mistaken argument).
MAX_FILE_BYTES = 1_000_000


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``protocol`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "protocol",
        help="treatment protocols: validate FILE",
        description="Work with treatment protocol files.",
    )
    actions = parser.add_subparsers(dest="protocol_action", metavar="ACTION", required=True)
    validate = actions.add_parser(
        "validate",
        help="dry run: print the plan, or every error",
        description="Check a protocol file against the system's limits and print its plan.",
    )
    validate.add_argument("file", type=Path, metavar="FILE", help="protocol JSON file")
    add_data_dir_option(validate)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


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
        return fail(f"cannot read {path}: {_one_line(exc)}")
    try:
        limits, origin = _limits(data_dir)
    except SQLAlchemyError as exc:
        # The driver's own message ("no such table: ...") without SQLAlchemy's statement and links.
        reason = getattr(exc, "orig", None) or exc
        return fail(f"cannot read the limits from {data_dir.db_path}: {_one_line(reason)}")
    except (LimitsError, CalibrationError, StorageError, sqlite3.Error, OSError) as exc:
        return fail(f"cannot read the limits from {data_dir.db_path}: {_one_line(exc)}")
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
    return fail(f"unknown protocol action {args.protocol_action!r} (expected validate)")
