"""``tosca sim``: the simulated rig on ptys, driven by simulator commands on stdin.

Prints one JSON line naming the ports (``{"laser": ..., "tec": ..., "actuator": ..., "safety": ..., "camera":
"sim"}``), then reads one command per line from stdin (the language of docs/devices.md, "The simulated rig")
and answers each with one line, ``ok ...`` or ``error: <reason>``. Blank lines and lines starting with ``#``
are ignored. It stops cleanly (ptys closed, port names removed) at the end of stdin or on SIGTERM/SIGINT, and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.commands import add_data_dir_option, fail

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
    actions = parser.add_subparsers(dest="sim_action", metavar="ACTION")
    run_parser = actions.add_parser(
        "run",
        help="a whole simulated treatment session, headless and recorded",
        description=(
            "Run PROTOCOL (a protocol name in the database, or a protocol JSON file) for the subject CODE on "
            "the simulated rig, as USERNAME, whose password is read from stdin. A name runs the protocol's "
            "newest approved version (refused when it has none), or with --draft its newest draft; a file is "
            "stored as the next version of the protocol named by its stem and tried as a draft. A draft run "
            "is said so and recorded so. The subject is created if "
            "absent. A scripted operator arms once the pre-checks pass and holds the footpedal down unless "
            "the script says otherwise; script lines are '<seconds> <simulator command>', seconds from the "
            "start of treatment. Prints the summary; exit 0 when the protocol completed, 1 with the reason "
            "when it was aborted or faulted."
        ),
    )
    run_parser.add_argument("protocol", metavar="PROTOCOL")
    run_parser.add_argument("--subject", required=True, metavar="CODE", help="subject code, P-YYYY-NNNN")
    run_parser.add_argument("--user", required=True, metavar="USERNAME", help="the technician")
    run_parser.add_argument("--script", type=Path, default=None, metavar="FILE", help="simulator commands")
    run_parser.add_argument(
        "--draft",
        action="store_true",
        help="try the protocol's newest draft version instead of its approved one (recorded as a draft)",
    )
    add_data_dir_option(run_parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the simulated rig until stdin ends or a termination signal arrives (or ``sim run``)."""
    if getattr(args, "sim_action", None) == "run":
        return _run_session(args)
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


def _run_session(args: argparse.Namespace) -> int:
    """``tosca sim run``: read the password, run the session, print the summary."""
    from control.simrun import ScriptError, parse_script

    script_text = ""
    if args.script is not None:
        try:
            script_text = args.script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return fail(f"sim run: cannot read the script {args.script}: {exc}")
    try:
        script = parse_script(script_text)
    except ScriptError as exc:
        return fail(f"sim run: {exc}")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        return fail("sim run: no password on stdin")
    try:
        result = asyncio.run(_session(args, password, script))
    except Exception as exc:
        from control.supervisor import Refused
        from devices.rig import RigError

        if isinstance(exc, Refused | RigError | OSError):
            return fail(f"sim run: {exc}")
        raise
    summary = result.summary
    labels = (
        ("status", "status", ""),
        ("abort_reason", "abort reason", ""),
        ("duration_seconds", "session duration", " s"),
        ("laser_on_time_s", "laser-on time", " s"),
        ("avg_power_w", "average power", " W"),
        ("max_power_w", "maximum power", " W"),
        ("energy_j", "delivered energy", " J"),
        ("event_count", "treatment events", ""),
        ("safety_event_count", "safety log rows", ""),
        ("telemetry_path", "telemetry", ""),
        ("telemetry_line_count", "telemetry lines", ""),
        ("telemetry_sha256", "telemetry sha256", ""),
    )
    for key, label, unit in labels:
        value = summary.get(key)
        if value is None:
            continue
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{label}: {shown}{unit}", flush=True)
    if result.exit_code != 0:
        return fail(f"sim run: session {result.session_id} {result.status}: {result.reason}")
    return 0


async def _session(args: argparse.Namespace, password: str, script: Any) -> Any:
    from control.simrun import run_simulated_session

    return await run_simulated_session(
        Path(args.data_dir),
        protocol=args.protocol,
        subject_code=args.subject,
        username=args.user,
        password=password,
        script=script,
        say=lambda line: print(line, flush=True),
        draft=bool(getattr(args, "draft", False)),
    )
