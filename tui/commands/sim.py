"""``tosca sim``: the simulated rig on ptys, driven by simulator commands on stdin.

Prints one JSON line naming the ports (``{"laser": ..., "tec": ..., "actuator": ..., "safety": ...,
"camera": "sim"}``), then reads one command per line from stdin (the language of DEVICES.md, "The simulated
rig") and answers each with one line, ``ok ...`` or ``error: <reason>``. Blank lines and lines starting with
``#`` are ignored. It stops cleanly (ptys closed, port names removed) at the end of stdin or on
SIGTERM/SIGINT, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from tui.commands import fail

if TYPE_CHECKING:
    from devices.sim.rig import SimRig


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sim`` sub-command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="simulated rig on ptys, driven by simulator commands on stdin",
        description=(
            "Start every device simulator on its own pty, print one JSON line naming the ports, then read "
            "simulator commands from stdin (pedal down|up, estop on|off, unplug laser, ...) until end of "
            "input."
        ),
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible noise and garbage")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the simulated rig until stdin ends or a termination signal arrives."""
    try:
        return asyncio.run(_serve(getattr(args, "seed", None)))
    except OSError as exc:
        return fail(f"sim: cannot start the simulated rig: {exc}")


def _answer(rig: SimRig, line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        return rig.command(text)
    except (RuntimeError, ValueError, OSError) as exc:
        return f"error: {exc}"


async def _serve(seed: int | None) -> int:
    loop = asyncio.get_running_loop()
    # Imported here, not at module level: every `tosca` command builds this parser, and the simulators
    # pull in OpenCV and numpy.
    from devices.sim.rig import SimRig

    rig = SimRig(seed=seed)
    await rig.start()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    fd = sys.stdin.fileno()
    reading = False
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        print(json.dumps(rig.ports()), flush=True)
        pending = bytearray()

        def handle(data: bytes) -> None:
            pending.extend(data)
            while b"\n" in pending:
                raw, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                reply = _answer(rig, raw.decode("utf-8", errors="replace"))
                if reply is not None:
                    print(reply, flush=True)

        def on_readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                handle(data)
                return
            if pending:
                handle(b"\n")
            stop.set()

        try:
            loop.add_reader(fd, on_readable)
            reading = True
        except PermissionError:
            # A regular file cannot be watched; it never blocks, so read it whole.
            with os.fdopen(os.dup(fd), "rb") as source:
                handle(source.read())
            if pending:
                handle(b"\n")
            stop.set()
        await stop.wait()
    finally:
        if reading:
            loop.remove_reader(fd)
        for sig in installed:
            loop.remove_signal_handler(sig)
        await rig.stop()
    return 0
