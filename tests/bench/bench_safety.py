"""Safety reaction of the controller: a safety input on the simulated rig until "output off" reaches the laser
driver.

Run::

    .venv/bin/python tests/bench/bench_safety.py [--trials N] [--json]

Options: ``--trials N`` (default 1000) sets the trials of each measurement; ``--pedal-trials``,
``--estop-trials`` and ``--photodiode-trials`` override it for one; ``--photodiode-budget S`` stops the
photodiode trials after S seconds (the count reached is reported); ``--step-seconds S`` sets the protocol
step's length (default 280); ``--console pty|headless|none`` chooses the busy console (default pty);
``--camera sim|none`` gives the controller the simulated camera (default; its video is recorded during
sessions) or none; ``--keep`` keeps the data directory (with the controller's and the console's logs in
``bench-logs/``);
``--profile-loop`` times every callback of the controller's event loop (``loop_profile.py``) and lists
the ones over 0.3 ms (an edge that arrives meanwhile waits for them); ``--json`` prints one JSON line after
the table. Exit code 0, or 1 with the reason when the run could not
continue.

The arrangement is the real one of docs/architecture.md, "Inside the controller", three processes:

- **this process** runs the simulated rig (:class:`~devices.sim.rig.SimRig`: laser, TEC, actuator and safety
  board on ptys) on its event loop, and the operator's client of ``control.sock``
  (:class:`~control.ipc.client.ControllerClient`), which opens sessions, arms (key control: the technician's
  password) and resets faults as a console would;
- **child 1** is ``tosca controller --ports ports.json --data-dir D``, the controller process alone, driving
  the rig over the ptys;
- **child 2** is a busy console (``tests/bench/busy_console.py``): a Textual app connected to ``observe.sock``
  that redraws a dashboard-like screen on every frame (60 Hz) from the pushed snapshots, on a pty whose
  output it counts (``--console headless`` uses Textual's headless driver instead).

Both ends of every trial are timed in this process with ``time.monotonic()`` (CLOCK_MONOTONIC): the start
immediately before the simulator command, the end when the laser simulator receives a command line that
switches its output off (``LAS:OUT 0``, ``LASER:OUTPUT OFF``, ``;``-chained forms...). The laser
simulator's line handler is wrapped on its pty device: each received line is stamped on arrival, handed to
the simulator, and then replayed on a private probe copy of the laser simulator (its own physical model,
output on) to learn, with the simulator's own parser, whether the line switches the output off. The rig's
hardware layer (the board dropping LASER_ENABLE) also turns the simulated output off by itself; what is
measured here is the software layer, the controller's own reaction.

Measurements:

- **pedal release**: treating at 5 W, ``pedal up`` until the off line. Then ``pedal down`` again, wait until
  the laser simulator's output is on and the controller reports TREATING, repeat.
- **E-stop**: treating, ``estop on`` until the off line. The run then latches FAULT: ``estop off``, pedal
  released, ``reset_fault`` over ``control.sock`` with the technician's password, ``arm`` again, ``pedal
  down``, wait for output on.
- **photodiode fault**: treating at 5 W with the output settled (a snapshot at least 100 ms after the
  output came on, measured power within 10 % of commanded), ``photodiode gain 0.5`` (measured power 50 % low)
  until the off line. The supervisor requires the deviation to persist for 500 ms, counted from the last
  sample without it (so up to one 10 ms sample period before the gain changed), so the figure is reported
  both as measured and minus 500 ms (slightly negative when the last good sample came well before the
  change). Then gain 1.0, pedal up, reset, arm, pedal down.
- **baseline**: one line written to a raw pty master until the slave's reader on this loop has it, under the
  same load, as ``bench_push_latency.py`` does: first as a back-to-back burst before the trials, then
  ("baseline during the trials") one line every 20 ms for as long as the trials run, so that it meets what
  they meet (the burst lasts well under a second).
- **CPU while treating** (``--cpu-seconds``): the CPU share of each process (the controller, its camera
  process, the console, this process) over seconds of steady treatment, the session's video recording.

``--sched kiosk`` runs the controller as ``kiosk/tosca-controller.service`` does: ``chrt --reset-on-fork
--fifo 40`` (only its main thread real-time) and ``taskset`` to the last CPU, the console on the other CPUs,
and this process, which plays the hardware, at SCHED_FIFO 30 (real devices answer whatever the machine does).
It needs root. ``--sched desktop`` (default) starts them all normally.

The first trials of each measurement warm up and are not counted (20 for pedal and baseline, 3 for E-stop and
photodiode). Set-up: a fresh data directory (``tosca db upgrade``; a technician added with ``tosca user add``,
password on stdin; the simulated rig's factory calibrations; a protocol of one constant step of 280 s at
5 W, ring 3.0 mm). When the step has less treatment time left than the next trial needs, the session is
aborted with a reason and a new one opened.

Faults the trials do not cause (on a loaded machine, a device reading older than the supervisor's 100 ms
limit) are part of what this run shows: the operator side recovers from them as a technician would (inputs
back to normal, pedal released, reset with the password, armed again), the trial they disturb is not
counted, and the table ends with their descriptions and counts, with the CPU share of each process and the
machine's load average over the measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import tty
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from control.calibration import install_sim_calibrations_if_missing
from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed
from control.messages import (
    Abort,
    Arm,
    Authenticate,
    Command,
    OpenSession,
    Prechecks,
    PrechecksReply,
    ResetFault,
    Resume,
    Snapshot,
)
from control.protocol_approval import approve_as_system
from control.protocols import parse_protocol, protocol_type
from control.supervisor import PHOTODIODE_PERSISTENCE_S
from devices.sim.laser import LaserSim
from devices.sim.model import PhysicalModel
from devices.sim.pty import LineHandler, PtyDevice
from devices.sim.rig import SimRig
from storage import DataDir, create_engine, session_factory
from storage.repositories import ProtocolsRepository, UsersRepository

HERE = Path(__file__).resolve().parent
USERNAME = "bench.tech"
PASSWORD = "reaction-bench-7Qx!"
PROTOCOL_PREFIX = "bench_constant_5w"
POWER_W = 5.0
#: The protocol's one step, s of treatment (``--step-seconds``).
STEP_S = 280.0


def protocol(step_s: float) -> dict[str, Any]:
    """One constant step of ``step_s`` seconds at 5 W, ring 3.0 mm."""
    return {
        "version": "1.0",
        "steps": [
            {
                "step_number": 1,
                "duration_seconds": step_s,
                "power_start_watts": POWER_W,
                "power_end_watts": POWER_W,
                "ring_size_mm": 3.0,
                "ramp_type": "constant",
            }
        ],
        "safety_limits": {"max_power_watts": 6.0, "max_duration_seconds": math.ceil(step_s) + 20},
    }


#: Photodiode deviation must persist this long (s) before the supervisor faults.
PERSISTENCE_S = PHOTODIODE_PERSISTENCE_S
PEDAL_WARMUP = 20
FAULT_WARMUP = 3
#: Longest wait for one reaction (s); anything slower is a failure, not a figure.
REACTION_TIMEOUT_S = 3.0
#: Longest wait for a state, a snapshot or a command (s).
STATE_TIMEOUT_S = 10.0
CONTROLLER_START_TIMEOUT_S = 60.0
#: Attempts to get back to TREATING (each after an unplanned fault or a refusal) before giving up.
MAX_ATTEMPTS = 20
#: Emission must have been on this long (s) before the photodiode deviation is injected: past the
#: supervisor's 50 ms settling window, so the deviation is judged from the first sample.
SETTLE_S = 0.1
#: Words of the fault descriptions that identify the fault a trial causes.
ESTOP_MARKER = "E-stop"
PHOTODIODE_MARKER = "commanded for over"


class BenchError(RuntimeError):
    """The benchmark could not continue; the message says where."""


# ------------------------------------------------------------------------------------------ the laser watch
class LaserWatch:
    """Stands in for the laser simulator's line handler on its pty device and stamps what arrives.

    Every received line is stamped with ``time.monotonic()`` before the simulator sees it. Waiters from
    :meth:`expect_off` get the stamp of the next line that switches the output off; waiters from
    :meth:`expect_on` the stamp of the next line after which the simulated output is on.
    """

    def __init__(self, device: PtyDevice, laser: LaserSim) -> None:
        self.device = device
        self.laser = laser
        self.inner: LineHandler = device.handler
        model = PhysicalModel(seed=0)
        model.tec_output_on = True
        model.laser_enable = True
        self.probe = LaserSim(model)
        self.off_lines = 0
        self._off: list[asyncio.Future[float]] = []
        self._on: list[asyncio.Future[float]] = []
        device.handler = self

    def detach(self) -> None:
        """Give the pty device its own handler back."""
        self.device.handler = self.inner

    def switches_off(self, line: str) -> bool:
        """Whether ``line`` switches the output off, by the simulator's own parser on the probe copy."""
        if not self.probe.output_on:
            self.probe.handle_line("LAS:OUT 1")
        self.probe.handle_line(line)
        self.probe.errors.clear()
        return not self.probe.output_on

    def handle_line(self, line: str) -> list[str]:
        stamp = time.monotonic()
        replies = self.inner.handle_line(line)
        if self._off and self.switches_off(line):
            self.off_lines += 1
            self._resolve(self._off, stamp)
        if self._on and self.laser.output_on:
            self._resolve(self._on, stamp)
        return replies

    def handle_overlong(self) -> None:
        hook = getattr(self.inner, "handle_overlong", None)
        if callable(hook):
            hook()

    @staticmethod
    def _resolve(waiters: list[asyncio.Future[float]], stamp: float) -> None:
        for future in waiters:
            if not future.done():
                future.set_result(stamp)
        waiters.clear()

    def expect_off(self) -> asyncio.Future[float]:
        """A future for the arrival time of the next line that switches the output off."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._off.append(future)
        return future

    def expect_on(self) -> asyncio.Future[float]:
        """A future for the arrival time of the next line after which the output is on (at once if it is)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.laser.output_on:
            future.set_result(time.monotonic())
        else:
            self._on.append(future)
        return future


