"""Does taking snapshots hold up the safety reaction? The stop key and the pedal release, until "output off"
reaches the laser driver, with and without snapshots being taken, in one run.

Run::

    .venv/bin/python tests/bench/bench_snapshots.py [--blocks N] [--trials N] [--period S] [--focus-stacks]
        [--json]

The arrangement is ``bench_safety.py``'s (its helpers are used here): this process runs the simulated rig on
ptys and the operator's client of ``control.sock``; the controller is ``tosca controller --ports`` in a
process of its own, with the simulated camera read by its camera process (as a real camera is), recording the
session's video. Every trial is timed in this process with ``time.monotonic()``, from immediately before the
input to the arrival at the laser simulator of the line that switches its output off:

- **stop key**: treating at 5 W, ``stop`` sent as the console's stop key sends it (``tui.stop_key``: a new
  connection of its own, from a thread); then the pedal released and the session armed again with the
  password (a pause by another connection needs key control to resume), the pedal pressed;
- **pedal release**: treating, ``pedal up``; then ``pedal down`` again.

The trials run in blocks, alternately without and with snapshots (the order swapped every block, so that a
change of the machine's load meets both alike). With snapshots, the operator's connection asks for one
(``take_snapshot``) every ``--period`` seconds (default 1.0) for as long as the block runs: the controller
has the camera process detect the ring and write the two full-resolution PNG files into the session's
folder, and records their rows and event. With ``--focus-stacks`` it asks for a focus stack instead
(``focus_stack``: the configured number of full-resolution frames over a few seconds, each scored and written
as a PNG with the stack's index, and its ``focus_stack`` row), the next one as soon as the last has ended
and ``--period`` has passed. The first block of each kind warms up and is not counted.

Printed: for each input, with and without snapshots, n, median, p90, p99 and max in ms, and the ratio of the
medians and of the p99s (with / without); then how many snapshots were taken, how long one took from asking
to the event saying it was saved, and any faults the trials did not cause. Exit code 0, or 1 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_safety as bs  # the sibling benchmark: run as a script, its folder is on the path

from control.ipc.client import ControllerClient
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import (
    Arm,
    Authenticate,
    Command,
    Event,
    Preview,
    Snapshot,
    TakeFocusStack,
    TakeSnapshot,
)
from devices.sim.rig import SimRig
from tui.stop_key import open_stop, read_reply

MODES = ("without snapshots", "with snapshots")
STACK_MODES = ("without focus stacks", "with focus stacks")


class Snapshotter:
    """Asks for a snapshot every ``period_s`` while :attr:`enabled`; counts them and times each from the
    asking to the controller's event saying it was saved (or why not)."""

    def __init__(self, client: ControllerClient, period_s: float, *, stacks: bool = False) -> None:
        self.client = client
        self.period_s = period_s
        #: What is asked for, and the kind of the event that says how it ended.
        self.kind = "focus_stack" if stacks else "snapshot"
        self.command: type[Command] = TakeFocusStack if stacks else TakeSnapshot
        self.enabled = False
        self.taken = 0
        self.refused: dict[str, int] = {}
        self.durations_s: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._outcome: asyncio.Future[Event] | None = None
        client.add_listener(self._on_message)

    def _on_message(self, message: Snapshot | Event | Preview) -> None:
        outcome = self._outcome
        if isinstance(message, Event) and message.kind == self.kind and outcome is not None:
            if not outcome.done():
                outcome.set_result(message)

    def _refused(self, reason: str) -> None:
        reason = bs._generic(reason)
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="snapshotter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.period_s
            if self.enabled:
                asked = time.monotonic()
                self._outcome = loop.create_future()
                try:
                    await self.client.call(self.command(), timeout_s=30.0)
                    event = await asyncio.wait_for(self._outcome, 30.0)
                except (CommandFailed, ControllerUnavailable, TimeoutError) as exc:
                    self._refused(str(exc))
                else:
                    if event.severity == "info":
                        self.taken += 1
                        self.durations_s.append(time.monotonic() - asked)
                    else:
                        self._refused(event.message)
                finally:
                    self._outcome = None
            if loop.time() > next_at:
                next_at = loop.time()  # a stack outlasting the period: the next one after it, not at once
            await asyncio.sleep(max(0.0, next_at - loop.time()))


