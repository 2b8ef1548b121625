"""``tosca [--data-dir DIR] [--sim] [--kiosk]``: start the console.

Start-up, in order: make sure the data directory exists; take the console lock (a second console on the same
data directory is refused with the PID of the first); bring the database to the current schema (an existing
database is backed up first, see :func:`storage.maintenance.upgrade`); then run the Textual app built by
:func:`tui.app.make_app`. The lock is held until the console closes.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from control.settings import ConsoleSettings
from storage.errors import StorageError
from storage.locks import hold_console_lock
from storage.maintenance import upgrade
from storage.paths import DataDir
from tui.commands import fail


def settings_from_args(args: argparse.Namespace) -> ConsoleSettings:
    """The console settings given on the command line."""
    # Absolute, so the home screen and the logs name the database unambiguously.
    data_dir = Path(args.data_dir).expanduser().absolute()
    sim, kiosk = bool(args.sim), bool(args.kiosk)
    # On the kiosk systemd runs the controller for the real rig: the console only connects to it. Elsewhere
    # the console starts a simulated rig's controller when none is running.
    controller: Literal["connect", "start"] = "connect" if kiosk and not sim else "start"
    return ConsoleSettings(data_dir=data_dir, sim=sim, kiosk=kiosk, controller=controller)


@contextlib.contextmanager
def prepared_console(settings: ConsoleSettings) -> Iterator[ConsoleSettings]:
    """Ensure the data directory, hold the console lock and upgrade the database while the block runs.

    Raises :class:`storage.errors.DatabaseInUseError` if another console holds the data directory, and
    :class:`storage.errors.StorageError` if the database cannot be checked, backed up or upgraded.
    """
    data_dir = DataDir(settings.data_dir).ensure()
    with hold_console_lock(data_dir):
        upgrade(data_dir)
        yield settings


def run(args: argparse.Namespace) -> int:
    """Start the console; return its exit code (1 with a one-line reason if it cannot start)."""
    settings = settings_from_args(args)
    try:
        with prepared_console(settings):
            from tui.app import make_app

            app = make_app(settings)
            if settings.image_protocol == "auto":
                from tui.widgets.camera import prepare_terminal_graphics

                prepare_terminal_graphics()
            app.run()
            return app.return_code or 0
    except StorageError as exc:
        return fail(" ".join(str(exc).split()))
    except OSError as exc:
        return fail(f"cannot use the data directory {settings.data_dir}: {exc}")