# ----------------------------------------------------------------------------------------------- statistics
def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """n, median, p90, p99, max and mean of ``samples_s`` (seconds), the times in ms."""
    ms = sorted(s * 1000.0 for s in samples_s)
    if not ms:
        return {"n": 0}

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100.0 * (len(ms) - 1)))]

    return {
        "n": len(ms),
        "median_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


# ---------------------------------------------------------------------------------------------- processes
def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time (s) used so far by process ``pid`` (this process for ``None``)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of each process of the arrangement over the measurements, as a share of one core."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.wall = time.monotonic()

    def shares(self) -> dict[str, float]:
        wall = max(time.monotonic() - self.wall, 1e-9)
        out = {
            f"{name}_cpu_percent": round((cpu_seconds(pid) - self.start[name]) / wall * 100.0, 1)
            for name, pid in self.pids.items()
        }
        out["wall_s"] = round(wall, 1)
        out["loadavg_1min"] = round(os.getloadavg()[0], 2)
        out["cpus"] = os.cpu_count() or 0
        return out


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (of every thread of it)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out.extend(int(child) for child in (task / "children").read_text().split())
    return out


#: SCHED_FIFO priority of the controller's main thread in the kiosk arrangement
#: (``kiosk/tosca-controller.service``) and of this process, which plays the hardware.
KIOSK_CONTROLLER_PRIORITY = 40
KIOSK_HARDWARE_PRIORITY = 30


def arrangement(sched: str) -> tuple[list[str], list[str], str]:
    """The command prefixes of the controller and of the console, and a description, for ``sched``.

    ``kiosk``: as ``kiosk/tosca-controller.service`` runs it, the controller at SCHED_FIFO 40 with
    reset-on-fork (only its main thread is real-time; its threads and children are not) pinned to the last
    CPU, the console pinned to the other CPUs. ``desktop``: no prefix (the controller asks for nice -10
    itself, which root gets).
    """
    if sched == "desktop":
        return [], [], "desktop: normal scheduling (the controller at nice -10, which it asks for)"
    cpus = sorted(os.sched_getaffinity(0))
    last, others = cpus[-1], cpus[:-1] or cpus
    controller = [
        "chrt",
        "--reset-on-fork",
        "--fifo",
        str(KIOSK_CONTROLLER_PRIORITY),
        "taskset",
        "--cpu-list",
        str(last),
    ]
    console = ["taskset", "--cpu-list", ",".join(str(c) for c in others)]
    return (
        controller,
        console,
        f"kiosk: controller SCHED_FIFO {KIOSK_CONTROLLER_PRIORITY} reset-on-fork on CPU {last}, console on "
        f"CPU {','.join(str(c) for c in others)}, the simulated hardware (this process) SCHED_FIFO "
        f"{KIOSK_HARDWARE_PRIORITY}",
    )


def tosca_command() -> list[str]:
    """The ``tosca`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("tosca")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui.cli"]


async def run_tosca(args: list[str], *, stdin: str | None = None) -> str:
    """Run one ``tosca`` command to completion; its stdout, or BenchError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *tosca_command(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(None if stdin is None else stdin.encode()), 120.0)
    if proc.returncode != 0:
        raise BenchError(f"tosca {' '.join(args)} failed ({proc.returncode}): {err.decode().strip()}")
    return out.decode()


class ControllerProcess:
    """``tosca controller --ports FILE --data-dir D`` as a child process."""

    def __init__(
        self,
        ports_file: Path,
        data_dir: Path,
        log_path: Path,
        prefix: Sequence[str] = (),
        profile: Path | None = None,
    ) -> None:
        self.ports_file = ports_file
        self.data_dir = data_dir
        self.log_path = log_path
        self.prefix = list(prefix)
        #: With a path: the controller runs under ``loop_profile.py``, which writes its report there.
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self._log = log_path.open("ab")
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait for its "controller ready" line."""
        tosca = (
            tosca_command()
            if self.profile is None
            else [sys.executable, str(HERE / "loop_profile.py"), str(self.profile)]
        )
        self.proc = await asyncio.create_subprocess_exec(
            *self.prefix,
            *tosca,
            "controller",
            "--ports",
            str(self.ports_file),
            "--data-dir",
            str(self.data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + CONTROLLER_START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"controller not ready within {CONTROLLER_START_TIMEOUT_S:g} s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise BenchError(f"controller exited before it was ready (see {self.log_path})")
            self._log.write(line)
            if line.startswith(b"controller ready:"):
                break
        self._drain = asyncio.create_task(self._copy_stdout(), name="controller-stdout")

    async def _copy_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self._log.write(line)

    async def stop(self) -> int | None:
        """SIGTERM, wait for it to close the session and exit; its exit code."""
        code: int | None = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(self.proc.wait(), 30.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        elif self.proc is not None:
            code = self.proc.returncode
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5.0)
        self._log.close()
        return code


class ConsoleProcess:
    """The busy console (``busy_console.py``) as a child process, talking over two pipes."""

    def __init__(self, observe_path: Path, mode: str, log_path: Path, prefix: Sequence[str] = ()) -> None:
        self.observe_path = observe_path
        self.mode = mode
        self.log_path = log_path
        self.prefix = list(prefix)
        self.proc: asyncio.subprocess.Process | None = None
        self.stats: dict[str, Any] | None = None
        self._stop_w = -1
        self._report: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        """Start it and wait until it has drawn its first snapshot."""
        stop_r, self._stop_w = os.pipe()
        report_r, report_w = os.pipe()
        loop = asyncio.get_running_loop()
        try:
            with self.log_path.open("ab") as log:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.prefix,
                    sys.executable,
                    str(HERE / "busy_console.py"),
                    "--socket",
                    str(self.observe_path),
                    "--stop-fd",
                    str(stop_r),
                    "--report-fd",
                    str(report_w),
                    "--mode",
                    self.mode,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(stop_r, report_w),
                )
        finally:
            os.close(stop_r)
            os.close(report_w)
        self._report = asyncio.StreamReader()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(self._report), os.fdopen(report_r, "rb", buffering=0)
        )
        line = await asyncio.wait_for(self._report.readline(), 60.0)
        if line.strip() != b"ready":
            raise BenchError(
                f"console did not start: {line.decode().strip() or 'no answer'} (see {self.log_path})"
            )

    async def stop(self) -> dict[str, Any] | None:
        """Ask it to exit; its statistics line (frames, snapshots, terminal bytes)."""
        if self._stop_w >= 0:
            os.close(self._stop_w)
            self._stop_w = -1
        if self._report is not None:
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(self._report.readline(), 30.0)
                text = line.decode().strip()
                if text.startswith("{"):
                    self.stats = json.loads(text)
                elif text:
                    raise BenchError(f"console: {text}")
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 30.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._transport is not None:
            self._transport.close()
        return self.stats


# -------------------------------------------------------------------------------------------------- set-up
async def prepare_data_dir(root: Path, step_s: float) -> str:
    """Schema, the technician, the simulated factory calibrations and the benchmark protocol (its name is
    returned)."""
    await run_tosca(["db", "upgrade", "--data-dir", str(root)])
    await run_tosca(
        [
            "user",
            "add",
            "--username",
            USERNAME,
            "--full-name",
            "Reaction Bench Technician",
            "--role",
            "technician",
            "--data-dir",
            str(root),
        ],
        stdin=PASSWORD + "\n",
    )
    data = DataDir(root)
    engine = create_engine(data.db_path)
    try:
        sessions = session_factory(engine)
        async with sessions() as db:
            user = await UsersRepository(db).get_by_username(USERNAME)
        if user is None:
            raise BenchError(f"user {USERNAME} was not created")
        await install_sim_calibrations_if_missing(sessions, user.tech_id)
        text = json.dumps(protocol(step_s), indent=2)
        defn = parse_protocol(text)
        name = f"{PROTOCOL_PREFIX}_{step_s:g}s"
        async with sessions() as db, db.begin():
            added = await ProtocolsRepository(db).add(
                name,
                protocol_type(defn),
                text,
                description=f"reaction benchmark: one constant step, {step_s:g} s at 5 W",
                created_by_tech_id=user.tech_id,
            )
            await approve_as_system(db, added.protocol_id)
    finally:
        await engine.dispose()
    return name


# ------------------------------------------------------------------------------------------------- trials
class Disturbed(Exception):
    """A trial was disturbed by a fault it did not cause; it is not counted."""


class Operator:
    """The operator's side over ``control.sock`` and the simulated rig's controls.

    Faults the trials did not cause (for example a device reading going stale under load) are recovered from
    as an operator would (safety inputs back to normal, pedal released, fault reset with the password, armed
    again) and counted in :attr:`unplanned`; a trial they disturb is not counted.
    """

    def __init__(self, client: ControllerClient, rig: SimRig, watch: LaserWatch, protocol_name: str) -> None:
        self.client = client
        self.protocol_name = protocol_name
        self.rig = rig
        self.watch = watch
        self.subject = f"P-{datetime.now().year}-9001"
        self.sessions_opened = 0
        self.subject_exists = False
        #: Unplanned faults by description (numbers replaced by N) -> count.
        self.unplanned: Counter[str] = Counter()
        #: Trials not counted because an unplanned fault disturbed them, by measurement.
        self.disturbed: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self._last_fault: tuple[str, str] | None = None

    def sim(self, command: str) -> None:
        self.rig.command(command)

    def latest(self) -> Snapshot:
        snap = self.client.latest_snapshot
        if snap is None:
            raise BenchError("no snapshot from the controller")
        return snap

    async def snapshot(self, predicate: Callable[[Snapshot], bool], what: str) -> Snapshot:
        try:
            return await self.client.wait_snapshot(predicate, STATE_TIMEOUT_S)
        except TimeoutError:
            latest = self.client.latest_snapshot
            state = "none" if latest is None else latest.state
            failing = (
                [] if latest is None else [f"{i.name}: {i.detail}" for i in latest.interlocks if not i.ok]
            )
            fault = None if latest is None or latest.fault is None else latest.fault.what
            raise BenchError(
                f"timed out waiting for {what} (state {state}; fault: {fault}; failing: {failing})"
            ) from None

    async def fresh(self, predicate: Callable[[Snapshot], bool], what: str) -> Snapshot:
        """The first snapshot taken after now that satisfies ``predicate``."""
        now = time.monotonic()
        return await self.snapshot(lambda s: s.time_s > now and predicate(s), what)

    def remaining_s(self, snap: Snapshot) -> float:
        """Treatment time (s) left in the open session's step; infinite while its first step has not started
        (the ring still moving into place), zero without a session."""
        if snap.session is None:
            return 0.0
        step = snap.session.step
        if step is None:
            return math.inf
        return step.duration_s - step.elapsed_s

    async def command(self, command: Command, what: str) -> bool:
        """Send an operator command; False (and counted) when the controller refuses it."""
        try:
            await self.client.call(command, timeout_s=60.0)
        except CommandFailed as exc:
            self.refusals[f"{what}: {_generic(exc.error)}"] += 1
            return False
        return True

    async def open_session(self) -> None:
        """Open a session and wait until every pre-check passes (READY)."""
        opened = await self.command(
            OpenSession(
                subject_code=self.subject,
                username=USERNAME,
                protocol_name=self.protocol_name,
                treatment_site="bench",
                create_subject=not self.subject_exists,
            ),
            "open_session",
        )
        if not opened:
            raise BenchError(f"session refused: {list(self.refusals)}")
        self.subject_exists = True
        self.sessions_opened += 1
        deadline = time.monotonic() + 30.0
        while True:
            reply = PrechecksReply.model_validate(await self.client.call(Prechecks(), timeout_s=30.0))
            failing = [f"{c.name}: {c.detail}" for c in reply.failing]
            if not failing:
                await self.fresh(lambda s: s.session is not None, "the new session in a snapshot")
                return
            if time.monotonic() > deadline:
                raise BenchError(f"pre-checks still failing: {failing}")
            await self.fresh(lambda s: True, "a snapshot between pre-checks")

    async def end_session(self, reason: str) -> None:
        self.sim("pedal up")
        await self.client.call(Abort(reason=reason), timeout_s=60.0)
        await self.snapshot(lambda s: s.session is None, "the session closed after the abort")

    def normal_inputs(self) -> None:
        """Every injected condition back to normal and the pedal released."""
        self.sim("estop off")
        self.sim("photodiode gain 1.0")
        self.sim("pedal up")

    async def reset(self) -> bool:
        """From FAULT: wait until its cause has cleared and the pedal is seen released, then reset."""
        await self.fresh(
            lambda s: s.state != "fault" or (s.fault is not None and s.fault.cause_cleared and _released(s)),
            "the fault's cause cleared and the pedal released",
        )
        if self.latest().state != "fault":
            return True
        if not await self.command(ResetFault(username=USERNAME, password=PASSWORD), "reset_fault"):
            return False
        await self.snapshot(lambda s: s.state != "fault", "the fault reset")
        return True

    async def treating(self, needed_s: float) -> float:
        """Get to TREATING with the output on, from wherever the run stands: recover from a fault, open a
        new session when the step has less than ``needed_s`` left, arm, wait for the step, press the pedal.
        Returns the arrival time of the line that switched the output on."""
        seen: list[str] = []
        for _ in range(MAX_ATTEMPTS):
            snap = self.latest()
            seen.append(snap.state if snap.session is not None else f"{snap.state} (no session)")
            if snap.state == "fault":
                self.note_fault(snap, None)
                self.normal_inputs()
                await self.reset()
                continue
            if snap.session is None or self.remaining_s(snap) < needed_s:
                if snap.session is not None:
                    await self.end_session("benchmark: step nearly used up, a new session follows")
                await self.open_session()
                continue
            if snap.state == "idle":
                # The session is being opened (the devices prepared, the ring homed): READY follows.
                await self.fresh(lambda s: s.state != "idle" or s.session is None, "READY after opening")
                continue
            if snap.state in ("treating", "paused"):
                self.sim("pedal up")
                if snap.state == "paused":
                    await self.command(Resume(), "resume")
                await self.fresh(lambda s: s.state not in ("treating", "paused"), "the pedal released")
                continue
            if snap.state == "ready":
                self.sim("pedal up")
                if await self.command(Arm(password=PASSWORD), "arm"):
                    await self.snapshot(lambda s: s.state != "ready", "ARMED")
                else:
                    await self.fresh(lambda s: True, "a snapshot after a refused arm")
                continue
            snap = await self.snapshot(
                lambda s: s.state != "armed" or any(i.name == "step" and i.ok for i in s.interlocks),
                "a protocol step active",
            )
            if snap.state != "armed":
                continue
            on = self.watch.expect_on()
            pressed = time.monotonic()
            self.sim("pedal down")
            snap = await self.snapshot(_emitting_after(pressed), "TREATING with the output on")
            if snap.state != "treating":
                on.cancel()
                continue
            try:
                t_on = await asyncio.wait_for(on, REACTION_TIMEOUT_S)
            except TimeoutError:
                continue
            snap = await self.snapshot(_emitting_after(t_on), "TREATING with the output on")
            if snap.state == "treating":
                return t_on
        raise BenchError(
            f"could not get to TREATING in {MAX_ATTEMPTS} attempts (states seen: {', '.join(seen)}); "
            f"unplanned faults: {dict(self.unplanned)}; refusals: {dict(self.refusals)}"
        )

    async def react(self, command: str) -> tuple[float, float]:
        """Send ``command`` to the rig; (its time, seconds until the controller's off line reached the
        laser)."""
        off = self.watch.expect_off()
        t0 = time.monotonic()
        self.sim(command)
        try:
            t_off = await asyncio.wait_for(off, REACTION_TIMEOUT_S)
        except TimeoutError:
            raise BenchError(f"no output-off line within {REACTION_TIMEOUT_S:g} s of {command!r}") from None
        return t0, t_off - t0

    async def expect_fault(self, t0: float, marker: str, measurement: str) -> None:
        """After a trial meant to fault: wait for FAULT; a fault of another kind disturbed the trial."""
        snap = await self.snapshot(lambda s: s.time_s > t0 and s.state == "fault", f"FAULT ({measurement})")
        what = snap.fault.what if snap.fault is not None else ""
        if marker in what:
            self.note_fault(snap, None, planned=True)
            return
        self.note_fault(snap, measurement)
        raise Disturbed(what)

    def note_fault(self, snap: Snapshot, disturbed: str | None, *, planned: bool = False) -> None:
        """Count the fault ``snap`` shows once (it stays latched over several snapshots), unless the trial
        caused it; ``disturbed`` names the measurement whose trial it spoilt."""
        fault = snap.fault
        key = ("unknown", "") if fault is None else (fault.what, fault.at)
        if key == self._last_fault:
            return
        self._last_fault = key
        if planned:
            return
        self.unplanned[_generic(key[0])] += 1
        if disturbed is not None:
            self.disturbed[disturbed] += 1


def _released(snap: Snapshot) -> bool:
    return any(i.name == "footpedal" and not i.ok for i in snap.interlocks)


def _stopped(snap: Snapshot) -> bool:
    return snap.state in ("fault", "idle", "ready", "paused")


def _emitting_after(t: float) -> Callable[[Snapshot], bool]:
    """A snapshot taken after ``t`` showing TREATING with the output read on, or the run stopped."""

    def check(snap: Snapshot) -> bool:
        return snap.time_s > t and ((snap.state == "treating" and snap.laser.output_on) or _stopped(snap))

    return check


def _generic(text: str) -> str:
    """A description with its numbers replaced by N, so repeated faults of one kind count together."""
    return re.sub(r"\d+(?:\.\d+)?", "N", text)


async def pedal_trials(op: Operator, count: int) -> list[float]:
    out: list[float] = []
    counted = 0
    while counted < count + PEDAL_WARMUP:
        await op.treating(5.0)
        t0, latency = await op.react("pedal up")
        snap = await op.snapshot(
            lambda s, t0=t0: s.time_s > t0 and ((s.state == "armed" and not s.emitting) or _stopped(s)),
            "ARMED after the pedal release",
        )
        if snap.state != "armed":
            if snap.state == "fault":
                op.note_fault(snap, "pedal")
            continue
        counted += 1
        if counted > PEDAL_WARMUP:
            out.append(latency)
    return out


async def fault_trials(
    op: Operator,
    count: int,
    measurement: str,
    command: str,
    marker: str,
    *,
    settle: bool = False,
    budget_s: float | None = None,
) -> list[float]:
    """Trials that latch a fault (E-stop, photodiode deviation); each recovers with a reset and arm."""
    out: list[float] = []
    counted = 0
    started = time.monotonic()
    while counted < count + FAULT_WARMUP:
        if budget_s is not None and time.monotonic() - started > budget_s:
            break
        t_on = await op.treating(5.0)
        if settle:
            snap = await op.snapshot(
                lambda s, t_on=t_on: (
                    _stopped(s)
                    or (
                        s.state == "treating"
                        and s.time_s >= t_on + SETTLE_S
                        and s.laser.measured_w is not None
                        and abs(s.laser.measured_w - POWER_W) <= 0.1 * POWER_W
                    )
                ),
                "settled emission at 5 W",
            )
            if snap.state != "treating":
                if snap.state == "fault":
                    op.note_fault(snap, measurement)
                continue
        t0, latency = await op.react(command)
        try:
            await op.expect_fault(t0, marker, measurement)
        except Disturbed:
            continue
        finally:
            op.normal_inputs()
        if not await op.reset():
            continue
        counted += 1
        if counted > FAULT_WARMUP:
            out.append(latency)
    return out


async def treating_cpu(op: Operator, pids: dict[str, int | None], seconds: float) -> dict[str, Any]:
    """CPU of each process over ``seconds`` of steady treatment (TREATING, output on, the session's video
    recording when there is a camera, the console drawing); ``disturbed`` when the state left TREATING."""
    await op.treating(seconds + 5.0)
    meter = CpuMeter(pids)
    started = time.monotonic()
    left = False
    while time.monotonic() - started < seconds:
        await asyncio.sleep(0.25)
        left = left or op.latest().state != "treating"
    shares = meter.shares()
    shares["disturbed"] = left
    op.sim("pedal up")
    return shares


async def baseline_trials(count: int) -> list[float]:
    """A line written to a raw pty master until the slave's reader on this loop has it."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(slave, False)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[float] = asyncio.Queue()
    buffer = bytearray()

    def on_readable() -> None:
        with contextlib.suppress(BlockingIOError):
            buffer.extend(os.read(slave, 4096))
        while b"\n" in buffer:
            del buffer[: buffer.index(b"\n") + 1]
            arrived.put_nowait(time.monotonic())

    loop.add_reader(slave, on_readable)
    out: list[float] = []
    try:
        for i in range(count + PEDAL_WARMUP):
            t0 = time.monotonic()
            os.write(master, b"LAS:OUT 0\r\n")
            got = await asyncio.wait_for(arrived.get(), REACTION_TIMEOUT_S)
            if i >= PEDAL_WARMUP:
                out.append(got - t0)
    finally:
        loop.remove_reader(slave)
        os.close(master)
        os.close(slave)
    return out


def video_rate(db_path: Path) -> dict[str, float] | None:
    """Frames in the sessions' videos per second of those sessions (a starved camera records fewer), from the
    database; None without a video."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT s.start_time, s.end_time, r.frame_count FROM session_recordings r "
            "JOIN sessions s ON s.session_id = r.session_id WHERE r.recording_type = 'video'"
        ).fetchall()
    seconds = frames = 0.0
    for start, end, count in rows:
        if start is None or end is None or count is None:
            continue
        seconds += (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
        frames += count
    if not seconds:
        return None
    return {
        "videos": float(len(rows)),
        "frames": frames,
        "seconds": round(seconds, 1),
        "fps": frames / seconds,
    }


class PacedBaseline:
    """The raw pty baseline sampled through the trials: one line every ``period_s`` written to a pty master
    until the slave's reader on this loop has it, for as long as the trials run, so it meets the same load
    (other work on the machine, this loop's own) as they do; a back-to-back burst lasts under a second."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paced-baseline")

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.samples

    async def _run(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(slave, False)
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue[float] = asyncio.Queue()
        buffer = bytearray()

        def on_readable() -> None:
            with contextlib.suppress(BlockingIOError):
                buffer.extend(os.read(slave, 4096))
            while b"\n" in buffer:
                del buffer[: buffer.index(b"\n") + 1]
                arrived.put_nowait(time.monotonic())

        loop.add_reader(slave, on_readable)
        try:
            while True:
                await asyncio.sleep(self.period_s)
                t0 = time.monotonic()
                os.write(master, b"LAS:OUT 0\r\n")
                got = await asyncio.wait_for(arrived.get(), REACTION_TIMEOUT_S)
                self.samples.append(got - t0)
        finally:
            loop.remove_reader(slave)
            os.close(master)
            os.close(slave)


# ---------------------------------------------------------------------------------------------------- run
async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tosca-bench-"))
    results: dict[str, Any] = {}
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    rig = SimRig()
    controller: ControllerProcess | None = None
    console: ConsoleProcess | None = None
    client: ControllerClient | None = None
    watch: LaserWatch | None = None
    try:
        say(f"data directory {root}")
        protocol_name = await prepare_data_dir(root, args.step_seconds)
        await rig.start()
        watch = LaserWatch(rig.devices["laser"], rig.laser)
        ports_file = root / "ports.json"
        ports = dict(rig.ports())
        if args.camera == "none":
            ports["camera"] = None
        ports_file.write_text(json.dumps(ports), encoding="utf-8")
        logs = root / "bench-logs"
        logs.mkdir(exist_ok=True)
        controller_prefix, console_prefix, described = arrangement(args.sched)
        results["_arrangement"] = {"sched": args.sched, "camera": args.camera, "described": described}
        say(described)
        if args.sched == "kiosk":
            os.sched_setscheduler(
                0,
                os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                os.sched_param(KIOSK_HARDWARE_PRIORITY),
            )
        profile = logs / "loop-profile.json" if args.profile_loop else None
        controller = ControllerProcess(
            ports_file, root, logs / "controller.log", controller_prefix, profile=profile
        )
        await controller.start()
        say("controller ready")
        if args.console != "none":
            console = ConsoleProcess(
                root / "observe.sock", args.console, logs / "console.log", console_prefix
            )
            await console.start()
            say(f"console ready ({args.console})")
        client = await ControllerClient.connect(root / "control.sock", timeout_s=10.0)
        await client.wait_snapshot(lambda s: True, STATE_TIMEOUT_S)
        await client.call(Authenticate(username=USERNAME, password=PASSWORD), timeout_s=60.0)
        op = Operator(client, rig, watch, protocol_name)
        assert controller.proc is not None
        pids: dict[str, int | None] = {"bench": None, "controller": controller.proc.pid}
        camera_pids = children(controller.proc.pid)
        if camera_pids:
            pids["camera process"] = camera_pids[0]
        if console is not None and console.proc is not None:
            pids["console"] = console.proc.pid
        meter = CpuMeter(pids)

        say(f"baseline: {args.baseline_lines} raw pty lines")
        results["baseline raw pty line"] = summary(await baseline_trials(args.baseline_lines))
        paced = PacedBaseline()
        paced.start()
        if args.pedal_trials:
            say(f"pedal release: {args.pedal_trials} trials")
            t = time.monotonic()
            results["pedal release -> output off"] = summary(await pedal_trials(op, args.pedal_trials))
            say(f"  {time.monotonic() - t:.0f} s")
        if args.estop_trials:
            say(f"E-stop: {args.estop_trials} trials")
            t = time.monotonic()
            samples = await fault_trials(op, args.estop_trials, "estop", "estop on", ESTOP_MARKER)
            results["E-stop -> output off"] = summary(samples)
            say(f"  {time.monotonic() - t:.0f} s")
        if args.photodiode_trials:
            say(
                f"photodiode fault: up to {args.photodiode_trials} trials"
                + (f" within {args.photodiode_budget:g} s" if args.photodiode_budget else "")
            )
            t = time.monotonic()
            samples = await fault_trials(
                op,
                args.photodiode_trials,
                "photodiode",
                "photodiode gain 0.5",
                PHOTODIODE_MARKER,
                settle=True,
                budget_s=args.photodiode_budget,
            )
            results["photodiode fault -> output off"] = summary(samples)
            results["photodiode fault - 500 ms persistence"] = summary([s - PERSISTENCE_S for s in samples])
            say(f"  {time.monotonic() - t:.0f} s")
        results["baseline during the trials"] = summary(await paced.stop())
        if args.cpu_seconds:
            say(f"steady treatment: CPU over {args.cpu_seconds:g} s")
            results["_treating_cpu"] = await treating_cpu(op, pids, args.cpu_seconds)
        results["_run"] = {
            "sessions_opened": op.sessions_opened,
            "off_lines_seen": watch.off_lines,
            "unplanned_faults": dict(op.unplanned),
            "disturbed_trials": dict(op.disturbed),
            "refused_commands": dict(op.refusals),
            "load": meter.shares(),
        }
        await op.end_session("benchmark finished")
    finally:
        if client is not None:
            await client.close()
        if console is not None:
            stats = await console.stop()
            if stats is not None:
                results.setdefault("_run", {})["console"] = stats
        if controller is not None:
            code = await controller.stop()
            results.setdefault("_run", {})["controller_exit"] = code
            if controller.profile is not None:
                with contextlib.suppress(OSError, ValueError):
                    results["_loop_profile"] = json.loads(controller.profile.read_text(encoding="utf-8"))
        if watch is not None:
            watch.detach()
        await rig.stop()
        with contextlib.suppress(sqlite3.Error, ValueError, OSError):
            video = video_rate(DataDir(root).db_path)
            if video is not None:
                results.setdefault("_run", {})["video"] = video
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    described = results.get("_arrangement", {}).get("described")
    if described:
        print(f"arrangement: {described}; camera {results['_arrangement']['camera']}")
    print(f"{'measurement':40} {'n':>6} {'median':>9} {'p90':>9} {'p99':>9} {'max':>9}   (ms)")
    for name, s in results.items():
        if name.startswith("_") or not s.get("n"):
            continue
        print(
            f"{name:40} {s['n']:>6} {s['median_ms']:>9.3f} {s['p90_ms']:>9.3f} {s['p99_ms']:>9.3f} "
            f"{s['max_ms']:>9.3f}"
        )
    extra = results.get("_run", {})
    console = extra.get("console")
    if console:
        seconds = max(console["seconds"], 1e-9)
        print(
            f"console ({console['mode']}): {console['frames'] / seconds:.1f} frame updates/s, "
            f"{console['snapshots'] / seconds:.1f} snapshots/s, "
            f"{console['terminal_bytes'] / seconds / 1024:.1f} KiB/s to its terminal"
        )
    load = extra.get("load")
    if load:
        shares = ", ".join(
            f"{k.removesuffix('_cpu_percent')} {v:.0f} %"
            for k, v in load.items()
            if k.endswith("_cpu_percent")
        )
        print(
            f"CPU over {load['wall_s']:.0f} s (share of one core): {shares}; "
            f"load average {load['loadavg_1min']:.2f} on {load['cpus']} CPUs"
        )
    treating = results.get("_treating_cpu")
    if treating:
        shares = ", ".join(
            f"{k.removesuffix('_cpu_percent')} {v:.0f} %"
            for k, v in treating.items()
            if k.endswith("_cpu_percent")
        )
        note = " (disturbed: the state left TREATING)" if treating.get("disturbed") else ""
        print(f"CPU while treating, {treating['wall_s']:.0f} s (share of one core): {shares}{note}")
    if extra.get("unplanned_faults"):
        print("unplanned faults (recovered; the trials they disturbed are not counted):")
        for what, n in extra["unplanned_faults"].items():
            print(f"  {n:>5} x {what}")
        print(f"disturbed trials: {extra.get('disturbed_trials')}")
    if extra.get("refused_commands"):
        print(f"refused commands: {extra['refused_commands']}")
    profile = results.get("_loop_profile")
    if profile:
        bins = ", ".join(f"<{edge}: {n}" for edge, n in profile["histogram_ms"].items() if n)
        print(f"controller loop callbacks by duration (ms): {bins}")
        for entry in profile["slow"][:10]:
            print(
                f"  {entry['count']:>6} x >= 0.3 ms, longest {entry['longest_ms']:7.3f} ms: "
                f"{entry['callback']}"
            )
    video = extra.get("video")
    if video:
        print(
            f"session video: {video['frames']:.0f} frames in {video['seconds']:.0f} s of sessions "
            f"({video['fps']:.1f} frames/s; recorded at up to 30)"
        )
    if "sessions_opened" in extra:
        print(f"sessions opened: {extra['sessions_opened']}; controller exit: {extra.get('controller_exit')}")


def main(argv: list[str] | None = None) -> int:
    global PEDAL_WARMUP, FAULT_WARMUP
    parser = argparse.ArgumentParser(description="Safety reaction of the controller (three processes)")
    parser.add_argument("--trials", type=int, default=1000, help="trials per measurement (default 1000)")
    parser.add_argument("--pedal-trials", type=int, help="pedal release trials (default --trials)")
    parser.add_argument("--estop-trials", type=int, help="E-stop trials (default --trials)")
    parser.add_argument("--photodiode-trials", type=int, help="photodiode fault trials (default --trials)")
    parser.add_argument("--photodiode-budget", type=float, help="stop photodiode trials after this many s")
    parser.add_argument("--baseline-lines", type=int, help="raw pty baseline lines (default --trials)")
    parser.add_argument(
        "--step-seconds", type=float, default=STEP_S, help="the protocol step's length, s (default 280)"
    )
    parser.add_argument("--console", choices=("pty", "headless", "none"), default="pty")
    parser.add_argument(
        "--camera",
        choices=("sim", "none"),
        default="sim",
        help="the controller's camera: the simulated one (recorded during sessions) or none",
    )
    parser.add_argument(
        "--sched",
        choices=("desktop", "kiosk"),
        default="desktop",
        help="desktop: normal scheduling; kiosk: the controller real-time and pinned as the kiosk runs it",
    )
    parser.add_argument(
        "--cpu-seconds",
        type=float,
        default=10.0,
        help="seconds of steady treatment over which each process's CPU is measured (0: none)",
    )
    parser.add_argument(
        "--pedal-warmup", type=int, default=PEDAL_WARMUP, help="uncounted first pedal and baseline trials"
    )
    parser.add_argument(
        "--fault-warmup", type=int, default=FAULT_WARMUP, help="uncounted first E-stop and photodiode trials"
    )
    parser.add_argument(
        "--profile-loop",
        action="store_true",
        help="time every callback of the controller's event loop (loop_profile.py) and list the slow ones",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory and its logs")
    parser.add_argument("--json", action="store_true", help="also print one JSON line of the results")
    args = parser.parse_args(argv)
    if args.pedal_warmup < 0 or args.fault_warmup < 0:
        parser.error("warm-up counts must not be negative")
    PEDAL_WARMUP, FAULT_WARMUP = args.pedal_warmup, args.fault_warmup
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    for name in ("pedal_trials", "estop_trials", "photodiode_trials", "baseline_lines"):
        value = getattr(args, name)
        if value is None:
            setattr(args, name, args.trials)
        elif value < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.photodiode_budget is not None and not args.photodiode_budget > 0:
        parser.error("--photodiode-budget must be a positive number of seconds")
    if not 10.0 <= args.step_seconds <= 3600.0:
        parser.error("--step-seconds must be within 10..3600")
    if args.baseline_lines < 1:
        parser.error("--baseline-lines must be at least 1")
    try:
        results = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench_safety: {exc}", file=sys.stderr)
        return 1
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
