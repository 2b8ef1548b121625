"""The home screen's menu per role, and the users and roles screen: the table and its find field, each change
and each refusal (a refusal says why in one line and changes nothing), and a change refused because another
admin changed the account meanwhile."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from console_fixtures import (
    ADMIN_PASSWORD,
    CLI,
    DATA_DIR,
    TECH_PASSWORD,
    FakeClock,
    enter_text,
    make_settings,
    seed,
    showing,
    wait_until,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label, OptionList

from control.accounts import MAX_FAILED_LOGINS, AccountService, UserInfo
from storage import AuditLog, create_engine, session_factory
from storage.repositories import AuditRepository
from tests.support import CHEAP
from tui.app import ToscaApp, make_app
from tui.screens import HomeScreen, LoginScreen
from tui.screens.dialogs import ConfirmDialog, DialogScreen
from tui.screens.user_dialogs import AddUserDialog, FullNameDialog, ResetPasswordDialog, RoleDialog
from tui.screens.users import UsersScreen


@asynccontextmanager
async def accounts_service(clock: FakeClock) -> AsyncIterator[AccountService]:
    """The accounts of the test's database, as another console or the command line would change them."""
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        yield AccountService(
            sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP, clock=clock
        )
    finally:
        await engine.dispose()


async def audit_rows() -> list[AuditLog]:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as session:
            rows = await AuditRepository(session).recent(limit=500)
    finally:
        await engine.dispose()
    return sorted(rows, key=lambda r: r.audit_id)


async def stored(clock: FakeClock, username: str) -> UserInfo:
    async with accounts_service(clock) as service:
        info = await service.get_user(username)
    assert info is not None
    return info


async def log_in(pilot: Pilot[int], username: str, password: str) -> HomeScreen:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
    assert isinstance(app.screen, HomeScreen)
    return app.screen


async def open_users(pilot: Pilot[int]) -> UsersScreen:
    await log_in(pilot, "ada", ADMIN_PASSWORD)
    await pilot.press("u")
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, UsersScreen), "the users screen")
    screen = app.screen
    assert isinstance(screen, UsersScreen)
    await wait_until(pilot, lambda: screen.loaded, "the accounts")
    return screen


def row(screen: UsersScreen, username: str) -> list[str]:
    table: DataTable[Any] = screen.query_one("#user-table", DataTable)
    return [str(cell) for cell in table.get_row(username)]


def usernames(screen: UsersScreen) -> list[str]:
    return [info.username for info in screen.shown]


def status(screen: UsersScreen) -> str:
    return str(screen.query_one("#status", Label).render())


async def select(pilot: Pilot[int], screen: UsersScreen, username: str) -> None:
    table: DataTable[Any] = screen.query_one("#user-table", DataTable)
    table.focus()
    table.move_cursor(row=usernames(screen).index(username))
    await wait_until(pilot, lambda: screen.highlighted_name() == username, f"{username} highlighted")


async def dialog_of(pilot: Pilot[int], kind: type[DialogScreen[Any]]) -> DialogScreen[Any]:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, kind), kind.__name__)
    dialog = app.screen
    assert isinstance(dialog, kind)
    return dialog


async def fill_and_submit(pilot: Pilot[int], dialog: DialogScreen[Any], **values: str) -> None:
    """Type ``values`` into the dialog's fields (ids with ``-`` written ``_``), then Enter from the last."""
    last: Input | None = None
    for name, value in values.items():
        last = dialog.field(name.replace("_", "-"))
        last.value = value
    assert last is not None
    last.focus()
    await wait_until(pilot, lambda: pilot.app.focused is last, "the last field focused")
    await pilot.press("enter")


def dialog_error(dialog: DialogScreen[Any]) -> str:
    return str(dialog.query_one("#dialog-error", Label).render())


async def saved(pilot: Pilot[int], screen: UsersScreen, expected_status: str) -> None:
    await wait_until(
        pilot,
        lambda: showing(pilot.app, UsersScreen) and not screen.busy and status(screen) == expected_status,
        f"the status {expected_status!r}",
    )


async def answer_yes(pilot: Pilot[int]) -> None:
    await dialog_of(pilot, ConfirmDialog)
    await pilot.press("y")


def console(clock: FakeClock) -> ToscaApp:
    return make_app(make_settings(clock))


# -- the home screen per role ----------------------------------------------------------------------------


def menu_lines(home: HomeScreen) -> list[str]:
    if not home.query("#home-menu"):
        return []
    menu = home.query_one("#home-menu", OptionList)
    return [str(menu.get_option_at_index(i).prompt) for i in range(menu.option_count)]


