"""A busy console for the safety reaction benchmark: a Textual screen redrawn continuously from live state.

Run by ``tests/bench/bench_safety.py`` as its own process::

    python tests/bench/busy_console.py --socket DIR/observe.sock --stop-fd R --report-fd W [--mode pty]

It connects to the controller's ``observe.sock`` with :class:`~control.ipc.client.ControllerClient` and shows
every pushed snapshot: a table of the permission terms and devices whose cells are rewritten on every frame, a
history table that gains a row per snapshot (the newest 300 kept), a log line per snapshot, a sparkline of
the measured power (W) and a clock line. A frame timer at ``--fps`` (default 60, Textual's own limit)
rewrites the cells whether or not a new snapshot came, so the screen is redrawn continuously.

``--mode pty`` (default) runs the normal terminal driver on a pseudo-terminal of ``--size`` columns x rows,
whose output a thread in this process reads and counts, so every frame is rendered all the way to terminal
bytes, as on the kiosk. ``--mode headless`` uses Textual's headless driver (layout and rendering, no terminal
output).

Protocol with the parent, over two inherited pipe descriptors: ``ready`` (one line on ``--report-fd``) once
the first snapshot has been drawn; the console exits when ``--stop-fd`` reaches end of file or receives a
line, and then writes one JSON line of statistics (frames, snapshots, terminal bytes, seconds) to
``--report-fd``. A failure is reported there as ``error: <reason>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import struct
import sys
import termios
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Log, Sparkline, Static

from control.ipc.client import ControllerClient
from control.messages import Snapshot

HISTORY_ROWS = 300
SPARK_POINTS = 120


class BusyConsole(App[None]):
    """A treatment-dashboard-like screen fed by the controller's pushed snapshots."""

    CSS = """
    #top { height: 16; }
    #terms { width: 2fr; }
    #devices { width: 1fr; }
    #history { height: 1fr; }
    #log { height: 10; }
    #spark { height: 3; }
    #clock { height: 1; }
    """

    def __init__(self, socket_path: Path, stop_fd: int, report: Any, fps: float) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.stop_fd = stop_fd
        self.report = report
        self.fps = fps
        self.client: ControllerClient | None = None
        self.latest: Snapshot | None = None
        self.frames = 0
        self.snapshots = 0
        #: When the first snapshot was drawn (frames are counted from then).
        self.ready_at: float | None = None
        #: The pseudo-terminal in ``pty`` mode, and its byte count when the first snapshot was drawn.
        self.terminal: PtyTerminal | None = None
        self.bytes_at_ready = 0
        self.failure: str | None = None
        self._ready_sent = False
        self._power: deque[float] = deque([0.0] * SPARK_POINTS, maxlen=SPARK_POINTS)
        self._term_rows: list[str] = []
        self._device_rows: list[str] = []

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("waiting for the controller", id="clock")
            with Horizontal(id="top"):
                yield DataTable(id="terms")
                yield DataTable(id="devices")
            yield Sparkline(list(self._power), id="spark")
            yield DataTable(id="history")
            yield Log(id="log", max_lines=500)

    async def on_mount(self) -> None:
        # Columns keyed by their labels, so cells are addressed by name.
        for table_id, labels in (
            ("#terms", ("term", "ok", "value", "detail", "frame")),
            ("#devices", ("device", "state", "identity", "error")),
        ):
            table = self.query_one(table_id, DataTable)
            for label in labels:
                table.add_column(label, key=label)
        self.query_one("#history", DataTable).add_columns(
            "seq", "state", "emitting", "commanded W", "measured W", "photodiode V", "current mA", "ring mm"
        )
        loop = asyncio.get_running_loop()
        loop.add_reader(self.stop_fd, self._on_stop)
        try:
            self.client = await ControllerClient.connect(self.socket_path, timeout_s=10.0)
        except Exception as exc:
            self._fail(f"cannot connect to {self.socket_path}: {exc}")
            return
        self.run_worker(self._follow(), name="follow", exit_on_error=False)
        self.set_interval(1.0 / self.fps, self._frame)

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self.exit()

    def _on_stop(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self.stop_fd, 64)
        asyncio.get_running_loop().remove_reader(self.stop_fd)
        self.exit()

    async def _follow(self) -> None:
        """Draw each new snapshot as it arrives."""
        client = self.client
        assert client is not None
        seq = -1
        while True:
            try:
                snap = await client.wait_snapshot(lambda s, after=seq: s.seq > after, timeout_s=5.0)
            except TimeoutError:
                self._fail("no snapshot from the controller for 5 s")
                return
            except Exception as exc:
                self._fail(f"controller connection ended: {exc}")
                return
            seq = snap.seq
            self.latest = snap
            self.snapshots += 1
            self._draw_snapshot(snap)

    def _draw_snapshot(self, snap: Snapshot) -> None:
        laser = snap.laser
        measured = laser.measured_w if laser.measured_w is not None else 0.0
        self._power.append(measured)
        self.query_one("#spark", Sparkline).data = list(self._power)
        history = self.query_one("#history", DataTable)
        history.add_row(
            str(snap.seq),
            snap.state,
            "LASER EMISSION" if snap.emitting else "-",
            f"{laser.commanded_w:.2f}",
            f"{measured:.3f}",
            "-" if laser.photodiode_v is None else f"{laser.photodiode_v:.3f}",
            "-" if laser.current_ma is None else f"{laser.current_ma:.1f}",
            "-" if snap.ring.measured_mm is None else f"{snap.ring.measured_mm:.3f}",
        )
        while history.row_count > HISTORY_ROWS:
            history.remove_row(history.ordered_rows[0].key)
        history.move_cursor(row=history.row_count - 1, animate=False)
        failing = [i.name for i in snap.interlocks if not i.ok]
        self.query_one("#log", Log).write_line(
            f"{snap.time_s:12.3f} seq {snap.seq} {snap.state:8} P {measured:6.3f} W "
            f"failing: {', '.join(failing) or 'none'}"
        )
        if not self._ready_sent:
            self._ready_sent = True
            self.frames = 0
            self.snapshots = 1
            self.ready_at = time.monotonic()
            self.bytes_at_ready = self.terminal.bytes if self.terminal is not None else 0
            self.report.write("ready\n")
            self.report.flush()

    def _frame(self) -> None:
        """Rewrite every cell of the live tables from the latest snapshot (one call per frame)."""
        self.frames += 1
        snap = self.latest
        if snap is None:
            return
        now = time.monotonic()
        self.query_one("#clock", Static).update(
            f"frame {self.frames}  snapshot {snap.seq}  age {(now - snap.time_s) * 1000:7.1f} ms  "
            f"state {snap.state.upper()}{'  LASER EMISSION' if snap.emitting else ''}"
        )
        terms = self.query_one("#terms", DataTable)
        names = [i.name for i in snap.interlocks]
        if names != self._term_rows:
            terms.clear()
            for name in names:
                terms.add_row(name, "", "", "", "", key=name)
            self._term_rows = names
        for item in snap.interlocks:
            terms.update_cell(item.name, "ok", "yes" if item.ok else "NO")
            terms.update_cell(item.name, "value", item.value)
            terms.update_cell(item.name, "detail", item.detail)
            terms.update_cell(item.name, "frame", str(self.frames))
        devices = self.query_one("#devices", DataTable)
        device_names = [d.name for d in snap.devices]
        if device_names != self._device_rows:
            devices.clear()
            for name in device_names:
                devices.add_row(name, "", "", "", key=name)
            self._device_rows = device_names
        for device in snap.devices:
            devices.update_cell(device.name, "state", device.state)
            devices.update_cell(device.name, "identity", device.identity or "-")
            devices.update_cell(device.name, "error", device.error or "-")

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.close()


