"""``tosca log``: the controller's log (``logs/controller.log`` in the data directory).

```
tosca log [--lines N] [--level LEVEL] [--follow]
```

Prints the last ``N`` lines (default 50) at ``LEVEL`` or more serious (DEBUG, INFO, WARNING, ERROR,
CRITICAL; lines that are not log records count as INFO). ``--follow`` then prints each new line as the
controller writes it, until interrupted (Ctrl+C ends it with exit 0); only what was appended is read, and a
log moved aside is followed into its new file. Control characters in a line are printed as escapes
(``\\x1b``), never sent to the terminal. Exit codes: 0 done, 1 no log file (without ``--follow``, which waits
for it), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tui.commands import fail

#: Lines printed before following, unless asked otherwise.
DEFAULT_LINES = 50
#: Seconds between two looks at the file while following.
POLL_S = 0.25


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``log`` sub-command to ``subparsers``; return its parser."""
    from storage.logfile import LEVELS

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "log",
        help="the controller's log: last lines, then new ones with --follow",
        description="Print the controller's log of the data directory.",
    )
    parser.add_argument(
        "--lines", "-n", type=_count, default=DEFAULT_LINES, metavar="N", help="last lines shown (default 50)"
    )
    parser.add_argument(
        "--level", type=str.upper, choices=LEVELS, default="DEBUG", help="this level or more serious only"
    )
    parser.add_argument("--follow", "-f", action="store_true", help="then print new lines as they come")
    return parser


def _show(lines: list[str], level: str) -> None:
    from storage.logfile import parse_line
    from tui.safe_text import escape_controls

    for text in lines:
        if parse_line(text).at_least(level):
            sys.stdout.write(escape_controls(text) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``tosca log``; return the exit code."""
    from storage.logfile import LogFollower, log_path

    path = log_path(Path(args.data_dir))
    if not path.is_file() and not args.follow:
        return fail(f"no controller log at {path}")
    with LogFollower(path) as follower:
        _show(follower.last_lines(args.lines), args.level)
        if not args.follow:
            return 0
        try:
            while True:
                time.sleep(POLL_S)
                _show(follower.new_lines(), args.level)
        except KeyboardInterrupt:
            return 0
