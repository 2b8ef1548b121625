"""The treatment dashboard: what the laser is doing, now, and the keys to control it.

Everything shown comes from the controller's snapshots (up to 30 a second) and camera previews:

* a state banner that cannot be missed: LASER EMISSION while emitting, ARMED, READY, PAUSED, a FAULT with
  what happened, what the controller did and how to reset it, or NO CONTROLLER;
* commanded and measured power as numbers and as a live trace, commanded and measured ring size, the laser
  output, diode current and photodiode;
* every interlock (each term of the permission to emit) with its live value;
* step n of N with the time left and where on the ramp it is, the session clock and the delivered energy;
* the camera preview with the detected ring and its diameter, or a clear "no camera".

Keys: space (or F12 anywhere) stops emission at once; p pause, r resume, a arm (password), o power override
(with a reason, for the step running when it was asked for), x abort (with a reason), f reset a fault
(password); F2 saves a snapshot of the treatment site (the camera's frame, raw and with the ring drawn, in
the session's folder) and F3 switches the aiming beam on or off (its state is on the Aim line). Their
dialogs are docked at the bottom, so the banner, the power and the interlocks stay readable
above them. When the session closes, the end-of-session screen follows.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from control.accounts import UserInfo
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import (
    Abort,
    Arm,
    Command,
    OverridePower,
    Pause,
    ResetFault,
    Resume,
    Snapshot,
    command_name,
)
from tui.safe_text import escape_controls, plain
from tui.screens._base import ControllerEvent, PreviewUpdated, ScreenContext, SnapshotUpdated
from tui.screens.checks import arm_refusal
from tui.widgets.camera import CameraPreview
from tui.widgets.header import ConsoleHeader
from tui.widgets.imaging import (
    AIM_KEY,
    SNAPSHOT_KEY,
    aim_text,
    show_snapshot_outcome,
    take_snapshot,
    toggle_aiming_beam,
)
from tui.widgets.lines import LinePanel
from tui.widgets.plot import PowerPlot

#: A snapshot comes up to 30 times a second; the figures are drawn at most this often, s (20 a
#: second). A change of state is drawn at once.
DRAW_INTERVAL_S = 0.05
#: Seconds of power trace kept on the dashboard.
TRACE_SECONDS = 60.0
#: The trace is drawn again at most this often, s: one column of its dots spans about half a second of the
#: 60 s shown, so drawing it for each snapshot (30 a second) would mostly draw the same picture.
TRACE_REDRAW_S = 0.2

#: The controller's name of the operator action each key asks for: a key acts only while the newest snapshot
#: says the supervisor permits that action (the others are left out of the footer).
_KEY_ACTIONS: dict[str, str] = {
    "pause": "pause",
    "resume": "resume",
    "arm": "arm",
    "override": "override_power",
    "abort": "abort",
    "reset": "reset_fault",
}


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _watts(value: float | None) -> str:
    return "--" if value is None else f"{value:.2f} W"


def _mm(value: float | None) -> str:
    return "--" if value is None else f"{value:.2f} mm"


def banner_text(snapshot: Snapshot | None, problem: str = "") -> tuple[str, Text]:
    """The banner's class and text for a snapshot (``None``: no controller, with ``problem``)."""
    if snapshot is None:
        return "banner-fault", Text.assemble(
            ("NO CONTROLLER", "bold"), "\n", plain(problem or "connecting...")
        )
    state = snapshot.state
    session = snapshot.session
    step = session.step if session is not None else None
    where = f"step {step.number} of {step.of}" if step is not None else ""
    if snapshot.emitting:
        return "banner-emission", Text.assemble(
            ("LASER EMISSION", "bold"),
            f"\n{where}  {snapshot.laser.commanded_w:.2f} W  release the footpedal or press space to stop",
        )
    if state == "fault" and snapshot.fault is not None:
        fault = snapshot.fault
        cause = "cause cleared: f to reset" if fault.cause_cleared else "cause still present"
        return "banner-fault", Text.assemble(
            ("FAULT ", "bold"),
            plain(fault.what, "bold"),
            "\nDone: ",
            plain(fault.action),
            "\nTo reset: ",
            plain(fault.how_to_reset),
            f" ({cause})",
        )
    if _pedal_pressed(snapshot):
        # Resuming (arming) is refused while the footpedal is down: release it first.
        resume = "release the footpedal, then r: resume"
    else:
        resume = "r: resume, then press the footpedal"
    texts = {
        "treating": ("banner-armed", "TREATING (output off)", "waiting for the laser output"),
        "armed": ("banner-armed", "ARMED", "the footpedal starts emission"),
        "ready": ("banner-ready", "READY - NOT ARMED", "a: arm with your password"),
        "paused": ("banner-ready", "PAUSED - LASER OFF", resume),
        "idle": ("banner-idle", "NO SESSION", "the session has closed"),
    }
    css, title, hint = texts.get(state, ("banner-idle", state.upper(), ""))
    return css, Text.assemble((title, "bold"), f"\n{where}  {hint}" if where else f"\n{hint}")