class PtyTerminal:
    """A pseudo-terminal standing in for the kiosk's screen: the app's stdin and stderr (where Textual's
    terminal driver writes) are its slave; a thread reads and counts everything written to the master."""

    def __init__(self, columns: int, rows: int) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.bytes = 0
        self._thread = threading.Thread(target=self._drain, name="terminal-drain", daemon=True)
        self._saved = (os.dup(0), os.dup(2))

    def __enter__(self) -> PtyTerminal:
        os.dup2(self.slave, 0)
        os.dup2(self.slave, 2)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved[0], 0)
        os.dup2(self._saved[1], 2)
        for fd in (*self._saved, self.slave):
            os.close(fd)
        self._thread.join(5.0)
        os.close(self.master)

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Busy Textual console fed from observe.sock")
    parser.add_argument("--socket", type=Path, required=True, help="the controller's observe.sock")
    parser.add_argument("--stop-fd", type=int, required=True, help="pipe to read; EOF or a line stops")
    parser.add_argument("--report-fd", type=int, required=True, help="pipe to write 'ready' and statistics")
    parser.add_argument("--mode", choices=("pty", "headless"), default="pty")
    parser.add_argument("--size", default="160x50", help="terminal columns x rows (default 160x50)")
    parser.add_argument("--fps", type=float, default=60.0, help="frame timer rate, Hz (default 60)")
    args = parser.parse_args(argv)
    try:
        columns, rows = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 160x50, got {args.size!r}")
    if not (20 <= columns <= 1000 and 10 <= rows <= 500):
        parser.error("--size: columns 20..1000, rows 10..500")
    if not 1.0 <= args.fps <= 240.0:
        parser.error("--fps must be within 1..240")
    report = os.fdopen(args.report_fd, "w", buffering=1)
    app = BusyConsole(args.socket, args.stop_fd, report, args.fps)
    terminal_bytes = 0
    try:
        if args.mode == "pty":
            os.environ.setdefault("TERM", "xterm-256color")
            os.environ["COLORTERM"] = "truecolor"
            with PtyTerminal(columns, rows) as terminal:
                app.terminal = terminal
                app.run()
                terminal_bytes = terminal.bytes - app.bytes_at_ready
        else:
            app.run(headless=True, size=(columns, rows))
    except Exception as exc:
        report.write(f"error: {type(exc).__name__}: {exc}\n")
        return 1
    if app.failure is not None:
        report.write(f"error: {app.failure}\n")
        return 1
    seconds = time.monotonic() - (app.ready_at or time.monotonic())
    stats = {
        "mode": args.mode,
        "seconds": round(seconds, 3),
        "frames": app.frames,
        "snapshots": app.snapshots,
        "terminal_bytes": terminal_bytes,
    }
    report.write(json.dumps(stats) + "\n")
    report.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
