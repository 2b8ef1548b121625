"""The console's dialogs, each opened over a plain screen: what they return, what they refuse, and how they
look (snapshots at 80x24)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from console_fixtures import enter_text, wait_until
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Input, Label, Static

from tui.screens.dialogs import (
    MAX_REASON_CHARS,
    ConfirmDialog,
    DialogInputError,
    OverrideDialog,
    PasswordDialog,
    ReasonDialog,
    check_power,
    format_watts,
)

SnapCompare = Callable[..., bool]


class DialogHost(App[None]):
    """A plain screen with some text, and ``dialog`` opened over it; what it returns goes in ``results``."""

    def __init__(self, dialog: Screen[Any]) -> None:
        super().__init__()
        self.dialog = dialog
        self.results: list[Any] = []

    def compose(self) -> ComposeResult:
        yield Static("Treatment dashboard\nSubject P-2026-0001, protocol constant_3w_120s", id="backdrop")

    def on_mount(self) -> None:
        self.push_screen(self.dialog, self.results.append)


async def dialog_open(pilot: Pilot[Any]) -> None:
    """Wait until the host's dialog is on top, mounted and has the focus where it wants it."""
    app = pilot.app
    assert isinstance(app, DialogHost)
    await wait_until(
        pilot,
        lambda: app.screen is app.dialog and app.dialog.is_mounted and app.focused is not None,
        "the dialog",
    )


async def answered(pilot: Pilot[Any]) -> Any:
    """Wait until the dialog has closed and return what it returned."""
    app = pilot.app
    assert isinstance(app, DialogHost)
    await wait_until(pilot, lambda: bool(app.results) and app.screen is not app.dialog, "the dialog to close")
    assert len(app.results) == 1
    return app.results[0]


def error_text(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#dialog-error", Label).render())


async def still_open_with(pilot: Pilot[Any], message: str) -> None:
    """The dialog shows ``message`` and has returned nothing."""
    app = pilot.app
    assert isinstance(app, DialogHost)
    await pilot.pause()
    assert error_text(pilot) == message
    assert app.screen is app.dialog
    assert app.results == []


def focused_id(pilot: Pilot[Any]) -> str | None:
    focused = pilot.app.focused
    return focused.id if focused is not None else None


_SVG_TEXT = re.compile(
    r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)" textLength="([\d.]+)"[^>]*>(.*?)</text>'
)


def screen_text(app: App[Any]) -> str:
    """The characters on screen, one line per row (read from a screenshot), for checking what is shown."""
    rows: dict[float, list[tuple[float, str]]] = {}
    cell = 0.0
    for x, y, length, markup in _SVG_TEXT.findall(app.export_screenshot()):
        text = html.unescape(markup).replace("\xa0", " ")
        if text and not cell:
            cell = float(length) / len(text)
        rows.setdefault(float(y), []).append((float(x), text))
    lines = []
    for _, row in sorted(rows.items()):
        line = ""
        for x, text in sorted(row):
            line = line.ljust(round(x / cell)) + text
        lines.append(line.rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reason


async def test_reason_typed_is_returned_stripped() -> None:
    app = DialogHost(ReasonDialog("Abort session", "Why is the session aborted?", cursor_blink=False))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        assert "Why is the session aborted?" in screen_text(app)
        await pilot.press("space", *"patient moved", "space")
        assert app.focused is not None and isinstance(app.focused, Input)
        assert app.focused.value == " patient moved "
        await pilot.press("enter")
        assert await answered(pilot) == "patient moved"


async def test_reason_blank_or_too_long_is_refused() -> None:
    app = DialogHost(ReasonDialog("Abort session", "Why?", cursor_blink=False))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await pilot.press("enter")
        await still_open_with(pilot, "the reason cannot be blank; say why")
        await enter_text(pilot, "    ")
        await pilot.press("enter")
        await still_open_with(pilot, "the reason cannot be blank; say why")
        await enter_text(pilot, "x" * (MAX_REASON_CHARS + 1))
        await pilot.press("enter")
        await still_open_with(pilot, "the reason is 501 characters long; at most 500 are allowed")
        assert focused_id(pilot) == "reason"
        await enter_text(pilot, "y" * MAX_REASON_CHARS)
        await pilot.press("enter")
        assert await answered(pilot) == "y" * MAX_REASON_CHARS


async def test_reason_escape_returns_none() -> None:
    app = DialogHost(ReasonDialog("Abort session", "Why?", cursor_blink=False))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "half typed")
        await pilot.press("escape")
        assert await answered(pilot) is None


