"""``tosca user``: add, list, unlock, deactivate and reactivate console users, and change their role.

```
tosca user add --username U --full-name NAME --role ROLE   password on stdin (one line); asked twice on a tty
tosca user list                                            the users: name, role, active, lockout, last login
tosca user set-password U                                  new password on stdin, as for add; the user is
                                                           asked to change it at the next login
tosca user unlock U                                        clear a lockout after failed logins
tosca user deactivate U                                    the account stays in the records but cannot log in
tosca user reactivate U                                    a deactivated account can log in again
tosca user role U ROLE                                     technician, engineer or admin; the last active
                                                           admin is never demoted
```

The password is never taken from the command line (it would show in the process list and the shell history).
The command acts as the operating system user running it: whoever can write the data directory
administers its accounts. Every change is written to the audit trail with that user (``details.os_user``)
and the terminal. Success prints one line (or the table) on stdout and exits 0; a refusal prints
``tosca: <reason>`` on stderr and exits 1. This module does not import Textual.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.commands import PasswordInputError, add_data_dir_option, fail, read_password, schema_refusal

if TYPE_CHECKING:
    from control.accounts import UserInfo
    from storage.paths import DataDir

ACTIONS = ("add", "list", "set-password", "unlock", "deactivate", "reactivate", "role")
#: Roles offered by ``--role`` (the same as :data:`storage.ROLES`, spelled out so the parser loads quickly).
ROLE_CHOICES = ("technician", "engineer", "admin")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``user`` sub-command (and its actions) to ``subparsers``; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "user",
        help="console users: add | list | set-password U | unlock U | deactivate U | reactivate U | role U R",
        description="Manage the console's user accounts (as the operating system user running this).",
    )
    actions = parser.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user; the password is read from stdin")
    add.add_argument("--username", required=True, metavar="U", help="2-32 lower-case letters, digits, . _ -")
    add.add_argument("--full-name", required=True, metavar="NAME", help="the name shown in records")
    add.add_argument("--role", required=True, choices=ROLE_CHOICES, help="technician, engineer or admin")
    listing = actions.add_parser("list", help="every user, with lockouts and last login")
    set_password = actions.add_parser(
        "set-password", help="set a user's password (read from stdin); they change it at next login"
    )
    set_password.add_argument("username", metavar="U")
    unlock = actions.add_parser("unlock", help="clear a user's lockout")
    unlock.add_argument("username", metavar="U")
    deactivate = actions.add_parser("deactivate", help="stop a user from logging in (the record stays)")
    deactivate.add_argument("username", metavar="U")
    reactivate = actions.add_parser("reactivate", help="let a deactivated user log in again")
    reactivate.add_argument("username", metavar="U")
    role = actions.add_parser("role", help="give a user another role (the last active admin stays admin)")
    role.add_argument("username", metavar="U")
    role.add_argument("role", choices=ROLE_CHOICES, metavar="ROLE", help="technician, engineer or admin")
    for sub in (add, listing, set_password, unlock, deactivate, reactivate, role):
        add_data_dir_option(sub)
    return parser


def os_user_name() -> str:
    """The operating system user running the command (falls back to the numeric uid)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def run(args: argparse.Namespace) -> int:
    """Run the ``user`` action named in ``args`` on ``args.data_dir``; return the exit code."""
    from control.accounts import AccountError
    from storage.errors import StorageError
    from storage.paths import DataDir

    data_dir = DataDir(Path(args.data_dir))
    action = args.user_action
    if action not in ACTIONS:
        return fail(f"unknown user action {action!r} (expected one of {', '.join(ACTIONS)})")
    try:
        refusal = schema_refusal(data_dir.db_path)
        if refusal is not None:
            return fail(refusal)
        password: str | None = None
        if action in ("add", "set-password"):
            password = read_password(sys.stdin, repeat=True)
        return asyncio.run(_run(data_dir, args, password))
    except PasswordInputError as exc:
        return fail(str(exc))
    except AccountError as exc:
        return fail(str(exc))
    except (StorageError, OSError) as exc:
        return fail(f"user {action} failed: {' '.join(str(exc).split())}")


async def _run(data_dir: DataDir, args: argparse.Namespace, password: str | None) -> int:
    from control.accounts import AccountService, Actor
    from control.terminal import detect_terminal
    from storage.engine import create_engine, session_factory

    terminal = detect_terminal()
    actor = Actor.command_line(os_user_name(), terminal)
    engine = create_engine(data_dir.db_path)
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal=terminal)
        action = args.user_action
        if action == "add":
            if password is None:
                raise PasswordInputError("no password given")
            user = await accounts.create_user(args.username, args.full_name, args.role, password, actor)
            print(f"user {user.username} added ({user.role})")
        elif action == "list":
            print(format_user_table(await accounts.list_users(), accounts.clock()), end="")
        elif action == "set-password":
            if password is None:
                raise PasswordInputError("no password given")
            user = await accounts.set_password(args.username, password, actor)
            print(f"password of {user.username} set; it must be changed at the next login")
        elif action == "unlock":
            user = await accounts.unlock(args.username, actor)
            print(f"user {user.username} unlocked")
        elif action == "deactivate":
            user = await accounts.deactivate(args.username, actor)
            print(f"user {user.username} deactivated")
        elif action == "reactivate":
            user = await accounts.reactivate(args.username, actor)
            print(f"user {user.username} reactivated")
        else:
            before = await accounts.get_user(args.username)
            user = await accounts.change_role(args.username, args.role, actor)
            was = f" (was {before.role})" if before is not None else ""
            print(f"user {user.username} is now {user.role}{was}")
    finally:
        await engine.dispose()
    sys.stdout.flush()
    return 0


def format_user_table(users: list[UserInfo], now: datetime) -> str:
    """The ``tosca user list`` table: one header line and one line per user (times in local time)."""
    from control.clock import format_local

    header = ("USERNAME", "FULL NAME", "ROLE", "ACTIVE", "LOCKED UNTIL", "LAST LOGIN")
    rows = [header]
    for user in users:
        locked = format_local(user.locked_until) if user.locked_at(now) else "-"
        rows.append(
            (
                user.username,
                user.full_name,
                user.role,
                "yes" if user.is_active else "no",
                locked,
                format_local(user.last_login, empty="never"),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines) + "\n"
