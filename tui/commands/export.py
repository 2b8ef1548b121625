"""``tosca export``: research exports of treatment sessions (docs/exports.md).

```
tosca export session ID [--out DIR] [--format csv|json] [--identified]
tosca export range --since ISO --until ISO [--out DIR] [--format csv|json] [--identified]
tosca export fetch NAME > NAME.tar
```

``fetch`` writes the export folder ``NAME`` of ``exports/`` to standard output as a tar stream (what the
kiosk's SSH forced command runs for ``fetch-export NAME``: :mod:`storage.export_fetch`).

Writes a new folder: ``--out DIR`` names it (refused when it exists already: an export never overwrites);
without it, a new folder under the data directory's ``exports/``. Both formats are written unless
``--format`` picks one. De-identified unless ``--identified`` (subject demographics, technicians' full names
and free-text notes added). Every export is an audit row naming the operating system's account and the
terminal. Times are ISO 8601 dates or date-times, UTC unless an offset is given; ``--since`` is inclusive and
``--until`` exclusive (sessions by their start). Prints one line saying what was written where. Exit codes:
0 done, 1 refused or failed (one line on stderr: an unknown or open session, no session in the range, a bad
date, the folder exists, a disk error; nothing is left behind), 2 usage.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.errors import one_line
from tui.commands import add_data_dir_option, fail

if TYPE_CHECKING:
    from storage.paths import DataDir


def _session_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a session id (a whole number from 1): {text!r}")
    return int(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="the new folder to write (default: one under exports/)"
    )
    parser.add_argument("--format", choices=("csv", "json"), help="only this format (default: both)")
    parser.add_argument(
        "--identified",
        action="store_true",
        help="include subject demographics, full names and notes (audited)",
    )
    add_data_dir_option(parser)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export",
        help="research export of sessions: CSV, JSON, telemetry, power trace picture, snapshots",
        description="Export treatment sessions for research, de-identified unless --identified.",
    )
    what = parser.add_subparsers(dest="export_what", metavar="WHAT", required=True)
    one = what.add_parser("session", help="one session")
    one.add_argument("session_id", type=_session_id, metavar="ID", help="the session's id")
    _common(one)
    span = what.add_parser("range", help="every ended session that started in a time range")
    span.add_argument("--since", required=True, metavar="ISO", help="from this date or time (inclusive, UTC)")
    span.add_argument(
        "--until", required=True, metavar="ISO", help="before this date or time (exclusive, UTC)"
    )
    _common(span)
    fetch = what.add_parser(
        "fetch", help="write the export folder NAME under exports/ to standard output as a tar stream"
    )
    fetch.add_argument("name", metavar="NAME", help="the export's folder name under exports/")
    add_data_dir_option(fetch)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``tosca export WHAT``; return the exit code."""
    from control.terminal import detect_terminal
    from storage.audit_query import parse_time
    from storage.errors import StorageError
    from storage.export import export_range, export_session
    from storage.paths import DataDir

    data_dir = DataDir(Path(args.data_dir))
    if args.export_what == "fetch":
        return _fetch(data_dir, args.name)
    if not data_dir.db_path.is_file():
        return fail(f"no database at {data_dir.db_path}")
    formats = None if args.format is None else [args.format]
    terminal = detect_terminal()
    try:
        if args.export_what == "session":
            result = export_session(
                data_dir,
                args.session_id,
                target=args.out,
                formats=formats,
                identified=args.identified,
                terminal=terminal,
            )
        else:
            since = parse_time(args.since, name="--since")
            until = parse_time(args.until, name="--until")
            result = export_range(
                data_dir,
                since,
                until,
                target=args.out,
                formats=formats,
                identified=args.identified,
                terminal=terminal,
            )
    except StorageError as exc:
        return fail(one_line(exc))
    print(result.describe(), flush=True)
    return 0


def _fetch(data_dir: DataDir, name: str) -> int:
    """``tosca export fetch NAME`` (storage/export_fetch.py): the tar stream on standard output."""
    import sys

    from storage.export_fetch import FetchError, stream_export

    out = sys.stdout.buffer
    if out.isatty():
        return fail(
            "the export is a tar stream: redirect it to a file (ssh -T ... fetch-export NAME > NAME.tar)"
        )
    try:
        stream_export(data_dir, name, out)
        out.flush()
    except FetchError as exc:
        return fail(one_line(exc))
    except OSError as exc:  # the reading end went away (the SSH connection dropped)
        return fail(f"the tar stream was cut off: {exc.strerror or exc}")
    return 0
