"""Snapshots of the remote console's home screen for an admin, at 80x24 and 120x40: the screens the remote
console does not open are kept in the menu, marked "(kiosk only)" and disabled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_records_fixtures import AdminScreenApp, LinkStandIn
from console_fixtures import FakeClock, seed, wait_until
from textual.pilot import Pilot
from textual.widgets import OptionList

from storage import DataDir
from storage.paths import DiskUsage
from tui.screens.home import HomeScreen

SnapCompare = Callable[..., bool]
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


class ObservingLink(LinkStandIn):
    """A remote console's link as the screens see it: on observe.sock, no snapshot yet."""

    observe = True


@pytest.fixture(autouse=True)
def fixed_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fixed = DiskUsage(free_bytes=41_250_000_000, total_bytes=63_800_000_000, sessions_bytes=1_234_000_000)
    monkeypatch.setattr(DataDir, "disk_usage", lambda self: fixed)
    yield


def home(context: Any, user: Any) -> HomeScreen:
    return HomeScreen(context, user)


@pytest.mark.parametrize("size", SIZES)
def test_remote_admin_home_snapshot(
    data_dir: Path, clock: FakeClock, snap_compare: SnapCompare, size: Any
) -> None:
    asyncio.run(seed())
    app = AdminScreenApp(home, clock, link=ObservingLink())

    async def shown(pilot: Pilot[Any]) -> None:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, HomeScreen), "the home screen")
        screen = pilot.app.screen
        assert isinstance(screen, HomeScreen)
        await wait_until(pilot, lambda: screen.facts is not None, "the database facts")
        menu = screen.query_one("#home-menu", OptionList)
        assert menu.get_option("users").disabled and not menu.get_option("records").disabled
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=shown)
