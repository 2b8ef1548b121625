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


def fail(message: str) -> int:
    """Print a one-line reason on stderr and return the "refused or failed" exit code."""
    print(f"tosca: {message}", file=sys.stderr)
    return 1
