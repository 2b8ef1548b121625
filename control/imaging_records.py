"""The snapshots of a session as its records keep them, for a review of the session.

Each snapshot is two ``session_recordings`` rows of type ``snapshot`` (the camera frame, and the same frame
with the ring drawn; see :mod:`control.controller.imaging`). :func:`session_snapshots` lists them in the order
they were taken, with whether each file is still where the record says (checked in a worker thread).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import SessionRecording


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """One snapshot file of a session: its path, size (bytes), resolution, when it was recorded (naive UTC),
    the record's notes, and whether the file is there now."""

    path: str
    size_bytes: int | None
    resolution: str | None
    taken_at: datetime
    notes: str | None
    present: bool

    @property
    def name(self) -> str:
        """The file's name, without its folder."""
        return Path(self.path).name


async def session_snapshots(
    sessions: async_sessionmaker[AsyncSession], session_id: int
) -> list[SnapshotRecord]:
    """Every snapshot file recorded for ``session_id``, oldest first."""
    async with sessions() as db:
        rows = (
            await db.execute(
                select(
                    SessionRecording.file_path,
                    SessionRecording.file_size_bytes,
                    SessionRecording.resolution,
                    SessionRecording.timestamp,
                    SessionRecording.notes,
                )
                .where(
                    SessionRecording.session_id == session_id,
                    SessionRecording.recording_type == "snapshot",
                )
                .order_by(SessionRecording.recording_id)
            )
        ).all()
    paths = [str(row[0]) for row in rows]
    present = await asyncio.to_thread(lambda: [Path(path).is_file() for path in paths])
    return [
        SnapshotRecord(str(path), size, resolution, taken, notes, here)
        for (path, size, resolution, taken, notes), here in zip(rows, present, strict=True)
    ]


__all__ = ["SnapshotRecord", "session_snapshots"]
