"""The console's own figures: cold start, screen updates and CPU while treating, and stop key to output off.

Run::

    .venv/bin/python tests/bench/bench_console.py [--starts N] [--stops N] [--seconds S] [--json]

The arrangement is the real one (docs/architecture.md), three processes, and the console is the real ``tosca``
on a real pseudo-terminal (80x24 for the start, 120x40 while treating) whose output this process reads:

- **this process** runs the simulated rig (laser, TEC, actuator and safety board on ptys) and the operator's
  own client of ``control.sock`` (opens the session, arms with the password, presses the footpedal on the
  rig), and stamps every line reaching the laser simulator (``bench_safety.LaserWatch``);
- **child 1** is ``tosca controller --ports ports.json``, the controller process alone;
- **child 2** is the console, ``tosca --data-dir D``, connected to that controller.

Measurements:

- **cold start**: from starting ``tosca`` until its login screen ("Username") is on the terminal, median of
  ``--starts`` (default 5) starts; baseline in the same run: a minimal Textual app showing one label, started
  the same way with the same interpreter.
- **while treating** (``--seconds``, default 10): the technician logs in on the console, which opens the
  dashboard of the session being treated. Screen updates per second are the bursts of output the console
  writes to its terminal (writes separated by at least 2 ms of silence; Textual writes one burst per frame);
  the console's CPU is its user+system time over the same wall time, as a share of one core.
- **stop key**: treating, F12 is written to the console's terminal; the time until "output off" reaches the
  laser simulator. Repeated ``--stops`` times (default 30; after each the operator resumes and presses the
  pedal again). Baseline in the same run: the same stop sent by the operator's own client, with no console.

Exit code 0, or 1 with the reason when the run could not continue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_safety import (
    PASSWORD,
    STATE_TIMEOUT_S,
    USERNAME,
    BenchError,
    ControllerProcess,
    CpuMeter,
    LaserWatch,
    Operator,
    cpu_seconds,
    prepare_data_dir,
    run_tosca,
    summary,
    tosca_command,
)

from control.ipc.client import ControllerClient
from control.messages import Resume, Stop
from devices.sim.rig import SimRig
from tui.stop_key import send_stop

#: F12 as an xterm sends it.
F12 = b"\x1b[24~"
#: Silence that separates two frames on the console's terminal, s.
FRAME_GAP_S = 0.002
#: The baseline app: the smallest Textual app that shows a login-like label.
BASELINE_APP = """
from textual.app import App
from textual.widgets import Label
class Hello(App):
    def compose(self):
        yield Label("Username")
Hello().run()
"""


class PtyProgram:
    """A program on a pseudo-terminal of the given size; this process reads all it writes."""

    def __init__(
        self, argv: list[str], *, width: int, height: int, env: dict[str, str] | None = None
    ) -> None:
        self.argv = argv
        self.width = width
        self.height = height
        self.env = {**os.environ, "TERM": "xterm-256color", **(env or {})}
        self.master = -1
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = bytearray()
        self.started_at = 0.0
        self.bursts: list[float] = []
        self._last_read = 0.0
        self._changed = asyncio.Event()

    async def start(self) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", self.height, self.width, 0, 0))
        os.set_blocking(master, False)
        self.master = master
        self.started_at = time.monotonic()
        # Started from the loop on purpose: the start time is part of what is measured.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            self.argv, stdin=slave, stdout=slave, stderr=slave, env=self.env, start_new_session=True
        )
        os.close(slave)
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        now = time.monotonic()
        try:
            data = os.read(self.master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        if not data:
            return
        if now - self._last_read >= FRAME_GAP_S:
            self.bursts.append(now)
        self._last_read = now
        self.output += data
        if len(self.output) > 4_000_000:
            del self.output[:2_000_000]
        self._changed.set()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    async def wait_for(self, text: bytes, timeout_s: float, since: int = 0) -> float:
        """When ``text`` first appeared in the output after byte ``since`` (monotonic s)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output[since:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.proc is not None and self.proc.poll() is not None):
                tail = bytes(self.output[-400:]).decode(errors="replace")
                raise BenchError(f"{text!r} not shown by {self.argv[-1]} (output ends: {tail!r})")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.05)):
                    await self._changed.wait()
        return time.monotonic()

    async def stop(self) -> None:
        if self.master >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.master)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.write(b"\x11")  # Ctrl+Q
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10.0)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


async def cold_starts(argv: list[str], count: int, marker: bytes) -> list[float]:
    samples: list[float] = []
    for _ in range(count):
        program = PtyProgram(argv, width=80, height=24)
        await program.start()
        try:
            shown = await program.wait_for(marker, 30.0)
            samples.append(shown - program.started_at)
        finally:
            await program.stop()
    return samples


async def log_in(console: PtyProgram) -> None:
    await console.wait_for(b"Username", 30.0)
    await asyncio.sleep(1.0)  # the field takes the focus once the screen has mounted
    console.write(USERNAME.encode())
    await asyncio.sleep(0.5)
    console.write(b"\r")
    await asyncio.sleep(1.0)
    console.write(PASSWORD.encode())
    await asyncio.sleep(0.5)
    console.write(b"\r")


async def after_stop(op: Operator) -> None:
    """From PAUSED after a stop: release the pedal, wait until it is seen released, resume (ARMED)."""
    op.sim("pedal up")
    await op.fresh(
        lambda s: any(i.name == "footpedal" and not i.ok for i in s.interlocks), "the pedal seen released"
    )
    await op.command(Resume(), "resume")
    await op.snapshot(lambda s: s.state != "paused", "ARMED after resume")


