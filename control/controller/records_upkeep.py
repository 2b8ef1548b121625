"""The controller's daily care of the records: a signed checkpoint of every chain when a day has passed
without one, and the retention run once a day, both only while no session is open.

Everything runs on a worker thread with its own database connection (:func:`asyncio.to_thread`), never on
the event loop that runs the safety supervisor's tick and the device polls; the check itself is two reads
every :data:`CHECK_PERIOD_S`. A failure (a locked database, a refused retention run: the clock set
backwards, records that do not verify) is logged and tried again after :data:`RETRY_AFTER`; it never stops
the controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from storage import utc_now
from storage.chain import checkpoint_file, last_checkpoint_time
from storage.errors import StorageError
from storage.retention import RetentionPolicy, last_run, run_retention

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

_LOG = logging.getLogger(__name__)

#: How often the controller looks whether a checkpoint or a retention run is due (s).
CHECK_PERIOD_S: Final = 600.0
#: A checkpoint and a retention run are due when the last is this old.
DAY: Final = timedelta(days=1)
#: After a failed attempt, the next one waits this long.
RETRY_AFTER: Final = timedelta(hours=1)


class RecordsUpkeep:
    """The daily checkpoint and retention run of the database ``db_path`` (session files under
    ``data_root``). ``idle`` says whether no session is open; ``policy`` reads the retention policy from
    the settings."""

    def __init__(
        self,
        db_path: Path,
        data_root: Path,
        idle: Callable[[], bool],
        policy: Callable[[], Awaitable[RetentionPolicy]],
        *,
        clock: Callable[[], datetime] = utc_now,
        terminal: str = "controller",
    ) -> None:
        self.db_path = db_path
        self.data_root = data_root
        self.idle = idle
        self.policy = policy
        self.clock = clock
        self.terminal = terminal
        self._retry_at: datetime | None = None

    @classmethod
    def of_database(
        cls,
        sessions: async_sessionmaker[AsyncSession],
        db_path: Path,
        data_root: Path,
        idle: Callable[[], bool],
    ) -> RecordsUpkeep:
        """The upkeep of the controller's database, its policy read from the settings at each run."""

        async def policy() -> RetentionPolicy:
            from control.system_config import read_system_settings, retention_policy

            async with sessions() as session:
                return retention_policy(await read_system_settings(session))

        return cls(db_path, data_root, idle, policy)

    async def run(self, period_s: float = CHECK_PERIOD_S) -> None:
        """Check every ``period_s`` (the first time one period after the start) until cancelled."""
        while True:
            await asyncio.sleep(period_s)
            await self.once()

    async def once(self) -> list[str]:
        """Make what is due now (nothing while a session is open); return what was done, one line each."""
        done: list[str] = []
        now = self.clock()
        if not self.idle() or (self._retry_at is not None and now < self._retry_at):
            return done
        try:
            last = await asyncio.to_thread(last_checkpoint_time, self.db_path)
            if last is None or now - last >= DAY:
                written = await asyncio.to_thread(checkpoint_file, self.db_path, "daily")
                done.append(f"daily checkpoint of {len(written)} chains")
            ran = await asyncio.to_thread(last_run, self.db_path)
            if (ran is None or now - ran >= DAY) and self.idle():
                policy = await self.policy()
                report = await asyncio.to_thread(
                    run_retention, self.db_path, self.data_root, policy, now, terminal=self.terminal
                )
                done.extend(report.lines())
        except (StorageError, OSError, ValueError) as exc:
            self._retry_at = now + RETRY_AFTER
            _LOG.warning("records upkeep: %s (next attempt after %s)", exc, self._retry_at)
            done.append(f"refused: {exc}")
            return done
        self._retry_at = None
        for line in done:
            _LOG.info("records upkeep: %s", line)
        return done


__all__ = ["CHECK_PERIOD_S", "DAY", "RETRY_AFTER", "RecordsUpkeep"]
