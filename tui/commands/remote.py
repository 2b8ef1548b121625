"""``tosca remote``: the remote console, which sshd starts for an engineer (``ForceCommand``, see kiosk/).

It runs as the engineer's own Unix user and reaches the controller only through ``observe.sock`` (the kernel
keeps that user off ``control.sock``); it reads the records database with the group's read permission and
has the controller record its login, logout and screen lock, with where it came from (:mod:`tui.remote`).

Start-up, in order: ask the controller over ``observe.sock`` which rig it drives (no controller, or a Unix
user outside the socket's group, ends the start with one line saying so); check the database can be read and
has an administrator (the first one is created at the kiosk); share the console lock; then run the console.
It upgrades nothing: the controller keeps the database at the current schema.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from tui.commands import fail

#: How long the start waits for the controller's first answer, s.
CONTROLLER_WAIT_S = 5.0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``remote`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "remote",
        help="the remote console over SSH: observe.sock only, nothing that arms",
        description=(
            "Run the console as a remote console: it talks to the controller through observe.sock only "
            "(no arming, no session, no stop key), asks for the TOSCA login, and has the controller record "
            "the login with the SSH client's address and the Unix user. sshd starts it for the remote group."
        ),
    )
    return parser


async def _controller_rig(observe: Path) -> bool:
    """Whether the controller answering on ``observe`` drives the simulated rig."""
    from control.ipc.client import ControllerClient
    from control.messages import Status

    async with await ControllerClient.connect(observe, timeout_s=CONTROLLER_WAIT_S) as client:
        status = await client.call(Status(), timeout_s=CONTROLLER_WAIT_S)
    return bool(status.get("sim"))


def run(args: argparse.Namespace) -> int:
    """Start the remote console; return its exit code (1 with a one-line reason if it cannot start)."""
    from control.ipc_errors import CommandFailed, ControllerUnavailable
    from storage.errors import StorageError
    from storage.locks import share_console_lock
    from storage.paths import DataDir
    from storage.probe import needs_first_admin
    from tui.link import OBSERVE_SOCKET
    from tui.remote import RemoteOrigin
    from tui.settings import ConsoleSettings

    data_dir = DataDir(Path(args.data_dir).expanduser().absolute())
    observe = data_dir.root / OBSERVE_SOCKET
    try:
        sim = asyncio.run(_controller_rig(observe))
    except ControllerUnavailable as exc:
        reason = str(exc)
        if "Permission denied" in reason:
            reason = f"{observe}: permission denied (the remote console's Unix user is not in its group)"
        return fail(f"remote: no controller to observe: {reason}")
    except (CommandFailed, TimeoutError) as exc:
        return fail(f"remote: the controller did not answer on {observe}: {exc or 'timed out'}")
    first_run = needs_first_admin(data_dir.db_path)
    if first_run is None:
        return fail(f"remote: cannot read the records database {data_dir.db_path}")
    if first_run:
        return fail("remote: no administrator yet: create the first one at the kiosk's console")
    settings = ConsoleSettings(
        data_dir=data_dir.root, sim=sim, kiosk=False, controller="connect", image_protocol="halfblock"
    )
    try:
        with share_console_lock(data_dir):
            from tui.app import make_app
            from tui.stop_key import SWITCH_INTERVAL_S
            from tui.widgets.camera import use_halfblocks

            use_halfblocks()
            app = make_app(settings, first_run=False, remote=RemoteOrigin.detect())
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            app.run()
            if app.startup_error is not None:
                return fail(app.startup_error)
            return app.return_code or 0
    except (StorageError, OSError) as exc:
        return fail(f"remote: {exc}")
