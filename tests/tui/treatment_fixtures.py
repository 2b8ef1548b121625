"""The console against a real controller: the controller runs in the test's loop on the simulated rig (real
ptys, the real migrated SQLite file in ./data), and the console's link connects to its socket exactly as it
connects to a controller process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from console_fixtures import (
    DATA_DIR,
    TECH_PASSWORD,
    FakeClock,
    enter_text,
    make_settings,
    showing,
    wait_until,
)
from textual.pilot import Pilot
from textual.widgets import Input, Static

from control.messages import Snapshot
from control.protocol_approval import approve_as_system
from storage import create_engine, session_factory
from storage.repositories import ProtocolsRepository
from tests.support import protocol_json
from tui.app import ToscaApp, make_app
from tui.screens import HomeScreen, LoginScreen
from tui.widgets.lines import LinePanel

SEED_PROTOCOL = "Seed example (60 s at 5 W, 30 s ramp to 8 W)"
#: A protocol short enough for the tests that do not need the seed's 90 s.
SHORT_PROTOCOL = "Test short (4 s at 2 W, 3 s ramp to 3 W)"
#: A protocol long enough to inject faults into while it runs.
LONG_PROTOCOL = "Test long (300 s at 2 W)"


#: The subject the treatment tests treat.
SUBJECT = "P-2026-0042"


async def add_subject(code: str = SUBJECT) -> None:
    """Enter the subject ``code`` in ./data's records."""
    from storage.models import Subject

    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as db, db.begin():
            db.add(Subject(subject_code=code))
    finally:
        await engine.dispose()


async def add_test_protocols() -> None:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as db, db.begin():
            repo = ProtocolsRepository(db)
            await repo.add(
                SHORT_PROTOCOL,
                "multi_step",
                protocol_json((4, 2.0, 2.0, 3.0, "constant"), (3, 2.0, 3.0, 3.0, "linear"), max_power=8.0),
            )
            await repo.add(
                LONG_PROTOCOL, "constant", protocol_json((300, 2.0, 2.0, 3.0, "constant"), max_power=8.0)
            )
            for protocol in await repo.list_active():
                await approve_as_system(db, protocol.protocol_id)
    finally:
        await engine.dispose()


class ControllerProcess:
    """``tosca controller --sim`` for ./data, a process of its own as on a real console."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc


@contextlib.asynccontextmanager
async def controller() -> AsyncIterator[ControllerProcess]:
    """The controller process on the simulated rig for ./data, serving its sockets, stopped afterwards
    (SIGTERM: laser off, any open session closed as aborted)."""
    await add_test_protocols()
    log = (DATA_DIR / "logs" / "controller-test.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tui.cli",
        "controller",
        "--sim",
        "--data-dir",
        str(DATA_DIR),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60.0)
        if not line.startswith(b"controller ready"):
            raise AssertionError(f"the controller did not start: {line!r} (see {log.name})")
        yield ControllerProcess(proc)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def console(clock: FakeClock, **overrides: Any) -> ToscaApp:
    """The console app, connecting (never starting) to the controller of ./data."""
    values: dict[str, Any] = {"sim": True, "controller": "connect"}
    values.update(overrides)
    return make_app(make_settings(clock, **values))


async def log_in(pilot: Pilot[Any], username: str = "tina", password: str = TECH_PASSWORD) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: showing(app, LoginScreen) and isinstance(app.focused, Input), "login")
    await enter_text(pilot, username)
    await pilot.press("enter")
    await enter_text(pilot, password)
    await pilot.press("enter")
    await wait_until(pilot, lambda: showing(app, HomeScreen), "the home screen")


async def connected(pilot: Pilot[Any]) -> Snapshot:
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await wait_until(pilot, lambda: app.snapshot is not None, "the controller's first snapshot", 20.0)
    assert app.snapshot is not None
    return app.snapshot


async def wait_state(pilot: Pilot[Any], state: str, limit: float = 20.0) -> Snapshot:
    app = pilot.app
    assert isinstance(app, ToscaApp)
    await wait_until(
        pilot, lambda: app.snapshot is not None and app.snapshot.state == state, f"state {state}", limit
    )
    assert app.snapshot is not None
    return app.snapshot


def screen_text(app: ToscaApp) -> str:
    """The text of every Static, Label and line panel on the screen on top (what a user reads there)."""
    texts = [str(widget.content) for widget in app.screen.query(Static) if widget.display]
    texts += [panel.text.plain for panel in app.screen.query(LinePanel) if panel.display]
    return "\n".join(texts)