async def stop_trials(
    op: Operator, watch: LaserWatch, count: int, stop: Callable[[], Awaitable[None]]
) -> list[float]:
    """``count`` times: treating, then ``stop()``; the time until "output off" reaches the laser simulator."""
    times: list[float] = []
    for _ in range(count):
        await op.treating(needed_s=5.0)
        off = watch.expect_off()
        t0 = time.monotonic()
        await stop()
        times.append(await asyncio.wait_for(off, 3.0) - t0)
        await op.snapshot(lambda s: s.state == "paused", "PAUSED after the stop")
        await after_stop(op)
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tosca-console-bench-"))
    results: dict[str, Any] = {}
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    rig = SimRig()
    controller: ControllerProcess | None = None
    client: ControllerClient | None = None
    watch: LaserWatch | None = None
    console: PtyProgram | None = None
    try:
        say(f"data directory {root}")
        protocol_name = await prepare_data_dir(root, 280.0)
        # An administrator exists, so the console opens on its login screen (not "create the first admin").
        await run_tosca(
            [
                *(
                    "user",
                    "add",
                    "--username",
                    "bench.admin",
                    "--full-name",
                    "Bench Admin",
                    "--role",
                    "admin",
                ),
                *("--data-dir", str(root)),
            ],
            stdin=PASSWORD + "\n",
        )
        await rig.start()
        watch = LaserWatch(rig.devices["laser"], rig.laser)
        ports_file = root / "ports.json"
        ports = dict(rig.ports())
        ports["camera"] = "sim"
        ports_file.write_text(json.dumps(ports), encoding="utf-8")
        controller = ControllerProcess(ports_file, root, root / "controller-bench.log")
        await controller.start()
        say("controller ready")
        console_argv = [*tosca_command(), "--data-dir", str(root)]

        say(f"cold start: {args.starts} starts of the console and of a minimal Textual app")
        baseline_argv = [sys.executable, "-c", BASELINE_APP]
        results["cold start: minimal Textual app (baseline)"] = summary(
            await cold_starts(baseline_argv, args.starts, b"Username")
        )
        results["cold start: tosca to the login screen"] = summary(
            await cold_starts(console_argv, args.starts, b"Username")
        )

        client = await ControllerClient.connect(root / "control.sock", timeout_s=10.0)
        await client.wait_snapshot(lambda s: True, STATE_TIMEOUT_S)
        op = Operator(client, rig, watch, protocol_name)

        say(f"stop sent by the operator's own client (baseline): {args.stops} trials")

        async def on_the_client() -> None:
            await client.call(Stop(), timeout_s=5.0)

        results["stop command from a client -> output off (baseline)"] = summary(
            await stop_trials(op, watch, args.stops, on_the_client)
        )

        say(f"stop on a new connection, as the console's stop key sends it: {args.stops} trials")

        async def on_a_new_connection() -> None:
            reply = await asyncio.to_thread(send_stop, root / "control.sock")
            if not reply.ok:
                raise BenchError(f"stop refused: {reply.error}")

        results["stop on a new connection -> output off"] = summary(
            await stop_trials(op, watch, args.stops, on_a_new_connection)
        )

        await op.treating(needed_s=args.seconds + 10.0)
        console = PtyProgram(console_argv, width=120, height=40)
        await console.start()
        await log_in(console)
        await console.wait_for(b"LASER EMISSION", 30.0)
        await asyncio.sleep(1.0)
        assert console.proc is not None
        say(f"treating with the console on the dashboard: {args.seconds:g} s")
        first_burst = len(console.bursts)
        cpu0, wall0 = cpu_seconds(console.proc.pid), time.monotonic()
        meter = CpuMeter({"controller": controller.proc.pid if controller.proc else None})
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - wall0
        frames = len(console.bursts) - first_burst
        treating = op.latest().state == "treating"
        results["while treating"] = {
            "screen_updates_per_s": round(frames / wall, 1),
            "console_cpu_percent": round((cpu_seconds(console.proc.pid) - cpu0) / wall * 100.0, 1),
            "still_treating": treating,
            **meter.shares(),
        }

        say(f"stop key on the console: {args.stops} trials")
        terminal = console

        async def with_the_key() -> None:
            terminal.write(F12)

        results["F12 on the console -> output off"] = summary(
            await stop_trials(op, watch, args.stops, with_the_key)
        )
        results["_run"] = {
            "sessions_opened": op.sessions_opened,
            "unplanned_faults": dict(op.unplanned),
            "refused_commands": dict(op.refusals),
            "loadavg_1min": round(os.getloadavg()[0], 2),
        }
        await op.end_session("benchmark finished")
    finally:
        if console is not None:
            await console.stop()
        if client is not None:
            await client.close()
        if controller is not None:
            await controller.stop()
        if watch is not None:
            watch.detach()
        await rig.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"{'measurement':<52} {'n':>4} {'median':>9} {'p99':>9} {'max':>9}")
    for name, figures in results.items():
        if name.startswith("_") or "median_ms" not in figures:
            continue
        print(
            f"{name:<52} {figures['n']:>4} {figures['median_ms']:>7.1f}ms {figures['p99_ms']:>7.1f}ms "
            f"{figures['max_ms']:>7.1f}ms"
        )
    for name in ("while treating", "_run"):
        if name in results:
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in results[name].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--starts", type=int, default=5, help="cold starts of each program (default 5)")
    parser.add_argument("--stops", type=int, default=30, help="stop trials of each kind (default 30)")
    parser.add_argument("--seconds", type=float, default=10.0, help="treating time measured (default 10)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--json", action="store_true", help="print one JSON line after the table")
    args = parser.parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_console: {exc}", file=sys.stderr)
        return 1
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
