"""The protocol editor (an admin's screen): a protocol's steps in a form, checked as they are typed, with the
power curve they make; saving stores a new draft version.

One row per step: duration (s), start and end power (W), ring diameter (mm) and ramp type (``constant`` or
``linear``); above them the protocol's name (typed only for a new protocol) and its own limits (maximum power,
W, and maximum total duration, s). Every change is checked at once exactly as a protocol file is
(:func:`control.protocols.check_protocol` against the system's limits read from the database): each error is
shown under the row it belongs to, in the words the file check uses, and the field it names is marked; the
curve and the totals follow the steps while they are valid.

Keys: ``ctrl+n`` adds a step after the one holding the cursor (a copy of it), ``ctrl+r`` removes that step,
``ctrl+s`` saves, ``escape`` leaves (asking first when something was typed). Saving goes through
:func:`control.protocol_approval.save_edited_version`, which checks everything again, refuses a version
another admin saved meanwhile (saying who and when) and audits the save or its refusal. A save always makes a
new draft version, so the version the form started from (one a session may have used) is never changed; an
admin other than the author approves the draft from the library.

Open it with ``ProtocolEditorScreen(context, user, EditorStart(...))``; it returns what was stored, or None.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Label
from textual.worker import Worker, WorkerState

from control.account_rules import UserInfo
from control.protocol_approval import (
    ACTION_EDIT,
    ApprovalRefused,
    ConcurrentProtocolChange,
    ImportResult,
    check_name,
    record_refusal,
    save_edited_version,
)
from control.protocols import (
    LimitsError,
    Plan,
    ProtocolError,
    ValidationLimits,
    check_protocol,
    format_number,
    load_limits,
)
from storage.errors import StorageError, one_line
from tui.safe_text import plain
from tui.screens._base import ScreenContext
from tui.screens.dialogs import ConfirmDialog
from tui.widgets.header import ConsoleHeader
from tui.widgets.plot import PowerPlot

#: A step's fields, in the order of the form's columns: (JSON key, column heading, width in cells).
STEP_FIELDS: Final = (
    ("duration_seconds", "Duration s", 12),
    ("power_start_watts", "Start W", 10),
    ("power_end_watts", "End W", 10),
    ("ring_size_mm", "Ring mm", 10),
    ("ramp_type", "Ramp", 11),
)
#: The protocol's own limits: (JSON key under ``safety_limits``, label).
LIMIT_FIELDS: Final = (("max_power_watts", "Max W"), ("max_duration_seconds", "Max s"))
#: The step a new protocol starts with, and its limits.
NEW_STEP: Final = {
    "duration_seconds": "60",
    "power_start_watts": "1.0",
    "power_end_watts": "1.0",
    "ring_size_mm": "3.0",
    "ramp_type": "constant",
}
NEW_LIMITS: Final = {"max_power_watts": "10.0", "max_duration_seconds": "600"}
#: Most steps the form holds.
MAX_STEPS: Final = 50

_STEP_ERROR = re.compile(r"^steps\[(\d+)\]\.(\w+):")
_LIMIT_ERROR = re.compile(r"^safety_limits\.(\w+):")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


@dataclass(frozen=True, slots=True)
class EditorStart:
    """What the editor starts from: the protocol's ``name`` (empty for a new protocol), the version the
    form is filled from (``based_on``, its number, and ``data``, its JSON; None and "" for a new protocol),
    the newest version number the library showed (0 for a new protocol) and the names already taken."""

    name: str = ""
    based_on: int | None = None
    data: str = ""
    latest: int = 0
    taken: frozenset[str] = field(default_factory=frozenset)

    @property
    def new_protocol(self) -> bool:
        return self.based_on is None and self.latest == 0


def _field_text(value: object) -> str:
    """A value of a protocol file as typed in the form (numbers as JSON writes them)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


def _value(text: str) -> object:
    """A typed field as the protocol file holds it: a number when it reads as one, else the text (the check
    then names it)."""
    typed = text.strip()
    if _NUMBER.match(typed):
        number = float(typed)
        if not math.isfinite(number):
            return typed
        return int(typed) if re.fullmatch(r"-?\d+", typed) and len(typed) <= 15 else number
    return typed