async def test_the_admin_home_offers_the_users_and_says_what_is_not_there_yet(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        home = await log_in(pilot, "ada", ADMIN_PASSWORD)
        lines = menu_lines(home)
        assert [line.split()[0] for line in lines] == [
            "t",
            "r",
            "u",
            "p",
            "c",
            "b",
            "a",
            "e",
            "l",
            "x",
            "d",
            "f",
        ]
        assert "no controller" in lines[0]  # this console runs without one: no treatment
        assert lines[2].startswith("u  Users and roles")
        assert not home.query("#home-not-yet")  # every admin screen is in this version
        assert home.check_action("open", ("users",)) is True
        assert lines[3].startswith("p  Protocol library")
        assert lines[4].startswith("c  Configuration")
        assert lines[5].startswith("b  Backups") and lines[6].startswith("a  Audit trail")
        assert lines[10].startswith("d  Devices") and "no controller" in lines[10]
        assert home.check_action("open", ("subjects",)) is False
        # The menu line opens the screen as the key does.
        menu = home.query_one("#home-menu", OptionList)
        menu.focus()
        menu.highlighted = 2
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, UsersScreen), "the users screen from the menu")
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, HomeScreen), "home again")


async def test_a_technician_gets_treatment_and_records_only(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        home = await log_in(pilot, "tina", TECH_PASSWORD)
        assert [line.split()[0] for line in menu_lines(home)] == ["t", "r"]
        assert not home.query("#home-not-yet")
        assert home.check_action("open", ("users",)) is False
        await pilot.press("u")
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        footer = " ".join(b.binding.description for b in app.active_bindings.values() if b.binding.show)
        assert "Users" not in footer and "Records" in footer


async def test_an_engineer_is_offered_the_engineers_screens_and_no_admin_screen(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    async with accounts_service(clock) as service:
        await service.create_user("eric", "Eric Engineer", "engineer", "engineer pass 1", CLI)
    app = console(clock)
    async with app.run_test() as pilot:
        home = await log_in(pilot, "eric", "engineer pass 1")
        assert [line.split()[0] for line in menu_lines(home)] == ["r", "b", "w", "e", "l", "x", "d", "f"]
        assert not home.query("#home-not-yet")  # every engineer's screen is in this version
        for name in ("users", "subjects", "audit", "configuration"):
            assert home.check_action("open", (name,)) is False
        for name in ("backups", "calibration", "safety_events", "logs", "export"):
            assert home.check_action("open", (name,)) is True


# -- the table ---------------------------------------------------------------------------------------------


async def test_the_table_lists_every_account_and_the_find_field_narrows_it(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    async with accounts_service(clock) as service:
        await service.create_user("mal", "Mal [red]Formed[/red]", "engineer", None, CLI)
        await service.deactivate("mal", CLI)
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        assert usernames(screen) == ["ada", "mal", "tina"]
        assert status(screen) == "3 of 3 accounts"
        assert row(screen, "tina") == ["tina", "Tina Tech", "technician", "yes", "never", "—", "no"]
        # A name is shown as typed, never as markup.
        assert row(screen, "mal")[:4] == ["mal", "Mal [red]Formed[/red]", "engineer", "no"]
        assert row(screen, "ada")[4] != "never"  # she has just logged in
        await pilot.press("slash")
        await pilot.press(*"TECH")
        await wait_until(pilot, lambda: usernames(screen) == ["tina"], "the table narrowed")
        assert status(screen) == "1 of 3 accounts matching 'TECH'"
        screen.query_one("#user-find", Input).value = "nobody"
        await wait_until(pilot, lambda: usernames(screen) == [], "an empty table")
        assert status(screen) == "no accounts matching 'nobody'; a adds one"
        assert screen.check_action("role", ()) is None  # dimmed: no account highlighted
        await pilot.press("escape")  # from the find field back to the table
        assert isinstance(app.focused, DataTable)


# -- adding ------------------------------------------------------------------------------------------------


async def test_an_admin_adds_a_user_who_must_choose_a_password(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        await pilot.press("a")
        dialog = await dialog_of(pilot, AddUserDialog)
        await fill_and_submit(
            pilot,
            dialog,
            username="tom",
            full_name="Tom Tech",
            role="tech",
            password="first pass 1",
            repeat="first pass 1",
        )
        await saved(
            pilot, screen, "user tom added (technician); they choose their own password at the first login"
        )
        assert row(screen, "tom") == ["tom", "Tom Tech", "technician", "yes", "never", "—", "yes"]
        assert screen.highlighted_name() == "tom"
    created = [r for r in await audit_rows() if r.action == "user_create"][-1]
    details = json.loads(created.details or "{}")
    assert created.username == "ada" and created.terminal == "/dev/tty1"
    assert details["new"]["role"] == "technician" and details["new"]["must_change_password"] is True
    tom = await stored(clock, "tom")
    assert tom.must_change_password and tom.has_password


async def test_the_add_dialog_refuses_bad_input_field_by_field(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        before = len(await audit_rows())
        await pilot.press("a")
        dialog = await dialog_of(pilot, AddUserDialog)
        good = {
            "username": "tom",
            "full_name": "Tom Tech",
            "role": "technician",
            "password": "first pass 1",
            "repeat": "first pass 1",
        }
        refusals = [
            ({"username": "Tom Tech"}, "invalid username 'Tom Tech'", "username"),
            ({"full_name": "   "}, "the full name must not be empty", "full-name"),
            ({"role": "surgeon"}, "the role must be one of technician, engineer, admin", "role"),
            (
                {"password": "short", "repeat": "short"},
                "the password must have at least 8 characters",
                "password",
            ),
            ({"repeat": "other pass 1"}, "the two passwords differ; type them again", "password"),
        ]
        for change, reason, field in refusals:
            await fill_and_submit(pilot, dialog, **{**good, **change})
            assert reason in dialog_error(dialog)
            assert app.screen is dialog and app.focused is dialog.field(field)
        # A username that is taken is refused by the rules that need the database: on the status line.
        await fill_and_submit(pilot, dialog, **{**good, "username": "tina"})
        await saved(pilot, screen, "a user named 'tina' already exists")
        assert usernames(screen) == ["ada", "tina"]
    assert len(await audit_rows()) == before


# -- changing an account --------------------------------------------------------------------------------


async def test_full_name_and_role_changes(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        await select(pilot, screen, "tina")
        await pilot.press("n")
        dialog = await dialog_of(pilot, FullNameDialog)
        assert dialog.field("full-name").value == "Tina Tech"
        await fill_and_submit(pilot, dialog, full_name="   ")
        assert dialog_error(dialog) == "the full name must not be empty"
        await fill_and_submit(pilot, dialog, full_name="Tina [b]Turner[/b]")
        await saved(pilot, screen, "full name of tina is now Tina [b]Turner[/b]")
        assert row(screen, "tina")[1] == "Tina [b]Turner[/b]"

        await pilot.press("r")
        dialog = await dialog_of(pilot, RoleDialog)
        await fill_and_submit(pilot, dialog, role="technician")
        assert dialog_error(dialog) == "tina is already technician"
        await fill_and_submit(pilot, dialog, role="x")
        assert dialog_error(dialog) == "the role must be one of technician, engineer, admin"
        await fill_and_submit(pilot, dialog, role="e")
        await saved(pilot, screen, "tina is now engineer (was technician)")
        assert row(screen, "tina")[2] == "engineer"
    rows = await audit_rows()
    assert [(r.action, r.username) for r in rows[-2:]] == [
        ("full_name_change", "ada"),
        ("role_change", "ada"),
    ]
    assert json.loads(rows[-1].details or "{}")["old"] == {"role": "technician"}
    assert json.loads(rows[-1].details or "{}")["new"] == {"role": "engineer"}


async def test_an_admin_cannot_demote_nor_deactivate_themselves(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    async with accounts_service(clock) as service:
        await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        before = len(await audit_rows())
        await select(pilot, screen, "ada")
        await pilot.press("r")
        await fill_and_submit(pilot, await dialog_of(pilot, RoleDialog), role="technician")
        await saved(pilot, screen, "an admin cannot demote their own account; another admin must")
        await pilot.press("d")
        await answer_yes(pilot)
        await saved(pilot, screen, "an admin cannot deactivate their own account")
        assert row(screen, "ada")[2:4] == ["admin", "yes"]
        assert len(await audit_rows()) == before


async def test_the_last_active_admin_is_kept(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    async with accounts_service(clock) as service:
        await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        # Meanwhile, from the command line, ada's own account is deactivated: bob is the last active admin.
        async with accounts_service(clock) as service:
            await service.deactivate("ada", CLI)
        await pilot.press("slash")
        await pilot.press(*"bob")
        await wait_until(pilot, lambda: usernames(screen) == ["bob"], "bob alone")
        await pilot.press("escape")
        await pilot.press("r")
        await fill_and_submit(pilot, await dialog_of(pilot, RoleDialog), role="engineer")
        await saved(
            pilot, screen, "'bob' is the last active admin and cannot be demoted; make another admin first"
        )
        await pilot.press("d")
        await answer_yes(pilot)
        await saved(
            pilot, screen, "'bob' is the last active admin and cannot be deactivated; create another first"
        )
    bob = await stored(clock, "bob")
    assert bob.role == "admin" and bob.is_active


async def test_password_reset_must_be_changed_at_the_next_login(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        await select(pilot, screen, "tina")
        await pilot.press("p")
        dialog = await dialog_of(pilot, ResetPasswordDialog)
        assert "They must change it at their next login." in str(
            dialog.query_one("#dialog-prompt", Label).render()
        )
        await fill_and_submit(pilot, dialog, password="tina", repeat="tina")
        assert dialog_error(dialog) == "the password must have at least 8 characters (it has 4)"
        assert dialog.field("password").value == "" and app.focused is dialog.field("password")
        await fill_and_submit(pilot, dialog, password="given pass 1", repeat="given pass 2")
        assert dialog_error(dialog) == "the two passwords differ; type them again"
        await fill_and_submit(pilot, dialog, password="given pass 1", repeat="given pass 1")
        await saved(pilot, screen, "password of tina set; it must be changed at the next login")
        assert row(screen, "tina")[6] == "yes"
    async with accounts_service(clock) as service:
        result = await service.login("tina", "given pass 1")
    assert result.ok and result.user is not None and result.user.must_change_password


async def test_unlock_deactivate_and_reactivate(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    async with accounts_service(clock) as service:
        for _ in range(MAX_FAILED_LOGINS):
            await service.login("tina", "wrong password")
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        await select(pilot, screen, "tina")
        assert row(screen, "tina")[5] != "—"
        assert screen.check_action("unlock", ()) is True
        await pilot.press("u")
        await dialog_of(pilot, ConfirmDialog)
        await pilot.press("n")
        await saved(pilot, screen, "tina left as it was")
        await pilot.press("u")
        await answer_yes(pilot)
        await saved(pilot, screen, "user tina unlocked")
        assert row(screen, "tina")[5] == "—"
        assert screen.check_action("unlock", ()) is None

        await pilot.press("d")
        await answer_yes(pilot)
        await saved(pilot, screen, "user tina deactivated")
        assert row(screen, "tina")[3] == "no"
        assert (
            screen.check_action("reactivate", ()) is True and screen.check_action("deactivate", ()) is False
        )
        await pilot.press("d")
        await answer_yes(pilot)
        await saved(pilot, screen, "user tina reactivated")
        assert row(screen, "tina")[3] == "yes"
    actions = [(r.action, r.username) for r in await audit_rows()][-3:]
    assert actions == [("unlock", "ada"), ("deactivate", "ada"), ("reactivate", "ada")]


async def test_a_change_made_meanwhile_refuses_the_second_one(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        await select(pilot, screen, "tina")
        # Another admin changes tina's role while this screen shows her as a technician.
        async with accounts_service(clock) as service:
            await service.change_role("tina", "engineer", CLI)
        before = len(await audit_rows())
        await pilot.press("n")
        await fill_and_submit(pilot, await dialog_of(pilot, FullNameDialog), full_name="Tina Turner")
        await saved(
            pilot,
            screen,
            "'tina' was changed meanwhile (role: 'technician' -> 'engineer'); nothing was saved: "
            "look at it again and retry",
        )
        # The table was read again: it shows what changed, and the change can now be made knowingly.
        assert row(screen, "tina")[1:3] == ["Tina Tech", "engineer"]
        assert len(await audit_rows()) == before
        await pilot.press("n")
        await fill_and_submit(pilot, await dialog_of(pilot, FullNameDialog), full_name="Tina Turner")
        await saved(pilot, screen, "full name of tina is now Tina Turner")
    assert (await stored(clock, "tina")).full_name == "Tina Turner"


async def test_escape_leaves_a_dialog_without_a_change(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = console(clock)
    async with app.run_test() as pilot:
        screen = await open_users(pilot)
        before = len(await audit_rows())
        await select(pilot, screen, "tina")
        for key, kind in (
            ("a", AddUserDialog),
            ("n", FullNameDialog),
            ("r", RoleDialog),
            ("p", ResetPasswordDialog),
        ):
            await pilot.press(key)
            await dialog_of(pilot, kind)
            await pilot.press("escape")
            await wait_until(pilot, lambda: showing(app, UsersScreen), "back on the users screen")
        assert row(screen, "tina") == ["tina", "Tina Tech", "technician", "yes", "never", "—", "no"]
    assert len(await audit_rows()) == before
