"""The admin's configuration screen on a real migrated database: every setting listed with value, default,
unit and meaning; a change through the edit dialog stored and audited; each refusal said in the dialog with
the key and the reason, changing nothing; the line about an open session; a technician refused."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp, LinkStandIn, SessionShown, SnapshotShown
from config_fixtures import config_audits, stored
from console_fixtures import CLI, DATA_DIR, FakeClock, enter_text, seed, status_text, wait_until
from textual.pilot import Pilot
from textual.widgets import DataTable, Label

from control.accounts import AccountService, UserInfo
from control.config_editor import change_setting
from control.system_config import SETTING_KEYS, spec
from tests.support import CHEAP
from tui.screens._base import ScreenContext
from tui.screens.configuration import ConfigurationScreen, EditSettingDialog
from tui.screens.home import menu_for, not_yet_line


def configuration(context: ScreenContext, user: UserInfo) -> ConfigurationScreen:
    return ConfigurationScreen(context, user)


async def loaded(pilot: Pilot[Any]) -> ConfigurationScreen:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ConfigurationScreen), "the configuration screen")
    screen = app.screen
    assert isinstance(screen, ConfigurationScreen)
    await wait_until(pilot, lambda: screen.loaded, "the settings")
    return screen


def table_rows(pilot: Pilot[Any]) -> dict[str, list[str]]:
    table = pilot.app.screen.query_one("#config-table", DataTable)
    rows = [[str(cell) for cell in table.get_row_at(row)] for row in range(table.row_count)]
    return {row[0]: row[1:] for row in rows}


async def open_dialog(pilot: Pilot[Any], key: str) -> EditSettingDialog:
    screen = await loaded(pilot)
    table = screen.query_one("#config-table", DataTable)
    table.focus()
    table.move_cursor(row=SETTING_KEYS.index(key))
    await pilot.pause()
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, EditSettingDialog), "the edit dialog")
    dialog = pilot.app.screen
    assert isinstance(dialog, EditSettingDialog)
    return dialog


def dialog_error(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#dialog-error", Label).render())


async def submit(pilot: Pilot[Any], value: str, reason: str | None) -> None:
    """Type ``value`` and Enter; then, if the value was taken, ``reason`` and Enter."""
    dialog = pilot.app.screen
    assert isinstance(dialog, EditSettingDialog)
    dialog.field("value").focus()
    await enter_text(pilot, value)
    await pilot.press("enter")
    await pilot.pause()
    if reason is None or pilot.app.focused is not dialog.field("reason"):
        return
    await enter_text(pilot, reason)
    await pilot.press("enter")
    await wait_until(pilot, lambda: not dialog.saving, "the save to finish")


async def test_every_setting_is_listed_with_value_default_unit_and_meaning(
    data_dir: object, clock: FakeClock
) -> None:
    await seed()
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = await loaded(pilot)
        rows = table_rows(pilot)
        assert list(rows) == list(SETTING_KEYS)
        for key in SETTING_KEYS:
            described = spec(key)
            value, default, unit, meaning = rows[key]
            assert value == default
            assert unit == described.unit
            assert meaning.rstrip("…") and described.meaning.startswith(meaning.rstrip("…"))
        assert rows["max_laser_power_watts"][:3] == ["10.0", "10.0", "W"]
        assert rows["backup_retention_days"][:3] == ["30", "30", "days"]
        when = str(screen.query_one("#config-when", Label).render())
        assert when.startswith("Safety limits never change during a session: ")
        assert "never change during a session" in when and "from the next session" in when
        assert str(screen.query_one("#config-session", Label).render()) == ""
        detail = str(screen.query_one("#config-detail", Label).render())
        assert (
            detail.startswith("max_laser_power_watts: Hard limit for laser power")
            and "now 10.0, default 10.0; 0.0 to 10.0 W" in detail
        )


async def test_a_change_is_saved_shown_and_audited(data_dir: object, clock: FakeClock) -> None:
    await seed()
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await open_dialog(pilot, "max_laser_power_watts")
        assert dialog.field("value").value == "10.0"
        await submit(pilot, "6.5", "new fibre, lower rating")
        screen = await loaded(pilot)
        await wait_until(
            pilot, lambda: table_rows(pilot)["max_laser_power_watts"][0] == "6.5", "the new value"
        )
        assert status_text(pilot) == "max_laser_power_watts changed from 10.0 to 6.5 W"
        assert "changed by ada" in str(screen.query_one("#config-detail", Label).render())
    assert stored("max_laser_power_watts") == "6.5"
    assert config_audits() == [
        (
            "success",
            "ada",
            {"key": "max_laser_power_watts", "old": 10.0, "new": 6.5, "reason": "new fibre, lower rating"},
        )
    ]


@pytest.mark.parametrize(
    ("key", "typed", "why"),
    [
        (
            "max_laser_power_watts",
            "12",
            "config max_laser_power_watts: 12.0 refused: must be less than or equal",
        ),
        ("max_laser_power_watts", "ten", "config max_laser_power_watts: 'ten' refused: must be a number"),
        (
            "max_laser_power_watts",
            "NaN",
            "config max_laser_power_watts: 'NaN' refused: must be a finite number",
        ),
        ("auto_lock_minutes", "2.5", "config auto_lock_minutes: '2.5' refused: must be a whole number"),
        (
            "backup_retention_days",
            "0",
            "config backup_retention_days: 0 refused: must be greater than or equal",
        ),
        (
            "photodiode_warning_threshold_percent",
            "30",
            "config photodiode_warning_threshold_percent: 30.0 refused: photodiode_warning_threshold_percent "
            "(30 %) must be below",
        ),
    ],
)
async def test_a_refused_value_says_why_in_the_dialog_and_changes_nothing(
    data_dir: object, clock: FakeClock, key: str, typed: str, why: str
) -> None:
    await seed()
    before = stored(key)
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await open_dialog(pilot, key)
        await submit(pilot, typed, "a reason")
        assert dialog_error(pilot).startswith(why)
        assert pilot.app.screen is dialog and pilot.app.focused is dialog.field("value")
        await pilot.press("escape")
        await loaded(pilot)
    assert stored(key) == before
    assert config_audits() == []


async def test_an_empty_reason_is_refused_in_the_dialog(data_dir: object, clock: FakeClock) -> None:
    await seed()
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = await open_dialog(pilot, "auto_lock_minutes")
        await submit(pilot, "5", "   ")
        assert dialog_error(pilot) == "config: refused: a reason is needed; say why the setting changes"
        assert pilot.app.focused is dialog.field("reason")
    assert stored("auto_lock_minutes") == "10"


async def test_a_change_made_meanwhile_by_another_admin_is_refused_with_what_changed(
    data_dir: object, clock: FakeClock
) -> None:
    await seed()
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await open_dialog(pilot, "auto_lock_minutes")
        # bob, another admin, saves first from another console.
        service = AccountService(sessions=app.accounts.sessions, terminal="/dev/tty2", hashing=CHEAP)
        await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
        await change_setting(
            app.accounts.sessions, "auto_lock_minutes", "5", admin="bob", reason="busy ward", expected=10
        )
        await submit(pilot, "20", "quiet ward")
        assert dialog_error(pilot) == (
            "config auto_lock_minutes: changed meanwhile by bob from 10 to 5; "
            "nothing was saved: look at it again"
        )
        await pilot.press("escape")
        await wait_until(pilot, lambda: table_rows(pilot)["auto_lock_minutes"][0] == "5", "bob's value shown")
    assert stored("auto_lock_minutes") == "5"
    assert [(o, u) for o, u, _ in config_audits()] == [("success", "bob"), ("failure", "ada")]


async def test_an_open_session_is_said_and_the_change_applies_after_it(
    data_dir: object, clock: FakeClock
) -> None:
    await seed()
    link = LinkStandIn(SnapshotShown(SessionShown(7, "P-2026-[b]0001[/b]", "in_progress")))
    app = AdminScreenApp(configuration, clock, link=link)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        line = str(screen.query_one("#config-session", Label).render())
        assert line == (
            "A session is open (session 7 for P-2026-[b]0001[/b]): a change to a safety limit applies after "
            "it, never to it."
        )


async def test_a_technician_is_refused_and_shown_nothing(data_dir: object, clock: FakeClock) -> None:
    await seed()
    app = AdminScreenApp(configuration, clock, username="tina")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, ConfigurationScreen), "the screen")
        await wait_until(pilot, lambda: "only an admin" in status_text(pilot), "the refusal")
        assert status_text(pilot) == "only an admin may use this screen (tina is technician)"
        assert pilot.app.screen.query_one("#config-table", DataTable).row_count == 0
        await pilot.press("enter")
        await pilot.pause()
        assert not isinstance(pilot.app.screen, EditSettingDialog)


def test_the_admins_home_offers_the_configuration() -> None:
    assert "configuration" in [entry.name for entry in menu_for("admin")]
    assert "configuration" not in [entry.name for entry in menu_for("technician")]
    assert not_yet_line("admin") is None  # every admin screen is in this version


async def test_a_stored_value_the_model_refuses_is_marked_and_explained(
    data_dir: object, clock: FakeClock
) -> None:
    await seed()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE system_config SET config_value = '50' WHERE config_key = 'max_laser_power_watts'")
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await loaded(pilot)
        assert table_rows(pilot)["max_laser_power_watts"][0] == "10.0 !"
        detail = str(screen.query_one("#config-detail", Label).render())
        assert (
            "Stored value refused, the default applies: config max_laser_power_watts: 50.0 refused" in detail
        )


async def test_a_stored_text_is_shown_as_text_never_as_markup(data_dir: object, clock: FakeClock) -> None:
    await seed()
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute(
            "UPDATE system_config SET config_value = 'data/[red]x[/red]' "
            "WHERE config_key = 'session_data_path'"
        )
    app = AdminScreenApp(configuration, clock)
    async with app.run_test(size=(160, 40)) as pilot:
        await loaded(pilot)
        assert table_rows(pilot)["session_data_path"][0] == "data/[red]x[/red]"
        table = pilot.app.screen.query_one("#config-table", DataTable)
        table.move_cursor(row=SETTING_KEYS.index("session_data_path"))
        await pilot.pause()
        line = table.render_line(1 + SETTING_KEYS.index("session_data_path")).text
        assert "data/[red]x[/red]" in line
