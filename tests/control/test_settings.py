"""Console settings and the automatic-lock delay read from system_config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.settings import DEFAULT_AUTO_LOCK_MINUTES, ConsoleSettings, read_auto_lock_minutes
from storage.repositories import ConfigRepository


async def set_auto_lock(sessions: async_sessionmaker[AsyncSession], minutes: int) -> None:
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set("auto_lock_minutes", minutes, modified_by=None)


async def test_auto_lock_defaults_to_the_seeded_ten_minutes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await read_auto_lock_minutes(sessions) == (10, None)
    assert DEFAULT_AUTO_LOCK_MINUTES == 10


async def test_auto_lock_follows_the_configuration(sessions: async_sessionmaker[AsyncSession]) -> None:
    await set_auto_lock(sessions, 3)
    assert await read_auto_lock_minutes(sessions) == (3, None)


@pytest.mark.parametrize("minutes", [0, -5, 100_000])
async def test_unusable_auto_lock_falls_back_to_the_default_and_says_why(
    sessions: async_sessionmaker[AsyncSession], minutes: int
) -> None:
    await set_auto_lock(sessions, minutes)
    value, problem = await read_auto_lock_minutes(sessions)
    assert value == DEFAULT_AUTO_LOCK_MINUTES
    assert problem is not None and f"{minutes}" in problem and "using 10 minutes" in problem


def test_settings_refuse_unknown_fields_and_bad_intervals() -> None:
    with pytest.raises(ValidationError):
        ConsoleSettings(data_dir=Path("data"), colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ConsoleSettings(data_dir=Path("data"), idle_check_seconds=0)
    settings = ConsoleSettings(data_dir=Path("data"))
    assert (settings.sim, settings.kiosk, settings.cursor_blink) == (False, False, True)
