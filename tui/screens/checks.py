"""The pre-treatment checks: every check with its live value and pass/fail, then arming (key control).

The checks come from the controller (``prechecks``), asked again every second while the screen shows: every
device connected and identified, each interlock, the TEC within its window, the active calibrations and their
dates, the database's integrity and the backup made when the session opened. The technician's password arms
the laser (key control), and only when every check passes; over SSH the console refuses to arm and says why.
Every condition that refuses arming is a check (the controller's state first: a latched fault fails it with
how to reset it), and the verdict never says all pass while arming would be refused. F4 resets a latched
fault (the password, once its cause has cleared); F8 aborts the session (with a reason) before any emission.
F2 saves a snapshot of the treatment site and F3 switches the aiming beam (its state is at the end of the
password line), to place the ring before treating. F10 records a focus stack of the camera into the session
(frames over a few seconds while the focus ring is turned, the sharpest marked and judged against the focus
reference): the optics' focus kept with the session's records.
When the list is taller than the screen, the line under it says which rows show and that up/down scroll.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ValidationError
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from control.accounts import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import Abort, Arm, Prechecks, PrechecksReply, PrecheckView, Snapshot
from tui.safe_text import escape_controls, plain
from tui.screens._base import ControllerEvent, ScreenContext, SnapshotUpdated
from tui.widgets.fault import RESET_KEY, RESET_KEY_LABEL, in_fault, reset_fault
from tui.widgets.header import ConsoleHeader
from tui.widgets.imaging import (
    AIM_KEY,
    FOCUS_STACK_KEY,
    SNAPSHOT_KEY,
    aim_text,
    show_snapshot_outcome,
    take_focus_stack,
    take_snapshot,
    toggle_aiming_beam,
)

#: How often the checks are asked for again, s.
REFRESH_S = 1.0

#: Why the console will not arm over SSH (shown on the screen).
SSH_REFUSAL = (
    "this console runs over SSH (SSH_CONNECTION is set): it never arms the laser; arm at the treatment "
    "console"
)


def arm_refusal(context: ScreenContext) -> str | None:
    """Why this console may not arm the laser at all, or ``None``."""
    if context.settings.remote:
        return SSH_REFUSAL
    if context.link is None:
        return "no controller is connected"
    return None


class ChecksScreen(Screen[None]):
    """Pre-treatment checks and key control for the open session."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(RESET_KEY, "reset_fault", "Reset fault"),
        Binding("f8", "abort", "Abort"),
        Binding("f9", "refresh", "Check again"),
        Binding(SNAPSHOT_KEY, "snapshot", "Snapshot"),
        Binding(AIM_KEY, "aiming_beam", "Aim beam"),
        Binding(FOCUS_STACK_KEY, "focus_stack", "Focus"),
        # The password field has the focus: up and down move through the checks.
        Binding("down", "scroll_checks(1)", "Next check", show=False),
        Binding("up", "scroll_checks(-1)", "Previous check", show=False),
    ]

    DEFAULT_CSS = """
    ChecksScreen #verdict-row {
        height: 1;
    }
    ChecksScreen #checks-verdict {
        width: 1fr;
    }
    ChecksScreen #checks-more {
        width: auto;
        padding: 0 0 0 1;
        color: $text-muted;
    }
    ChecksScreen #checks-aim {
        width: auto;
        padding: 0 0 0 2;
    }
    """

    def __init__(self, context: ScreenContext, user: UserInfo, session_id: int | None = None) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: The session these checks are for (from the controller's answer to opening it, or the first
        #: snapshot showing it): only its end leaves the screen. A snapshot sent before the session opened
        #: shows no session and the previous one as the last, and must not be read as this one's end.
        self.session_id = session_id
        #: The checks last received.
        self.checks: list[PrecheckView] = []
        self.busy = False
        self._left = False
        #: True once the session's key control is blocked (too many wrong passwords): arming needs an admin.
        self.key_blocked = False
        #: "fault" while the controller has a fault latched, else None (decides whether F4 shows).
        self.fault_state: str | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Pre-treatment checks",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="checks-body"):
            yield Static("", id="checks-session")
            table: DataTable[Text | str] = DataTable(id="checks-table", cursor_type="row", zebra_stripes=True)
            yield table
            with Horizontal(id="verdict-row"):
                yield Static("", id="checks-verdict")
                yield Static("", id="checks-more")
            with Horizontal(id="arm-row"):
                yield Label("Password to arm", id="arm-label")
                field = Input(None, "technician's password (key control)", password=True, id="arm-password")
                field.cursor_blink = self.context.settings.cursor_blink
                field.compact = True
                yield field
                yield Static(aim_text(None), id="checks-aim")
            yield Label("", id="status")
        if self.context.settings.sim:
            from tui.widgets.sim_panel import SimPanel

            yield SimPanel(id="sim-panel")
        yield Footer()

    def on_mount(self) -> None:
        refusal = arm_refusal(self.context)
        if refusal is not None:
            self.show_status(f"Arming refused: {refusal}")
            self.query_one("#arm-password", Input).disabled = True
        else:
            self.query_one("#arm-password", Input).focus()
        link = self.context.link
        if link is not None and link.snapshot is not None:
            self._show_session(link.snapshot)
        self.refresh_checks()
        self.set_interval(REFRESH_S, self.refresh_checks, name="prechecks")
        self.watch(self.query_one("#checks-table", DataTable), "scroll_y", self._show_more, init=False)

    def on_resize(self, _event: Resize) -> None:
        self.call_after_refresh(self._show_more)

    # -- live data ---------------------------------------------------------------------------------------

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        if in_fault(message.snapshot) != (self.fault_state is not None):
            self.fault_state = message.snapshot.state if in_fault(message.snapshot) else None
            self.refresh_bindings()
            self.refresh_checks()  # the fault shows as a failing check at once, not a second later
        self._show_session(message.snapshot)
        if self.context.settings.sim:
            from tui.widgets.sim_panel import SimPanel

            self.query_one("#sim-panel", SimPanel).show(message.snapshot)

    def _show_session(self, snapshot: Snapshot) -> None:
        session = snapshot.session
        line = self.query_one("#checks-session", Static)
        if session is None:
            ended = self.session_id is None or snapshot.last_session_id == self.session_id
            if not ended:
                return  # sent before this session opened: its own snapshots follow
            line.update(Text("No session is open.", style="bold"))
            if not self._left and snapshot.state == "idle" and self.is_current:
                # Aborted here or elsewhere: its notes and summary come next.
                self._left = True
                self._show_end(snapshot.last_session_id)
            return
        self.session_id = session.session_id
        text = Text()
        text.append(f"Session {session.session_id}", style="bold")
        text.append_text(plain(f"  {session.subject_code}  {session.protocol_name}"))
        if session.protocol_status != "approved":
            text.append_text(
                plain(f"  {session.protocol_status.upper()} v{session.protocol_version} TRIAL", "bold")
            )
        if session.total_duration_s is not None:
            minutes, seconds = divmod(round(session.total_duration_s), 60)
            text.append(f"  {minutes}:{seconds:02d}")
        if session.expected_energy_j is not None:
            text.append(f"  {session.expected_energy_j:.1f} J expected")
        text.append(f"  state {snapshot.state.upper()}")
        line.update(text)
        self.query_one("#checks-aim", Static).update(aim_text(snapshot))
        operator = session.operator or self.user.username
        self.query_one("#arm-label", Label).update(plain(f"Password of {operator} to arm"))
        self.key_blocked = session.key_failures >= session.key_failures_allowed
        if snapshot.state in ("armed", "treating") and self.is_current and not self._left:
            self._left = True
            self._show_dashboard()

    @work(group="prechecks", exclusive=True, exit_on_error=False)
    async def refresh_checks(self) -> None:
        """Ask the controller for the checks and show them."""
        link = self.context.link
        if link is None:
            return
        try:
            reply = await link.call(Prechecks(), timeout_s=5.0)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.query_one("#checks-verdict", Static).update(plain(f"Checks unavailable: {exc}", "bold"))
            self.checks = []
            return
        try:
            self.checks = PrechecksReply.model_validate(reply).checks
        except ValidationError as exc:
            self.query_one("#checks-verdict", Static).update(plain(f"Checks unreadable: {exc}", "bold"))
            self.checks = []
            return
        self._show_checks()

    def _show_checks(self) -> None:
        table = self.query_one("#checks-table", DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        rows: list[tuple[Text, Text, Text]] = []
        for check in self.checks:
            ok, value, detail = check.ok, check.value, check.detail
            rows.append(
                (
                    plain(check.name),
                    Text("PASS", style="bold") if ok else Text("FAIL", style="bold reverse"),
                    plain(value if ok or not detail or detail == value else f"{value} ({detail})"),
                )
            )
        # The value column as wide as its longest value (the table scrolls sideways when it does not fit).
        table.add_column("Check", key="name", width=max([5, *(r[0].cell_len for r in rows)]))
        table.add_column("Result", key="ok", width=6)
        table.add_column("Value", key="value", width=max([5, *(r[2].cell_len for r in rows)]))
        table.add_rows(rows)
        if self.checks:
            table.move_cursor(row=min(cursor, len(self.checks) - 1))
        failing = [c for c in self.checks if not c.ok]
        refusal = arm_refusal(self.context)
        verdict = self.query_one("#checks-verdict", Static)
        verdict.set_class(not failing and refusal is None, "all-pass")
        verdict.set_class(bool(failing) or refusal is not None, "some-fail")
        fault = next((c for c in failing if c.name == "state" and "FAULT" in c.value), None)
        if fault is not None:
            verdict.update(f"FAULT latched: {RESET_KEY_LABEL} resets it with your password")
        elif failing:
            verdict.update(f"{len(failing)} of {len(self.checks)} checks failing: arming is not possible")
        elif refusal is not None:
            verdict.update(f"All {len(self.checks)} checks pass, but this console cannot arm")
        else:
            verdict.update(f"All {len(self.checks)} checks pass: enter the password to arm")
        self.call_after_refresh(self._show_more)

    def _show_more(self) -> None:
        """Under the list, which rows show when not all fit, how many failing ones are out of view, and
        that up and down scroll (nothing when every row shows)."""
        if not self.is_current:
            return  # left meanwhile (armed, aborted): its widgets may be gone
        table = self.query_one("#checks-table", DataTable)
        more = self.query_one("#checks-more", Static)
        total = len(self.checks)
        rows = table.scrollable_content_region.height - (table.header_height if table.show_header else 0)
        if total == 0 or rows >= total or rows <= 0:
            more.update("")
            return
        first = min(round(table.scroll_y), total - 1)
        last = min(total, first + rows)
        hidden_failing = sum(
            1 for index, check in enumerate(self.checks) if not check.ok and not first <= index < last
        )
        text = f"rows {first + 1}-{last} of {total}"
        if hidden_failing:
            text += f", {hidden_failing} failing out of view"
        more.update(f"{text} (up/down)")

    def action_scroll_checks(self, rows: int) -> None:
        """Up or down: move through the checks (the list scrolls with the highlighted one)."""
        table = self.query_one("#checks-table", DataTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + rows)))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The fault reset key shows only while a fault is latched, the aiming beam's only while none is."""
        if action == "reset_fault":
            return self.fault_state is not None
        if action == "aiming_beam":
            return self.fault_state is None
        return True

    @work(group="reset", exclusive=True, exit_on_error=False)
    async def action_reset_fault(self) -> None:
        """F4: acknowledge the latched fault with the password (refused while its cause is there); the
        checks are then asked again, and arming is possible once they pass."""
        if await reset_fault(self, self.context, self.user):
            self.show_status("Fault reset: the checks are asked again; arm with your password", error=False)
            self.refresh_checks()

    @property
    def all_pass(self) -> bool:
        """True when the checks last received all pass."""
        return bool(self.checks) and all(c.ok for c in self.checks)

    # -- actions -----------------------------------------------------------------------------------------

    def show_status(self, text: str, *, error: bool = True) -> None:
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")
        status.set_class(not error, "info")

    @work(group="snapshot", exclusive=False, exit_on_error=False)
    async def action_snapshot(self) -> None:
        """Save the camera's frame in the session's folder, and say where (or why not)."""
        folder = await take_snapshot(self, self.context.link)
        if folder is not None:
            self.show_status(f"Saving a snapshot in {folder}", error=False)

    @work(group="focus-stack", exclusive=True, exit_on_error=False)
    async def action_focus_stack(self) -> None:
        """Record a focus stack into the session's folder, and say where (or why not)."""
        folder = await take_focus_stack(self, self.context.link)
        if folder is not None:
            self.show_status(f"Taking a focus stack in {folder}: turn the focus ring", error=False)

    def on_controller_event(self, message: ControllerEvent) -> None:
        """How a snapshot or a focus stack asked for here ended, also on the status line."""
        if not self.is_current:
            return
        words = show_snapshot_outcome(self, message.event)
        if words is not None:
            self.show_status(words, error=message.event.severity != "info")

    @work(group="aiming", exclusive=True, exit_on_error=False)
    async def action_aiming_beam(self) -> None:
        """Switch the aiming beam on or off."""
        on = await toggle_aiming_beam(self, self.context.link)
        if on is not None:
            self.show_status(f"Aiming beam {'on' if on else 'off'}", error=False)

    def action_refresh(self) -> None:
        self.refresh_checks()

    @on(Input.Submitted, "#arm-password")
    def submit_arm(self, event: Input.Submitted) -> None:
        self.arm(event.value)

    @work(group="arm", exclusive=True, exit_on_error=False)
    async def arm(self, password: str) -> None:
        """Key control: arm with the technician's password, if every check passes."""
        refusal = arm_refusal(self.context)
        if refusal is not None:
            self.show_status(f"Arming refused: {refusal}")
            return
        if self.busy:
            return
        if self.key_blocked:
            await self._arm_unblocked_by_admin()
            return
        if not password:
            self.show_status("Enter your password to arm")
            return
        if not self.all_pass:
            failing = ", ".join(c.name for c in self.checks if not c.ok) or "not checked yet"
            self.show_status(f"Arming refused: checks failing ({failing})")
            return
        link = self.context.link
        assert link is not None
        self.busy = True
        self.show_status("Arming...", error=False)
        try:
            await link.call(Arm(password=password), timeout_s=15.0)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.show_status(f"Not armed: {exc}")
            field = self.query_one("#arm-password", Input)
            field.value = ""
            field.focus()
            return
        finally:
            self.busy = False
        self._left = True
        self._show_dashboard()

    async def _arm_unblocked_by_admin(self) -> None:
        """Key control is blocked after too many wrong passwords: an admin's username and password unblock it
        and arm (the controller checks the admin and every other check)."""
        from tui.screens.dialogs import PasswordDialog

        answer = await self.app.push_screen_wait(
            PasswordDialog(
                "Arm the laser",
                "Key control is blocked after too many wrong passwords: an admin's username and password "
                "unblock it (or abort the session with F8).",
                username=None,
                cursor_blink=self.context.settings.cursor_blink,
            )
        )
        if answer is None:
            return
        link = self.context.link
        assert link is not None
        self.busy = True
        self.show_status("Arming...", error=False)
        try:
            await link.call(Arm(password=answer[1], username=answer[0]), timeout_s=15.0)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.show_status(f"Not armed: {exc}")
            return
        finally:
            self.busy = False
        self._left = True
        self._show_dashboard()

    def _show_end(self, session_id: int | None) -> None:
        if session_id is None:
            self.app.pop_screen()
            return
        from tui.screens.end_session import EndOfSessionScreen

        self.app.switch_screen(EndOfSessionScreen(self.context, self.user, session_id))

    def _show_dashboard(self) -> None:
        from tui.screens.dashboard import DashboardScreen

        self.app.switch_screen(DashboardScreen(self.context, self.user))

    @work(group="abort", exclusive=True, exit_on_error=False)
    async def action_abort(self) -> None:
        """Abort the session before treatment, with a reason."""
        from tui.screens.dialogs import ReasonDialog

        link = self.context.link
        if link is None:
            return
        reason = await self.app.push_screen_wait(
            ReasonDialog(
                "Abort session",
                "Why is this session aborted?",
                cursor_blink=self.context.settings.cursor_blink,
            )
        )
        if reason is None:
            return
        try:
            await link.call(Abort(reason=reason), timeout_s=15.0)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.show_status(f"Not aborted: {exc}")
            return
        self.app.notify(escape_controls(f"session aborted: {reason}"), severity="warning", markup=False)
        if not self._left:
            self._left = True
            self._show_end(link.snapshot.last_session_id if link.snapshot is not None else None)
