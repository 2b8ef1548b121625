"""The simulated hardware panel and the fault screen: what they show, the commands they build, and that every
command is one the real simulator accepts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from console_fixtures import enter_text, wait_until
from test_dialogs import (
    DialogHost,
    answered,
    dialog_open,
    error_text,
    focused_id,
    screen_text,
    still_open_with,
)
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

import devices.sim.rig as sim_rig
from control.messages import InterlockView, LaserView, RingView, Snapshot
from devices.sim.rig import SimCommandError, SimRig
from tui.widgets.sim_panel import (
    ALL_DEVICES,
    FAULTS,
    SERIAL_DEVICES,
    SIMULATED_HARDWARE,
    SimFault,
    SimFaultScreen,
    SimPanel,
    estop_command,
    matching_faults,
    pedal_command,
)

SnapCompare = Callable[..., bool]


def snapshot(pedal: str | None, estop: str | None) -> Snapshot:
    """A controller snapshot whose footpedal and E-stop terms carry the values the supervisor reports
    ("pressed" / "released" / "unknown" for the pedal, "PRESSED" / "released" / "unknown" for the E-stop);
    ``None`` leaves the term out."""
    interlocks = []
    if pedal is not None:
        interlocks.append(
            InterlockView(
                name="footpedal",
                ok=pedal == "pressed",
                value=pedal,
                detail="" if pedal == "pressed" else "up",
            )
        )
    if estop is not None:
        interlocks.append(
            InterlockView(name="estop", ok=estop == "released", value=estop, detail="E-stop pressed")
        )
    interlocks.append(InterlockView(name="watchdog", ok=True, value="fed 12 ms ago", detail=""))
    return Snapshot(
        seq=7,
        time_s=100.0,
        state="armed",
        emitting=False,
        sim=True,
        laser=LaserView(commanded_w=0.0, output_on=False),
        ring=RingView(commanded_mm=3.0, measured_mm=3.0, position_um=1000.0),
        interlocks=interlocks,
    )


# ------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("pedal", "command"),
    [("released", "pedal down"), ("pressed", "pedal up"), ("unknown", "pedal up"), (None, "pedal up")],
)
def test_pedal_command(pedal: str | None, command: str) -> None:
    assert pedal_command(snapshot(pedal, "released")) == command


@pytest.mark.parametrize(
    ("estop", "command"),
    [("released", "estop on"), ("PRESSED", "estop off"), ("unknown", "estop on"), (None, "estop on")],
)
def test_estop_command(estop: str | None, command: str) -> None:
    assert estop_command(snapshot("released", estop)) == command


def test_commands_without_a_snapshot_take_the_safe_direction() -> None:
    assert pedal_command(None) == "pedal up"
    assert estop_command(None) == "estop on"


def test_matching_faults_filters_on_every_word() -> None:
    assert [FAULTS[i].command for i in matching_faults("stall TEC")] == ["stall tec on", "stall tec off"]
    assert [FAULTS[i].command for i in matching_faults("gain")] == ["photodiode gain"]
    assert matching_faults("") == list(range(len(FAULTS)))
    assert matching_faults("no such thing") == []


# ------------------------------------------------------------------------------------------- the panel


class PanelHost(App[None]):
    """A plain screen with the panel docked at the bottom."""

    CSS = "#sim-panel { dock: bottom; }"

    def __init__(self, first: Snapshot | None = None) -> None:
        super().__init__()
        self.panel = SimPanel()
        self.panel.show(first)

    def compose(self) -> ComposeResult:
        yield Static("Treatment dashboard", id="backdrop")
        yield self.panel


def shown(app: PanelHost) -> tuple[str, bool, str, bool]:
    """The pedal's and the E-stop's text, and whether each is marked as active."""
    pedal = app.panel.query_one("#sim-pedal", Static)
    estop = app.panel.query_one("#sim-estop", Static)
    return (
        str(pedal.render()),
        pedal.has_class("-active"),
        str(estop.render()),
        estop.has_class("-active"),
    )


async def test_panel_shows_pedal_and_estop_from_snapshots() -> None:
    app = PanelHost()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.panel.is_mounted, "the panel")
        assert shown(app) == ("unknown", False, "unknown", False)
        text = screen_text(app)
        assert SIMULATED_HARDWARE in text
        assert "F5 pedal" in text and "F6 E-stop" in text and "F7 fault" in text

        app.panel.show(snapshot("pressed", "released"))
        await pilot.pause()
        assert shown(app) == ("PRESSED", True, "released", False)

        app.panel.show(snapshot("released", "PRESSED"))
        await pilot.pause()
        assert shown(app) == ("released", False, "HIT", True)
        assert "HIT" in screen_text(app)

        app.panel.show(None)
        await pilot.pause()
        assert shown(app) == ("unknown", False, "unknown", False)


async def test_panel_is_one_line_at_80_columns_and_keeps_state_given_before_mount() -> None:
    app = PanelHost(snapshot("pressed", "PRESSED"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.panel.is_mounted, "the panel")
        await pilot.pause()
        assert app.panel.content_size.height == 1
        assert app.panel.outer_size.width == 80
        assert shown(app) == ("PRESSED", True, "HIT", True)


def test_panel_snapshot_80(snap_compare: SnapCompare) -> None:
    assert snap_compare(PanelHost(snapshot("pressed", "released")), terminal_size=(80, 24))


def test_panel_snapshot_120(snap_compare: SnapCompare) -> None:
    assert snap_compare(PanelHost(snapshot("released", "PRESSED")), terminal_size=(120, 40))


# ------------------------------------------------------------------------- the simulator's own parser


@pytest.fixture
async def rig() -> AsyncIterator[SimRig]:
    sim = SimRig(seed=5, camera_frame_rate_hz=None)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def value_samples(fault: SimFault) -> list[str]:
    """Values to try for a fault that needs one: both ends of its range and its example."""
    if fault.whole:
        return [str(int(fault.low)), str(int(fault.high)), fault.example]
    return [f"{fault.low:g}", f"{fault.high:g}", fault.example]


async def test_every_fault_command_is_accepted_by_the_simulator(rig: SimRig) -> None:
    for fault in FAULTS:
        if fault.needs_value is None:
            lines = [fault.command_line()]
        else:
            lines = [fault.command_line(value) for value in value_samples(fault)]
        for line in lines:
            if line.startswith("replug "):
                rig.command(line.replace("replug", "unplug", 1))
            assert rig.command(line).startswith("ok "), line
            if line.startswith("unplug "):
                rig.command(line.replace("unplug", "replug", 1))


async def test_value_ranges_are_the_simulators_own(rig: SimRig) -> None:
    """Just outside each range both the fault screen's check and the simulator refuse the value."""
    valued = [fault for fault in FAULTS if fault.needs_value is not None]
    assert {fault.command.split()[0] for fault in valued} == {"photodiode", "tec", "garbage"}
    for fault in valued:
        step = 1.0 if fault.whole else 0.001
        for outside in (fault.low - step, fault.high + step):
            word = str(int(outside)) if fault.whole else f"{outside:g}"
            with pytest.raises(ValueError, match=r"is outside|whole number"):
                fault.command_line(word)
            with pytest.raises(SimCommandError):
                rig.command(f"{fault.command} {word}")


