"""``tosca config``: list, read and change the settings.

```
tosca config list                                   every setting: key, value, default, unit, meaning
tosca config get KEY                                the value of KEY (its default where none is stored)
tosca config set KEY VALUE --reason TEXT --user ADMIN
                                                    change KEY as ADMIN, whose password is read from stdin
```

``set`` checks ADMIN's password as a login does (a wrong password counts towards the lockout), then makes
the change through :func:`control.config_editor.change_setting`: ADMIN must be an active admin, VALUE a value
of the key's type in its range that keeps the settings valid as a whole, and TEXT not blank. Every change and
every refused change is an audit row with the old and new value and the reason. Safety limits never change
during a session (see the line ``set`` prints).

A stored value the settings model refuses is listed with ``!`` and its default (the value the console and
the controller use), and the reason is printed on stderr. Exit codes: 0 done, 1 refused or failed (one line
``tosca: <reason>`` on stderr), 2 usage. This module does not import Textual.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.commands import PasswordInputError, add_data_dir_option, fail, read_password, schema_refusal

if TYPE_CHECKING:
    from control.config_editor import SettingEntry
    from storage.paths import DataDir

ACTIONS = ("list", "get", "set")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``config`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "config",
        help="settings: list | get KEY | set KEY VALUE --reason TEXT --user ADMIN",
        description="List, read and change the console's settings (system_config).",
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every setting: value, default, unit and meaning")
    get = actions.add_parser("get", help="the value of one setting")
    get.add_argument("key", metavar="KEY")
    change = actions.add_parser("set", help="change a setting as an admin (password on stdin)")
    change.add_argument("key", metavar="KEY")
    change.add_argument("value", metavar="VALUE")
    change.add_argument("--reason", required=True, metavar="TEXT", help="why it changes (recorded)")
    change.add_argument("--user", required=True, metavar="ADMIN", help="the admin making the change")
    for sub in (listing, get, change):
        add_data_dir_option(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``config`` action named in ``args`` on ``args.data_dir``; return the exit code."""
    from control.config_editor import ConfigChangeRefused
    from storage.errors import StorageError
    from storage.paths import DataDir

    data_dir = DataDir(Path(args.data_dir))
    action = args.config_action
    if action not in ACTIONS:
        return fail(f"unknown config action {action!r} (expected one of {', '.join(ACTIONS)})")
    try:
        refusal = schema_refusal(data_dir.db_path)
        if refusal is not None:
            return fail(refusal)
        password = read_password(sys.stdin) if action == "set" else None
        return asyncio.run(_run(data_dir, args, password))
    except PasswordInputError as exc:
        return fail(f"config set: {exc}")
    except ConfigChangeRefused as exc:
        return fail(" ".join(str(exc).split()))
    except (StorageError, OSError) as exc:
        return fail(f"config {action} failed: {' '.join(str(exc).split())}")


def _warn(entries: list[SettingEntry]) -> None:
    for entry in entries:
        if entry.problem is not None:
            print(f"warning: {entry.problem}; the default applies", file=sys.stderr)


async def _run(data_dir: DataDir, args: argparse.Namespace, password: str | None) -> int:
    from control.config_editor import read_entries, read_entry
    from storage.engine import create_engine, session_factory

    engine = create_engine(data_dir.db_path)
    try:
        sessions = session_factory(engine)
        action = args.config_action
        if action == "list":
            entries = await read_entries(sessions)
            _warn(entries)
            print(format_settings_table(entries), end="")
        elif action == "get":
            entry = await read_entry(sessions, args.key)
            _warn([entry])
            print(_value(entry))
        else:
            assert password is not None
            code = await _set(sessions, args, password)
            if code != 0:
                return code
    finally:
        await engine.dispose()
    sys.stdout.flush()
    return 0


async def _set(sessions: Any, args: argparse.Namespace, password: str) -> int:
    from control.accounts import AccountService
    from control.config_editor import (
        WHEN_APPLIED,
        ConfigChangeRefused,
        change_setting,
        format_value,
        read_entry,
    )
    from control.terminal import detect_terminal

    terminal = detect_terminal()
    try:
        shown: SettingEntry | None = await read_entry(sessions, args.key)
    except ConfigChangeRefused:
        shown = None  # an unknown key: refused (and audited) by change_setting
    accounts = AccountService(sessions=sessions, terminal=terminal)
    login = await accounts.login(args.user, password, context="config_set")
    if not login.ok:
        return fail(f"config set: {login.message}")
    done = await change_setting(
        sessions,
        args.key,
        args.value,
        admin=args.user,
        reason=args.reason,
        expected=shown.value if shown is not None else None,
        terminal=terminal,
    )
    unit = shown.spec.unit if shown is not None else ""
    print(f"config {done.key}: {format_value(done.old)} -> {format_value(done.new)} {unit}")
    print(WHEN_APPLIED)
    return 0


def _value(entry: SettingEntry) -> str:
    from control.config_editor import format_value
    from tui.safe_text import escape_controls

    return escape_controls(format_value(entry.value))


def format_settings_table(entries: list[SettingEntry]) -> str:
    """The ``tosca config list`` table: a header and one line per setting (``!`` after a value the model
    refuses in the database: its default is shown and used)."""
    from control.config_editor import format_value
    from tui.safe_text import escape_controls

    header = ("KEY", "VALUE", "DEFAULT", "UNIT", "MEANING")
    rows = [header]
    for entry in entries:
        value = escape_controls(format_value(entry.value)) + (" !" if entry.problem is not None else "")
        rows.append((entry.key, value, format_value(entry.spec.default), entry.spec.unit, entry.spec.meaning))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"
