"""``tosca retention run [--dry-run]``: prune what the retention policy allows, now.

```
tosca retention run             prune and seal the pruning into the record chain
tosca retention run --dry-run   say what would go; change nothing
```

The policy is the settings ``retention_video_days``, ``retention_telemetry_days``,
``retention_sessions_days``, ``retention_safety_days`` and ``retention_audit_days`` (``tosca config``). The
run is :func:`storage.retention.run_retention` at the current UTC time: refused (nothing pruned) while a
session is open, when the clock reads earlier than the newest record (set backwards) or when the records do
not verify. It prints one line per chain pruned, the sessions and the files removed. Exit codes: 0 done (also
when nothing was due), 1 refused or failed (one line ``tosca: <reason>`` on stderr), 2 usage. This module does
not import Textual.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.errors import one_line
from tui.commands import add_data_dir_option, fail, schema_refusal

if TYPE_CHECKING:
    from storage.retention import RetentionPolicy


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``retention`` sub-command to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "retention",
        help="records retention: run [--dry-run]",
        description="Prune what the retention policy (the retention_* settings) allows.",
    )
    actions = parser.add_subparsers(dest="retention_action", metavar="ACTION", required=True)
    run_parser = actions.add_parser("run", help="prune now (or, with --dry-run, say what would go)")
    run_parser.add_argument("--dry-run", action="store_true", help="change nothing; print what would go")
    add_data_dir_option(run_parser)
    return parser


async def _policy(db_path: Path) -> RetentionPolicy:
    from control.system_config import read_system_settings, retention_policy
    from storage.engine import create_engine, session_factory

    engine = create_engine(db_path)
    try:
        async with session_factory(engine)() as session:
            return retention_policy(await read_system_settings(session))
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    """Run ``tosca retention run`` on ``args.data_dir``; return the exit code."""
    from control.system_config import SettingError
    from control.terminal import detect_terminal
    from storage.errors import StorageError
    from storage.models import utc_now
    from storage.paths import DataDir
    from storage.retention import run_retention

    if args.retention_action != "run":
        return fail(f"unknown retention action {args.retention_action!r} (expected run)")
    data_dir = DataDir(Path(args.data_dir))
    refusal = schema_refusal(data_dir.db_path)
    if refusal is not None:
        return fail(refusal)
    try:
        policy = asyncio.run(_policy(data_dir.db_path))
        report = run_retention(
            data_dir.db_path,
            data_dir.root,
            policy,
            utc_now(),
            dry_run=args.dry_run,
            terminal=detect_terminal(),
        )
    except SettingError as exc:
        return fail(f"retention: {one_line(exc)}")
    except (StorageError, OSError) as exc:
        return fail(f"retention: {one_line(exc)}")
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return 0
