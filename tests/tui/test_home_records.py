"""The admin's and engineer's home screens say how the records last verified (``tosca audit verify``):
never, intact (with the rows per chain) or failed (with the first failure, in red). A technician's home
does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from console_fixtures import (
    ADMIN_PASSWORD,
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
from textual.widgets import Input, Static

from storage.chain_verify import ChainCount, Failure, VerifyResult
from storage.verifications import record_verification
from tui.app import make_app
from tui.screens import HomeScreen, LoginScreen


async def home_facts(pilot: Pilot[Any], username: str, password: str) -> HomeScreen:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen) and isinstance(app.focused, Input), "login")
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")
    home = app.screen
    assert isinstance(home, HomeScreen)
    await wait_until(pilot, lambda: home.facts is not None, "the database facts")
    return home


def records_line(home: HomeScreen) -> Static:
    return home.query_one("#fact-records", Static)


@pytest.mark.parametrize(
    ("result", "shown", "red"),
    [
        (None, "never verified (tosca audit verify)", False),
        (
            VerifyResult(counts=[ChainCount("audit_log", 12, 0, 2), ChainCount("safety_log", 3, 1, 2)]),
            "intact on ",
            False,
        ),
        (
            VerifyResult(failure=Failure("altered", "audit_log row 4 (seq 4): altered")),
            "FAILED on ",
            True,
        ),
    ],
    ids=["never", "intact", "failed"],
)
async def test_the_admins_home_says_how_the_records_last_verified(
    data_dir: Path, clock: FakeClock, result: VerifyResult | None, shown: str, red: bool
) -> None:
    await seed()
    if result is not None:
        record_verification(DATA_DIR / "tosca.db", result)
    app = make_app(make_settings(clock))
    async with app.run_test(size=(120, 40)) as pilot:
        home = await home_facts(pilot, "ada", ADMIN_PASSWORD)
        line = records_line(home)
        text = str(line.render())
        assert text.startswith(shown), text
        if result is not None and result.ok:
            assert text.endswith("audit_log 12 rows, safety_log 3 rows")
        if result is not None and not result.ok:
            assert text.endswith("audit_log row 4 (seq 4): altered")
        styles = " ".join(str(span.style) for span in getattr(line.render(), "spans", []))
        assert ("red" in styles) is red


async def test_a_technicians_home_has_no_records_line(data_dir: Path, clock: FakeClock) -> None:
    await seed()
    app = make_app(make_settings(clock))
    async with app.run_test(size=(120, 40)) as pilot:
        home = await home_facts(pilot, "tina", TECH_PASSWORD)
        assert not home.query("#fact-records")
