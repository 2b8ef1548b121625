"""Round-trip latency of each device driver over a pty, against the simulated rig in its own process.

Run: ``python tests/bench/bench_devices.py [--count N] [--json]`` (from the project root, in the venv).

What is measured (N round trips each, default 1000; median, p99 and max in milliseconds):

- ``pty echo (raw)``: the baseline. A separate process echoes lines on a pty; this process writes a line and
  blocks until the echo is back, with plain ``os.write``/``os.read`` and no asyncio, no driver and no parsing;
- ``laser *IDN?``: :meth:`LaserDriver.identify` (query, reply and strict identity parsing);
- ``tec TEC:T?``: :meth:`TecDriver.temperature_c`;
- ``actuator EPOS=?``: :meth:`ActuatorDriver.position_um`;
- ``safety GET_FOOTPEDAL``: :meth:`SafetyBoardDriver.footpedal`.

The simulated rig runs as ``tosca sim`` does (the same command module) in a child process, so each round trip
crosses two processes as with real hardware. Extra figures measured by other parts of the project are appended
when their modules exist: any ``tests/bench/bench_*.py`` module (other than this one) exposing
``async def device_figures() -> dict[str, dict[str, float]]`` is called and its rows are printed alongside.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import select
import statistics
import subprocess
import sys
import time
import tty
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devices.actuator import ActuatorDriver  # noqa: E402
from devices.laser import LaserDriver  # noqa: E402
from devices.safety import SafetyBoardDriver  # noqa: E402
from devices.safety import is_unsolicited as safety_unsolicited  # noqa: E402
from devices.tec import TecDriver  # noqa: E402
from devices.transport import LineTransport  # noqa: E402

SIM_CHILD = (
    "import argparse, sys\nfrom tui.commands import sim\nsys.exit(sim.run(argparse.Namespace(seed=1)))\n"
)

ECHO_CHILD = (
    "import os, sys, tty\n"
    "master, slave = os.openpty()\n"
    "tty.setraw(slave)\n"
    "print(os.ttyname(slave), flush=True)\n"
    "while True:\n"
    "    try:\n"
    "        data = os.read(master, 4096)\n"
    "    except OSError:\n"
    "        break\n"
    "    if not data or data == b'quit\\n':\n"
    "        break\n"
    "    os.write(master, data)\n"
)


def summary(samples_s: list[float]) -> dict[str, float]:
    """Median, p99 and max of round-trip times, in milliseconds."""
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    return {
        "n": float(len(ordered)),
        "median_ms": statistics.median(ordered) * 1000.0,
        "p99_ms": p99 * 1000.0,
        "max_ms": ordered[-1] * 1000.0,
    }


def raw_echo(count: int) -> dict[str, float]:
    """The baseline: a line to an echoing process over a pty and back, with blocking reads."""
    child = subprocess.Popen(
        [sys.executable, "-c", ECHO_CHILD], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)
            line = b"GET_FOOTPEDAL\n"
            samples: list[float] = []
            for _ in range(count):
                start = time.perf_counter()
                os.write(fd, line)
                got = b""
                while not got.endswith(b"\n"):
                    ready, _, _ = select.select([fd], [], [], 2.0)
                    if not ready:
                        raise TimeoutError("the echo process stopped answering")
                    got += os.read(fd, 4096)
                samples.append(time.perf_counter() - start)
            os.write(fd, b"quit\n")
        finally:
            os.close(fd)
        return summary(samples)
    finally:
        child.wait(timeout=10)


async def timed(count: int, call: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """Time ``count`` awaited calls after a few warm-up calls."""
    for _ in range(10):
        await call()
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return summary(samples)


async def driver_round_trips(count: int) -> dict[str, dict[str, float]]:
    """Each driver's round trip against the simulated rig in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SIM_CHILD,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    links: list[LineTransport] = []
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ports = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        laser_link = LineTransport("laser", ports["laser"], baudrate=38400, eol=b"\r\n")
        tec_link = LineTransport("tec", ports["tec"], baudrate=38400, eol=b"\r\n")
        act_link = LineTransport("actuator", ports["actuator"], baudrate=115200, eol=b"\n")
        safety_link = LineTransport(
            "safety", ports["safety"], baudrate=115200, eol=b"\n", is_unsolicited=safety_unsolicited
        )
        links = [laser_link, tec_link, act_link, safety_link]
        for link in links:
            await link.open()
        laser, tec = LaserDriver(laser_link), TecDriver(tec_link)
        actuator, safety = ActuatorDriver(act_link), SafetyBoardDriver(safety_link)
        await safety.start()
        try:
            results = {
                "laser *IDN?": await timed(count, laser.identify),
                "tec TEC:T?": await timed(count, tec.temperature_c),
                "actuator EPOS=?": await timed(count, actuator.position_um),
                "safety GET_FOOTPEDAL": await timed(count, safety.footpedal),
            }
        finally:
            await safety.close()
        return results
    finally:
        for link in links:
            await link.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def sibling_benchmarks() -> list[Path]:
    """The other ``bench_*.py`` files beside this one."""
    here = Path(__file__).resolve()
    return [path for path in sorted(here.parent.glob("bench_*.py")) if path != here]


async def other_figures(paths: list[Path]) -> dict[str, dict[str, float]]:
    """Rows from sibling benchmark modules that expose ``device_figures()``."""
    rows: dict[str, dict[str, float]] = {}
    for path in paths:
        spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        figures = getattr(module, "device_figures", None)
        if figures is not None:
            rows.update(await figures())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1000, help="round trips per device (default 1000)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    if args.count < 10:
        parser.error("--count must be at least 10")
    results = {"pty echo (raw)": raw_echo(args.count)}
    results.update(asyncio.run(driver_round_trips(args.count)))
    results.update(asyncio.run(other_figures(sibling_benchmarks())))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'round trip':<24} {'n':>6} {'median ms':>10} {'p99 ms':>9} {'max ms':>9}")
    for name, row in results.items():
        n, median, p99, worst = int(row["n"]), row["median_ms"], row["p99_ms"], row["max_ms"]
        print(f"{name:<24} {n:>6} {median:>10.3f} {p99:>9.3f} {worst:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
