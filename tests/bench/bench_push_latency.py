"""Push latency of the safety board: a footpedal edge in the simulator until the event reaches the driver.

Run: ``python tests/bench/bench_push_latency.py [--edges 1000] [--sim-in process|thread|both] [--json]``

The simulated board (:class:`~devices.sim.safety.SafetyBoardSim` on a :class:`~devices.sim.pty.PtyDevice`)
runs on its own event loop, in a child process (default) or in a thread of this process; the driver
(:class:`~devices.safety.SafetyBoardDriver` over a :class:`~devices.transport.LineTransport`) runs on the main
thread's loop, so every edge crosses a real pty between two event loops. For each edge the simulator side
takes ``time.monotonic()`` (CLOCK_MONOTONIC, shared by all processes) immediately before ``set_pedal()``; the
latency is the event's receive stamp (:attr:`~devices.safety.SafetyEvent.received`) minus that, and also the
moment the consumer of the event stream gets it. Edges are made one at a time: the next edge is requested once
the previous event has arrived. The first 20 edges warm up and are not counted.

Baseline in the same run and the same arrangement: one line written with ``os.write`` to a raw pty master on
the simulator side, read from the slave by a reader callback on the main loop, timed the same way.

In the thread arrangement both loops share the GIL: a simulator thread woken while the main thread holds it
can wait up to the interpreter's switch interval (5 ms), which shows in the maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import tty
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from devices.safety import EventKind, SafetyBoardDriver
from devices.sim.model import PhysicalModel
from devices.sim.pty import PtyDevice
from devices.sim.safety import SafetyBoardSim
from devices.transport import LineTransport

WARMUP = 20
RAW_LINE = b"EVT:FOOTPEDAL:1\n"


class Board:
    """The simulated board and a raw pty for the baseline, on the current thread's running loop."""

    def __init__(self) -> None:
        self.model = PhysicalModel(seed=1)
        self.sim = SafetyBoardSim(self.model)
        self.device = PtyDevice("safety", self.sim, eol=b"\n")
        self.raw_master = -1
        self.raw_slave = -1

    async def start(self) -> tuple[str, str]:
        """Start; returns the board's pty path and the baseline pty's slave path."""
        await self.device.start()
        self.sim.attach(self.device)
        await self.sim.start()
        self.raw_master, self.raw_slave = os.openpty()
        tty.setraw(self.raw_slave)
        return self.device.path, os.ttyname(self.raw_slave)

    async def stop(self) -> None:
        await self.sim.stop()
        await self.device.stop()
        for fd in (self.raw_master, self.raw_slave):
            if fd >= 0:
                os.close(fd)

    def edge(self, record: Callable[[float], None]) -> None:
        """Toggle the pedal, handing ``record`` the monotonic time taken just before."""
        record(time.monotonic())
        self.sim.set_pedal(not self.sim.pedal)

    def raw_write(self, record: Callable[[float], None]) -> None:
        """Write one line to the baseline pty, handing ``record`` the monotonic time taken just before."""
        record(time.monotonic())
        os.write(self.raw_master, RAW_LINE)


class SimSide(Protocol):
    """Where the simulator runs: start, make an edge or a raw write and learn its start time, stop."""

    def start(self) -> tuple[str, str]: ...
    def request(self, what: str) -> None: ...
    def started_at(self) -> float: ...
    def stop(self) -> None: ...


class ThreadSide:
    """The board on its own event loop in a thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim-board", daemon=True)
        self.board = Board()
        self.times: list[float] = []
        self.taken = 0

    def start(self) -> tuple[str, str]:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.board.start(), self.loop).result(10.0)

    def request(self, what: str) -> None:
        action = self.board.edge if what == "edge" else self.board.raw_write
        self.loop.call_soon_threadsafe(action, self.times.append)

    def started_at(self) -> float:
        self.taken += 1
        return self.times[self.taken - 1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.board.stop(), self.loop).result(10.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)
        self.loop.close()


def _child(conn: Connection) -> None:
    """Child process: run the board, obey ``edge`` / ``raw`` / ``stop`` from ``conn``, answer start times."""

    async def serve() -> None:
        board = Board()
        conn.send(await board.start())
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_command() -> None:
            while conn.poll():
                what = conn.recv()
                if what == "edge":
                    board.edge(conn.send)
                elif what == "raw":
                    board.raw_write(conn.send)
                else:
                    done.set()

        loop.add_reader(conn.fileno(), on_command)
        await done.wait()
        loop.remove_reader(conn.fileno())
        await board.stop()
        conn.send("stopped")

    asyncio.run(serve())


class ProcessSide:
    """The board on its own event loop in a child process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_child, args=(child_conn,), name="sim-board", daemon=True)

    def start(self) -> tuple[str, str]:
        self.process.start()
        if not self.conn.poll(30.0):
            raise RuntimeError("simulator process did not start")
        ports: tuple[str, str] = self.conn.recv()
        return ports

    def request(self, what: str) -> None:
        self.conn.send(what)

    def started_at(self) -> float:
        if not self.conn.poll(5.0):
            raise RuntimeError("simulator process did not answer")
        t0: float = self.conn.recv()
        return t0

    def stop(self) -> None:
        self.conn.send("stop")
        if self.conn.poll(10.0):
            self.conn.recv()
        self.process.join(10.0)
        self.conn.close()


