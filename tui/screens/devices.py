"""Devices: what an engineer checks first on a rig, at the kiosk or remotely.

The table lists each device the controller drives: its link state, its identity as the device reported it
(model, serial number, firmware), how many lines it sent, how many replies were bad (malformed, late or
missing), and how long ago its last line came. Under it, the highlighted device's live readings and its last
error; then the controller's own figures: how late its loop wakes a timer (p50 and p99 over the last minute),
its CPU use, and the last faults it latched with the time it took from the input that caused each to "output
off" on the laser's line.

Everything comes from the controller (the ``devices`` query: :mod:`control.controller.diagnostics`), asked
every :data:`REFRESH_S` seconds over the console's link (``observe.sock`` on the remote console), nothing
from the serial ports: the console never touches them. Every string a device sent is drawn as text.

Keys: ``r`` asks again now, Escape goes back. Open it with ``DevicesScreen(context, user)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from control.account_rules import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

if TYPE_CHECKING:
    from control.messages import DeviceDiagnostics, DevicesReply, LoopFigures

#: How often the figures are asked for, s.
REFRESH_S = 1.0
#: The table's columns.
DEVICE_COLUMNS = ("Device", "Link", "Last line", "Bad", "Lines", "Model", "Serial", "Firmware")
#: Widest a column may be (model, serial and firmware strings come from the devices; the highlighted
#: device's whole identity is shown under the table).
COLUMN_LIMITS = {5: 20, 6: 16, 7: 16}

Fetch = Callable[[], Awaitable["DevicesReply"]]


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"


def device_row(device: DeviceDiagnostics) -> list[Cell]:
    """One row of the table (every device string as text, the link state coloured)."""
    ok = device.state in ("open", "ok")
    return [
        plain(device.name, "bold"),
        plain(device.state, "green" if ok else "bold red"),
        "-" if device.replies is None else _age(device.last_reply_age_s),
        plain(_count(device.bad_replies), "bold yellow" if device.bad_replies else ""),
        _count(device.replies),
        plain(device.model or "-"),
        plain(device.serial or "-"),
        plain(device.firmware or "-"),
    ]


def readings_text(device: DeviceDiagnostics) -> Text:
    """The device's live readings, its port and its last error, as lines of text."""
    text = Text(end="")
    text.append_text(plain(device.name, "bold"))
    if device.port:
        text.append_text(plain(f" on {device.port}"))
    if device.identity:
        text.append_text(plain(f"  ({device.identity})", "dim"))
    text.append("\n")
    text.append_text(plain("  ".join(f"{r.name}: {r.value}" for r in device.readings) or "no readings"))
    if device.discarded:
        text.append_text(plain(f"  late lines dropped: {device.discarded}"))
    if device.last_error:
        text.append("\n")
        text.append_text(plain(f"last error: {device.last_error}", "yellow"))
    return text


def loop_text(reply: DevicesReply) -> Text:
    """The controller's line: its state, rig, loop lag, CPU and uptime."""
    loop: LoopFigures = reply.loop
    cpu = "-" if loop.cpu_percent is None else f"{loop.cpu_percent:.0f} %"
    minutes = loop.uptime_s / 60
    text = Text(end="")
    text.append("Controller ", style="bold")
    text.append_text(plain(f"{reply.state.value}, {'simulated' if reply.sim else 'real'} rig  "))
    text.append_text(
        plain(
            f"loop lag p50 {_ms(loop.lag_p50_ms)} p99 {_ms(loop.lag_p99_ms)} max {_ms(loop.lag_max_ms)} "
            f"({loop.samples} over {loop.window_s:.0f} s)  CPU {cpu}  up {minutes:.0f} min"
        )
    )
    return text


def faults_text(reply: DevicesReply) -> Text:
    """The last faults, newest first, each with its reaction time."""
    if not reply.faults:
        return plain("Last faults: none since the controller started")
    text = Text("Last faults (input to laser off):", style="bold", end="")
    for fault in reply.faults:
        reaction = "periodic check" if fault.reaction_ms is None else f"{fault.reaction_ms:.2f} ms"
        text.append("\n")
        text.append_text(plain(f"{fault.at.replace('T', ' ')}  {reaction}  {fault.what}"))
    return text


