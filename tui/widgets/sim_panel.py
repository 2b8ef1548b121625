"""The simulated hardware panel, shown only when the console runs on the simulated rig (``--sim``).

A terminal cannot report a key being held, so the footpedal is a toggle: F5 presses or releases it, F6 hits or
releases the E-stop, F7 opens :class:`SimFaultScreen` to inject a fault. The app binds those keys
(see :data:`PEDAL_KEY`, :data:`ESTOP_KEY`, :data:`FAULT_KEY`) and sends, through the controller's ``sim``
command, the line :func:`pedal_command` or :func:`estop_command` returns, or the one the fault screen returns.
The panel only shows: it reads the footpedal and E-stop from the controller's snapshots
(:meth:`SimPanel.show`), never from what it last sent, so it shows what the controller sees.

:data:`FAULTS` lists every command of the simulator command language (docs/devices.md, "The simulated rig").
The value ranges here are the simulator's own (``devices/sim/rig.py``); the tests hold the two together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Vertical
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from control.messages import Snapshot
from tui.screens.dialogs import DialogInputError, DialogScreen

#: The keys the app binds for the simulated hardware.
PEDAL_KEY = "f5"
ESTOP_KEY = "f6"
FAULT_KEY = "f7"

#: The title of the panel's border: the panel must never be mistaken for real hardware.
SIMULATED_HARDWARE = "SIMULATED HARDWARE"

PedalState: TypeAlias = Literal["pressed", "released", "unknown"]
EstopState: TypeAlias = Literal["hit", "released", "unknown"]

#: Serial devices of the simulated rig (garbage and stall apply to these), and every device (unplug, replug).
SERIAL_DEVICES: tuple[str, ...] = ("laser", "tec", "actuator", "safety")
ALL_DEVICES: tuple[str, ...] = (*SERIAL_DEVICES, "camera")


def _interlock_value(snapshot: Snapshot | None, name: str) -> str | None:
    if snapshot is None:
        return None
    for term in snapshot.interlocks:
        if term.name == name:
            return term.value.strip().lower()
    return None


def pedal_state(snapshot: Snapshot | None) -> PedalState:
    """The footpedal as the controller last reported it (``"unknown"`` with no snapshot or no reading)."""
    value = _interlock_value(snapshot, "footpedal")
    if value == "pressed":
        return "pressed"
    if value == "released":
        return "released"
    return "unknown"


def estop_state(snapshot: Snapshot | None) -> EstopState:
    """The E-stop as the controller last reported it: ``"hit"`` when pressed, ``"unknown"`` without a
    reading."""
    value = _interlock_value(snapshot, "estop")
    if value == "pressed":
        return "hit"
    if value == "released":
        return "released"
    return "unknown"


def pedal_command(snapshot: Snapshot | None) -> str:
    """The simulator command that toggles the footpedal: ``"pedal down"`` when it is released, else
    ``"pedal up"`` (also when its state is unknown: releasing is the safe direction)."""
    return "pedal down" if pedal_state(snapshot) == "released" else "pedal up"


def estop_command(snapshot: Snapshot | None) -> str:
    """The simulator command that toggles the E-stop: ``"estop off"`` when it is hit, else ``"estop on"``
    (also when its state is unknown: hitting it is the safe direction)."""
    return "estop off" if estop_state(snapshot) == "hit" else "estop on"


class SimPanel(Widget):
    """One line (inside a border titled SIMULATED HARDWARE) with the footpedal (PRESSED / released), the
    E-stop (HIT / released) and the keys that drive them. Call :meth:`show` with every snapshot."""

    DEFAULT_CSS = """
    SimPanel {
        layout: horizontal;
        width: 100%;
        height: auto;
        padding: 0 1;
        border: heavy $warning;
        border-title-color: $warning;
        border-title-style: bold;
        border-title-align: left;
        background: $surface;
    }
    SimPanel Static {
        width: auto;
        height: 1;
    }
    SimPanel .sim-name {
        color: $text-muted;
        padding: 0 1 0 0;
    }
    SimPanel .sim-value {
        padding: 0 1;
        margin: 0 2 0 0;
    }
    SimPanel .sim-value.-active {
        background: $warning;
        color: $text;
        text-style: bold;
    }
    SimPanel #sim-estop.-active {
        background: $error;
    }
    SimPanel .sim-value.-unknown {
        color: $text-muted;
    }
    SimPanel #sim-keys {
        width: 1fr;
        content-align-horizontal: right;
    }
    """

    def __init__(self, *, id: str | None = "sim-panel") -> None:
        super().__init__(id=id)
        self.border_title = SIMULATED_HARDWARE
        self.pedal: PedalState = "unknown"
        self.estop: EstopState = "unknown"

    def compose(self) -> ComposeResult:
        yield Static("Footpedal", classes="sim-name")
        yield Static("", id="sim-pedal", classes="sim-value")
        yield Static("E-stop", classes="sim-name")
        yield Static("", id="sim-estop", classes="sim-value")
        yield Static(
            f"[b]{PEDAL_KEY.upper()}[/b] pedal  [b]{ESTOP_KEY.upper()}[/b] E-stop  "
            f"[b]{FAULT_KEY.upper()}[/b] fault",
            id="sim-keys",
        )

    def on_mount(self) -> None:
        self._render_states()

    def show(self, snapshot: Snapshot | None) -> None:
        """Show the footpedal and E-stop of ``snapshot`` (both "unknown" when it is ``None``)."""
        pedal, estop = pedal_state(snapshot), estop_state(snapshot)
        if (pedal, estop) == (self.pedal, self.estop):
            return
        self.pedal, self.estop = pedal, estop
        if self.is_mounted:
            self._render_states()

    def _render_states(self) -> None:
        pedal = self.query_one("#sim-pedal", Static)
        pedal.update({"pressed": "PRESSED", "released": "released", "unknown": "unknown"}[self.pedal])
        pedal.set_class(self.pedal == "pressed", "-active")
        pedal.set_class(self.pedal == "unknown", "-unknown")
        estop = self.query_one("#sim-estop", Static)
        estop.update({"hit": "HIT", "released": "released", "unknown": "unknown"}[self.estop])
        estop.set_class(self.estop == "hit", "-active")
        estop.set_class(self.estop == "unknown", "-unknown")


@dataclass(frozen=True)
class SimFault:
    """One simulator command offered by the fault screen.

    ``command`` is the command line, complete unless ``needs_value`` names a value to append: a number from
    ``low`` to ``high`` inclusive in the unit the name gives (a whole number when ``whole``), for which
    ``example`` is a sensible suggestion.
    """

    label: str
    command: str
    needs_value: str | None = None
    low: float = 0.0
    high: float = 0.0
    whole: bool = False
    example: str = ""

    def value_text(self, text: str) -> str:
        """The value typed for this fault, as it goes on the command line.

        Raises :class:`~tui.screens.dialogs.DialogInputError` with the operator's message when it is not a
        number in range (or not a whole number where one is needed), or when this fault takes no value.
        """
        name = self.needs_value
        if name is None:
            raise DialogInputError(f"'{self.command}' takes no value")
        word = text.strip()
        span = f"{self.low:g} to {self.high:g}"
        if self.whole:
            if not (word.isascii() and word.isdigit()):
                raise DialogInputError(f"{name}: must be a whole number from {span}, e.g. {self.example}")
            count = int(word)
            if not self.low <= count <= self.high:
                raise DialogInputError(f"{name}: {count} is outside {span}")
            return str(count)
        try:
            value = float(word)
        except ValueError:
            raise DialogInputError(f"{name}: must be a number from {span}, e.g. {self.example}") from None
        if not math.isfinite(value):
            raise DialogInputError(f"{name}: must be a number from {span}, e.g. {self.example}")
        if not self.low <= value <= self.high:
            raise DialogInputError(f"{name}: {word} is outside {span}")
        return repr(value)

    def command_line(self, value_text: str | None = None) -> str:
        """The complete command: ``command`` plus the checked value when the fault needs one.

        Raises :class:`~tui.screens.dialogs.DialogInputError` when a needed value is missing or bad.
        """
        if self.needs_value is None:
            return self.command
        if value_text is None:
            raise DialogInputError(f"'{self.command}' needs a value: {self.needs_value}")
        return f"{self.command} {self.value_text(value_text)}"


def _faults() -> tuple[SimFault, ...]:
    faults = [
        SimFault("Smoothing: vibration fails", "smoothing fail"),
        SimFault("Smoothing: back to normal", "smoothing ok"),
        SimFault("Photodiode gain (1.0 nominal)", "photodiode gain", "gain", 0.0, 10.0, example="0.6"),
        SimFault("Photodiode offset", "photodiode offset", "offset in volts", -5.0, 5.0, example="0.2"),
        SimFault("Laser dropout on (no light)", "laser dropout on"),
        SimFault("Laser dropout off", "laser dropout off"),
        SimFault("TEC temperature drift", "tec drift", "drift in degC", -50.0, 50.0, example="3"),
        SimFault("Actuator thermal fault", "actuator fault thermal"),
        SimFault("Actuator fault clear", "actuator fault clear"),
        SimFault("Camera freeze on", "camera freeze on"),
        SimFault("Camera freeze off", "camera freeze off"),
    ]
    faults += [SimFault(f"Unplug {device}", f"unplug {device}") for device in ALL_DEVICES]
    faults += [SimFault(f"Replug {device}", f"replug {device}") for device in ALL_DEVICES]
    faults += [
        SimFault(
            f"Garbage bytes from {device}",
            f"garbage {device}",
            "byte count",
            1,
            4096,
            whole=True,
            example="64",
        )
        for device in SERIAL_DEVICES
    ]
    faults += [SimFault(f"Stall {device} (no answers)", f"stall {device} on") for device in SERIAL_DEVICES]
    faults += [SimFault(f"Stall {device} off", f"stall {device} off") for device in SERIAL_DEVICES]
    # The footpedal and E-stop have their own toggle keys; they are here too, for when their state is unknown.
    faults += [
        SimFault("Footpedal down (F5 toggles)", "pedal down"),
        SimFault("Footpedal up", "pedal up"),
        SimFault("E-stop hit (F6 toggles)", "estop on"),
        SimFault("E-stop release", "estop off"),
    ]
    return tuple(faults)


#: Every command of the simulator command language, as the fault screen offers them.
FAULTS: tuple[SimFault, ...] = _faults()


def matching_faults(text: str) -> list[int]:
    """Indexes into :data:`FAULTS` whose label or command contains every word of ``text`` (any case)."""
    words = text.lower().split()
    return [
        index
        for index, fault in enumerate(FAULTS)
        if all(word in f"{fault.label} {fault.command}".lower() for word in words)
    ]


class SimFaultScreen(DialogScreen[str | None]):
    """Choose a simulator command: type to filter, Up/Down to move, Enter to choose. A command that needs a
    value then asks for it (checked against the simulator's range); Escape there goes back to the list.
    Dismisses with the full command line (e.g. ``"photodiode gain 0.6"``), or ``None`` on Escape."""

    DEFAULT_CSS = """
    SimFaultScreen > #dialog {
        width: 72;
        border: heavy $warning;
        border-title-color: $warning;
    }
    SimFaultScreen #fault-list {
        height: 10;
        margin: 1 0 0 0;
        border: none;
        background: $panel;
    }
    SimFaultScreen #fault-list > .option-list--option-highlighted {
        background: $primary;
        color: $text;
        text-style: bold;
    }
    SimFaultScreen #fault-choose-box {
        height: auto;
    }
    SimFaultScreen #fault-value-box {
        height: auto;
        display: none;
    }
    SimFaultScreen.-asking #fault-value-box {
        display: block;
    }
    SimFaultScreen.-asking #fault-choose-box {
        display: none;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "submit", "Choose", priority=True),
        Binding("down", "move(1)", "Down", show=False),
        Binding("up", "move(-1)", "Up", show=False),
    ]

    def __init__(self, *, cursor_blink: bool) -> None:
        super().__init__(f"{SIMULATED_HARDWARE}: inject a fault", cursor_blink=cursor_blink)
        self.shown: list[int] = list(range(len(FAULTS)))
        #: The fault waiting for its value, or None while choosing.
        self.asking: SimFault | None = None

    def compose(self) -> ComposeResult:
        with self.panel():
            with Vertical(id="fault-choose-box"):
                with Grid(classes="dialog-grid"):
                    yield Label("Filter")
                    yield self.text_input("fault-filter", "type to filter, e.g. unplug")
                yield OptionList(*self._options(), id="fault-list")
            with Vertical(id="fault-value-box"):
                yield Label("", id="fault-chosen", classes="dialog-prompt")
                with Grid(classes="dialog-grid"):
                    yield Label("Value")
                    yield self.text_input("fault-value", "")
                yield Label("Enter sends the command; Escape goes back to the list.", classes="dialog-fact")
            yield self.error_line()
        yield Footer()

    def _options(self) -> list[Option]:
        return [
            Option(f"{FAULTS[index].label:<30} {FAULTS[index].command}", id=str(index))
            for index in self.shown
        ]

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = 0
        self.field("fault-filter").focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "fault-filter":
            return
        event.stop()
        self.shown = matching_faults(event.value)
        options = self.query_one(OptionList)
        options.set_options(self._options())
        if self.shown:
            options.highlighted = 0
            self.show_error("")
        else:
            self.show_error(f"no simulator command matches '{event.value.strip()}'")

    def action_move(self, step: int) -> None:
        """Up/Down from the filter field move the highlight in the list."""
        if self.asking is not None:
            return
        options = self.query_one(OptionList)
        if step > 0:
            options.action_cursor_down()
        else:
            options.action_cursor_up()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.choose(FAULTS[int(event.option.id)])

    def action_submit(self) -> None:
        """Enter: choose the highlighted command, or send the chosen one with the value typed."""
        fault = self.asking
        if fault is not None:
            try:
                line = fault.command_line(self.field("fault-value").value)
            except DialogInputError as exc:
                self.refuse(exc, "fault-value")
                return
            self.dismiss(line)
            return
        option = self.query_one(OptionList).highlighted_option
        if option is None or option.id is None:
            self.show_error("no command chosen: change the filter")
            return
        self.choose(FAULTS[int(option.id)])

    def choose(self, fault: SimFault) -> None:
        """Dismiss with ``fault``'s command, or ask for its value first."""
        if fault.needs_value is None:
            self.dismiss(fault.command)
            return
        self.asking = fault
        self.query_one("#fault-chosen", Label).update(
            f"{fault.label}\n{fault.command} <{fault.needs_value}>, from {fault.low:g} to {fault.high:g}"
        )
        value = self.field("fault-value")
        value.value = ""
        value.placeholder = f"{fault.needs_value}, e.g. {fault.example}"
        self.show_error("")
        self.add_class("-asking")
        value.focus()

    def action_cancel(self) -> None:
        """Escape: back to the list while a value is asked for, else close without a command."""
        if self.asking is None:
            self.dismiss(None)
            return
        self.asking = None
        self.remove_class("-asking")
        self.show_error("")
        self.field("fault-filter").focus()
