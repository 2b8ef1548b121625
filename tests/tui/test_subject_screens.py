"""The subject screens on a real migrated database: search, create, refusals, deactivate, history, and
snapshots at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, enter_text, make_settings, seed, tables_measured, wait_until
from sqlalchemy import func, select
from textual import events
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Input, Label

import tui
from control.accounts import AccountService, UserInfo
from control.protocols import install_library_protocols
from control.subjects import SubjectService
from storage import Subject, TreatmentSession, create_engine, session_factory
from storage.engine import finish_closing_connections
from storage.repositories import SessionsRepository, SubjectsRepository, UsersRepository
from tests.support import CHEAP
from tui.screens._base import ScreenContext, SessionRequested
from tui.screens.dialogs import ConfirmDialog
from tui.screens.protocols import ProtocolChoiceScreen
from tui.screens.subjects import SubjectFormScreen, SubjectHistoryScreen, SubjectsScreen

SnapCompare = Callable[..., bool]
ScreenMaker = Callable[[ScreenContext, UserInfo], Screen[Any]]

TCSS = Path(tui.__file__).parent / "tosca.tcss"


class ScreenApp(App[None]):
    """The console's stylesheet and one screen (made for the technician ``tina``) pushed over a blank one;
    the sessions it requests are kept in ``requested``."""

    CSS_PATH = TCSS

    def __init__(self, make_screen: ScreenMaker, clock: FakeClock) -> None:
        super().__init__()
        self.make_screen = make_screen
        self.settings = make_settings(clock)
        self.engine = create_engine(DATA_DIR / "tosca.db")
        self.accounts = AccountService(
            sessions=session_factory(self.engine), terminal="/dev/tty1", clock=clock, hashing=CHEAP
        )
        self.context = ScreenContext(settings=self.settings, accounts=self.accounts, link=None)
        self.requested: list[SessionRequested] = []
        self.first: Screen[Any] | None = None

    async def on_mount(self) -> None:
        user = await self.accounts.get_user("tina")
        assert user is not None
        self.first = self.make_screen(self.context, user)
        await self.push_screen(self.first)

    async def on_unmount(self) -> None:
        await self.engine.dispose()
        await finish_closing_connections()

    def on_session_requested(self, message: SessionRequested) -> None:
        self.requested.append(message)


@pytest.fixture(autouse=True)
def utc_display() -> Iterator[None]:
    """Times are shown in local time: make the local zone UTC so screens read the same everywhere."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