class DevicesScreen(Screen[None]):
    """Each device's identity, link, counters and readings, and the controller's loop (an engineer's
    screen)."""

    DEFAULT_CSS = """
    DevicesScreen #devices {
        height: 1fr;
        padding: 0 1;
    }
    DevicesScreen #loop {
        width: 1fr;
        height: auto;
    }
    DevicesScreen #device-table {
        height: auto;
        max-height: 9;
        margin: 1 0 0 0;
        background: $surface;
    }
    DevicesScreen #readings {
        width: 1fr;
        height: auto;
        margin: 1 0 0 0;
    }
    DevicesScreen #faults {
        width: 1fr;
        height: auto;
        margin: 1 0 0 0;
    }
    DevicesScreen #origin {
        width: 1fr;
        height: auto;
        color: $text-muted;
    }
    DevicesScreen #status {
        width: 1fr;
        height: auto;
    }
    DevicesScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Ask again"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        context: ScreenContext,
        user: UserInfo,
        *,
        fetch: Fetch | None = None,
        refresh_s: float | None = REFRESH_S,
    ) -> None:
        """``fetch`` asks for the figures (default: the ``devices`` query over the console's link);
        ``refresh_s`` is how often (``None``: only on ``r``)."""
        super().__init__()
        self.context = context
        self.user = user
        self._fetch = fetch
        self._refresh_s = refresh_s
        #: The newest answer (``None`` before the first).
        self.reply: DevicesReply | None = None
        #: Why the last question got no answer ("" when it did).
        self.problem = ""

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Devices", sim=self.context.settings.sim, user_text=f"{self.user.username} ({self.user.role})"
        )
        with Vertical(id="devices"):
            yield Label("asking the controller...", id="loop")
            table: DataTable[Cell] = DataTable(id="device-table", cursor_type="row", zebra_stripes=True)
            table.add_columns(*DEVICE_COLUMNS)
            yield table
            yield Label("", id="readings")
            yield Label("", id="faults")
            yield Label(self._origin_line(), id="origin")
            yield Label("", id="status")
        yield Footer(compact=True)

    def _origin_line(self) -> str:
        remote = getattr(self.app, "remote", None)
        link = self.context.link
        if remote is not None and hasattr(remote, "describe"):
            return f"{remote.describe()}: observe.sock only, nothing here can arm"
        if link is not None and link.observe:
            return "observe.sock only, nothing here can arm"
        return ""

    def on_mount(self) -> None:
        self.ask()
        if self._refresh_s is not None:
            self.set_interval(self._refresh_s, self.ask, name="devices refresh")

    def action_refresh(self) -> None:
        self.ask()

    def action_back(self) -> None:
        self.dismiss()

    async def _default_fetch(self) -> DevicesReply:
        from control.messages import Devices, DevicesReply
        from tui.link import read_reply

        link = self.context.link
        if link is None:
            raise ControllerUnavailable("this console has no controller")
        return read_reply(DevicesReply, await link.call(Devices(), timeout_s=5.0))

    @work(exclusive=True, group="devices", exit_on_error=False)
    async def ask(self) -> None:
        """Ask the controller for the figures once and show them (or why not)."""
        fetch = self._fetch or self._default_fetch
        try:
            reply = await fetch()
        except (CommandFailed, ControllerUnavailable, TimeoutError) as exc:
            self.problem = str(exc) or "no answer"
            self._show_status(f"no figures from the controller: {self.problem}", error=True)
            return
        self.problem = ""
        self.reply = reply
        self._show(reply)

    def _show_status(self, text: str, *, error: bool) -> None:
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")

    def _show(self, reply: DevicesReply) -> None:
        self.query_one("#loop", Label).update(loop_text(reply))
        table: DataTable[Cell] = self.query_one("#device-table", DataTable)
        row = table.cursor_row
        names = [device.name for device in reply.devices]
        fill_table(
            table, DEVICE_COLUMNS, [device_row(d) for d in reply.devices], keys=names, limits=COLUMN_LIMITS
        )
        if names:
            table.move_cursor(row=min(max(row, 0), len(names) - 1), animate=False)
        self._show_readings()
        self.query_one("#faults", Label).update(faults_text(reply))
        self._show_status("", error=False)

    def _show_readings(self) -> None:
        reply = self.reply
        label = self.query_one("#readings", Label)
        if reply is None or not reply.devices:
            label.update("")
            return
        table: DataTable[Cell] = self.query_one("#device-table", DataTable)
        index = min(max(table.cursor_row, 0), len(reply.devices) - 1)
        label.update(readings_text(reply.devices[index]))

    @on(DataTable.RowHighlighted, "#device-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_readings()
