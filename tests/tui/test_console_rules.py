"""Rules of the whole console that need no controller: the stop key's label on every screen, "terminal too
small" below 80x24, the one theme offered, the command palette's Quit following the quit key's rule, the
paused banner saying the order that works, and dialogs over the dashboard leaving its readings in view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    TECH_PASSWORD,
    FakeClock,
    enter_text,
    make_settings,
    quit_by_palette,
    seed,
    seed_sync,
    showing,
    wait_until,
)
from test_treatment_snapshots import SimScreenApp, snapshot
from textual.app import InvalidThemeError
from textual.pilot import Pilot
from textual.widgets import Input, Static

from tui.app import TooSmall, ToscaApp, make_app
from tui.screens import HomeScreen, LoginScreen
from tui.screens._base import SnapshotUpdated
from tui.screens.checks import ChecksScreen
from tui.screens.dashboard import DashboardScreen, banner_text
from tui.screens.dialogs import OverrideDialog, ReasonDialog
from tui.widgets.header import STOP_LABEL
from tui.widgets.lines import LinePanel


async def log_in(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen) and isinstance(app.focused, Input), "login")
    await enter_text(pilot, "tina")
    await pilot.press("enter")
    await enter_text(pilot, TECH_PASSWORD)
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")


def header_text(app: ToscaApp) -> str:
    return " ".join(str(s.render()) for s in app.screen.query("#header Static"))


async def test_the_stop_keys_label_is_on_every_screen_at_80_columns(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    # A console with a controller link (none is running: the stop key acts, and says so, all the same).
    app = make_app(make_settings(clock, sim=True, controller="connect"))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert STOP_LABEL in header_text(app)
        await log_in(pilot)
        label = app.screen.query_one("#stop-key", Static)
        assert str(label.render()) == STOP_LABEL
        # Wholly inside the 80 columns of the screen, not cut.
        assert label.region.width == len(STOP_LABEL) + 2 and label.region.right <= 80
    # Without a controller there is no stop key, and no label.
    app = make_app(make_settings(clock))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert STOP_LABEL not in header_text(app)


async def test_below_80x24_the_console_says_terminal_too_small(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        assert not app.screen.query(TooSmall)
        for size in ((79, 24), (80, 23), (60, 15)):
            await pilot.resize_terminal(*size)
            await wait_until(pilot, lambda: bool(app.screen.query(TooSmall)), f"the notice at {size}")
            notice = app.screen.query_one(TooSmall)
            assert "terminal too small" in str(notice.render())
            assert f"{size[0]}x{size[1]}" in str(notice.render())
            await pilot.pause()
            assert notice.region.height >= size[1] - 1, "the notice covers the screen"
        await pilot.resize_terminal(80, 24)
        await wait_until(pilot, lambda: not app.screen.query(TooSmall), "the notice gone at 80x24")
        assert isinstance(app.screen, HomeScreen)


async def test_only_the_consoles_own_theme_is_offered(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert set(app.available_themes) == {"textual-dark"}
        titles = [command.title for command in app.get_system_commands(app.screen)]
        assert "Theme" not in titles and "Quit" in titles
        with pytest.raises(InvalidThemeError):
            app.theme = "textual-light"
        assert app.theme == "textual-dark"


async def test_the_palettes_quit_closes_the_console_when_no_session_is_open(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test(size=(80, 24)) as pilot:
        await log_in(pilot)
        await quit_by_palette(pilot)
        await wait_until(pilot, lambda: not app.is_running, "the console to close")
    assert app.return_code == 0


def test_the_paused_banner_says_the_order_that_works() -> None:
    pressed = snapshot("paused", emitting=False, pedal=True)
    _, text = banner_text(pressed)
    assert "release the footpedal, then r: resume" in text.plain
    assert "(then the footpedal)" not in text.plain
    released = snapshot("paused", emitting=False, pedal=False)
    _, text = banner_text(released)
    assert "r: resume, then press the footpedal" in text.plain


async def test_a_dialog_over_the_dashboard_leaves_the_readings_in_view(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    app = SimScreenApp(DashboardScreen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
        dashboard = app.screen
        dashboard.post_message(SnapshotUpdated(snapshot("treating", emitting=True)))
        await wait_until(
            pilot, lambda: "step 1 of 2" in dashboard.query_one("#interlocks", LinePanel).text.plain, "drawn"
        )
        dialog = ReasonDialog("Abort session", "Why?", cursor_blink=False).docked()
        app.push_screen(dialog)
        await wait_until(pilot, lambda: app.screen is dialog, "the dialog")
        await pilot.pause()
        panel = dialog.query_one("#dialog").region
        for name in ("#banner", "#readouts", "#interlocks"):
            region = dashboard.query_one(name).region
            assert region.height > 0 and not region.overlaps(panel), f"{name} is hidden by the dialog"
        # ...and they stay live under it.
        dashboard.post_message(SnapshotUpdated(snapshot("paused", emitting=False, pedal=True)))
        banner = dashboard.query_one("#banner", Static)
        await wait_until(
            pilot,
            lambda: "release the footpedal, then r: resume" in str(banner.render()),
            "the banner updated under the dialog",
        )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_override_dialog_over_the_dashboard_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: Any, size: tuple[int, int]
) -> None:
    seed_sync()
    app = SimScreenApp(DashboardScreen, clock)

    async def shown(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), "the dashboard")
        dashboard = app.screen
        dashboard.post_message(SnapshotUpdated(snapshot("treating", emitting=True)))
        await wait_until(
            pilot, lambda: "step 1 of 2" in dashboard.query_one("#interlocks", LinePanel).text.plain, "drawn"
        )
        app.push_screen(OverrideDialog(current_w=5.0, max_w=8.0, cursor_blink=False, step=1).docked())
        await wait_until(pilot, lambda: isinstance(app.screen, OverrideDialog), "the dialog")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=shown)


async def test_the_checks_leave_only_when_their_own_session_ends(
    data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks screen is opened as soon as the controller answers "session 8 opened"; a snapshot sent
    just before (no session open, the last one 7) can still arrive, and is not session 8's end."""
    await seed()
    ends: list[int | None] = []
    monkeypatch.setattr(ChecksScreen, "_show_end", lambda _screen, session_id: ends.append(session_id))
    app = SimScreenApp(lambda context, user: ChecksScreen(context, user, 8), clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ChecksScreen), "the checks")
        checks = app.screen
        before = snapshot("idle", emitting=False).model_copy(update={"session": None, "last_session_id": 7})
        checks.post_message(SnapshotUpdated(before))
        await pilot.pause()
        await pilot.pause()
        assert ends == [], "a snapshot from before the session opened ended it"
        checks.post_message(SnapshotUpdated(before.model_copy(update={"last_session_id": 8})))
        await wait_until(pilot, lambda: ends == [8], "session 8's end")
