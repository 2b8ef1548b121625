"""How much a remote console's export or backup delays the controller's event loop: the lateness of a 50 ms
timer on an asyncio loop (as the controller's loop watch measures it), idle, then while the job runs on a
worker thread of the same process, then while it runs in its own process (``storage.records_job``, what the
controller does).

Run from the project root::

    python tests/bench/bench_remote_jobs.py [--rows 100000] [--switch-interval 0.0005]

The data directory is ``bench_engineer_records.py``'s (``--rows`` safety rows and events), with its
10-minute session (60,000 telemetry lines) exported in both formats. The switch interval is the
controller's (``tui/commands/controller.py``). Prints p50, p99 and max lateness in ms per condition.

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import bench_engineer_records as records  # noqa: E402

from control.controller.remote import run_records_job  # noqa: E402
from storage import DataDir  # noqa: E402
from storage.backups import make_backup  # noqa: E402
from storage.export import export_session  # noqa: E402

PERIOD_S = 0.05


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _lateness(stop: asyncio.Event) -> list[float]:
    loop = asyncio.get_running_loop()
    late: list[float] = []
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(PERIOD_S)
        late.append((loop.time() - start - PERIOD_S) * 1000)
    return late


async def measure(label: str, work: Callable[[], Awaitable[object]]) -> None:
    stop = asyncio.Event()
    watch = asyncio.create_task(_lateness(stop))
    began = time.monotonic()
    await work()
    took = time.monotonic() - began
    stop.set()
    late = await watch
    print(
        f"{label:<42} {took:5.1f} s  {len(late):4d} ticks  p50 {percentile(late, 0.5):6.2f}  "
        f"p99 {percentile(late, 0.99):6.2f}  max {max(late):6.2f} ms",
        flush=True,
    )


async def run(data: DataDir, session_id: int) -> None:
    out = Path(tempfile.mkdtemp())
    job = {"data_dir": str(data.root), "user": "bench", "terminal": "bench", "origin": {}}
    await measure("idle (5 s)", lambda: asyncio.sleep(5))
    await measure(
        "export on a worker thread",
        lambda: asyncio.to_thread(export_session, data, session_id, target=out / "thread"),
    )
    await measure("backup on a worker thread", lambda: asyncio.to_thread(make_backup, data))
    await measure("idle (5 s)", lambda: asyncio.sleep(5))
    await measure(
        "export in its own process",
        lambda: run_records_job({**job, "job": "export", "session_id": session_id, "folder": out.name}),
    )
    await measure("backup in its own process", lambda: run_records_job({**job, "job": "backup"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="safety rows and events in the database")
    parser.add_argument("--switch-interval", type=float, default=0.0005, help="sys.setswitchinterval, s")
    args = parser.parse_args()
    sys.setswitchinterval(args.switch_interval)
    data = records.build_database(args.rows)
    session_id = records._long_session(data)
    asyncio.run(run(data, session_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
