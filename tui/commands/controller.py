"""``tosca controller``: the controller process alone (devices, supervisor, engine, recorder, sockets).

``--sim`` runs it on a simulated rig in the same process; ``--ports FILE`` names the serial ports of a rig
(a JSON object such as ``tosca sim`` prints: laser, tec, actuator, safety, and camera: a device index, a
video file, ``"sim"``, or null for no camera; every entry is required, see :func:`rig_config_from_ports`).
It prints one line when its sockets are ready and runs until SIGTERM or SIGINT, then switches the laser off,
closes any open session as aborted and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.logfile import IsoFormatter, attach_log_file
from tui.commands import fail

if TYPE_CHECKING:
    from devices.rig import RigConfig


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``controller`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "controller",
        help="the controller process alone (what the kiosk's service runs)",
        description="Run the controller: devices, safety supervisor, protocol engine and the sockets.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="run on a simulated rig in this process")
    where.add_argument("--ports", type=Path, metavar="FILE", help="JSON file naming the rig's serial ports")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run until a termination signal arrives."""
    from control.supervisor import Refused
    from devices.rig import RigError
    from storage.errors import StorageError

    config = None
    if args.ports is not None:
        try:
            config = rig_config_from_ports(json.loads(args.ports.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            return fail(f"controller: bad port file {args.ports}: {exc}")
    log_to_stderr()
    attach_log_file(Path(args.data_dir))
    priority = raise_priority()
    try:
        return asyncio.run(_serve(Path(args.data_dir), bool(args.sim), config, priority))
    except (RigError, Refused, OSError, RuntimeError, StorageError) as exc:
        return fail(f"controller: {exc}")


#: The name of the controller's standard-error log handler.
_LOG_HANDLER = "tosca-controller-stderr"


def log_to_stderr() -> None:
    """Informational lines and above, with their time (ISO 8601, UTC), level and source, on standard error:
    the kiosk's service hands them to the journal, and a controller started by a console writes them to
    ``logs/controller.log``; a controller whose standard error is elsewhere writes that file too
    (:func:`storage.logfile.attach_log_file`). A device that drops its link, reconnects or answers badly, a
    fault latched or reset, and a session opened or ended are named there."""
    root = logging.getLogger()
    if any(getattr(handler, "name", None) == _LOG_HANDLER for handler in root.handlers):
        return  # already set up in this process (a second ``run`` in the same interpreter)
    handler = logging.StreamHandler()
    handler.set_name(_LOG_HANDLER)
    handler.setFormatter(IsoFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("aiosqlite", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def rig_config_from_ports(ports: object) -> RigConfig:
    """The rig named by a port file's JSON: each serial device's port (a non-empty string) and the camera
    (a device index, a video file, ``"sim"``, or null for no camera). Every entry must be there, and nothing
    else: a rig's file that forgot the camera must not get the simulated one.

    Raises:
        ValueError: saying which entry is missing, unknown or of the wrong kind.
    """
    from devices.camera import parse_camera_spec
    from devices.rig import SERIAL_DEVICES, RigConfig

    if not isinstance(ports, dict):
        raise ValueError("not a JSON object")
    expected = (*SERIAL_DEVICES, "camera")
    unknown = sorted(str(name) for name in ports if name not in expected)
    if unknown:
        raise ValueError(f"unknown entries {', '.join(unknown)} (expected {', '.join(expected)})")
    missing = [name for name in expected if name not in ports]
    if missing:
        hint = ""
        if "camera" in missing:
            hint = '; camera is a device index, a video file, "sim", or null for none'
        raise ValueError(f"no entry for {', '.join(missing)}{hint}")
    bad = [name for name in SERIAL_DEVICES if not isinstance(ports[name], str) or not ports[name].strip()]
    if bad:
        raise ValueError(f"the port of {', '.join(bad)} must be a device path")
    camera = ports["camera"]
    if camera is not None:
        parse_camera_spec(camera)  # ValueError saying what is wrong with it
    config = RigConfig.from_ports(
        {name: ports[name] for name in SERIAL_DEVICES}, with_camera=camera is not None
    )
    return config if camera is None else dataclasses.replace(config, camera=str(camera))


#: The controller's scheduling priority (nice value) when the system grants it: it is the process that turns
#: the laser off, and a reading over 100 ms old is a fault, so it must not wait behind the console's drawing
#: or anything else on the machine. Raising it needs root or CAP_SYS_NICE.
CONTROLLER_NICE = -10


def raise_priority() -> str:
    """Ask for :data:`CONTROLLER_NICE`, before any thread starts (threads inherit it); say what came of it."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current <= CONTROLLER_NICE:
            return f"scheduling priority: nice {current}"
        os.setpriority(os.PRIO_PROCESS, 0, CONTROLLER_NICE)
    except OSError as exc:
        return f"scheduling priority: left at nice {os.getpriority(os.PRIO_PROCESS, 0)} ({exc.strerror})"
    return f"scheduling priority: nice {CONTROLLER_NICE}"


#: The interpreter's thread switch interval in the controller process, s (Python's default is 5 ms). The
#: camera threads share the interpreter with the loop; a short interval lets the loop take it back within
#: 0.5 ms when a safety event arrives.
SWITCH_INTERVAL_S = 0.0005


async def _serve(data_dir: Path, sim: bool, config: Any, priority: str) -> int:
    import sys

    from control.controller import Controller

    sys.setswitchinterval(SWITCH_INTERVAL_S)

    controller = Controller(data_dir, sim=sim, rig_config=config, terminal="controller")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await controller.start()
        print(f"controller ready: {controller.data.root} ({priority})", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await controller.close()
    return 0