# -------------------------------------------------------------------------------------------- override


def override_host() -> DialogHost:
    return DialogHost(OverrideDialog(current_w=3.0, max_w=8.0, cursor_blink=False))


async def test_override_returns_power_and_reason() -> None:
    app = override_host()
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        assert "Commanded now: 3.0 W" in screen_text(app)
        assert "Protocol limit: 8.0 W" in screen_text(app)
        assert focused_id(pilot) == "power"
        await enter_text(pilot, "4.5")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "reason", "the reason field")
        assert app.results == []
        await enter_text(pilot, "  subject reports warmth ")
        await pilot.press("enter")
        assert await answered(pilot) == (4.5, "subject reports warmth")


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "power must be a number in watts, e.g. 4.5"),
        ("abc", "power must be a number in watts, e.g. 4.5"),
        ("nan", "power must be a number in watts, e.g. 4.5"),
        ("inf", "power must be a number in watts, e.g. 4.5"),
        ("1e3", "power must be a number in watts, e.g. 4.5"),
        ("4,5", "power must be a number in watts, e.g. 4.5"),
        ("-1", "power cannot be negative"),
        ("4.555", "power can have at most 2 decimals (steps of 0.01 W)"),
        ("9", "9.0 W is above this protocol's limit of 8.0 W"),
        ("8.01", "8.01 W is above this protocol's limit of 8.0 W"),
    ],
)
async def test_override_refuses_bad_power(typed: str, message: str) -> None:
    app = override_host()
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, typed)
        await pilot.press("enter")
        await still_open_with(pilot, message)
        assert focused_id(pilot) == "power"


async def test_override_refuses_blank_reason_and_rechecks_power() -> None:
    app = override_host()
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "5")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "reason", "the reason field")
        await pilot.press("enter")
        await still_open_with(pilot, "the reason cannot be blank; say why")
        # The power changed to a bad value after it was accepted: the submit from the reason field refuses it.
        app.dialog.query_one("#power", Input).value = "12"
        await enter_text(pilot, "too cold")
        await pilot.press("enter")
        await still_open_with(pilot, "12.0 W is above this protocol's limit of 8.0 W")
        assert focused_id(pilot) == "power"
        await enter_text(pilot, "8")
        await pilot.press("enter", "enter")
        assert await answered(pilot) == (8.0, "too cold")


async def test_override_escape_returns_none() -> None:
    app = override_host()
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "4")
        await pilot.press("escape")
        assert await answered(pilot) is None


@pytest.mark.parametrize(
    ("typed", "watts"), [("0", 0.0), ("8", 8.0), ("4.50", 4.5), (" 4.25 W", 4.25), (".5", 0.5), ("-0", 0.0)]
)
def test_check_power_accepts(typed: str, watts: float) -> None:
    assert check_power(typed, 8.0) == watts


def test_check_power_messages_name_the_limit() -> None:
    with pytest.raises(DialogInputError, match=r"^4\.5 W is above this protocol's limit of 2\.25 W$"):
        check_power("4.5", 2.25)
    assert format_watts(8) == "8.0"
    assert format_watts(4.25) == "4.25"


@pytest.mark.parametrize(("current", "limit"), [(math.nan, 8.0), (3.0, math.inf), (-1.0, 8.0), (1.0, -2.0)])
def test_override_dialog_refuses_bad_figures(current: float, limit: float) -> None:
    with pytest.raises(ValueError, match="must be a finite power >= 0 W"):
        OverrideDialog(current_w=current, max_w=limit, cursor_blink=False)


# -------------------------------------------------------------------------------------------- password


