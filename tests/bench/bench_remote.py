"""What a remote console costs the controller: the ``devices`` query on the controller's loop, and its loop
lag with and without a remote console asking for it.

Run::

    .venv/bin/python tests/bench/bench_remote.py [--queries N] [--seconds S]

A controller on the simulated rig runs in this process (its loop is this loop), on a fresh data directory.
Printed: the time the controller's handler takes to build one ``devices`` answer (N calls, p50/p99/max, ms),
the round trip of the query over ``observe.sock`` (N queries), and the loop lag the controller measures itself
(:class:`control.controller.diagnostics.LoopWatch`, p50/p99/max) over S seconds idle, then over S seconds
while a client asks ``devices`` ten times a second (ten times what the Devices screen asks).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from control import messages as msg
from control.controller import Controller
from control.controller.diagnostics import LoopWatch
from control.ipc.client import ControllerClient
from control.ipc.server import Peer
from tests.support import CHEAP


def _figures(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms  "
        f"max {ordered[-1] * 1000:.3f} ms  (n={len(ordered)})"
    )


async def _lag_over(controller: Controller, seconds: float) -> str:
    controller.diagnostics.loop = watch = LoopWatch()
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(seconds)
    task.cancel()
    figures = watch.figures()
    return (
        f"p50 {figures.lag_p50_ms or 0:.3f} ms  p99 {figures.lag_p99_ms or 0:.3f} ms  "
        f"max {figures.lag_max_ms or 0:.3f} ms  (n={figures.samples})"
    )


async def main(queries: int, seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as root:
        controller = Controller(Path(root) / "data", sim=True, hashing=CHEAP, terminal="bench")
        await controller.start()
        try:
            peer = Peer(socket="observe", connection=0, pid=None, uid=None, gid=None)
            handler = []
            for _ in range(queries):
                started = time.perf_counter()
                await controller.handle(msg.Devices(), peer)
                handler.append(time.perf_counter() - started)
            print(f"devices answer built on the controller's loop: {_figures(handler)}")
            assert controller.server is not None
            async with await ControllerClient.connect(controller.server.observe_path) as client:
                trips = []
                for _ in range(queries):
                    started = time.perf_counter()
                    await client.call(msg.Devices())
                    trips.append(time.perf_counter() - started)
                print(f"devices round trip over observe.sock:         {_figures(trips)}")
                print(f"loop lag, no remote console:                  {await _lag_over(controller, seconds)}")

                async def ask() -> None:
                    while True:
                        await client.call(msg.Devices())
                        await asyncio.sleep(0.1)

                asker = asyncio.create_task(ask())
                lag = await _lag_over(controller, seconds)
                asker.cancel()
                print(f"loop lag, devices asked 10 times a second:    {lag}")
        finally:
            await controller.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    sys.exit(asyncio.run(main(options.queries, options.seconds)))
