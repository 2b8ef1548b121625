"""``tosca [--data-dir DIR] [--sim] [--kiosk]``: start the console.

Start-up, in order: make sure the data directory exists; share the console lock (several consoles run on one
data directory at once; maintenance that replaces the database is refused while one runs, and a console is
refused while maintenance runs); then run the Textual app built by
:func:`tui.app.make_app`. The database is brought to the current schema (an existing database is backed up
first, see :func:`storage.maintenance.upgrade`) by the app, in a thread, once its first screen is drawn: the
upgrade loads Alembic and SQLAlchemy, which take longer than the rest of the start. When the file cannot even
say whether it has an administrator (:func:`storage.probe.needs_first_admin`: no schema, a damaged file) the
upgrade is done before the app starts instead, so that a damaged database stops the start with one line. A
failed upgrade ends the console with exit code 1 and the reason. The lock is held until the console closes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from control.terminal import may_draw_graphics
from storage.errors import StorageError
from storage.locks import share_console_lock
from storage.paths import DataDir
from storage.probe import needs_first_admin
from tui.commands import fail, start_failure
from tui.settings import ConsoleSettings


def settings_from_args(args: argparse.Namespace) -> ConsoleSettings:
    """The console settings given on the command line."""
    # Absolute, so the home screen and the logs name the database unambiguously.
    data_dir = Path(args.data_dir).expanduser().absolute()
    sim, kiosk = bool(args.sim), bool(args.kiosk)
    # On the kiosk systemd runs the controller for the real rig: the console only connects to it. Elsewhere
    # the console starts a simulated rig's controller when none is running.
    controller: Literal["connect", "start"] = "connect" if kiosk and not sim else "start"
    return ConsoleSettings(data_dir=data_dir, sim=sim, kiosk=kiosk, controller=controller)


class Start(NamedTuple):
    """What :func:`prepared_console` found: the plain query's answer (None: it could not tell, and the
    upgrade was done at once) and the upgrade still to be done by the app after its first frame."""

    first_run: bool | None
    pending_upgrade: Callable[[], object] | None


@contextlib.contextmanager
def prepared_console(settings: ConsoleSettings) -> Iterator[Start]:
    """Ensure the data directory and hold the console lock while the block runs. Asks the database whether
    it has an administrator (:func:`storage.probe.needs_first_admin`); when the file cannot tell, upgrades it
    here.

    Raises :class:`storage.errors.DatabaseInUseError` if maintenance holds the data directory, and
    :class:`storage.errors.StorageError` if an upgrade done here fails.
    """
    data_dir = DataDir(settings.data_dir).ensure()
    with share_console_lock(data_dir):
        pending = functools.partial(_upgrade, data_dir)
        first_run = needs_first_admin(data_dir.db_path)
        if first_run is None:
            pending()
            yield Start(None, None)
        else:
            yield Start(first_run, pending)


def _upgrade(data_dir: DataDir) -> None:
    from storage.maintenance import upgrade  # Alembic and SQLAlchemy: loaded when the upgrade runs

    upgrade(data_dir)


def run(args: argparse.Namespace) -> int:
    """Start the console; return its exit code (1 with a one-line reason if it cannot start)."""
    settings = settings_from_args(args)
    # Where the terminal may draw graphics it is asked while the app's modules load: the asking mostly waits
    # for answers (up to 0.1 s a question where none comes), and the waiting overlaps the loading. It must
    # be over before Textual takes the terminal. Elsewhere images are half-blocks and nothing is asked.
    graphics = None
    if settings.image_protocol == "auto" and may_draw_graphics():
        graphics = _start_graphics_probe()
    try:
        with prepared_console(settings) as start:
            from tui.app import make_app

            app = make_app(settings, prepare=start.pending_upgrade, first_run=start.first_run)
            if graphics is not None:
                graphics.join()
            elif settings.image_protocol == "auto":
                from tui.widgets.camera import use_halfblocks

                use_halfblocks()
            from tui.stop_key import SWITCH_INTERVAL_S

            sys.setswitchinterval(SWITCH_INTERVAL_S)  # F12's input thread gets the interpreter sooner
            app.run()
            if app.startup_error is not None:
                return fail(app.startup_error)
            return app.return_code or 0
    except (StorageError, OSError) as exc:
        return fail(start_failure(exc, settings.data_dir))
    finally:
        if graphics is not None:
            graphics.join()  # its questions answered before the shell gets the terminal back


def _start_graphics_probe() -> threading.Thread:
    def probe() -> None:
        from tui.widgets.camera import prepare_terminal_graphics

        prepare_terminal_graphics()

    thread = threading.Thread(target=probe, name="terminal graphics probe", daemon=True)
    thread.start()
    return thread
