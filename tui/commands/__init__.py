"""Sub-commands of ``tosca``: one module each, with ``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TextIO


def add_data_dir_option(parser: argparse.ArgumentParser, *, default: object = argparse.SUPPRESS) -> None:
    """Give ``parser`` the ``--data-dir DIR`` option. Sub-command parsers keep the default SUPPRESS, so the
    value given before the sub-command (or the top-level default) is kept when the option is absent."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        metavar="DIR",
        help="data directory (default: $TOSCA_DATA_DIR or ./data)",
    )


def start_failure(exc: BaseException, data_dir: Path) -> str:
    """The one line that says why the console could not start on ``data_dir`` (its database could not be
    checked, backed up, upgraded or opened)."""
    from storage.errors import StorageError

    if isinstance(exc, StorageError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError):
        return f"cannot use the data directory {data_dir}: {exc}"
    return f"the database could not be opened: {type(exc).__name__}: {exc}"


def fail(message: str) -> int:
    """Print a one-line reason on stderr and return the "refused or failed" exit code."""
    print(f"tosca: {message}", file=sys.stderr)
    return 1


class PasswordInputError(Exception):
    """No usable password was given on standard input."""


def read_password(stream: TextIO, *, repeat: bool = False) -> str:
    """A password from ``stream``: on a terminal asked without echo (twice with ``repeat``, and the two must
    match); otherwise the first line, its line ending removed and nothing else.

    Raises:
        PasswordInputError: nothing on standard input, or the two typed differ.
    """
    if stream.isatty():
        first = getpass.getpass("Password: ", stream=sys.stderr)
        if repeat and getpass.getpass("Repeat password: ", stream=sys.stderr) != first:
            raise PasswordInputError("the two passwords differ")
        return first
    line = stream.readline()
    if not line:
        raise PasswordInputError("no password on standard input (give it as one line)")
    return line.removesuffix("\n").removesuffix("\r")


def schema_refusal(db_path: Path) -> str | None:
    """Why a command that reads and writes records cannot use the database at ``db_path`` (none there, or not
    at the current schema), or None when it can."""
    from storage.crypto_db import DatabaseKeyError
    from storage.errors import one_line
    from storage.maintenance import head_revision, schema_revision

    try:
        revision = schema_revision(db_path)
    except DatabaseKeyError as exc:
        return one_line(exc)
    if revision is None:
        return f"no database in {db_path.parent}; run 'tosca db upgrade' first"
    if revision != head_revision():
        return f"the database is at schema {revision}, not {head_revision()}; run 'tosca db upgrade'"
    return None