def _paused_after(t0: float) -> Callable[[Snapshot], bool]:
    def check(snap: Snapshot) -> bool:
        return snap.time_s > t0 and (snap.state == "paused" or bs._stopped(snap))

    return check


async def stop_trial(op: bs.Operator, socket_path: Path) -> float | None:
    """One stop key press while treating; the latency, or None when the trial was disturbed."""
    await op.treating(5.0)
    off = op.watch.expect_off()
    t0 = time.monotonic()
    sock = await asyncio.to_thread(open_stop, socket_path)
    try:
        t_off = await asyncio.wait_for(off, bs.REACTION_TIMEOUT_S)
    except TimeoutError:
        raise bs.BenchError(
            f"no output-off line within {bs.REACTION_TIMEOUT_S:g} s of the stop key"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(read_reply, sock)
        sock.close()
    snap = await op.snapshot(_paused_after(t0), "PAUSED after the stop key")
    if snap.state != "paused":
        if snap.state == "fault":
            op.note_fault(snap, "stop key")
        return None
    # Resuming after another connection's stop is key control: the pedal released, then arm.
    op.sim("pedal up")
    await op.fresh(bs._released, "the pedal seen released")
    if await op.command(Arm(password=bs.PASSWORD), "arm after the stop key"):
        await op.snapshot(lambda s: s.state != "paused", "ARMED after the stop key")
    return t_off - t0


async def pedal_trial(op: bs.Operator) -> float | None:
    """One pedal release while treating; the latency, or None when the trial was disturbed."""
    await op.treating(5.0)
    t0, latency = await op.react("pedal up")
    snap = await op.snapshot(
        lambda s: s.time_s > t0 and ((s.state == "armed" and not s.emitting) or bs._stopped(s)),
        "ARMED after the pedal release",
    )
    if snap.state != "armed":
        if snap.state == "fault":
            op.note_fault(snap, "pedal")
        return None
    return latency


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="tosca-bench-snap-"))
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    modes = STACK_MODES if args.focus_stacks else MODES
    samples: dict[str, dict[str, list[float]]] = {m: {"stop key": [], "pedal release": []} for m in modes}
    rig = SimRig()
    controller: bs.ControllerProcess | None = None
    client: ControllerClient | None = None
    watch: bs.LaserWatch | None = None
    snapshotter: Snapshotter | None = None
    results: dict[str, Any] = {}
    try:
        say(f"data directory {root}")
        protocol_name = await bs.prepare_data_dir(root, args.step_seconds)
        await rig.start()
        watch = bs.LaserWatch(rig.devices["laser"], rig.laser)
        ports_file = root / "ports.json"
        ports_file.write_text(json.dumps(dict(rig.ports())), encoding="utf-8")
        logs = root / "bench-logs"
        logs.mkdir(exist_ok=True)
        controller = bs.ControllerProcess(ports_file, root, logs / "controller.log")
        await controller.start()
        say("controller ready")
        client = await ControllerClient.connect(root / "control.sock", timeout_s=10.0)
        await client.wait_snapshot(lambda s: True, bs.STATE_TIMEOUT_S)
        await client.call(Authenticate(username=bs.USERNAME, password=bs.PASSWORD), timeout_s=60.0)
        op = bs.Operator(client, rig, watch, protocol_name)
        snapshotter = Snapshotter(client, args.period, stacks=args.focus_stacks)
        snapshotter.start()
        for block in range(args.blocks + 1):
            order = modes if block % 2 == 0 else tuple(reversed(modes))
            for mode in order:
                snapshotter.enabled = mode == modes[1]
                counted = block > 0
                say(f"block {block}{'' if counted else ' (warm-up)'}: {mode}, {args.trials} trials of each")
                t = time.monotonic()
                for _ in range(args.trials):
                    latency = await stop_trial(op, root / "control.sock")
                    if counted and latency is not None:
                        samples[mode]["stop key"].append(latency)
                    latency = await pedal_trial(op)
                    if counted and latency is not None:
                        samples[mode]["pedal release"].append(latency)
                say(f"  {time.monotonic() - t:.0f} s")
        snapshotter.enabled = False
        for mode in modes:
            for measure, values in samples[mode].items():
                results[f"{measure}, {mode}"] = bs.summary(values)
        results["_snapshots"] = {
            "kind": snapshotter.kind,
            "period_s": args.period,
            "taken": snapshotter.taken,
            "refused": snapshotter.refused,
            "answer": bs.summary(snapshotter.durations_s),
        }
        results["_run"] = {
            "sessions_opened": op.sessions_opened,
            "unplanned_faults": dict(op.unplanned),
            "disturbed_trials": dict(op.disturbed),
            "refused_commands": dict(op.refusals),
        }
        await op.end_session("benchmark finished")
    finally:
        if snapshotter is not None:
            await snapshotter.stop()
        if client is not None:
            await client.close()
        if controller is not None:
            results.setdefault("_run", {})["controller_exit"] = await controller.stop()
        if watch is not None:
            watch.detach()
        await rig.stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"{'input -> output off':<38} {'n':>5} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms)")
    for key, row in results.items():
        if key.startswith("_"):
            continue
        if not row.get("n"):
            print(f"{key:<38} {0:>5}")
            continue
        print(
            f"{key:<38} {row['n']:>5} {row['median_ms']:>8.2f} {row['p90_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['max_ms']:>8.2f}"
        )
    snaps = results.get("_snapshots", {})
    what = "focus stacks" if snaps.get("kind") == "focus_stack" else "snapshots"
    for measure in ("stop key", "pedal release"):
        without = results.get(f"{measure}, without {what}", {})
        with_ = results.get(f"{measure}, with {what}", {})
        if without.get("n") and with_.get("n"):
            median = with_["median_ms"] / without["median_ms"]
            p99 = with_["p99_ms"] / without["p99_ms"]
            print(f"{measure}: with / without {what}: median x{median:.2f}, p99 x{p99:.2f}")
    answer = snaps.get("answer", {})
    if answer.get("n"):
        print(
            f"{what}: {snaps['taken']} taken (one every {snaps['period_s']:g} s while enabled), "
            f"saved within median {answer['median_ms']:.0f} ms, max {answer['max_ms']:.0f} ms; "
            f"refused: {snaps['refused']}"
        )
    run = results.get("_run", {})
    print(
        f"sessions opened {run.get('sessions_opened')}; unplanned faults {run.get('unplanned_faults')}; "
        f"disturbed trials {run.get('disturbed_trials')}; refused commands {run.get('refused_commands')}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--blocks", type=int, default=4, help="counted blocks of each kind (default 4)")
    parser.add_argument("--trials", type=int, default=25, help="trials of each input per block (default 25)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between snapshots (default 1)")
    parser.add_argument("--step-seconds", type=float, default=280.0, help="the protocol step's length, s")
    parser.add_argument("--focus-stacks", action="store_true", help="take focus stacks instead of snapshots")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    parser.add_argument("--json", action="store_true", help="print one JSON line after the table")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.trials < 1 or not args.period > 0:
        parser.error("--blocks and --trials must be at least 1 and --period above 0")
    try:
        results = asyncio.run(run(args))
    except bs.BenchError as exc:
        print(f"bench_snapshots: {exc}", file=sys.stderr)
        return 1
    print_table(results)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
