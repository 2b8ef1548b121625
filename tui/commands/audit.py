"""``tosca audit``: read the audit trail, and prove the records unaltered.

```
tosca audit list [--user U] [--action A] [--outcome success|failure] [--since ISO] [--until ISO]
                 [--text TEXT] [--limit N] [--format table|csv|json]
tosca audit verify [--backup FILE]
tosca audit checkpoint
```

Rows newest first; ``--since`` is inclusive and ``--until`` exclusive, ISO 8601 dates or date-times (UTC
unless an offset is given). ``--limit`` (default 50, 0 for every row) bounds the rows printed. ``table``
prints aligned columns, ``csv`` the same cells as the console's export (formula-guarded), ``json`` one JSON
array. Exit codes: 0 done, 1 refused or failed (one line on stderr: a bad date, no database), 2 usage.

``verify`` recomputes every record chain (``audit_log``, ``safety_log``, ``treatment_events``) and every
signed checkpoint of the data directory's database, or of the backup ``FILE`` with the checkpoint file kept
beside it (see docs/records-chain.md). Exit codes: 0 verified (one line of counts per chain), 1 the first
row or checkpoint that fails and why, on one line on stderr (or no database), 2 usage or a key file that is
missing or not 32 bytes. A verification of the data directory's own database is kept as a
``records_verify`` audit row (the admin's and engineer's home screens show the last). ``checkpoint`` signs
and stores a checkpoint of each chain now (0 done, 1 refused, 2 a bad key file).
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any

from storage.errors import one_line
from tui.commands import add_data_dir_option, fail

FORMATS = ("table", "csv", "json")
DEFAULT_LIMIT = 50


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (every row) or more")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``audit`` sub-command to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="audit trail: list, verify, checkpoint",
        description="Read the audit trail of a data directory, and prove its records unaltered.",
    )
    actions = parser.add_subparsers(dest="audit_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="rows newest first, filtered")
    listing.add_argument("--user", metavar="U", help="only rows of this user (exact name)")
    listing.add_argument("--action", metavar="A", help="only this action (exact)")
    listing.add_argument("--outcome", choices=("success", "failure"), help="only this outcome")
    listing.add_argument("--since", metavar="ISO", help="from this date or time (inclusive, UTC)")
    listing.add_argument("--until", metavar="ISO", help="before this date or time (exclusive, UTC)")
    listing.add_argument(
        "--text", metavar="TEXT", help="free text found in user, action, terminal or details"
    )
    listing.add_argument(
        "--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N", help="rows at most (0: all; default 50)"
    )
    listing.add_argument("--format", choices=FORMATS, default="table", help="output format (default table)")
    add_data_dir_option(listing)
    verify = actions.add_parser("verify", help="recompute the record chains and their signed checkpoints")
    verify.add_argument(
        "--backup", type=Path, metavar="FILE", help="verify this backup file (with the data directory's keys)"
    )
    add_data_dir_option(verify)
    checkpoint = actions.add_parser("checkpoint", help="sign a checkpoint of each record chain now")
    add_data_dir_option(checkpoint)
    return parser


def _table(rows: list[Any]) -> None:
    from tui.safe_text import escape_controls

    headers = ("time (UTC)", "user", "action", "outcome", "terminal", "details")
    cells = [
        (
            f"{row.timestamp:%Y-%m-%d %H:%M:%S}",
            row.username or "-",
            row.action,
            row.outcome,
            row.terminal or "-",
            row.details_summary(80),
        )
        for row in rows
    ]
    # A name or a detail may hold a terminal escape: printed escaped, never sent to the terminal.
    shown_rows = [[escape_controls(" ".join(cell.split())) for cell in row_cells] for row_cells in cells]
    widths = [max([len(h)] + [len(c[i]) for c in shown_rows]) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for shown in shown_rows:
        print("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip())


KEY_REFUSED = 2


def _verify(data_dir: Path, backup: Path | None) -> int:
    from storage.chain import ChainKeyError
    from storage.chain_verify import verify_database
    from storage.errors import StorageError
    from storage.paths import DataDir

    live = DataDir(data_dir).db_path
    target = live if backup is None else backup
    try:
        result = verify_database(
            target,
            keys_of=live,
            backup=backup is not None,
            files_of=None if backup is not None else DataDir(data_dir).root,
        )
    except ChainKeyError as exc:
        print(f"tosca: {one_line(exc)}", file=sys.stderr)
        return KEY_REFUSED
    except StorageError as exc:
        return fail(one_line(exc))
    if backup is None:
        # The live database keeps its verifications (the admin's and engineer's home screens show the last).
        from storage.verifications import record_verification

        try:
            record_verification(live, result)
        except StorageError as exc:
            print(f"tosca: this verification was not recorded: {one_line(exc)}", file=sys.stderr)
    if result.failure is not None:
        return fail(f"verification failed: {one_line(result.failure.message)}")
    for count in result.counts:
        print(count.describe())
    for pruning in result.prunings:
        print(pruning.describe())
    print(f"{result.signatures} signatures and signed addenda match their sessions' records")
    if backup is None:
        pruned = f" ({result.telemetry_pruned} removed by retention)" if result.telemetry_pruned else ""
        print(f"{result.telemetry_files} telemetry files match their recorded SHA-256{pruned}")
    print(
        f"ok: {target.name}: every chain, checkpoint and signature verifies"
        + ("" if backup else ", and every telemetry file")
    )
    sys.stdout.flush()
    return 0


def _checkpoint(data_dir: Path) -> int:
    import sqlite3

    from storage.chain import ChainKeyError, checkpoint_file
    from storage.errors import StorageError
    from storage.paths import DataDir

    db_path = DataDir(data_dir).db_path
    if not db_path.is_file():
        return fail(f"no database at {db_path}")
    try:
        written = checkpoint_file(db_path, "manual")
    except ChainKeyError as exc:
        print(f"tosca: {one_line(exc)}", file=sys.stderr)
        return KEY_REFUSED
    except (StorageError, sqlite3.Error) as exc:
        return fail(f"no checkpoint written: {one_line(exc)}")
    if not written:
        return fail("the database predates the record chain: run tosca db upgrade first")
    for cp in written:
        print(f"{cp.chain}: checkpoint {cp.checkpoint_id} at {cp.length} rows ({cp.created_at} UTC)")
    sys.stdout.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``tosca audit ACTION``; return the exit code."""
    if args.audit_action == "verify":
        return _verify(Path(args.data_dir), args.backup)
    if args.audit_action == "checkpoint":
        return _checkpoint(Path(args.data_dir))
    from storage.audit_query import AuditFilter, csv_record, iter_rows, open_read_only, row_as_json
    from storage.errors import StorageError
    from storage.paths import DataDir

    if args.audit_action != "list":
        return fail(f"unknown audit action {args.audit_action!r} (expected list, verify or checkpoint)")
    data_dir = DataDir(Path(args.data_dir))
    try:
        filters = AuditFilter.build(
            user=args.user,
            action=args.action,
            outcome=args.outcome,
            since=args.since,
            until=args.until,
            text=args.text,
        )
        connection = open_read_only(data_dir.db_path)
        try:
            found = iter_rows(connection, filters)
            rows = list(found if args.limit == 0 else islice(found, args.limit))
        finally:
            connection.close()
    except StorageError as exc:
        return fail(" ".join(str(exc).split()))
    if args.format == "json":
        json.dump([row_as_json(row) for row in rows], sys.stdout, indent=1)
        print()
    elif args.format == "csv":
        import csv

        from storage.audit_query import CSV_COLUMNS

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(csv_record(row))
    else:
        if rows:
            _table(rows)
        print(f"{len(rows)} row(s), newest first; {filters.describe()}")
    sys.stdout.flush()
    return 0