def protocol_json(steps: Sequence[Mapping[str, str]], limits: Mapping[str, str]) -> str:
    """The protocol file the form's fields make (a field left empty is left out, so the check says it is
    missing)."""
    rows: list[dict[str, object]] = []
    for number, step in enumerate(steps, start=1):
        row: dict[str, object] = {"step_number": number}
        row |= {key: _value(text) for key, text in step.items() if text.strip()}
        rows.append(row)
    own = {key: _value(text) for key, text in limits.items() if text.strip()}
    return json.dumps({"version": "1.0", "steps": rows, "safety_limits": own}, indent=2)


def form_fields(data: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The steps and limits of the protocol JSON ``data`` as form fields (a value it lacks is left empty);
    a new protocol's when ``data`` is empty or not a protocol object."""
    try:
        raw = json.loads(data) if data.strip() else None
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        return [dict(NEW_STEP)], dict(NEW_LIMITS)
    steps_raw = raw.get("steps")
    steps = [
        {key: _field_text(step.get(key)) for key, _h, _w in STEP_FIELDS}
        for step in (steps_raw if isinstance(steps_raw, list) else [])
        if isinstance(step, dict)
    ] or [dict(NEW_STEP)]
    own = raw.get("safety_limits")
    own = own if isinstance(own, dict) else {}
    return steps, {key: _field_text(own.get(key)) for key, _label in LIMIT_FIELDS}


class StepRow(Vertical):
    """One step of the form: its number, a field per value, and the step's errors under them."""

    DEFAULT_CSS = """
    StepRow {
        height: auto;
    }
    StepRow .step-fields {
        height: 1;
    }
    StepRow .step-number {
        width: 4;
        color: $text-muted;
    }
    StepRow Input {
        margin: 0 1 0 0;
        background: $panel;
    }
    StepRow Input:focus {
        background: $primary 30%;
    }
    StepRow Input.-refused {
        background: $error 40%;
    }
    StepRow .step-errors {
        width: 100%;
        height: auto;
        padding: 0 0 0 4;
        color: $error;
        display: none;
    }
    StepRow .step-errors.-shown {
        display: block;
    }
    """

    def __init__(self, uid: int, values: Mapping[str, str], *, cursor_blink: bool) -> None:
        super().__init__(id=f"step-{uid}")
        self.uid = uid
        self.inputs: dict[str, Input] = {}
        for key, _heading, width in STEP_FIELDS:
            box = Input(values.get(key, ""), id=f"step-{uid}-{key}", compact=True)
            box.styles.width = width
            box.cursor_blink = cursor_blink
            self.inputs[key] = box
        self.number = Label("", classes="step-number")
        self.errors = Label("", classes="step-errors")

    def compose(self) -> ComposeResult:
        with Horizontal(classes="step-fields"):
            yield self.number
            yield from self.inputs.values()
        yield self.errors

    def values(self) -> dict[str, str]:
        return {key: box.value for key, box in self.inputs.items()}

    def show(self, number: int, errors: Sequence[tuple[str | None, str]]) -> None:
        """Number the row and show its errors (each with the field it names, None for the whole step)."""
        self.number.update(f"{number}")
        refused = {key for key, _text in errors}
        for key, box in self.inputs.items():
            box.set_class(key in refused, "-refused")
        self.errors.update(plain("\n".join(text for _key, text in errors), keep_newlines=True))
        self.errors.set_class(bool(errors), "-shown")


class ProtocolEditorScreen(Screen[ImportResult | None]):
    """A protocol's steps in a form with live checking and the power curve; saves a new draft version."""

    DEFAULT_CSS = """
    ProtocolEditorScreen #editor {
        height: 1fr;
        padding: 0 1;
    }
    ProtocolEditorScreen .editor-row {
        height: 1;
    }
    ProtocolEditorScreen .editor-row Label {
        width: auto;
        padding: 0 1 0 0;
        color: $text-muted;
    }
    ProtocolEditorScreen .editor-row Input {
        margin: 0 2 0 0;
        background: $panel;
    }
    ProtocolEditorScreen .editor-row Input:focus {
        background: $primary 30%;
    }
    ProtocolEditorScreen .editor-row Input.-refused {
        background: $error 40%;
    }
    ProtocolEditorScreen #name {
        width: 1fr;
    }
    ProtocolEditorScreen #max_power_watts, ProtocolEditorScreen #max_duration_seconds {
        width: 9;
    }
    ProtocolEditorScreen #note {
        width: 1fr;
    }
    ProtocolEditorScreen #protocol-errors {
        width: 100%;
        height: auto;
        color: $error;
    }
    ProtocolEditorScreen #step-headings {
        height: 1;
        margin: 1 0 0 0;
        color: $text-muted;
        text-style: bold;
    }
    ProtocolEditorScreen #step-headings Label {
        margin: 0 1 0 0;
    }
    ProtocolEditorScreen #step-headings .step-number {
        width: 4;
        margin: 0;
    }
    ProtocolEditorScreen #steps {
        height: 1fr;
        min-height: 3;
    }
    ProtocolEditorScreen #curve {
        height: 40%;
        min-height: 5;
    }
    ProtocolEditorScreen #totals {
        width: 100%;
        height: auto;
        color: $text-muted;
    }
    ProtocolEditorScreen #status {
        width: 100%;
        height: auto;
    }
    ProtocolEditorScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Save draft", priority=True),
        Binding("ctrl+n", "add_step", "Add step", priority=True),
        Binding("ctrl+r", "remove_step", "Remove step", priority=True),
        Binding("escape", "back", "Back", priority=True),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, start: EditorStart) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.start = start
        steps, limits = form_fields(start.data)
        self._initial = (steps, limits)
        self._uids = 0
        self._rows: list[StepRow] = [self._new_row(values) for values in steps]
        self._limits = limits
        #: The system's limits the steps are checked against (None until read).
        self.limits: ValidationLimits | None = None
        #: Every error of the form as last checked (empty: the protocol may be saved).
        self.errors: list[str] = []
        #: The plan the form makes while it is valid.
        self.plan: Plan | None = None
        #: True while a save is being stored.
        self.saving = False

    def _new_row(self, values: Mapping[str, str]) -> StepRow:
        self._uids += 1
        return StepRow(self._uids, values, cursor_blink=self.context.settings.cursor_blink)

    def _input(self, input_id: str, value: str, hint: str) -> Input:
        box = Input(value, hint, id=input_id, compact=True)
        box.cursor_blink = self.context.settings.cursor_blink
        return box

    def compose(self) -> ComposeResult:
        start = self.start
        if start.new_protocol:
            title = "New protocol"
        else:
            title = f"Edit {start.name}" + (f" (from v{start.based_on})" if start.based_on else "")
        yield ConsoleHeader(
            escape(plain(title).plain),
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="editor"):
            with Horizontal(classes="editor-row"):
                yield Label("Name")
                name = self._input("name", start.name, "the protocol's name")
                name.disabled = not start.new_protocol
                yield name
                for key, label in LIMIT_FIELDS:
                    yield Label(label)
                    yield self._input(key, self._limits.get(key, ""), "")
            yield Label("", id="protocol-errors")
            with Horizontal(id="step-headings"):
                yield Label("#", classes="step-number")
                for key, heading, width in STEP_FIELDS:
                    column = Label(heading, id=f"heading-{key}")
                    column.styles.width = width
                    yield column
            with VerticalScroll(id="steps"):
                yield from self._rows
            yield PowerPlot(y_unit="W", x_unit="s", id="curve")
            yield Label("", id="totals")
            with Horizontal(classes="editor-row"):
                yield Label("Note")
                yield self._input("note", "", "what changed and why (kept with the version)")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        focus = (
            self.query_one("#name", Input)
            if self.start.new_protocol
            else self._rows[0].inputs[STEP_FIELDS[0][0]]
        )
        focus.focus()
        if self.user.role != "admin":
            # Reached from an admin's screen only; anyone else is told so, and a save is refused (and audited)
            # by the library.
            self.show_status(f"only an admin may edit protocols ({self.user.username} is {self.user.role})")
            return
        self.show_status("reading the system's limits...", error=False)
        self.read_limits()

    @work(exclusive=True, group="editor-limits", exit_on_error=False)
    async def read_limits(self) -> None:
        try:
            self.limits = await load_limits(self.context.accounts.sessions)
        except (LimitsError, StorageError) as exc:
            self.show_status(f"the system's limits cannot be read: {one_line(exc)}; nothing can be saved")
            return
        self.show_status(f"checked against: {self.limits.describe()}", error=False)
        self.check()

    # -- the form --------------------------------------------------------------------------------------------

    @property
    def rows(self) -> list[StepRow]:
        """The step rows, in order."""
        return list(self._rows)

    def step_input(self, index: int, key: str) -> Input:
        """The field ``key`` of step ``index`` (0-based)."""
        return self._rows[index].inputs[key]

    def form_values(self) -> tuple[list[dict[str, str]], dict[str, str]]:
        limits = {key: self.query_one(f"#{key}", Input).value for key, _label in LIMIT_FIELDS}
        return [row.values() for row in self._rows], limits

    def protocol_text(self) -> str:
        """The protocol file the form makes now."""
        return protocol_json(*self.form_values())

    @property
    def changed(self) -> bool:
        """Whether anything differs from what the form started with."""
        return self.form_values() != self._initial or bool(self.query_one("#note", Input).value.strip())

    @on(Input.Changed)
    def field_changed(self, event: Input.Changed) -> None:
        if event.input.id != "note":
            self.check()

    def check(self) -> None:
        """Check the form as a protocol file is checked; show each error beside its field, and the curve."""
        if self.limits is None:
            return
        errors: list[str] = []
        if self.start.new_protocol:
            name = self.query_one("#name", Input).value
            try:
                checked = check_name(name)
                if checked in self.start.taken:
                    errors.append(f"name: a protocol named {checked!r} exists; edit it from the library")
            except ApprovalRefused as exc:
                errors.append(f"name: {exc}")
        try:
            plan: Plan | None = check_protocol(self.protocol_text(), self.limits)
        except ProtocolError as exc:
            plan = None
            errors.extend(exc.errors)
        self.show_errors(errors)
        self.show_plan(plan)

    def show_errors(self, errors: Sequence[str]) -> None:
        """Each error beside the field it names: a step's under its row, the rest under the name."""
        self.errors = list(errors)
        per_row: dict[int, list[tuple[str | None, str]]] = {}
        general: list[str] = []
        refused: set[str] = set()
        for error in errors:
            step = _STEP_ERROR.match(error)
            limit = _LIMIT_ERROR.match(error)
            if step is not None and int(step.group(1)) < len(self._rows):
                key = step.group(2)
                per_row.setdefault(int(step.group(1)), []).append(
                    (key if key != "step_number" else None, error)
                )
                continue
            if limit is not None:
                refused.add(limit.group(1))
            elif error.startswith("steps: total duration"):
                refused.add("max_duration_seconds")
            elif error.startswith("name:"):
                refused.add("name")
            general.append(error)
        for index, row in enumerate(self._rows):
            row.show(index + 1, per_row.get(index, []))
        for key in ("name", *(k for k, _label in LIMIT_FIELDS)):
            self.query_one(f"#{key}", Input).set_class(key in refused, "-refused")
        self.query_one("#protocol-errors", Label).update(plain("\n".join(general), keep_newlines=True))
        if errors:
            count = len(errors)
            self.show_status(
                f"{count} problem{'s' if count != 1 else ''} to correct before saving", error=True
            )
        elif self.limits is not None:
            self.show_status("valid: ctrl+s saves it as a new draft version", error=False)

    def show_plan(self, plan: Plan | None) -> None:
        self.plan = plan
        plot = self.query_one("#curve", PowerPlot)
        totals = self.query_one("#totals", Label)
        if plan is None:
            plot.clear_series()
            totals.update("no curve while the steps have problems")
            return
        points: list[tuple[float, float]] = []
        for step in plan.steps:
            points += [(step.start_s, step.power_start_w), (step.end_s, step.power_end_w)]
        plot.set_series("setpoint", points, label="setpoint")
        totals.update(
            f"{len(plan.steps)} step{'s' if len(plan.steps) != 1 else ''}, "
            f"{format_number(plan.total_duration_s)} s, at most {format_number(plan.max_power_w)} W, "
            f"{format_number(round(plan.expected_energy_j, 3))} J expected"
        )

    def show_status(self, text: str, *, error: bool = True) -> None:
        status = self.query_one("#status", Label)
        status.update(plain(text))
        status.set_class(error, "error")

    def _focused_row(self) -> int | None:
        widget = self.focused
        while widget is not None:
            if isinstance(widget, StepRow):
                return self._rows.index(widget)
            parent = widget.parent
            widget = parent if isinstance(parent, Widget) else None
        return None

    # -- actions ---------------------------------------------------------------------------------------------

    async def action_add_step(self) -> None:
        """A copy of the step holding the cursor (the last when none does), inserted after it."""
        if len(self._rows) >= MAX_STEPS:
            self.show_status(f"a protocol has at most {MAX_STEPS} steps here", error=True)
            return
        at = self._focused_row()
        index = len(self._rows) - 1 if at is None else at
        row = self._new_row(self._rows[index].values())
        await self.query_one("#steps", VerticalScroll).mount(row, after=self._rows[index])
        self._rows.insert(index + 1, row)
        row.inputs[STEP_FIELDS[0][0]].focus()
        self.check()

    async def action_remove_step(self) -> None:
        """Remove the step holding the cursor (a protocol keeps at least one)."""
        at = self._focused_row()
        if at is None:
            self.show_status("put the cursor in the step to remove", error=True)
            return
        if len(self._rows) == 1:
            self.show_status("a protocol has at least one step", error=True)
            return
        row = self._rows.pop(at)
        await row.remove()
        self._rows[min(at, len(self._rows) - 1)].inputs[STEP_FIELDS[0][0]].focus()
        self.check()

    def action_back(self) -> None:
        if self.saving:
            return
        if not self.changed:
            self.dismiss(None)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.dismiss(None)

        self.app.push_screen(
            ConfirmDialog("Leave the editor? What was typed is not saved."), callback=answered
        )

    @property
    def terminal(self) -> str | None:
        terminal = getattr(self.app, "terminal", None)
        return terminal if isinstance(terminal, str) else self.context.accounts.terminal

    def action_save(self) -> None:
        """Store the form as a new draft version (checked and audited by the library, refused or not)."""
        if self.saving:
            return
        if self.limits is None:
            self.show_status("the system's limits are not read yet: nothing can be saved", error=True)
            return
        self.saving = True
        self.show_status("saving...", error=False)
        self.save(
            self.query_one("#name", Input).value, self.protocol_text(), self.query_one("#note", Input).value
        )

    @work(exclusive=True, group="editor-save", exit_on_error=False)
    async def save(self, name: str, text: str, note: str) -> None:
        start = self.start
        sessions = self.context.accounts.sessions
        try:
            if start.new_protocol and name.strip() in start.taken:
                reason = f"a protocol named {name.strip()!r} exists; edit it from the library"
                await record_refusal(
                    sessions,
                    ACTION_EDIT,
                    self.user.username,
                    reason,
                    protocol=name.strip(),
                    terminal=self.terminal,
                )
                raise ApprovalRefused(reason)
            result = await save_edited_version(
                sessions,
                text,
                name=name,
                admin=self.user.username,
                based_on=start.based_on,
                expected_latest=start.latest,
                note=note,
                terminal=self.terminal,
            )
        except ConcurrentProtocolChange as exc:
            self.saving = False
            self.show_status(f"refused: {exc}", error=True)
            return
        except ApprovalRefused as exc:
            self.saving = False
            fields = [
                e
                for e in exc.errors
                if _STEP_ERROR.match(e) or _LIMIT_ERROR.match(e) or e.startswith("steps")
            ]
            if fields:
                self.show_errors(fields)
            self.show_status(f"refused, nothing saved: {'; '.join(exc.errors)}", error=True)
            return
        self.saving = False
        self.dismiss(result)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR:
            self.saving = False
            self.show_status(f"failed: {one_line(event.worker.error or RuntimeError('failed'))}", error=True)


__all__ = [
    "LIMIT_FIELDS",
    "MAX_STEPS",
    "STEP_FIELDS",
    "EditorStart",
    "ProtocolEditorScreen",
    "StepRow",
    "form_fields",
    "protocol_json",
]
