"""Snapshots of the pre-treatment checks and of the treatment dashboard (emitting, latched fault, armed) at
80x24 and 120x40, on the simulated rig, from fixed controller states (no controller runs: the states are
posted to the screen as the app posts the controller's)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import FakeClock, make_settings, seed, seed_sync, tables_measured, wait_until
from test_subject_screens import ScreenApp
from textual.pilot import Pilot

from control.accounts import UserInfo
from control.messages import (
    DeviceView,
    FaultView,
    InterlockView,
    LaserView,
    PrecheckView,
    RingView,
    SessionView,
    Snapshot,
    StepView,
)
from control.supervisor import SystemState, permitted_actions
from tui.screens._base import ScreenContext, SnapshotUpdated
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen
from tui.widgets.lines import LinePanel

SnapCompare = Callable[..., bool]
SIZES = [(80, 24), (120, 40)]

TERMS = [
    ("footpedal", "pressed"),
    ("estop", "released"),
    ("watchdog", "fed 0.2 s ago"),
    ("smoothing", "PWM 120, 1.28 g"),
    ("tec", "25.00 C (set 25.00)"),
    ("photodiode", "4.98 W of 5.00 W"),
    ("devices", "all connected"),
    ("calibrations", "active"),
    ("step", "step 1 of 2"),
    ("storage", "writable"),
]


def snapshot(state: str, *, emitting: bool, fault: FaultView | None = None, pedal: bool = True) -> Snapshot:
    interlocks = [
        InterlockView(
            name=name,
            ok=(pedal if name == "footpedal" else True) and not (fault and name == "estop"),
            value="pressed"
            if (fault and name == "estop")
            else (value if (name != "footpedal" or pedal) else "released"),
            detail="" if not (fault and name == "estop") else "E-stop pressed",
        )
        for name, value in TERMS
    ]
    return Snapshot(
        seq=1,
        time_s=1000.0,
        state=state,  # type: ignore[arg-type]
        emitting=emitting,
        sim=True,
        session=SessionView(
            session_id=7,
            subject_code="P-2026-0001",
            protocol_name="Seed example (60 s at 5 W, 30 s ramp to 8 W)",
            technician="Tina Tech",
            status="in_progress" if state != "fault" else "paused",
            clock_s=83.0,
            treating_s=41.5,
            delivered_energy_j=207.5,
            step=StepView(
                number=1,
                of=2,
                elapsed_s=41.5,
                duration_s=60.0,
                power_start_w=5.0,
                power_end_w=5.0,
                ramp="constant",
                ring_size_mm=3.0,
            ),
            max_override_w=8.0,
            total_duration_s=90.0,
            expected_energy_j=495.0,
        ),
        laser=LaserView(
            commanded_w=5.0 if emitting else 0.0,
            measured_w=4.98 if emitting else 0.0,
            photodiode_v=2.49 if emitting else 0.0,
            output_on=emitting,
            current_ma=5480.0 if emitting else 0.0,
            deviation_percent=-0.4 if emitting else None,
        ),
        ring=RingView(commanded_mm=3.0, measured_mm=3.0, position_um=1000.0),
        interlocks=interlocks,
        devices=[DeviceView(name="laser", state="ok", identity="simulated laser driver")],
        fault=fault,
        actions=permitted_actions(SystemState(state)),
        last_session_id=7,
    )


ESTOP_FAULT = FaultView(
    what="E-stop pressed",
    action="laser output switched off and verified; safety board disarmed",
    how_to_reset="release the E-stop, then acknowledge the fault with your password to reset",
    cause_cleared=False,
    at="2026-03-14T09:31:12",
)


def _check(name: str, value: str, detail: str = "") -> PrecheckView:
    return PrecheckView(name=name, ok=not detail, value=value, detail=detail)


#: Every check the controller makes, in its order: the state first, the devices, the footpedal and the other
#: terms, the calibrations, the database and the backup. The TEC is out of its window.
CHECKS: list[PrecheckView] = [
    _check("state", "ready"),
    _check("device laser", "ok: simulated laser driver"),
    _check("device tec", "ok: simulated TEC"),
    _check("device actuator", "ok: -"),
    _check("device safety", "ok: TOSCA safety firmware, protocol 3.1"),
    _check("device camera", "ok: simulated camera"),
    _check("footpedal", "released"),
    _check("estop", "released"),
    _check("watchdog", "fed 120 ms ago"),
    _check("smoothing", "motor on, 1.28 g"),
    _check("tec", "23.10 degC (set 25.00)", "TEC 1.90 degC from its setpoint (window 1.00)"),
    _check("photodiode", "0.00 W"),
    _check("devices", "all fresh"),
    _check("calibrations", "active"),
    _check("storage", "writing"),
    _check("calibration laser", "power vs current, 2026-03-01"),
    _check("calibration photodiode", "volts vs power, 2026-03-01"),
    _check("calibration actuator", "position vs ring, 2026-03-01"),
    _check("database", "integrity ok"),
    _check("backup", "data/backups/tosca_20260314_093000.db"),
]
#: The same with the E-stop hit and released before arming: the fault latched, its cause cleared.
FAULT_CHECKS: list[PrecheckView] = [
    _check(
        "state",
        "FAULT: E-stop pressed",
        "release the E-stop, then acknowledge the fault with your password to reset (cause cleared)",
    ),
    *(c if c.name != "tec" else _check("tec", "25.00 degC (set 25.00)") for c in CHECKS[1:]),
]


class SimScreenApp(ScreenApp):
    """The console's stylesheet and one screen, on the simulated rig."""

    def __init__(self, make_screen: Callable[[ScreenContext, UserInfo], Any], clock: FakeClock) -> None:
        super().__init__(make_screen, clock)
        self.settings = make_settings(clock, sim=True)
        self.context = ScreenContext(settings=self.settings, accounts=self.accounts, link=None)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(
    "state",
    [
        ("emission", snapshot("treating", emitting=True)),
        ("fault", snapshot("fault", emitting=False, fault=ESTOP_FAULT, pedal=False)),
        ("armed", snapshot("armed", emitting=False, pedal=False)),
    ],
    ids=lambda s: s[0],
)
def test_dashboard(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int], state: Any
) -> None:
    seed_sync()
    app = SimScreenApp(DashboardScreen, clock)

    async def shown(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
        app.screen.post_message(SnapshotUpdated(state[1]))
        await wait_until(
            pilot, lambda: "step 1 of 2" in app.screen.query_one("#interlocks", LinePanel).text.plain, "drawn"
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=shown)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", ["failing", "fault"])
def test_checks(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int], case: str
) -> None:
    """One check failing, or a fault latched (F4 in the footer, the fault as the first, failing, check);
    at 80x24 the line under the list says which rows show."""
    seed_sync()
    app = SimScreenApp(ChecksScreen, clock)
    fault = case == "fault"
    cleared = FaultView(**{**ESTOP_FAULT.model_dump(), "cause_cleared": True})

    async def shown(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(app.screen, ChecksScreen), "the checks")
        screen = app.screen
        assert isinstance(screen, ChecksScreen)
        state = snapshot("fault" if fault else "ready", emitting=False, pedal=False)
        if fault:
            state = state.model_copy(update={"fault": cleared})
        screen.post_message(SnapshotUpdated(state))
        screen.checks = FAULT_CHECKS if fault else CHECKS
        screen._show_checks()
        await tables_measured(pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=shown)