async def test_password_with_username_given_shows_who_and_has_no_username_field() -> None:
    # Observed: the arm dialog's username field was editable but ignored; another person typing their own
    # credentials there was recorded as the technician's failure.
    app = DialogHost(
        PasswordDialog(
            "Arm the laser",
            "Key control: enter your password to arm.",
            username="tina",
            who="Tina [bold]T[/] (tina)",
            cursor_blink=False,
        )
    )
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        assert focused_id(pilot) == "password"
        assert not app.dialog.query("#username")
        assert [field.id for field in app.dialog.query(Input)] == ["password"]
        assert "Tina [bold]T[/] (tina)" in screen_text(app)
        await pilot.press("shift+tab")
        await pilot.pause()
        assert focused_id(pilot) == "password", "nothing but the password can be typed"
        await pilot.press("enter")
        await still_open_with(pilot, "enter the password")
        await pilot.press(*"sekrit9")
        await pilot.pause()
        assert "sekrit9" not in screen_text(app)
        await pilot.press("enter")
        assert await answered(pilot) == ("tina", "sekrit9")


async def test_password_username_is_editable_and_required() -> None:
    app = DialogHost(PasswordDialog("Arm", "Key control: your password", username=None, cursor_blink=False))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        assert focused_id(pilot) == "username"
        await pilot.press("enter")
        await still_open_with(pilot, "enter the username")
        await enter_text(pilot, " ada ")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "password", "the password field")
        await pilot.press("enter")
        await still_open_with(pilot, "enter the password")
        # The username emptied meanwhile: refused from the password field too, and the focus goes to it.
        app.dialog.query_one("#username", Input).value = ""
        await enter_text(pilot, "pw 1")
        await pilot.press("enter")
        await still_open_with(pilot, "enter the username")
        assert focused_id(pilot) == "username"
        await enter_text(pilot, "ada")
        await pilot.press("enter")
        await wait_until(pilot, lambda: focused_id(pilot) == "password", "the password field")
        await pilot.press("enter")
        assert await answered(pilot) == ("ada", "pw 1")


async def test_password_escape_returns_none() -> None:
    app = DialogHost(PasswordDialog("Reset fault", "Acknowledge", username="tina", cursor_blink=False))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await enter_text(pilot, "half")
        await pilot.press("escape")
        assert await answered(pilot) is None


# --------------------------------------------------------------------------------------------- confirm


@pytest.mark.parametrize(("keys", "answer"), [(("y",), True), (("n",), False), (("escape",), False)])
async def test_confirm_keys(keys: tuple[str, ...], answer: bool) -> None:
    app = DialogHost(ConfirmDialog("End the session now?"))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        assert "End the session now?" in screen_text(app)
        await pilot.press(*keys)
        assert await answered(pilot) is answer


async def test_confirm_enter_answers_no_and_yes_button_answers_yes() -> None:
    app = DialogHost(ConfirmDialog("End the session now?"))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await pilot.press("enter")
        assert await answered(pilot) is False
    app = DialogHost(ConfirmDialog("End the session now?"))
    async with app.run_test() as pilot:
        await dialog_open(pilot)
        await pilot.click("#yes")
        assert await answered(pilot) is True


# ------------------------------------------------------------------------------------------- snapshots


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_reason_dialog_snapshot(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    app = DialogHost(ReasonDialog("Abort session", "Why is the session aborted?", cursor_blink=False))

    async def refused(pilot: Pilot[Any]) -> None:
        await dialog_open(pilot)
        await pilot.press("enter")
        await still_open_with(pilot, "the reason cannot be blank; say why")

    assert snap_compare(app, terminal_size=size, run_before=refused)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_override_dialog_snapshot(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    app = override_host()

    async def refused(pilot: Pilot[Any]) -> None:
        await dialog_open(pilot)
        await enter_text(pilot, "9")
        await pilot.press("enter")
        await still_open_with(pilot, "9.0 W is above this protocol's limit of 8.0 W")

    assert snap_compare(app, terminal_size=size, run_before=refused)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_password_dialog_snapshot(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    app = DialogHost(
        PasswordDialog(
            "Reset fault",
            "Fault cleared. Enter your password to reset it.",
            username="tina",
            cursor_blink=False,
        )
    )

    async def typed(pilot: Pilot[Any]) -> None:
        await dialog_open(pilot)
        await enter_text(pilot, "sekrit9")

    assert snap_compare(app, terminal_size=size, run_before=typed)