async def test_faults_cover_the_whole_command_language(rig: SimRig) -> None:
    assert SERIAL_DEVICES == sim_rig.SERIAL_DEVICES
    assert ALL_DEVICES == sim_rig.ALL_DEVICES
    commands = {fault.command for fault in FAULTS}
    # The parser's own table of verbs: every one of them is offered.
    assert {command.split()[0] for command in commands} == set(rig._verbs())
    for device in ALL_DEVICES:
        assert {f"unplug {device}", f"replug {device}"} <= commands
    for device in SERIAL_DEVICES:
        assert {f"garbage {device}", f"stall {device} on", f"stall {device} off"} <= commands
    for both in (
        {"pedal down", "pedal up"},
        {"estop on", "estop off"},
        {"smoothing fail", "smoothing ok"},
        {"photodiode gain", "photodiode offset"},
        {"laser dropout on", "laser dropout off"},
        {"actuator fault thermal", "actuator fault clear"},
        {"camera freeze on", "camera freeze off"},
        {"tec drift"},
    ):
        assert both <= commands
    assert len(commands) == len(FAULTS)


def test_value_checks_give_clear_messages() -> None:
    gain = next(fault for fault in FAULTS if fault.command == "photodiode gain")
    garbage = next(fault for fault in FAULTS if fault.command == "garbage laser")
    assert gain.command_line(" 0.6 ") == "photodiode gain 0.6"
    assert garbage.command_line("64") == "garbage laser 64"
    with pytest.raises(ValueError, match=r"^gain: must be a number from 0 to 10, e.g. 0.6$"):
        gain.command_line("lots")
    with pytest.raises(ValueError, match=r"^gain: must be a number from 0 to 10, e.g. 0.6$"):
        gain.command_line("nan")
    with pytest.raises(ValueError, match=r"^byte count: must be a whole number from 1 to 4096, e.g. 64$"):
        garbage.command_line("1.5")
    with pytest.raises(ValueError, match=r"^byte count: 5000 is outside 1 to 4096$"):
        garbage.command_line("5000")
    with pytest.raises(ValueError, match="needs a value"):
        gain.command_line()
    with pytest.raises(ValueError, match="takes no value"):
        FAULTS[0].value_text("1")


