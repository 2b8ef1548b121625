"""The ``tosca`` command line.

``tosca [--data-dir DIR] [--sim] [--kiosk] [--safety-board python|firmware]`` opens the console; the
sub-commands are thin wrappers over ``control``, ``devices`` and ``storage``. Exit codes: 0 success, 1 refused
or failed (one-line reason on stderr), 2 usage. Every ``tosca`` process first sets its umask to 027
(:func:`storage.paths.set_process_umask`): what it writes in the data directory (records, backups, logs,
session files) is never readable by other local users, whatever umask it was started with. Each sub-command
lives in its own module under :mod:`tui.commands`. Every module is loaded to build the parser, so each keeps
its module-level imports light and imports what it works with (Textual, the simulators, SQLAlchemy) inside
``run``. ``--safety-board firmware`` (also on ``tosca sim``, ``tosca sim run`` and ``tosca controller``) runs
the simulated rig with the safety board's C firmware under simavr instead of the Python simulator.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from storage.paths import set_process_umask
from tui.commands import add_data_dir_option

#: Sub-command name -> module under ``tui.commands`` with ``register(subparsers)`` and ``run(args) -> int``.
COMMANDS = (
    "db",
    "user",
    "sim",
    "controller",
    "protocol",
    "audit",
    "config",
    "calibration",
    "export",
    "log",
    "remote",
    "retention",
)


def default_data_dir() -> Path:
    return Path(os.environ.get("TOSCA_DATA_DIR") or "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tosca", description="TOSCA laser treatment console")
    add_data_dir_option(parser, default=None)
    parser.add_argument("--sim", action="store_true", help="run on the simulated rig (shown on screen)")
    parser.add_argument("--kiosk", action="store_true", help="locked-down console: no quit key, no palette")
    _add_safety_board_option(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"tui.commands.{name}")
        sub = module.register(subparsers)
        # Accept --data-dir after the sub-command too; the top-level value is used when it is absent.
        add_data_dir_option(sub)
        sub.set_defaults(_module=module)
        if name in ("sim", "controller"):
            _add_safety_board_option(sub)
            for action in sub._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for nested in action.choices.values():
                        _add_safety_board_option(nested)
    return parser


def _add_safety_board_option(parser: argparse.ArgumentParser) -> None:
    # argparse.SUPPRESS: an absent option leaves the value given before the sub-command in place.
    parser.add_argument(
        "--safety-board",
        choices=("python", "firmware"),
        default=argparse.SUPPRESS,
        help="simulated safety board: the Python simulator (default) or the C firmware under simavr",
    )


def _apply_safety_board(args: argparse.Namespace) -> None:
    """The simulated rig reads the choice from the environment, so a controller the console starts (a child
    process) runs the same board."""
    choice = getattr(args, "safety_board", None)
    if choice is not None:
        os.environ["TOSCA_SIM_SAFETY_BOARD"] = choice


def main(argv: Sequence[str] | None = None) -> int:
    set_process_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    _apply_safety_board(args)
    module = getattr(args, "_module", None)
    try:
        if module is None:
            from tui.commands import console

            return console.run(args)
        return int(module.run(args))
    except KeyboardInterrupt:
        print("tosca: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
