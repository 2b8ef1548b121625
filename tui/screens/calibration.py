"""The engineer's calibration screens (docs/calibration.md): the stored calibrations and the two wizards.

:class:`CalibrationScreen` lists every stored calibration (the active one of each type marked, with its age
against ``calibration_validity_days``) and opens the wizards:

- **Ring size** (``r``): the engineer's password first (each actuator move is checked with it by the
  controller, which refuses a move while a session is open); then for each position the actuator moves and
  the engineer types the ring diameter measured, mm, or, where a camera scale calibration is active and the
  camera sees the ring, takes the camera's measurement with F6 (the line under the prompt shows it, or why it
  is not offered). The saved calibration's notes say which points were typed and which came from the camera.
  No emission: allowed on a remote console too (the previews reach it over ``observe.sock``), where the
  controller stores the result (``calibration_save_ring``: the remote console's records are read-only).
- **Laser power** (``l``): at the kiosk only (refused over SSH). The password is key control: the controller
  arms the rig as for a treatment. For each current the controller sets the drive with the laser off; the
  engineer presses and holds the footpedal, reads the external power meter and types its reading, W; the
  controller measures the photodiode at the same time. The points give the laser calibration (current to
  power) and the photodiode calibration (volts to power).

Each wizard shows its points, the least-squares fit and its r squared as they come in. F5 saves: the points
are checked (at least 3, finite, none negative, strictly monotonic, r squared at or above the quality floor);
a refusal names the reason and stores nothing; otherwise the engineer confirms and the new calibration
becomes the active one of its type (older ones are kept). A typed value that is not a finite, non-negative
number (a ring size above 0) is refused at once and not recorded. Escape leaves (the laser power run ends,
laser off).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label

from control.accounts import UserInfo
from control.calibration import ACTUATOR, CAMERA, LASER, PHOTODIODE, CalibrationKind
from control.calibration_records import (
    ACTION_SAVED,
    CALIBRATING_ROLE,
    POINT_CAMERA,
    POINT_TYPED,
    R_SQUARED_FLOOR,
    CalibrationInfo,
    CalibrationRefused,
    CheckedCalibration,
    check_points,
    list_calibrations,
    ring_wizard_notes,
    store_calibration,
)
from control.ipc_errors import CommandFailed, ControllerUnavailable
from tui.remote import is_remote, remote_refusal
from tui.safe_text import plain
from tui.screens._base import PreviewUpdated, ScreenContext
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.tables import Cell, fill_table

if TYPE_CHECKING:
    from control.messages import Preview

#: Actuator positions of the ring size wizard, um (the default travel).
RING_POSITIONS_UM: tuple[float, ...] = (0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0)
#: Where in the active laser calibration's current span the laser power wizard measures (fractions).
LASER_SPAN_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: How long an actuator move may take, s (the stage moves at 200 um/s by default).
MOVE_TIMEOUT_S = 60.0
LIST_COLUMNS = ("ID", "device", "date (UTC)", "active", "points", "r2", "by", "notes")
WIZARD_CSS = """
    #calibration, #wizard { height: 1fr; }
    #calibration-table, #points { height: 1fr; }
    #prompt, #fit, #fit2, #camera-reading, #status, #calibration-detail { width: 100%; height: auto; }
    #status.error { color: $error; text-style: bold; }
    #value { width: 100%; }
