"""The console's connection to the controller acts for the person logged in, and for nobody once they leave.

A login signs the connection in with the password just typed, waiting for the controller if it is still
starting. A person who logs out before the controller answers must not leave the connection signed in for
them: the next person at the console (or nobody) would otherwise command the rig under their name.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from console_fixtures import DATA_DIR, FakeClock, seed, showing, wait_until
from treatment_fixtures import connected, console, controller, log_in

from control.messages import Sim
from tests.support import RIG_TEST
from tui.link import CommandFailed
from tui.screens.login import LoginScreen

pytestmark = RIG_TEST


def control_connection_rows() -> list[tuple[str, str]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT action, outcome FROM audit_log WHERE details LIKE '%control_connection%' "
            "ORDER BY audit_id"
        ).fetchall()
    return [(str(action), str(outcome)) for action, outcome in rows]


async def test_a_sign_in_answered_after_the_logout_leaves_the_connection_signed_out(
    data_dir: Path, clock: FakeClock
) -> None:
    await seed()
    app = console(clock)
    async with app.run_test(size=(100, 30)) as pilot:
        # No controller yet: the login succeeds at the console and its sign-in waits for the controller.
        await log_in(pilot)
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: showing(app, LoginScreen), "the login screen")
        assert app.user is None

        async with controller():
            await connected(pilot)
            link = app.link
            assert link is not None

            # The waiting sign-in reaches the controller now; it is undone at once, nobody being logged in.
            def signing_in() -> bool:
                return any(w.group == "link-sign-in" and not w.is_finished for w in app.workers)

            await wait_until(
                pilot,
                lambda: ("login", "success") in control_connection_rows() and not signing_in(),
                "the late sign-in answered and undone",
                30.0,
            )
            assert link.username is None
            with pytest.raises(CommandFailed):
                await link.call(Sim(command="pedal down"))
