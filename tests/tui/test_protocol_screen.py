"""The protocol choice on a real migrated database holding the shipped library: the list, the preview of the
highlighted protocol, the request for a session, refusals, and snapshots at 80x24 and 120x40."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from console_fixtures import DATA_DIR, FakeClock, enter_text, seed, tables_measured, wait_until
from sqlalchemy import select, update
from test_subject_screens import ScreenApp
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Input, Label

from control.accounts import UserInfo
from control.protocols import install_library_protocols, load_library
from storage import Protocol, ProtocolVersion, create_engine, session_factory
from tui.screens._base import ScreenContext
from tui.screens.protocols import ProtocolChoiceScreen, mm_ss
from tui.widgets.plot import PowerPlot

SnapCompare = Callable[..., bool]

SUBJECT = "P-2026-0007"
SEED = "Seed example (60 s at 5 W, 30 s ramp to 8 W)"
TAPER = "Warm-up, plateau, wide ring, taper (140 s)"
CONSTANT = "Constant 3 W, 120 s, 3.0 mm ring"


async def prepare(*, break_seed: bool = False) -> None:
    """Users and the protocol library; with ``break_seed`` the seed example's stored data is damaged."""
    await seed()
    engine = create_engine(DATA_DIR / "tosca.db")
    try:
        sessions = session_factory(engine)
        await install_library_protocols(sessions)
        if break_seed:
            async with sessions() as session, session.begin():
                # The approved version the technician is offered is what the list reads.
                seed_id = select(Protocol.protocol_id).where(Protocol.protocol_name == SEED).scalar_subquery()
                await session.execute(
                    update(ProtocolVersion)
                    .where(ProtocolVersion.protocol_id == seed_id)
                    .values(protocol_data="{")
                )
    finally:
        await engine.dispose()


def choice_screen(context: ScreenContext, user: UserInfo) -> Screen[Any]:
    return ProtocolChoiceScreen(context, user, SUBJECT)


async def choice_ready(pilot: Pilot[Any], name: str | None = None) -> ProtocolChoiceScreen:
    """Wait for the list and for the preview of ``name`` (default: whichever is highlighted)."""
    app = pilot.app

    def ready() -> bool:
        screen = app.screen
        if not (isinstance(screen, ProtocolChoiceScreen) and screen.loaded and screen.preview is not None):
            return False
        return name is None or screen.preview.summary.name == name

    await wait_until(pilot, ready, f"the preview of {name or 'the first protocol'}")
    screen = app.screen
    assert isinstance(screen, ProtocolChoiceScreen)
    return screen


def listed_names(screen: ProtocolChoiceScreen) -> list[str]:
    return [summary.name for summary in screen.protocols]


def test_mm_ss() -> None:
    assert [mm_ss(v) for v in (0.0, 59.6, 90.0, 140.0, 3725.0, None)] == [
        "00:00",
        "01:00",
        "01:30",
        "02:20",
        "62:05",
        "—",
    ]


async def test_the_list_and_the_preview_follow_the_cursor(data_dir: Path, clock: FakeClock) -> None:
    await prepare()
    app = ScreenApp(choice_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await choice_ready(pilot)
        assert listed_names(screen) == sorted(item.name for item in load_library())
        table = screen.query_one("#protocol-table", DataTable)
        first = [str(c) for c in table.get_row_at(0)]
        assert first[0].startswith("Constant 3 W")
        assert first[1:] == ["constant", "02:00", "3.0", "1"]
        steps = screen.query_one("#step-table", DataTable)
        assert steps.row_count == 1
        plot = screen.query_one("#curve", PowerPlot)
        assert plot.points("setpoint") == [(0.0, 3.0), (120.0, 3.0)]
        index = listed_names(screen).index(SEED)
        for _ in range(index):
            await pilot.press("down")
        await choice_ready(pilot, SEED)
        assert [[str(c) for c in steps.get_row_at(i)] for i in range(steps.row_count)] == [
            ["1", "60.0", "5.00", "5.00", "constant", "3.00"],
            ["2", "30.0", "5.00", "8.00", "linear", "3.50"],
        ]
        assert plot.points("setpoint") == [(0.0, 5.0), (60.0, 5.0), (60.0, 5.0), (90.0, 8.0)]
        note = str(screen.query_one("#protocol-note", Label).render())
        assert note.startswith("version 1. The reference protocol of the TOSCA schema")
        plot_text = "\n".join(strip.text for strip in plot.build_lines(*plot.size))
        assert "8 W┤" in plot_text and "setpoint (01:30)" in plot_text


async def test_choosing_posts_the_session_request_and_nothing_else(data_dir: Path, clock: FakeClock) -> None:
    await prepare()
    app = ScreenApp(choice_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await choice_ready(pilot)
        index = listed_names(screen).index(TAPER)
        screen.query_one("#protocol-table", DataTable).move_cursor(row=index)
        await choice_ready(pilot, TAPER)
        await pilot.press("t")
        assert isinstance(app.focused, Input) and app.focused.id == "site"
        await enter_text(pilot, "  left forearm ")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(app.requested) == 1, "the session request")
        request = app.requested[0]
        assert (request.subject_code, request.protocol_name, request.treatment_site) == (
            SUBJECT,
            TAPER,
            "left forearm",
        )
        assert app.screen is screen  # the app, not this screen, goes on to the session
        # s on the list asks again, here with no site.
        screen.query_one("#site", Input).value = ""
        await pilot.press("escape")
        assert isinstance(app.focused, DataTable)
        await pilot.press("s")
        await wait_until(pilot, lambda: len(app.requested) == 2, "the second request")
        assert app.requested[1].treatment_site is None
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ProtocolChoiceScreen), "the screen below")


async def test_an_unreadable_protocol_is_listed_but_cannot_be_chosen(
    data_dir: Path, clock: FakeClock
) -> None:
    await prepare(break_seed=True)
    app = ScreenApp(choice_screen, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await choice_ready(pilot)
        index = listed_names(screen).index(SEED)
        table = screen.query_one("#protocol-table", DataTable)
        assert [str(c) for c in table.get_row_at(index)][1:] == ["unreadable", "—", "—", "—"]
        table.move_cursor(row=index)
        await choice_ready(pilot, SEED)
        note = screen.query_one("#protocol-note", Label)
        assert str(note.render()).startswith(
            "cannot be used: the stored protocol is unreadable: invalid JSON"
        )
        assert "error" in note.classes
        assert screen.query_one("#step-table", DataTable).row_count == 0
        assert screen.query_one("#curve", PowerPlot).series_keys == []
        await pilot.press("enter")
        status = str(screen.query_one("#status", Label).render())
        assert status == f"{SEED} cannot be used: its stored data is unreadable"
        assert app.requested == []


# ---- snapshots


@pytest.mark.parametrize("size", [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")])
def test_protocol_choice_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    asyncio.run(prepare())

    async def seed_example(pilot: Pilot[Any]) -> None:
        screen = await choice_ready(pilot)
        screen.query_one("#protocol-table", DataTable).move_cursor(row=listed_names(screen).index(SEED))
        await choice_ready(pilot, SEED)
        await tables_measured(pilot)

    assert snap_compare(ScreenApp(choice_screen, clock), terminal_size=size, run_before=seed_example)
