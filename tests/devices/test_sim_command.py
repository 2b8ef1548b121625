"""``tosca sim`` as a subprocess: the JSON line of ports, answered commands, clean exit on EOF and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from devices.laser import LaserDriver
from devices.transport import LineTransport

ROOT = Path(__file__).resolve().parents[2]
# The real entry point (tui.cli.main: parser, dispatch, exit code), loading only the ``sim`` sub-command
# so the test does not depend on the other sub-commands' modules.
ENTRY = "import sys\nimport tui.cli as cli\ncli.COMMANDS = ('sim',)\nsys.exit(cli.main(sys.argv[1:]))\n"
COMMAND = [sys.executable, "-c", ENTRY, "sim", "--seed", "4"]


def exists(path: str) -> bool:
    """Whether a port name exists now (a plain check of the file system)."""
    return os.path.exists(path)


def resolved(path: str) -> str:
    """The pty a port name points at."""
    return os.path.realpath(path)


def test_json_line_commands_answered_and_clean_exit_on_eof() -> None:
    out = subprocess.run(
        COMMAND,
        cwd=ROOT,
        input="pedal down\nbogus thing\n\n# a comment\nunplug camera\nestop on",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    ports = json.loads(lines[0])
    assert set(ports) == {"laser", "tec", "actuator", "safety", "camera"}
    assert ports["camera"] == "sim"
    assert lines[1:] == [
        "ok pedal down",
        lines[2],
        "ok unplug camera",
        "ok estop on",
    ]
    assert lines[2].startswith("error: unknown command 'bogus'")
    for name in ("laser", "tec", "actuator", "safety"):
        assert not exists(ports[name]), f"{name} port left behind"


async def test_ports_work_and_sigterm_stops_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ports = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        link = LineTransport("laser", ports["laser"], baudrate=38400, eol=b"\r\n")
        await link.open()
        try:
            identity = await LaserDriver(link).identify()
            assert identity.model == "6310"
        finally:
            await link.close()
        proc.stdin.write(b"stall laser on\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ok stall laser on\n"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not exists(ports["laser"])