# ------------------------------------------------------------------------------------ the fault screen


def fault_host() -> DialogHost:
    return DialogHost(SimFaultScreen(cursor_blink=False))


async def test_fault_screen_returns_a_plain_command() -> None:
    app = fault_host()
    async with app.run_test(size=(80, 24)) as pilot:
        await dialog_open(pilot)
        assert focused_id(pilot) == "fault-filter"
        await pilot.press(*"unplug la")
        await pilot.press("enter")
        assert await answered(pilot) == "unplug laser"


async def test_fault_screen_arrow_keys_choose_among_the_matches() -> None:
    app = fault_host()
    async with app.run_test(size=(80, 24)) as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "stall tec")
        await pilot.press("down", "enter")
        assert await answered(pilot) == "stall tec off"


async def test_fault_screen_asks_for_a_value_and_refuses_bad_ones() -> None:
    app = fault_host()
    async with app.run_test(size=(80, 24)) as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "gain")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "fault-value", "the value field")
        assert "photodiode gain <gain>, from 0 to 10" in screen_text(app)
        await enter_text(pilot, "abc")
        await pilot.press("enter")
        await still_open_with(pilot, "gain: must be a number from 0 to 10, e.g. 0.6")
        await enter_text(pilot, "12")
        await pilot.press("enter")
        await still_open_with(pilot, "gain: 12 is outside 0 to 10")
        await enter_text(pilot, "0.6")
        await pilot.press("enter")
        assert await answered(pilot) == "photodiode gain 0.6"


async def test_fault_screen_garbage_needs_a_whole_count() -> None:
    app = fault_host()
    async with app.run_test(size=(80, 24)) as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "garbage safety")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "fault-value", "the value field")
        await enter_text(pilot, "1.5")
        await pilot.press("enter")
        await still_open_with(pilot, "byte count: must be a whole number from 1 to 4096, e.g. 64")
        await enter_text(pilot, "32")
        await pilot.press("enter")
        assert await answered(pilot) == "garbage safety 32"


async def test_fault_screen_no_match_and_escape() -> None:
    app = fault_host()
    async with app.run_test(size=(80, 24)) as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "warp drive")
        await still_open_with(pilot, "no simulator command matches 'warp drive'")
        await pilot.press("enter")
        await still_open_with(pilot, "no command chosen: change the filter")
        await enter_text(pilot, "tec drift")
        assert error_text(pilot) == ""
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "fault-value", "the value field")
        # Escape while a value is asked for goes back to the list; Escape again closes with nothing.
        await pilot.press("escape")
        await wait_until(pilot, lambda: focused_id(pilot) == "fault-filter", "the filter field")
        assert app.results == []
        await pilot.press("escape")
        assert await answered(pilot) is None


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_fault_screen_snapshot(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    async def filtered(pilot: Pilot[Any]) -> None:
        await dialog_open(pilot)
        await enter_text(pilot, "laser")
        await pilot.press("down")

    assert snap_compare(fault_host(), terminal_size=size, run_before=filtered)