async def prepare(clock: FakeClock, *, subjects: int = 0, with_session: bool = False) -> None:
    """Users ``ada`` and ``tina``, the protocol library, ``subjects`` subjects one minute apart and, if
    asked, two finished sessions of the first subject."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        await install_library_protocols(sessions)
        accounts = AccountService(sessions=sessions, terminal="/dev/tty1", hashing=CHEAP)
        tina = await accounts.get_user("tina")
        assert tina is not None
        service = SubjectService(sessions, clock)
        start = clock.now
        created = []
        for n in range(subjects):
            clock.now = start - timedelta(minutes=subjects - n)
            created.append(
                await service.create(
                    created_by_tech_id=tina.tech_id,
                    date_of_birth=date(1970 + n, 1 + n, 10) if n % 2 == 0 else None,
                    gender="female" if n % 2 == 0 else None,
                )
            )
        clock.now = start
        if with_session and created:
            async with sessions() as session, session.begin():
                repo = SessionsRepository(session)
                for day, status, on_s, avg, energy in (
                    (1, "completed", 90.0, 5.5, 495.0),
                    (8, "aborted", 12.5, 5.0, 62.5),
                ):
                    begun = datetime(2026, 3, day, 10, 0)
                    await repo.add(
                        TreatmentSession(
                            subject_id=created[0].subject_id,
                            tech_id=tina.tech_id,
                            start_time=begun,
                            end_time=begun + timedelta(minutes=4),
                            status=status,
                            abort_reason="E-stop pressed" if status == "aborted" else None,
                            protocol_name="Seed example (60 s at 5 W, 30 s ramp to 8 W)",
                            total_laser_on_time_seconds=on_s,
                            avg_power_watts=avg,
                            total_energy_joules=energy,
                        )
                    )
    finally:
        await engine.dispose()


async def add_finished_session(subject_code: str, begun: datetime) -> None:
    """A completed session of ``subject_code`` run by ``tina``, written as the controller would."""
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        async with sessions() as session, session.begin():
            subject = await SubjectsRepository(session).find_subject_by_code(subject_code)
            tina = await UsersRepository(session).get_by_username("tina")
            assert subject is not None and tina is not None
            await SessionsRepository(session).add(
                TreatmentSession(
                    subject_id=subject.subject_id,
                    tech_id=tina.tech_id,
                    start_time=begun,
                    end_time=begun + timedelta(minutes=3),
                    status="completed",
                    protocol_name="Constant 3 W, 120 s, 3.0 mm ring",
                    total_laser_on_time_seconds=120.0,
                    avg_power_watts=3.0,
                    total_energy_joules=360.0,
                )
            )
    finally:
        await engine.dispose()


def subjects_screen(context: ScreenContext, user: UserInfo) -> Screen[Any]:
    return SubjectsScreen(context, user)


async def count_subjects() -> int:
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        async with session_factory(engine)() as session:
            return int((await session.execute(select(func.count()).select_from(Subject))).scalar_one())
    finally:
        await engine.dispose()


def listed_codes(app: App[Any]) -> list[str]:
    table = app.screen.query_one("#subject-table", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def status(app: App[Any]) -> str:
    return str(app.screen.query_one("#status", Label).render())


async def list_ready(pilot: Pilot[Any]) -> SubjectsScreen:
    app = pilot.app
    await wait_until(
        pilot, lambda: isinstance(app.screen, SubjectsScreen) and app.screen.loaded, "the subject list"
    )
    screen = app.screen
    assert isinstance(screen, SubjectsScreen)
    return screen


async def reloaded(pilot: Pilot[Any], screen: SubjectsScreen, codes: list[str]) -> None:
    await wait_until(pilot, lambda: listed_codes(pilot.app) == codes, f"the list to show {codes}")


async def test_search_narrows_the_list_as_it_is_typed(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock, subjects=12)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await list_ready(pilot)
        every = listed_codes(app)
        assert every[0] == "P-2026-0012" and every[-1] == "P-2026-0001" and len(every) == 12
        await pilot.press("1")  # typed on the list: goes to the search field
        assert isinstance(app.focused, Input) and app.focused.value == "1"
        await reloaded(pilot, screen, ["P-2026-0012", "P-2026-0011", "P-2026-0010", "P-2026-0001"])
        await pilot.press("1")
        await reloaded(pilot, screen, ["P-2026-0011"])
        assert "1 active subjects matching '11'" in status(app)
        await pilot.press("backspace", "backspace", "x")
        await reloaded(pilot, screen, [])
        assert "no active subjects matching 'x'" in status(app)
        await pilot.press("escape")  # out of the search field, still on the list
        assert isinstance(app.focused, DataTable) and app.screen is screen


async def test_create_gives_the_next_codes(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await list_ready(pilot)
        assert "no active subjects yet" in status(app)
        for expected in ("P-2026-0001", "P-2026-0002"):
            await pilot.press("n")
            await wait_until(pilot, lambda: isinstance(app.screen, SubjectFormScreen), "the form")
            form = app.screen
            assert isinstance(form, SubjectFormScreen)
            await wait_until(pilot, lambda f=form: f.next_code is not None, "the next code")  # type: ignore[misc]
            code_line = str(form.query_one("#subject-code", Label).render())
            assert code_line == f"Code: {expected} (the next free code)"
            await enter_text(pilot, "1984-02-29")
            await pilot.press("enter")
            await enter_text(pilot, "Male")
            await pilot.press("enter", "enter")
            await wait_until(pilot, lambda: app.screen is screen, "the list again")
            await wait_until(pilot, lambda e=expected: e in listed_codes(app), "the new subject")  # type: ignore[misc]
        assert listed_codes(app) == ["P-2026-0002", "P-2026-0001"]
        table = screen.query_one("#subject-table", DataTable)
        assert [str(c) for c in table.get_row_at(0)] == ["P-2026-0002", "1984-02-29", "male", "0", "—", "yes"]
        assert screen.highlighted_code() == "P-2026-0002"


async def test_a_typed_code_of_the_clinic_pattern_is_accepted_and_another_refused(
    data_dir: Path, clock: FakeClock
) -> None:
    await prepare(clock)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await new_subject_form(pilot)
        await wait_until(pilot, lambda: form.next_code is not None, "the next code")
        code = form.query_one("#code", Input)
        assert code.value == "P-2026-0001"  # offered, filled in
        await wait_until(pilot, lambda: app.focused is form.query_one("#birth-date"), "the first field")
        await pilot.press("shift+tab")
        await wait_until(pilot, lambda: app.focused is code, "the code field")
        code.value = ""
        await enter_text(pilot, "X-1")
        await pilot.press("enter", "enter", "enter", "enter")
        expected = "subject code must look like P-YYYY-NNNN (e.g. P-2026-0001); got 'X-1'"
        await wait_until(pilot, lambda: status(app) == expected, "the refusal")
        assert app.screen is form
        code.value = "P-2026-0042"
        code.focus()
        await pilot.press("enter", "enter", "enter", "enter")
        await list_ready(pilot)
        await wait_until(pilot, lambda: listed_codes(app) == ["P-2026-0042"], "the typed code listed")
    assert await count_subjects() == 1


async def new_subject_form(pilot: Pilot[Any]) -> SubjectFormScreen:
    """From the subjects list: n, and the form once it is up."""
    await list_ready(pilot)
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, SubjectFormScreen), "the form")
    form = pilot.app.screen
    assert isinstance(form, SubjectFormScreen)
    return form


async def test_keys_typed_right_after_enter_go_to_the_next_field(data_dir: Path, clock: FakeClock) -> None:
    # A terminal delivers a fast typist's keys in one read: Enter and what follows are queued together.
    await prepare(clock)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await new_subject_form(pilot)
        await wait_until(pilot, lambda: app.focused is form.query_one("#birth-date"), "the first field")
        burst = [events.Key(c, c) for c in "1984-02-29"] + [events.Key("enter", "\r")]
        burst += [events.Key(c, c) for c in "male"]
        for key in burst:
            app.post_message(key)
        gender = form.query_one("#gender", Input)
        await wait_until(pilot, lambda: gender.value == "male", "the gender typed")
        assert form.query_one("#birth-date", Input).value == "1984-02-29"


BAD_VALUES = [
    ("2026-03-15", "", "date of birth 2026-03-15 is in the future (today is 2026-03-14)"),
    ("14/03/1980", "", "date of birth must be YYYY-MM-DD, e.g. 1980-05-31; got '14/03/1980'"),
    ("1980-02-30", "", "date of birth must be YYYY-MM-DD, e.g. 1980-05-31; got '1980-02-30'"),
    ("1899-12-31", "", "date of birth 1899-12-31 is before 1900-01-01"),
    (
        "1980-01-01",
        "woman",
        "gender must be one of female, male, other, unknown (or not recorded); got 'woman'",
    ),
]


async def test_a_bad_value_shows_its_error_and_writes_nothing(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await new_subject_form(pilot)
        for birth, gender, message in BAD_VALUES:
            form.query_one("#birth-date", Input).focus()
            await wait_until(pilot, lambda: app.focused is form.query_one("#birth-date"), "the first field")
            await enter_text(pilot, birth)
            await pilot.press("enter")
            await enter_text(pilot, gender)
            await pilot.press("enter", "enter")
            await wait_until(pilot, lambda m=message: status(app) == m, f"the error {message!r}")  # type: ignore[misc]
            assert app.screen is form and "error" in form.query_one("#status", Label).classes
        await pilot.press("escape")
        await list_ready(pilot)
        assert listed_codes(app) == []
    assert await count_subjects() == 0


async def test_edit_changes_the_details(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock, subjects=1)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await list_ready(pilot)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, SubjectFormScreen), "the form")
        form = app.screen
        assert isinstance(form, SubjectFormScreen)
        assert form.query_one("#birth-date", Input).value == "1970-01-10"
        assert form.query_one("#gender", Input).value == "female"
        await pilot.press("enter", "enter")
        await enter_text(pilot, "allergic to adhesive")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen is screen, "the list again")
    async_engine = create_engine(DATA_DIR / "tosca.db")
    try:
        info = await SubjectService(session_factory(async_engine), clock).get("P-2026-0001")
    finally:
        await async_engine.dispose()
    assert info is not None and info.notes == "allergic to adhesive" and info.gender == "female"


async def test_deactivate_asks_then_hides_and_i_shows_it_again(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock, subjects=2)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await list_ready(pilot)
        assert listed_codes(app) == ["P-2026-0002", "P-2026-0001"]
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the question")
        await pilot.press("n")
        await wait_until(pilot, lambda: "P-2026-0002 left as it was" in status(app), "the answer no")
        assert listed_codes(app) == ["P-2026-0002", "P-2026-0001"]
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the question")
        await pilot.press("y")
        await reloaded(pilot, screen, ["P-2026-0001"])
        await pilot.press("i")
        await reloaded(pilot, screen, ["P-2026-0002", "P-2026-0001"])
        table = screen.query_one("#subject-table", DataTable)
        assert str(table.get_row_at(0)[5]) == "no"
        # The inactive one cannot be chosen, and d now offers to reactivate it.
        table.move_cursor(row=0)
        await pilot.pause()
        assert "reactivate" in {b.binding.action for b in screen.active_bindings.values()}
        await pilot.press("enter")
        assert "P-2026-0002 is inactive" in status(app)
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the question")
        await pilot.press("y")
        await wait_until(pilot, lambda: str(table.get_row_at(0)[5]) == "yes", "the subject active again")


async def test_history_lists_the_sessions_with_a_total(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock, subjects=2, with_session=True)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await list_ready(pilot)
        assert listed_codes(app)[-1] == "P-2026-0001"
        table = app.screen.query_one("#subject-table", DataTable)
        assert [str(c) for c in table.get_row_at(1)][3:5] == ["2", "2026-03-08 10:00"]
        table.move_cursor(row=1)
        await pilot.press("h")
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, SubjectHistoryScreen) and app.screen.rows is not None,
            "the history",
        )
        history = app.screen
        rows = history.query_one("#history-table", DataTable)
        assert rows.row_count == 2
        newest = [str(c) for c in rows.get_row_at(0)]
        assert newest[:6] == ["2026-03-08 10:00", "10:04", "aborted", "12.5", "5.00", "62.5"]
        assert newest[6].startswith("Seed example") and newest[6].endswith("…")
        detail = str(history.query_one("#history-detail", Label).render())
        assert detail.endswith(": Seed example (60 s at 5 W, 30 s ramp to 8 W); technician Tina Tech")
        total = str(history.query_one("#history-total", Label).render())
        assert total == "Total: 2 sessions (1 completed), laser on 102.5 s, 557.5 J delivered"
        await pilot.press("escape")
        await list_ready(pilot)


async def test_enter_chooses_the_subject_for_a_protocol(data_dir: Path, clock: FakeClock) -> None:
    await prepare(clock, subjects=1)
    app = ScreenApp(subjects_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await list_ready(pilot)
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ProtocolChoiceScreen), "the protocols")
        choice = app.screen
        assert isinstance(choice, ProtocolChoiceScreen) and choice.subject_code == "P-2026-0001"
        await add_finished_session("P-2026-0001", datetime(2026, 3, 14, 9, 0))
        await pilot.press("escape")
        table = (await list_ready(pilot)).query_one("#subject-table", DataTable)
        # Back from the treatment: the list shows the new session.
        await wait_until(pilot, lambda: str(table.get_row_at(0)[3]) == "1", "the session count")
        assert str(table.get_row_at(0)[4]) == "2026-03-14 09:00"
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, SubjectsScreen), "the screen below")


# ---- snapshots


def snapshot_of(
    snap_compare: SnapCompare,
    clock: FakeClock,
    make_screen: ScreenMaker,
    ready: Callable[[Pilot[Any]], Any],
    size: tuple[int, int],
) -> bool:
    async def settled(pilot: Pilot[Any]) -> None:
        await ready(pilot)
        await tables_measured(pilot)

    return bool(snap_compare(ScreenApp(make_screen, clock), terminal_size=size, run_before=settled))


SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


@pytest.mark.parametrize("size", SIZES)
def test_subjects_screen_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    asyncio.run(prepare(clock, subjects=5, with_session=True))

    async def ready(pilot: Pilot[Any]) -> None:
        await list_ready(pilot)

    assert snapshot_of(snap_compare, clock, subjects_screen, ready, size)


@pytest.mark.parametrize("size", SIZES)
def test_subject_form_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    asyncio.run(prepare(clock, subjects=3))

    def form(context: ScreenContext, user: UserInfo) -> Screen[Any]:
        return SubjectFormScreen(context, user)

    async def refused(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, SubjectFormScreen) and app.screen.next_code is not None,
            "the form",
        )
        await enter_text(pilot, "2030-01-01")
        await pilot.press("enter")
        await enter_text(pilot, "female")
        await pilot.press("enter", "enter")
        await wait_until(pilot, lambda: "in the future" in status(app), "the refusal")

    assert snapshot_of(snap_compare, clock, form, refused, size)


@pytest.mark.parametrize("size", SIZES)
def test_subject_history_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    asyncio.run(prepare(clock, subjects=1, with_session=True))

    def history(context: ScreenContext, user: UserInfo) -> Screen[Any]:
        return SubjectHistoryScreen(context, user, "P-2026-0001")

    async def ready(pilot: Pilot[Any]) -> None:
        app = pilot.app
        await wait_until(
            pilot,
            lambda: isinstance(app.screen, SubjectHistoryScreen) and app.screen.rows is not None,
            "the history",
        )

    assert snapshot_of(snap_compare, clock, history, ready, size)