def summary(samples_s: list[float]) -> dict[str, float]:
    """n, p50, p99, max and mean of ``samples_s`` (seconds), the times in ms."""
    ms = sorted(s * 1000.0 for s in samples_s)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, round(p / 100.0 * (len(ms) - 1)))]

    return {
        "n": len(ms),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


async def measure_raw_pty(side: SimSide, slave_path: str, lines: int) -> list[float]:
    """Raw pty write-to-read of one line: written on the simulator side, read on this loop."""
    fd = os.open(slave_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[float] = asyncio.Queue()
    buffer = bytearray()

    def on_readable() -> None:
        with contextlib.suppress(BlockingIOError):
            buffer.extend(os.read(fd, 4096))
        while b"\n" in buffer:
            del buffer[: buffer.index(b"\n") + 1]
            arrived.put_nowait(time.monotonic())

    loop.add_reader(fd, on_readable)
    latencies: list[float] = []
    try:
        for i in range(lines + WARMUP):
            side.request("raw")
            got = await asyncio.wait_for(arrived.get(), 2.0)
            t0 = side.started_at()
            if i >= WARMUP:
                latencies.append(got - t0)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return latencies


async def measure_driver(side: SimSide, port: str, edges: int) -> tuple[list[float], list[float]]:
    """Pedal edges on the simulator side until the FOOTPEDAL event reaches the driver."""
    transport = LineTransport("safety", port, baudrate=115200, eol=b"\n")
    driver = SafetyBoardDriver(transport)
    stamped: list[float] = []
    consumed: list[float] = []
    await transport.open()
    await driver.start()
    try:
        version = await driver.check_version()
        if not version.startswith("3."):
            raise RuntimeError(f"unexpected safety board version {version}")
        with driver.events() as events:
            for i in range(edges + WARMUP):
                side.request("edge")
                while True:
                    event = await events.get(2.0)
                    if event.kind is EventKind.FOOTPEDAL:
                        break
                now = time.monotonic()
                t0 = side.started_at()
                if i >= WARMUP:
                    stamped.append(event.received - t0)
                    consumed.append(now - t0)
    finally:
        await driver.close()
        await transport.close()
    return stamped, consumed


async def run(kind: str, edges: int) -> dict[str, dict[str, float]]:
    side: SimSide = ProcessSide() if kind == "process" else ThreadSide()
    port, raw_path = side.start()
    try:
        raw = await measure_raw_pty(side, raw_path, edges)
        stamped, consumed = await measure_driver(side, port, edges)
    finally:
        side.stop()
    return {
        f"{kind}: baseline raw pty line": summary(raw),
        f"{kind}: pedal edge -> driver event": summary(stamped),
        f"{kind}: pedal edge -> event consumer": summary(consumed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Safety board push latency over a pty")
    parser.add_argument("--edges", type=int, default=1000, help="pedal edges to measure (default 1000)")
    parser.add_argument("--sim-in", choices=("process", "thread", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.edges < 10:
        parser.error("--edges must be at least 10")
    kinds = ("process", "thread") if args.sim_in == "both" else (args.sim_in,)
    results: dict[str, dict[str, float]] = {}
    for kind in kinds:
        results.update(asyncio.run(run(kind, args.edges)))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'measurement':40} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
    for name, s in results.items():
        print(
            f"{name:40} {s['n']:>6} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.3f} "
            f"{s['mean_ms']:>8.3f}"
        )
    for kind in kinds:
        p99 = results[f"{kind}: pedal edge -> driver event"]["p99_ms"]
        print(f"{kind}: goal p99 < 2 ms {'met' if p99 < 2.0 else 'NOT met'} ({p99:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
