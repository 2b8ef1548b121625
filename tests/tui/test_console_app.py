"""The console driven from the keyboard: first run, login, refusals, lockout, changing a password set by an
admin, automatic lock, logout, kiosk."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    ADMIN_PASSWORD,
    CHEAP,
    CLI,
    GIVEN_PASSWORD,
    TECH_PASSWORD,
    FakeClock,
    admin_sets_password,
    enter_text,
    make_settings,
    seed,
    showing,
    status_text,
    wait_for_check,
    wait_until,
)
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, Static

from control.accounts import LOCKOUT_DURATION, AccountService
from control.clock import format_local_hm
from storage import AuditLog, TechUser, create_engine, session_factory
from storage.errors import StorageError
from storage.repositories import AuditRepository, UsersRepository
from tui.app import make_app
from tui.screens import (
    ChangePasswordScreen,
    FirstRunScreen,
    HomeScreen,
    LockScreen,
    LoggedIn,
    LoginScreen,
    PasswordChanged,
)
from tui.widgets.header import SIMULATED_RIG


async def audit_rows(data_dir: Path) -> list[AuditLog]:
    engine = create_engine(data_dir / "tosca.db")
    try:
        async with session_factory(engine)() as session:
            rows = await AuditRepository(session).recent(limit=500)
    finally:
        await engine.dispose()
    return sorted(rows, key=lambda r: r.audit_id)


async def user_row(data_dir: Path, username: str) -> TechUser:
    engine = create_engine(data_dir / "tosca.db")
    try:
        async with session_factory(engine)() as session:
            row = await UsersRepository(session).get_by_username(username)
    finally:
        await engine.dispose()
    assert row is not None
    return row


async def type_login(pilot: Pilot[int], username: str, password: str) -> None:
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")


async def log_in(pilot: Pilot[int], username: str, password: str) -> HomeScreen:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
    await type_login(pilot, username, password)
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
    assert isinstance(app.screen, HomeScreen)
    return app.screen


async def test_first_run_creates_the_first_admin_and_logs_them_in(data_dir: Path, clock: FakeClock) -> None:
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, FirstRunScreen), "the first-run screen")
        assert "Create the first administrator" in str(app.screen.query_one(".form-title", Static).render())
        await pilot.press(*"ada", "enter", *"Ada Lovelace", "enter", *ADMIN_PASSWORD, "enter")
        await pilot.press(*ADMIN_PASSWORD, "enter")
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
        assert app.user is not None and (app.user.username, app.user.role) == ("ada", "admin")
        home = app.screen
        await wait_until(pilot, lambda: home.facts is not None, "the database facts")
        assert str(home.query_one("#fact-role", Static).render()) == "admin"
        assert str(home.query_one("#fact-db", Static).render()) == "data/tosca.db"
    actions = [(r.action, r.outcome, r.terminal) for r in await audit_rows(data_dir)]
    assert actions == [
        ("user_create", "success", "/dev/tty1"),
        ("password_set", "success", "/dev/tty1"),
        ("login", "success", "/dev/tty1"),
    ]


async def test_first_run_refuses_mismatched_and_short_passwords(data_dir: Path, clock: FakeClock) -> None:
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, FirstRunScreen), "the first-run screen")
        for text in ("ada", "Ada Admin", "first one", "other one"):
            await enter_text(pilot, text)
            await pilot.press("enter")
        assert status_text(pilot) == "the two passwords differ; type them again"
        assert isinstance(app.screen, FirstRunScreen)
        for field in ("#password", "#repeat"):
            app.screen.query_one(field, Input).value = "short"
        repeat = app.screen.query_one("#repeat", Input)
        repeat.focus()
        await wait_until(pilot, lambda: app.focused is repeat, "the repeat field to have focus")
        await pilot.press("enter")
        assert "at least 8 characters" in status_text(pilot)
        assert isinstance(app.screen, FirstRunScreen)
    assert await audit_rows(data_dir) == []


async def test_login_success_shows_home_with_user_role_and_database(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        home = await log_in(pilot, "tina", TECH_PASSWORD)
        await wait_until(pilot, lambda: home.facts is not None, "the database facts")
        assert str(home.query_one("#fact-user", Static).render()) == "Tina Tech (tina)"
        assert str(home.query_one("#fact-role", Static).render()) == "technician"
        assert str(home.query_one("#fact-schema", Static).render()).startswith("2026")
        assert str(home.query_one("#fact-backup", Static).render()) == "none"
        assert str(home.query_one("#header-user", Static).render()) == "tina (technician)"


async def test_home_shows_the_disk_use_of_the_data_directory(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    folder = data_dir / "sessions" / "P-2026-0001" / "20260314T093000Z-0a1b2c3d4e5f"
    folder.mkdir(parents=True)
    (folder / "video.mkv").write_bytes(b"\0" * 2_500_000)
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        home = await log_in(pilot, "tina", TECH_PASSWORD)
        await wait_until(pilot, lambda: home.facts is not None, "the database facts")
        shown = str(home.query_one("#fact-disk", Static).render())
        assert re.fullmatch(r"\d+\.\d (kB|MB|GB) free of \d+\.\d (kB|MB|GB); sessions 2\.5 MB", shown), shown


async def test_wrong_password_and_unknown_user_get_the_same_message(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        await type_login(pilot, "tina", "not my password")
        await wait_for_check(pilot)
        assert status_text(pilot) == "wrong username or password"
        assert app.screen.query_one("#password", Input).value == ""
        username = app.screen.query_one("#username", Input)
        username.value = ""
        username.focus()
        await wait_until(pilot, lambda: app.focused is username, "the username field to have focus")
        await type_login(pilot, "nobody", "not my password")
        await wait_for_check(pilot)
        assert status_text(pilot) == "wrong username or password"
        assert isinstance(app.screen, LoginScreen) and app.user is None


async def test_lockout_message_names_the_local_time(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        await enter_text(pilot, "tina")
        await pilot.press("enter")
        for attempt in range(6):
            await enter_text(pilot, f"bad guess {attempt}")
            await pilot.press("enter")
            await wait_for_check(pilot)
        until = format_local_hm(clock.now + LOCKOUT_DURATION)
        assert status_text(pilot) == f"account locked until {until}"
        # The right password does not help while locked.
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_for_check(pilot)
        assert status_text(pilot) == f"account locked until {until}"
        assert isinstance(app.screen, LoginScreen)


async def test_account_without_password_is_told_to_ask_an_admin(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    engine = create_engine(data_dir / "tosca.db")
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="/dev/pts/9", hashing=CHEAP)
        await accounts.create_user("nina", "Nina New", "technician", None, CLI)
    finally:
        await engine.dispose()
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        await type_login(pilot, "nina", "whatever it is")
        await wait_for_check(pilot)
        assert status_text(pilot) == "no password set; ask an admin"


async def test_console_locks_after_inactivity_and_reopens_with_the_same_password(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed(auto_lock_minutes=3)
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await log_in(pilot, "tina", TECH_PASSWORD)
        assert app.auto_lock == timedelta(minutes=3)
        clock.advance(timedelta(minutes=2, seconds=59))
        app.check_inactivity()  # not yet idle long enough
        assert not app.is_locked
        await pilot.press("x")  # any input counts as activity
        clock.advance(timedelta(minutes=2, seconds=59))
        app.check_inactivity()
        assert not app.is_locked
        clock.advance(timedelta(seconds=1))
        # From here on the app's own periodic check must lock it.
        await wait_until(pilot, lambda: showing(app, LockScreen), "the lock screen")
        assert str(app.screen.query_one("#lock-who", Static).render()).startswith("Tina Tech (tina)")
        await enter_text(pilot, "wrong password")
        await pilot.press("enter")
        await wait_for_check(pilot)
        assert status_text(pilot) == "wrong username or password"
        assert isinstance(app.screen, LockScreen)
        await enter_text(pilot, TECH_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen again")
        assert app.user is not None and app.user.username == "tina"
    rows = await audit_rows(data_dir)
    lock = [r for r in rows if r.action == "screen_lock"]
    assert len(lock) == 1 and lock[0].username == "tina"
    contexts = [json.loads(r.details or "{}").get("context") for r in rows if r.action == "login"]
    assert contexts == ["login", "lock_screen", "lock_screen"]


async def test_logout_returns_to_login_from_home_and_from_the_lock_screen(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await log_in(pilot, "ada", ADMIN_PASSWORD)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert app.user is None
        await log_in(pilot, "tina", TECH_PASSWORD)
        await pilot.press("ctrl+l")
        await wait_until(pilot, lambda: showing(app, LockScreen), "the lock screen")
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert app.user is None and not app.is_locked
    logouts = [
        (r.username, json.loads(r.details or "{}")["reason"])
        for r in await audit_rows(data_dir)
        if r.action == "logout"
    ]
    assert logouts == [("ada", "user"), ("tina", "lock_screen")]


async def test_header_says_simulated_rig_only_with_sim(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    for sim in (True, False):
        app = make_app(make_settings(clock, sim=sim))
        async with app.run_test() as pilot:
            on_login = lambda: showing(app, LoginScreen)  # noqa: B023, E731
            await wait_until(pilot, on_login, "the login screen")
            assert str(app.screen.query_one("#brand", Static).render()) == "TOSCA"
            badges = app.screen.query("#sim-badge")
            assert [str(b.render()) for b in badges] == ([SIMULATED_RIG] if sim else [])


async def test_quit_key_closes_the_console_but_not_the_kiosk(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    kiosk = make_app(make_settings(clock, kiosk=True))
    async with kiosk.run_test() as pilot:
        await wait_until(pilot, lambda: showing(kiosk, LoginScreen), "the login screen")
        assert not kiosk.use_command_palette
        await pilot.press("ctrl+q", "ctrl+c")
        assert kiosk.is_running and isinstance(kiosk.screen, LoginScreen)
        shown = {
            b.binding.action for b in kiosk.screen.active_bindings.values() if b.binding.show and b.enabled
        }
        assert "quit_console" not in shown

    desktop = make_app(make_settings(clock))
    async with desktop.run_test() as pilot:
        await log_in(pilot, "tina", TECH_PASSWORD)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not desktop.is_running, "the console to close")
    assert desktop.return_code == 0
    logouts = [json.loads(r.details or "{}") for r in await audit_rows(data_dir) if r.action == "logout"]
    assert logouts == [{"reason": "quit"}]


async def test_first_run_turns_into_login_when_an_admin_appeared_meanwhile(
    data_dir: Path, clock: FakeClock
) -> None:
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, FirstRunScreen), "the first-run screen")
        await seed()  # an admin is added from another terminal while the form is open
        for text in ("eve", "Eve Admin", ADMIN_PASSWORD, ADMIN_PASSWORD):
            await enter_text(pilot, text)
            await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert app.user is None
    assert "eve" not in {r.username for r in await audit_rows(data_dir)}


async def test_an_unreadable_database_is_reported_on_screen(
    data_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data_dir / "tosca.db").write_bytes(b"not a database at all " * 200)
    app = make_app(make_settings(clock))
    shown: list[tuple[str, str]] = []
    real_notify = app.notify

    def spy(message: str, **kwargs: Any) -> None:
        shown.append((message, kwargs.get("severity", "information")))
        real_notify(message, **kwargs)

    monkeypatch.setattr(app, "notify", spy)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: bool(shown), "an error notification")
        assert shown[0][1] == "error" and shown[0][0].startswith("show_entry_screen failed:")
        assert app.user is None and not isinstance(app.screen, (LoginScreen, FirstRunScreen))


async def log_in_to_change(pilot: Pilot[int], username: str, password: str) -> ChangePasswordScreen:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
    await type_login(pilot, username, password)
    await wait_until(pilot, lambda: showing(app, ChangePasswordScreen), "the change-password screen")
    assert isinstance(app.screen, ChangePasswordScreen)
    return app.screen


async def type_new_password(pilot: Pilot[int], password: str, repeat: str) -> None:
    """Both fields from the keyboard: Enter moves from the first to the second, then submits."""
    await enter_text(pilot, password)
    await pilot.press("enter")
    await wait_until(pilot, lambda: getattr(pilot.app.focused, "id", None) == "repeat", "the repeat field")
    await enter_text(pilot, repeat)
    await pilot.press("enter")


async def test_a_password_set_by_an_admin_must_be_changed_before_home(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    await admin_sets_password("tina", GIVEN_PASSWORD)
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        screen = await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
        assert "Change your password" in str(screen.query_one(".form-title", Static).render())
        assert str(screen.query_one("#header-user", Static).render()) == "tina (technician)"
        assert app.user is not None and app.user.username == "tina" and app.user.must_change_password
        assert not any(isinstance(s, HomeScreen) for s in app.screen_stack)
        assert app.focused is screen.query_one("#password", Input)


async def test_change_password_refuses_short_mismatched_and_unchanged_passwords(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    await admin_sets_password("tina", GIVEN_PASSWORD)
    before = await user_row(data_dir, "tina")
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        screen = await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
        refusals = [
            ("short", "short", "the password must have at least 8 characters (it has 5)"),
            ("my own one 1", "my own one 2", "the two passwords differ; type them again"),
            (GIVEN_PASSWORD, GIVEN_PASSWORD, "the new password must differ from the one you logged in with"),
        ]
        for password, repeat, message in refusals:
            await type_new_password(pilot, password, repeat)
            await wait_for_check(pilot)
            assert status_text(pilot) == message
            assert app.screen is screen
            # Both fields are cleared and the first one has focus, to type them again.
            assert [screen.value(f) for f in ("password", "repeat")] == ["", ""]
            assert app.focused is screen.query_one("#password", Input)
    after = await user_row(data_dir, "tina")
    assert after.must_change_password and after.password_hash == before.password_hash
    assert [r.username for r in await audit_rows(data_dir) if r.action == "password_set"] == [
        "opsadmin",
        "opsadmin",
        "opsadmin",
    ]


async def test_a_good_new_password_is_saved_and_leads_home(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    await admin_sets_password("tina", GIVEN_PASSWORD)
    before = await user_row(data_dir, "tina")
    new_password = "tina's own 1"
    app = make_app(make_settings(clock))
    seen: list[Message] = []

    def hook(message: Message) -> None:
        # A message is seen once by each node it bubbles through: count it once.
        if isinstance(message, (LoggedIn, PasswordChanged)) and all(m is not message for m in seen):
            seen.append(message)

    async with app.run_test(message_hook=hook) as pilot:
        await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
        await type_new_password(pilot, new_password, new_password)
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
        assert app.user is not None and not app.user.must_change_password
        assert [type(m) for m in seen] == [LoggedIn, PasswordChanged]
        # The new password is now the one that logs in, and straight to the home screen.
        await pilot.press("ctrl+o")
        await log_in(pilot, "tina", new_password)
    after = await user_row(data_dir, "tina")
    assert not after.must_change_password
    assert after.password_hash != before.password_hash
    assert after.password_hash is not None and CHEAP.hasher().verify(after.password_hash, new_password)
    own = [r for r in await audit_rows(data_dir) if r.action == "password_set" and r.tech_id == after.tech_id]
    assert [(r.username, r.outcome, r.terminal, json.loads(r.details or "{}")) for r in own] == [
        (
            "tina",
            "success",
            "/dev/tty1",
            {
                "user": "tina",
                "old": {"has_password": True, "must_change_password": True},
                "new": {"has_password": True, "must_change_password": False},
            },
        )
    ]


async def test_logging_out_from_the_change_screen_returns_to_login(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    await admin_sets_password("tina", GIVEN_PASSWORD)
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        screen = await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
        footer_keys = {
            b.binding.action: b.binding.description
            for b in screen.active_bindings.values()
            if b.binding.show and b.enabled
        }
        assert footer_keys.get("logout") == "Log out"
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert app.user is None
        # Nothing was changed, so the next login asks again.
        await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
    assert (await user_row(data_dir, "tina")).must_change_password
    logouts = [
        (r.username, json.loads(r.details or "{}")["reason"])
        for r in await audit_rows(data_dir)
        if r.action == "logout"
    ]
    assert logouts == [("tina", "user")]


async def test_the_change_screen_locks_like_any_other_and_unlocks_to_where_the_user_was(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed(auto_lock_minutes=3)
    await admin_sets_password("tina", GIVEN_PASSWORD)
    new_password = "tina's own 1"
    app = make_app(make_settings(clock))
    async with app.run_test() as pilot:
        screen = await log_in_to_change(pilot, "tina", GIVEN_PASSWORD)
        clock.advance(timedelta(minutes=3))
        await wait_until(pilot, lambda: showing(app, LockScreen), "the lock screen")
        await enter_text(pilot, GIVEN_PASSWORD)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is screen, "the change-password screen again")
        # A save still under way when the console locks must not lift the lock.
        app.action_lock()
        await wait_until(pilot, lambda: showing(app, LockScreen), "the lock screen")
        screen.change_password(new_password)
        await wait_until(
            pilot, lambda: app.user is not None and not app.user.must_change_password, "the save"
        )
        await pilot.pause()
        assert showing(app, LockScreen)
        await enter_text(pilot, new_password)
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")


async def test_the_login_screen_comes_before_the_database_and_a_login_waits_for_it(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    release = threading.Event()
    opening = threading.Event()

    def prepare() -> None:
        opening.set()
        release.wait(30.0)

    app = make_app(make_settings(clock), prepare=prepare)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        await type_login(pilot, "tina", TECH_PASSWORD)
        await wait_until(pilot, lambda: status_text(pilot) == "checking...", "the check to start")
        await wait_until(pilot, opening.is_set, "the database being opened")
        await pilot.pause()
        # Still opening (the upgrade has not finished): nobody is logged in, the screen says it is checking.
        assert showing(app, LoginScreen) and app.user is None and status_text(pilot) == "checking..."
        release.set()
        await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen once the database is open")
        home = app.screen
        assert isinstance(home, HomeScreen)
        await wait_until(pilot, lambda: home.facts is not None, "the database facts")
        assert app.user is not None and app.user.username == "tina"


async def test_a_database_that_cannot_be_opened_ends_the_console_with_the_reason(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()

    def refuse() -> None:
        raise StorageError("tosca.db has schema revision 20990101_999, unknown to this console")

    app = make_app(make_settings(clock), prepare=refuse)
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: app.return_code is not None, "the console to end")
    assert app.return_code == 1
    assert app.startup_error == "tosca.db has schema revision 20990101_999, unknown to this console"