def _pedal_pressed(snapshot: Snapshot) -> bool:
    """Whether the controller last read the footpedal as pressed."""
    return any(
        term.name == "footpedal" and term.value.strip().lower() == "pressed" for term in snapshot.interlocks
    )


def readout_text(snapshot: Snapshot) -> Text:
    """The numbers, in lines short enough for the left half of an 80-column screen: subject and protocol,
    power, ring, step, clocks, energy, laser, and the aiming beam."""
    laser, ring, session = snapshot.laser, snapshot.ring, snapshot.session
    text = Text(no_wrap=True, overflow="ellipsis")
    if session is not None:
        text.append(escape_controls(f"{session.subject_code}  "), style="bold")
        text.append(escape_controls(session.protocol_name))
        if session.protocol_status != "approved":
            text.append(
                f"  {session.protocol_status.upper()} v{session.protocol_version} TRIAL", style="bold"
            )
        text.append("\n")
    text.append("Power  ", style="dim")
    text.append(f"set {laser.commanded_w:.2f} W", style="bold")
    text.append(f"  meas {_watts(laser.measured_w)}")
    if laser.deviation_percent is not None and laser.output_on:
        # The supervisor's own figure: the one its photodiode warning and fault judge.
        text.append(f" {laser.deviation_percent:+.1f}%")
    text.append("\nRing   ", style="dim")
    text.append(f"set {_mm(ring.commanded_mm)}", style="bold")
    text.append(f"  meas {_mm(ring.measured_mm)}")
    text.append("\nStep   ", style="dim")
    step = session.step if session is not None else None
    if step is None:
        text.append("--")
    else:
        left = max(0.0, step.duration_s - step.elapsed_s)
        text.append(f"{step.number} of {step.of}", style="bold")
        text.append(f"  {left:.1f} s left")
        if step.ramp == "linear" and step.power_end_w != step.power_start_w:
            share = 0.0 if step.duration_s <= 0 else min(1.0, max(0.0, step.elapsed_s / step.duration_s))
            text.append(f"  ramp {step.power_start_w:.1f}->{step.power_end_w:.1f} W {share * 100:.0f}%")
        else:
            text.append(f"  constant {step.power_start_w:.1f} W")
    text.append("\nTime   ", style="dim")
    if session is None:
        text.append("--")
    else:
        text.append(_clock(session.clock_s), style="bold")
        text.append(f"  treating {_clock(session.treating_s)}")
        text.append("\nEnergy ", style="dim")
        text.append(f"{session.delivered_energy_j:.1f} J", style="bold")
        if session.expected_energy_j:
            text.append(f" of {session.expected_energy_j:.1f} J")
    text.append("\nLaser  ", style="dim")
    text.append("output ON" if laser.output_on else "output off", style="bold" if laser.output_on else "")
    if laser.current_ma is not None:
        text.append(f"  {laser.current_ma:.0f} mA")
    if laser.photodiode_v is not None:
        text.append(f"  PD {laser.photodiode_v:.3f} V")
    text.append("\nAim    ", style="dim")
    text.append_text(aim_text(snapshot))
    return text


