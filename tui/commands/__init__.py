"""Sub-commands of ``tosca``: one module each, with ``register(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


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