"""


def parse_reading(text: str, what: str, unit: str, *, above_zero: bool = False) -> float:
    """A typed reading: a finite number, not negative (above zero with ``above_zero``); ValueError with the
    reason otherwise."""
    cleaned = text.strip().removesuffix(unit).strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"{what}: {text.strip() or 'nothing'!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text.strip()!r} is not a finite number")
    if value < 0 or (above_zero and value == 0):
        raise ValueError(f"{what} must be {'above' if above_zero else 'at least'} 0 {unit}; got {value:g}")
    return value


#: Previews the ring size wizard waits for after a move before it offers the camera's measurement: the first
#: may have been made from a frame taken before the actuator stopped.
FRESH_PREVIEWS = 2


def camera_offer(preview: Preview | None) -> tuple[float | None, str]:
    """The camera's measurement of the ring in ``preview``, mm, and the line that shows it; ``(None, why it
    is not offered)`` without a camera image, without a ring in view or without a camera scale calibration."""
    if preview is None:
        return None, "no camera preview from the controller"
    if preview.camera != "ok":
        detail = f" ({preview.detail})" if preview.detail else ""
        return None, f"the camera is {preview.camera}{detail}"
    px = preview.ring_diameter_px
    if px is None:
        return None, "the camera sees no ring"
    mm = preview.ring_diameter_mm
    if mm is None or preview.ring_scale_id is None:
        why = preview.ring_scale_detail or "uncalibrated"
        return None, f"ring {px:.1f} px, {why} (import one: tosca calibration import)"
    return mm, f"{mm:.3f} mm ({px:.1f} px through camera scale calibration #{preview.ring_scale_id})"


def fit_line(kind: CalibrationKind, points: list[tuple[float, float]]) -> str:
    """The fit of ``points`` as shown under the table, or why it is not acceptable yet."""
    if len(points) < 2:
        return f"{kind.calibration_type}: fit after 2 points"
    try:
        checked = check_points(kind, points)
    except CalibrationRefused as exc:
        return f"not acceptable: {exc}"
    fit = checked.curve.fit
    return (
        f"{kind.calibration_type}: {fit.equation(kind.x_key, kind.y_key)}, r squared {fit.r_squared:.4f} "
        f"(floor {R_SQUARED_FLOOR:.2f})"
    )


class CalibrationScreen(Screen[None]):
    """Every stored calibration, and the wizards (see the module documentation)."""

    DEFAULT_CSS = WIZARD_CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "ring", "Ring size wizard"),
        Binding("l", "laser", "Laser power wizard"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.rows: list[CalibrationInfo] = []

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Calibrations",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="calibration"):
            yield DataTable(id="calibration-table", cursor_type="row", zebra_stripes=True)
            yield Label("", id="calibration-detail")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#calibration-table", DataTable).focus()
        self.load()

    def on_screen_resume(self) -> None:
        self.load()

    @work(exclusive=True, group="calibration-load", exit_on_error=False)
    async def load(self) -> None:
        self.rows = await list_calibrations(self.context.accounts.sessions)
        table: DataTable[Cell] = self.query_one("#calibration-table", DataTable)
        cells: list[list[Cell]] = [
            [
                plain(str(row.calibration_id)),
                plain(row.device_type, "bold" if row.active else ""),
                plain(f"{row.calibration_date:%Y-%m-%d %H:%M}"),
                plain("active" if row.active else "-"),
                plain(str(row.points)),
                plain("-" if row.r_squared is None else f"{row.r_squared:.4f}"),
                plain(row.made_by),
                plain(" ".join((row.notes or "").split())),
            ]
            for row in self.rows
        ]
        fill_table(table, LIST_COLUMNS, cells, limits={1: 12, 6: 12, 7: 40})
        active = [row for row in self.rows if row.active]
        now = self.context.settings.clock()
        validity = await self._validity_days()
        ages = ", ".join(
            f"{_label(row)} {_days(now, row.calibration_date)} days"
            + (" EXPIRED" if validity is not None and _days(now, row.calibration_date) > validity else "")
            for row in active
        )
        valid = "" if validity is None else f" (valid for {validity} days)"
        self.query_one("#calibration-detail", Label).update(
            plain(f"active: {ages}{valid}" if active else "no active calibration: the rig cannot treat")
        )
        if self.user.role != CALIBRATING_ROLE:
            self.show_status(f"only an engineer calibrates ({self.user.username} is {self.user.role})")

    async def _validity_days(self) -> int | None:
        from control.system_config import SettingError, read_system_settings

        try:
            async with self.context.accounts.sessions() as session:
                settings = await read_system_settings(session)
        except SettingError:
            return None
        return settings.calibration_validity_days

    def show_status(self, text: str, *, error: bool = True) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    def action_ring(self) -> None:
        """Open the ring size wizard."""
        if self.user.role != CALIBRATING_ROLE:
            self.show_status(f"only an engineer calibrates ({self.user.username} is {self.user.role})")
            return
        self.app.push_screen(RingSizeWizard(self.context, self.user))

    def action_laser(self) -> None:
        """Open the laser power wizard (refused over SSH)."""
        if self.user.role != CALIBRATING_ROLE:
            self.show_status(f"only an engineer calibrates ({self.user.username} is {self.user.role})")
            return
        refusal = remote_refusal(self.context, "calibration.laser")
        if refusal is not None:
            self.show_status(refusal)
            return
        self.app.push_screen(LaserPowerWizard(self.context, self.user))

    def action_back(self) -> None:
        self.app.pop_screen()


def _label(row: CalibrationInfo) -> str:
    """How a calibration is named in the line of ages (the camera has a scale and a focus reference)."""
    return "camera scale" if row.calibration_type == CAMERA.calibration_type else row.device_type


def _days(now: datetime, then: datetime) -> int:
    return int((now - then).total_seconds() // 86400)


class _Wizard(Screen[None]):
    """What both wizards share: the password first, one typed reading per point, the points table, the fit
    lines, F5 to save after confirmation."""

    DEFAULT_CSS = WIZARD_CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f5", "save", "Save"),
        Binding("escape", "leave", "Leave"),
    ]
    TITLE_TEXT = ""
    COLUMNS: tuple[str, ...] = ()
    #: True for a wizard that shows the camera's measurement under its prompt.
    CAMERA_LINE = False

    def __init__(self, context: ScreenContext, user: UserInfo) -> None:
        super().__init__()
        self.context = context
        self.user = user
        #: "password", "moving", "reading", "done" or "saved".
        self.stage = "password"
        self.password: str | None = None
        self.index = 0
        self.saved: list[int] = []

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            self.TITLE_TEXT,
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="wizard"):
            yield DataTable(id="points", cursor_type="none", zebra_stripes=True)
            yield Label("", id="fit")
            yield Label("", id="fit2")
            yield Label("", id="prompt")
            if self.CAMERA_LINE:
                yield Label("", id="camera-reading")
            yield Input(id="value", password=True, placeholder="your password")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.show_points()
        refusal = self.refusal()
        if refusal is not None:
            self.stage = "refused"
            self.query_one("#value", Input).disabled = True
            self.prompt("")
            self.show_status(refusal)
            return
        self.prompt(self.password_prompt())
        self.query_one("#value", Input).focus()

    # -- each wizard's own ------------------------------------------------------------------------------
    def refusal(self) -> str | None:
        if self.user.role != CALIBRATING_ROLE:
            return f"only an engineer calibrates ({self.user.username} is {self.user.role})"
        if self.context.link is None:
            return "no controller is connected"
        return None

    @abstractmethod
    def password_prompt(self) -> str:
        """What the wizard does, and the request for the password."""

    @abstractmethod
    def show_points(self) -> None:
        """Show the points measured so far and their fit."""

    @abstractmethod
    def checked(self) -> list[tuple[CheckedCalibration, str]]:
        """Every calibration the points give, checked (CalibrationRefused with the reason), with its notes."""

    @abstractmethod
    async def begin(self, password: str) -> bool:
        """Start with the engineer's password; False when refused (the reason shown)."""

    @abstractmethod
    async def next_point(self) -> None:
        """Set up the next point (or finish when every point is measured)."""

    @abstractmethod
    async def take(self, typed: str) -> None:
        """Record the value typed for the point being measured (or refuse it, saying why)."""

    async def end(self) -> None:
        """Called when the wizard is left."""

    # -- shared -----------------------------------------------------------------------------------------
    def prompt(self, text: str) -> None:
        self.query_one("#prompt", Label).update(plain(text))

    def show_status(self, text: str, *, error: bool = True) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    def ask_value(self, prompt: str, placeholder: str) -> None:
        field = self.query_one("#value", Input)
        field.password = False
        field.placeholder = placeholder
        field.value = ""
        field.disabled = False
        field.focus()
        self.prompt(prompt)

    async def call(self, command: Any, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """Send ``command``; the controller's refusal is shown and None returned."""
        link = self.context.link
        if link is None:
            self.show_status("no controller is connected")
            return None
        try:
            return await link.call(command, timeout_s)
        except CommandFailed as exc:
            self.show_status(f"refused: {exc.error}")
        except (ControllerUnavailable, TimeoutError, RuntimeError) as exc:
            self.show_status(f"the controller did not answer: {exc or type(exc).__name__}")
        return None

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        typed = event.value
        field = self.query_one("#value", Input)
        field.value = ""
        if self.stage == "password":
            if not typed:
                self.show_status("type your password")
                return
            field.disabled = True
            if await self.begin(typed):
                self.password = typed
                await self.next_point()
            else:
                field.disabled = False
                field.focus()
        elif self.stage == "reading":
            await self.take(typed)

    async def action_save(self) -> None:
        """F5: check the points, then save after the engineer confirms."""
        if self.stage in ("refused", "saved"):
            return
        try:
            found = self.checked()
        except CalibrationRefused as exc:
            self.show_status(f"not saved: {exc}")
            return
        names = " and ".join(item.kind.calibration_type for item, _ in found)
        self.app.push_screen(
            ConfirmDialog(f"Save the {names} calibration as active? The one in use now is kept, inactive."),
            self._confirmed,
        )

    async def _confirmed(self, yes: bool | None) -> None:
        if not yes:
            self.show_status("not saved", error=False)
            return
        try:
            ids = await self.store(self.checked())
        except CalibrationRefused as exc:
            self.show_status(f"not saved: {exc}")
            return
        if ids is None:
            return  # the controller refused it: said under the table
        self.saved = ids
        self.stage = "saved"
        self.query_one("#value", Input).disabled = True
        self.show_status(
            "saved as active: " + ", ".join(f"calibration #{i}" for i in ids) + "; the ones before are kept",
            error=False,
        )
        await self.end()

    async def store(self, found: list[tuple[CheckedCalibration, str]]) -> list[int] | None:
        """Store the checked calibrations as active; their ids (``None``: refused, the reason shown)."""
        ids = []
        for item, notes in found:
            ids.append(
                await store_calibration(
                    self.context.accounts.sessions,
                    item,
                    engineer=self.user.username,
                    action=ACTION_SAVED,
                    notes=notes,
                    source=notes,
                    terminal=self.context.accounts.terminal,
                )
            )
        return ids

    async def action_leave(self) -> None:
        """Escape: leave the wizard (a laser power run ends, laser off)."""
        await self.end()
        self.app.pop_screen()


class RingSizeWizard(_Wizard):
    """The ring size wizard: the actuator moves, the engineer types the measured diameter or takes the
    camera's measurement (F6)."""

    TITLE_TEXT = "Ring size calibration"
    CAMERA_LINE = True
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f6", "take_camera", "Camera's value"),
    ]

    def __init__(
        self, context: ScreenContext, user: UserInfo, positions_um: tuple[float, ...] = RING_POSITIONS_UM
    ) -> None:
        super().__init__(context, user)
        self.positions = positions_um
        self.points: list[tuple[float, float]] = []
        #: Where each point's ring size came from (POINT_TYPED or POINT_CAMERA), in the order of ``points``.
        self.sources: list[str] = []
        #: The camera scale calibration the camera's points were measured through.
        self.camera_scale_id: int | None = None
        #: Where the actuator stopped for the point being measured, um.
        self.current_position = 0.0
        #: The newest camera preview, and how many arrived since the actuator stopped.
        self.preview: Preview | None = None
        self.fresh_previews = 0

    def password_prompt(self) -> str:
        return (
            f"The actuator moves to {len(self.positions)} positions; at each, measure the ring and type its "
            "diameter, or take the camera's measurement. Your password (each move is checked with it):"
        )

    def show_points(self) -> None:
        table: DataTable[Cell] = self.query_one("#points", DataTable)
        cells: list[list[Cell]] = [
            [plain(f"{i}"), plain(f"{x:g}"), plain(f"{y:g}"), plain(source)]
            for i, ((x, y), source) in enumerate(zip(self.points, self.sources, strict=False), 1)
        ]
        fill_table(table, ("point", "position um", "ring mm", "from"), cells)
        self.query_one("#fit", Label).update(plain(fit_line(ACTUATOR, self.points)))

    def checked(self) -> list[tuple[CheckedCalibration, str]]:
        if len(self.sources) != len(self.points):
            raise CalibrationRefused("the points and where they came from do not match: measure again")
        notes = ring_wizard_notes(self.sources, self.camera_scale_id)
        return [(check_points(ACTUATOR, self.points), notes)]

    # -- the camera's measurement -----------------------------------------------------------------------
    def on_preview_updated(self, message: PreviewUpdated) -> None:
        self.preview = message.preview
        if self.stage == "reading":
            self.fresh_previews += 1
        self.show_camera()

    def camera_measurement(self) -> tuple[float | None, str]:
        """The camera's measurement at the point being measured, mm, and the line shown; (None, why not)."""
        if self.stage != "reading":
            return None, "no point is being measured"
        if self.fresh_previews < FRESH_PREVIEWS:
            return None, "waiting for the camera's view at this position"
        return camera_offer(self.preview)

    def show_camera(self) -> None:
        line = self.query_one("#camera-reading", Label)
        if self.stage != "reading":
            line.update("")
            return
        mm, text = self.camera_measurement()
        if mm is None:
            line.update(plain(f"camera's measurement not offered: {text}"))
        else:
            line.update(plain(f"camera: {text}; F6 takes it (or type a value)"))

    async def action_take_camera(self) -> None:
        """F6: the camera's measurement becomes the point's ring size."""
        if self.stage != "reading":
            self.show_status("not taken: no point is being measured")
            return
        mm, text = self.camera_measurement()
        scale_id = self.preview.ring_scale_id if self.preview is not None else None
        if mm is None or scale_id is None:
            self.show_status(f"not taken: {text}")
            return
        if self.camera_scale_id is not None and scale_id != self.camera_scale_id:
            self.show_status(
                f"not taken: the camera scale changed (calibration #{self.camera_scale_id} to #{scale_id}) "
                "during this calibration; type the value, or start again"
            )
            return
        self.camera_scale_id = scale_id
        await self.record(round(mm, 4), POINT_CAMERA)

    async def begin(self, password: str) -> bool:
        self.password = password
        return True

    async def store(self, found: list[tuple[CheckedCalibration, str]]) -> list[int] | None:
        """On the remote console (its records read-only) the controller stores it, with the password."""
        if not is_remote(self.context):
            return await super().store(found)
        from control.messages import CalibrationSaveRing

        if self.password is None:
            self.show_status("not saved: type your password first")
            return None
        camera = self.camera_scale_id if POINT_CAMERA in self.sources else None
        reply = await self.call(
            CalibrationSaveRing(
                points=[[x, y] for x, y in self.points],
                username=self.user.username,
                password=self.password,
                point_sources=[POINT_CAMERA if s == POINT_CAMERA else POINT_TYPED for s in self.sources],
                camera_scale_id=camera,
            )
        )
        return None if reply is None else [int(reply["calibration_id"])]

    async def next_point(self) -> None:
        if self.index >= len(self.positions):
            self.stage = "done"
            self.query_one("#value", Input).disabled = True
            self.prompt(
                "Every position measured: F5 saves (after you confirm), Escape leaves without saving."
            )
            self.show_camera()
            return
        from control.messages import CalibrationMove

        assert self.password is not None
        target = self.positions[self.index]
        self.stage = "moving"
        self.show_camera()
        self.prompt(
            f"Point {self.index + 1} of {len(self.positions)}: moving the actuator to {target:g} um ..."
        )
        reply = await self.call(
            CalibrationMove(position_um=target, username=self.user.username, password=self.password),
            MOVE_TIMEOUT_S,
        )
        if reply is None:
            # A wrong password or a session opened meanwhile: the password is asked again.
            self.stage = "password"
            self.password = None
            field = self.query_one("#value", Input)
            field.password = True
            field.placeholder = "your password"
            field.disabled = False
            field.focus()
            self.prompt("Your password again to move on (or Escape):")
            return
        self.current_position = float(reply["position_um"])
        self.fresh_previews = 0
        self.stage = "reading"
        self.ask_value(
            f"Point {self.index + 1} of {len(self.positions)}: actuator at {self.current_position:.1f} um. "
            "Type the ring diameter you measured, mm, and press Enter:",
            "ring diameter, mm",
        )
        self.show_camera()

    async def take(self, typed: str) -> None:
        try:
            ring = parse_reading(typed, "the ring diameter", "mm", above_zero=True)
        except ValueError as exc:
            self.show_status(f"not recorded: {exc}")
            return
        await self.record(ring, POINT_TYPED)

    async def record(self, ring: float, source: str) -> None:
        """The point measured: ``ring`` mm at the actuator's position, typed or from the camera."""
        self.points.append((self.current_position, ring))
        self.sources.append(source)
        self.show_status(
            f"point {self.index + 1}: {self.current_position:.1f} um -> {ring:g} mm ({source})", error=False
        )
        self.show_points()
        self.index += 1
        await self.next_point()


