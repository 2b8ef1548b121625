"""Console settings and the automatic-lock delay read from system_config."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.repositories import ConfigRepository
from tui.settings import ConsoleSettings, read_auto_lock_minutes


async def set_auto_lock(sessions: async_sessionmaker[AsyncSession], minutes: int) -> None:
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set("auto_lock_minutes", minutes, modified_by=None)


async def test_auto_lock_defaults_to_the_seeded_ten_minutes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await read_auto_lock_minutes(sessions) == (10, None)


async def test_auto_lock_follows_the_configuration(sessions: async_sessionmaker[AsyncSession]) -> None:
    await set_auto_lock(sessions, 3)
    assert await read_auto_lock_minutes(sessions) == (3, None)


@pytest.mark.parametrize("minutes", [0, -5, 100_000])
async def test_unusable_auto_lock_falls_back_to_the_default_and_says_why(
    sessions: async_sessionmaker[AsyncSession], minutes: int
) -> None:
    await set_auto_lock(sessions, minutes)
    value, problem = await read_auto_lock_minutes(sessions)
    assert value == 10
    assert problem is not None and f"{minutes}" in problem and "using 10 minutes" in problem


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("idle_check_seconds", 0, "idle_check_seconds must be above 0 and at most 60, not 0"),
        ("idle_check_seconds", 61, "not 61"),
        ("idle_check_seconds", float("nan"), "not nan"),
        ("controller", "sometimes", "controller must be one of start, connect, off, not 'sometimes'"),
        ("image_protocol", "sixel", "image_protocol must be one of auto, halfblock"),
        ("sim", "yes", "sim must be true or false"),
        ("over_ssh", 1, "over_ssh must be true, false or None"),
        ("clock", 5, "clock must be callable"),
        ("data_dir", 3, "data_dir must be a path"),
    ],
)
def test_settings_refuse_bad_values(field: str, value: object, message: str) -> None:
    values: dict[str, object] = {"data_dir": Path("data"), field: value}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ConsoleSettings(**values)  # type: ignore[arg-type]


def test_settings_refuse_unknown_fields_and_take_a_path_as_text() -> None:
    with pytest.raises(TypeError, match="colour"):
        ConsoleSettings(data_dir=Path("data"), colour="red")  # type: ignore[call-arg]
    assert ConsoleSettings(data_dir="data").data_dir == Path("data")  # type: ignore[arg-type]
    settings = ConsoleSettings(data_dir=Path("data"))
    assert (settings.sim, settings.kiosk, settings.cursor_blink) == (False, False, True)