async def test_at_80x24_the_checks_say_which_rows_show_and_scroll(data_dir: Path, clock: FakeClock) -> None:
    """20 checks do not fit at 80x24: the line under the list says which rows show and how many failing
    ones are out of view, and follows up and down."""
    from textual.widgets import Static

    await seed()
    app = SimScreenApp(ChecksScreen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChecksScreen), "the checks")
        screen = app.screen
        assert isinstance(screen, ChecksScreen)
        screen.checks = FAULT_CHECKS
        screen._show_checks()
        await tables_measured(pilot)
        more = screen.query_one("#checks-more", Static)
        first = re.compile(r"rows 1-(1[0-9]) of 20 \(up/down\)")
        await wait_until(
            pilot, lambda: bool(first.fullmatch(str(more.render()))), f"the rows (now {more.render()!s})"
        )
        for _ in range(len(FAULT_CHECKS)):
            await pilot.press("down")
        last = re.compile(r"rows ([0-9]+)-20 of 20, 1 failing out of view \(up/down\)")
        await wait_until(
            pilot, lambda: bool(last.fullmatch(str(more.render()))), f"the end (now {more.render()!s})"
        )
        await pilot.resize_terminal(120, 40)
        await wait_until(pilot, lambda: str(more.render()) == "", "no rows line when all show")