class LaserPowerWizard(_Wizard):
    """The laser power wizard: currents stepped, the meter's reading typed, the photodiode measured."""

    TITLE_TEXT = "Laser power calibration"

    def __init__(
        self, context: ScreenContext, user: UserInfo, currents_ma: tuple[float, ...] | None = None
    ) -> None:
        super().__init__(context, user)
        self.currents: tuple[float, ...] = currents_ma or ()
        #: (current mA, meter W, photodiode V) per point.
        self.points: list[tuple[float, float, float]] = []
        self.begun = False
        #: True when the point's current was refused: the next Enter tries to set it again.
        self._retry_current = False

    def refusal(self) -> str | None:
        return remote_refusal(self.context, "calibration.laser") or super().refusal()

    def password_prompt(self) -> str:
        return (
            "The laser will emit while you hold the footpedal, with every interlock as in a treatment. "
            "Put the power meter in the beam. Your password (key control):"
        )

    def show_points(self) -> None:
        table: DataTable[Cell] = self.query_one("#points", DataTable)
        cells: list[list[Cell]] = [
            [plain(f"{i}"), plain(f"{ma:g}"), plain(f"{w:g}"), plain(f"{v:.4f}")]
            for i, (ma, w, v) in enumerate(self.points, 1)
        ]
        fill_table(table, ("point", "current mA", "meter W", "photodiode V"), cells)
        self.query_one("#fit", Label).update(plain(fit_line(LASER, self.laser_points())))
        self.query_one("#fit2", Label).update(plain(fit_line(PHOTODIODE, self.photodiode_points())))

    def laser_points(self) -> list[tuple[float, float]]:
        return [(ma, w) for ma, w, _ in self.points]

    def photodiode_points(self) -> list[tuple[float, float]]:
        return [(v, w) for _, w, v in self.points]

    def checked(self) -> list[tuple[CheckedCalibration, str]]:
        # Both are checked before either is stored.
        return [
            (check_points(LASER, self.laser_points()), "laser power wizard"),
            (check_points(PHOTODIODE, self.photodiode_points()), "laser power wizard (photodiode)"),
        ]

    async def begin(self, password: str) -> bool:
        from control.calibration import MissingCalibrations, load_active_calibrations
        from control.messages import CalibrationBegin

        if not self.currents:
            try:
                active = await load_active_calibrations(self.context.accounts.sessions)
            except (MissingCalibrations, ValueError) as exc:
                self.show_status(f"refused: {exc} (import the factory sheet first: tosca calibration import)")
                return False
            low, high = active.laser.curve.domain
            self.currents = tuple(round(low + (high - low) * f, -1) for f in LASER_SPAN_FRACTIONS)
        reply = await self.call(CalibrationBegin(password=password), 30.0)
        if reply is None:
            return False
        self.begun = True
        self.show_status(f"armed for calibration ({reply.get('state')})", error=False)
        return True

    async def next_point(self) -> None:
        from control.messages import CalibrationCurrent

        if self.index >= len(self.currents):
            self.stage = "done"
            self.query_one("#value", Input).disabled = True
            await self.end()
            self.prompt("Every point measured (laser off): F5 saves both calibrations (after you confirm).")
            return
        current = self.currents[self.index]
        self.stage = "moving"
        reply = await self.call(CalibrationCurrent(current_ma=current))
        if reply is None:
            self.stage = "reading"
            self.ask_value(
                "The point could not be set (see below); type anything and Enter to try it again:", ""
            )
            self._retry_current = True
            return
        self._retry_current = False
        self.stage = "reading"
        self.ask_value(
            f"Point {self.index + 1} of {len(self.currents)}: {current:g} mA set (expected "
            f"{float(reply['expected_w']):.2f} W). Press and hold the footpedal, then type the power meter's "
            "reading, W, and press Enter:",
            "power meter reading, W",
        )

    async def take(self, typed: str) -> None:
        from control.messages import CalibrationMeasure

        if self._retry_current:
            await self.next_point()
            return
        try:
            meter = parse_reading(typed, "the power meter reading", "W")
        except ValueError as exc:
            self.show_status(f"not recorded: {exc}")
            return
        reply = await self.call(CalibrationMeasure(), 10.0)
        if reply is None:
            return
        current = self.currents[self.index]
        volts = float(reply["photodiode_v"])
        self.points.append((current, meter, volts))
        self.show_points()
        self.show_status(
            f"point {self.index + 1}: {current:g} mA -> {meter:g} W, photodiode {volts:.4f} V; "
            "release the footpedal",
            error=False,
        )
        self.index += 1
        await self.next_point()

    async def end(self) -> None:
        if not self.begun:
            return
        from control.messages import CalibrationEnd

        self.begun = False
        await self.call(CalibrationEnd())