def interlock_text(snapshot: Snapshot) -> Text:
    """Every interlock, one per line: OK or NO, the name and the live value."""
    text = Text()
    for index, term in enumerate(snapshot.interlocks):
        if index:
            text.append("\n")
        text.append(" OK " if term.ok else " NO ", style="bold" if term.ok else "bold reverse")
        text.append(escape_controls(f" {term.name:<12} "), style="bold")
        text.append(escape_controls(term.value if term.ok or not term.detail else term.detail))
    return text


class DashboardScreen(Screen[None]):
    """The live treatment dashboard for the open session."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "app.stop_emission", "Stop"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("a", "arm", "Arm"),
        Binding("o", "override", "Override"),
        Binding("x", "abort", "Abort"),
        Binding("f", "reset", "Reset fault"),
        Binding(SNAPSHOT_KEY, "snapshot", "Snapshot"),
        Binding(AIM_KEY, "aiming_beam", "Aim beam"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.state: str | None = None
        #: The operator actions the supervisor permits, as the newest snapshot drawn says.
        self.actions: frozenset[str] = frozenset()
        self._banner_css = ""
        self._trace_origin: float | None = None
        self._session_seen: int | None = None
        self._left = False
        #: Snapshots drawn (for the benchmark).
        self.updates = 0
        #: What the banner shows now.
        self._banner_text: Text | None = None
        #: The newest snapshot not drawn yet, when it was drawn last and the state it showed.
        self._pending: Snapshot | None = None
        self._drawn_at = -math.inf
        self._drawn_key: tuple[object, ...] = ()
        self._draw_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Treatment", sim=self.context.settings.sim, user_text=f"{self.user.username} ({self.user.role})"
        )
        yield Static("", id="banner")
        # The figures that change with every snapshot share one band, so that redrawing them repaints
        # nothing else: the trace and the camera below are drawn only when they change.
        with Horizontal(id="dash-top"):
            yield LinePanel(id="readouts")
            yield LinePanel(id="interlocks")
        with Horizontal(id="dash-bottom"):
            yield PowerPlot(id="trace", redraw_interval_s=TRACE_REDRAW_S)
            halfblock = self.context.settings.image_protocol == "halfblock"
            yield CameraPreview(id="camera", force_halfblock=halfblock)
        if self.context.settings.sim:
            from tui.widgets.sim_panel import SimPanel

            yield SimPanel(id="sim-panel")
        yield Footer()

    def on_mount(self) -> None:
        link = self.context.link
        self.show(link.snapshot if link is not None else None)
        self.query_one("#camera", CameraPreview).show(link.preview if link is not None else None)

    # -- live data ---------------------------------------------------------------------------------------

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        """Draw a snapshot at once when the state changes (the banner above all), else at most every
        :data:`DRAW_INTERVAL_S`: the newest one then, none is drawn late."""
        snapshot = message.snapshot
        self._pending = snapshot
        now = time.monotonic()
        if self._state_key(snapshot) != self._drawn_key or now - self._drawn_at >= DRAW_INTERVAL_S:
            self._draw_pending()
        elif self._draw_timer is None:
            wait = DRAW_INTERVAL_S - (now - self._drawn_at)
            self._draw_timer = self.set_timer(wait, self._draw_pending, name="dashboard-draw")

    @staticmethod
    def _state_key(snapshot: Snapshot) -> tuple[object, ...]:
        fault = snapshot.fault
        return (snapshot.state, snapshot.emitting, fault.cause_cleared if fault is not None else None)

    def _draw_pending(self) -> None:
        if self._draw_timer is not None:
            self._draw_timer.stop()
            self._draw_timer = None
        snapshot, self._pending = self._pending, None
        if snapshot is None:
            return
        self._drawn_at = time.monotonic()
        self._drawn_key = self._state_key(snapshot)
        self.show(snapshot)

    def on_controller_event(self, message: ControllerEvent) -> None:
        """How a snapshot asked for here ended: where it was saved, or why not."""
        if self.is_current:
            show_snapshot_outcome(self, message.event)

    def on_preview_updated(self, message: PreviewUpdated) -> None:
        self.query_one("#camera", CameraPreview).show(message.preview)

    def show(self, snapshot: Snapshot | None) -> None:
        """Draw one snapshot (``None``: the controller is not reachable)."""
        self.updates += 1
        link = self.context.link
        css, banner = banner_text(snapshot, link.problem if link is not None else "no controller")
        banner_widget = self.query_one("#banner", Static)
        if css != self._banner_css:
            if self._banner_css:
                banner_widget.remove_class(self._banner_css)
            banner_widget.add_class(css)
            self._banner_css = css
        shown = self._banner_text
        if banner != shown:
            # A layout pass only when the banner's height changes.
            resized = shown is None or shown.plain.count("\n") != banner.plain.count("\n")
            banner_widget.update(banner, layout=resized)
            self._banner_text = banner
        if snapshot is None:
            return
        actions = frozenset(str(action) for action in snapshot.actions)
        if snapshot.state != self.state or actions != self.actions:
            self.state = snapshot.state
            self.actions = actions
            self.refresh_bindings()
        self.query_one("#readouts", LinePanel).show(readout_text(snapshot))
        self.query_one("#interlocks", LinePanel).show(interlock_text(snapshot))
        self._trace(snapshot)
        if self.context.settings.sim:
            from tui.widgets.sim_panel import SimPanel

            self.query_one("#sim-panel", SimPanel).show(snapshot)
        session = snapshot.session
        if session is not None:
            self._session_seen = session.session_id
        elif self._session_seen is not None and not self._left and self.is_current:
            self._left = True
            self._show_end(snapshot.last_session_id or self._session_seen)

    def _trace(self, snapshot: Snapshot) -> None:
        if snapshot.session is None:
            return
        if self._trace_origin is None:
            self._trace_origin = snapshot.time_s - snapshot.session.clock_s
            limit = snapshot.session.max_override_w
            if limit:
                # A steady scale: from 0 to the most this session may command.
                self.query_one("#trace", PowerPlot).set_ranges(y=(0.0, limit))
        t = snapshot.time_s - self._trace_origin
        plot = self.query_one("#trace", PowerPlot)
        laser = snapshot.laser
        plot.add_point("set", t, laser.commanded_w if laser.output_on else 0.0, keep_s=TRACE_SECONDS)
        if laser.measured_w is not None:
            plot.add_point("measured", t, max(0.0, laser.measured_w), keep_s=TRACE_SECONDS)

    def _show_end(self, session_id: int) -> None:
        from tui.screens.end_session import EndOfSessionScreen

        self.app.switch_screen(EndOfSessionScreen(self.context, self.user, session_id))

    # -- keys --------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "aiming_beam":
            return self.state != "fault"  # the controller refuses the aiming beam in fault
        name = _KEY_ACTIONS.get(action)
        if name is None:
            return True
        # Keys that cannot act now are left out of the footer, so what is shown fits 80 columns.
        return name in self.actions

    async def _send(self, command: Command, done: str, timeout_s: float = 10.0) -> bool:
        link = self.context.link
        if link is None:
            self.notify("no controller", severity="error")
            return False
        try:
            await link.call(command, timeout_s=timeout_s)
        except (CommandFailed, ControllerUnavailable) as exc:
            name = command_name(command).replace("_", " ")
            self.notify(f"{name} refused: {exc}", severity="error", timeout=15)
            return False
        if done:
            self.notify(done, timeout=4)
        return True

    @work(group="snapshot", exclusive=False, exit_on_error=False)
    async def action_snapshot(self) -> None:
        """Save the camera's frame in the session's folder, and say where (or why not)."""
        await take_snapshot(self, self.context.link)

    @work(group="aiming", exclusive=True, exit_on_error=False)
    async def action_aiming_beam(self) -> None:
        """Switch the aiming beam on or off."""
        await toggle_aiming_beam(self, self.context.link)

    async def action_pause(self) -> None:
        await self._send(Pause(), "paused: laser off")

    async def action_resume(self) -> None:
        snapshot = self.context.link.snapshot if self.context.link is not None else None
        if snapshot is not None and snapshot.session is not None and snapshot.session.resume_needs_key:
            # The pause was not this operator's own on this console: resuming is arming, with the password.
            self.action_arm()
            return
        await self._send(Resume(), "resumed: armed, the footpedal starts emission")

    @work(group="dialog", exclusive=True, exit_on_error=False)
    async def action_arm(self) -> None:
        """Arm again (after a pause, a stop or a fault reset): key control with the password."""
        from tui.screens.dialogs import PasswordDialog

        refusal = arm_refusal(self.context)
        if refusal is not None:
            self.notify(f"Arming refused: {refusal}", severity="error", timeout=15)
            return
        link = self.context.link
        session = link.snapshot.session if link is not None and link.snapshot is not None else None
        operator = session.operator if session is not None and session.operator else self.user.username
        blocked = session is not None and session.key_failures >= session.key_failures_allowed
        if blocked:
            dialog = PasswordDialog(
                "Arm the laser",
                "Key control is blocked after too many wrong passwords: an admin's username and password "
                "unblock it (or abort the session).",
                username=None,
                cursor_blink=self.context.settings.cursor_blink,
            ).docked()
        else:
            dialog = PasswordDialog(
                "Arm the laser",
                "Key control: enter your password to arm.",
                username=operator,
                who=f"{self.user.full_name} ({operator})" if operator == self.user.username else operator,
                cursor_blink=self.context.settings.cursor_blink,
            ).docked()
        answer = await self.app.push_screen_wait(dialog)
        if answer is not None:
            command = Arm(password=answer[1], username=answer[0] if blocked else None)
            await self._send(command, "armed: the footpedal starts emission", 15.0)

    @work(group="dialog", exclusive=True, exit_on_error=False)
    async def action_override(self) -> None:
        """Change the running step's power, with a reason (checked by the controller too)."""
        from tui.screens.dialogs import OverrideDialog

        link = self.context.link
        snapshot = link.snapshot if link is not None else None
        if snapshot is None or snapshot.session is None:
            return
        session = snapshot.session
        if session.step is None:
            self.notify("no protocol step is running: nothing to override", severity="error", timeout=10)
            return
        # The override belongs to this step: the controller refuses it if the step has ended meanwhile.
        step = session.step.number
        limit = session.max_override_w if session.max_override_w is not None else snapshot.laser.commanded_w
        answer = await self.app.push_screen_wait(
            OverrideDialog(
                current_w=snapshot.laser.commanded_w,
                max_w=limit,
                cursor_blink=self.context.settings.cursor_blink,
                step=step,
            ).docked()
        )
        if answer is not None:
            watts, reason = answer
            await self._send(
                OverridePower(watts=watts, reason=reason, step=step),
                f"power override for step {step}: {watts:.2f} W",
            )

    @work(group="dialog", exclusive=True, exit_on_error=False)
    async def action_abort(self) -> None:
        """Abort the session (laser off first), with a reason."""
        from tui.screens.dialogs import ReasonDialog

        reason = await self.app.push_screen_wait(
            ReasonDialog(
                "Abort session",
                "The laser stops and the session ends. Why is it aborted?",
                cursor_blink=self.context.settings.cursor_blink,
            ).docked()
        )
        if reason is not None:
            await self._send(Abort(reason=reason), f"session aborted: {reason}", 20.0)

    @work(group="dialog", exclusive=True, exit_on_error=False)
    async def action_reset(self) -> None:
        """Acknowledge the latched fault once its cause has cleared (who, with the password)."""
        from tui.screens.dialogs import PasswordDialog

        answer = await self.app.push_screen_wait(
            PasswordDialog(
                "Reset the fault",
                "Acknowledge the fault: the laser stays off until armed again.",
                username=self.user.username,
                cursor_blink=self.context.settings.cursor_blink,
            ).docked()
        )
        if answer is not None:
            username, password = answer
            await self._send(
                ResetFault(username=username, password=password), "fault reset: arm again to continue", 15.0
            )
