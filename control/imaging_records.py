"""Treatment imaging as the records keep it: a session's snapshots, and focus stacks with the camera's focus
reference.

Each snapshot is two ``session_recordings`` rows of type ``snapshot`` (the camera frame, and the same frame
with the ring drawn; see :mod:`control.controller.imaging`). :func:`session_snapshots` lists them in the order
they were taken, with whether each file is still where the record says (checked in a worker thread).

A focus stack (:mod:`devices.camera.focus`) taken during a session is one ``session_recordings`` row of type
``focus_stack`` (:func:`record_focus_stack_recording`: its index file, the size of every file of the stack,
the frame count, its duration and resolution, and a note naming the sharpest frame). Taken outside a session
it is kept with the camera's calibration records (:func:`record_focus_calibration`): a ``calibrations`` row,
``device_type`` ``camera``, ``calibration_type`` ``camera_focus_calibration``, active (the one before it of
that type is retired), whose ``calibration_data`` is the focus score reference::

    {
      "focus_score_reference": 412.4,      # the sharpest frame's focus score, grey levels squared
      "in_focus_fraction": 0.8,            # in focus: a score of at least this fraction of the reference
      "focus_measure": "variance of the Laplacian of the full-resolution grey frame",
      "stack_folder": ".../calibrations/camera/focus_stack_20261207_101500_123",
      "index_file": ".../index.json",
      "frames": 15,
      "sharpest_frame": 7,
      "sharpest_file": "frame_07.png",
      "resolution": "1280x720"
    }

and whose ``validation_data`` keeps every frame's score and how the stack compared with the reference before
it (``scores``, ``min_score``, ``max_score``, ``previous_reference``, ``previous_calibration_id``,
``in_focus_against_previous``). :func:`focus_reference` reads the active reference and :func:`judge_focus`
says whether a focus score is in focus by it.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import utc_now
from storage.models import Calibration, SessionRecording
from storage.repositories import CalibrationsRepository

if TYPE_CHECKING:
    from devices.camera import FocusStack

#: The calibration record of the camera's focus.
FOCUS_DEVICE: Final = "camera"
FOCUS_CALIBRATION: Final = "camera_focus_calibration"
#: A focus score is "in focus" from this fraction of the reference on, unless the calibration says otherwise.
DEFAULT_IN_FOCUS_FRACTION: Final = 0.8


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


# -- focus -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FocusReference:
    """The camera's active focus calibration: its reference score and the fraction of it that is in focus."""

    calibration_id: int
    score: float
    in_focus_fraction: float
    calibrated_at: datetime

    @property
    def threshold(self) -> float:
        """The lowest focus score that is in focus."""
        return self.score * self.in_focus_fraction


#: What a focus score is judged without a reference.
NO_REFERENCE_WORDS: Final = "no focus reference yet: take a focus stack outside a session to keep one"


@dataclass(frozen=True, slots=True)
class FocusVerdict:
    """A focus score judged by the reference (``in_focus`` None: there is no reference to judge by)."""

    score: float
    reference: FocusReference | None

    @property
    def in_focus(self) -> bool | None:
        if self.reference is None:
            return None
        return self.score >= self.reference.threshold

    @property
    def percent(self) -> float | None:
        """The score as a percentage of the reference."""
        if self.reference is None:
            return None
        return 100.0 * self.score / self.reference.score

    def words(self, no_reference: str = NO_REFERENCE_WORDS) -> str:
        """``in focus (96 % of the reference 412)``, ``NOT in focus (...; in focus from 80 %)`` or, without a
        reference, ``no_reference``."""
        reference = self.reference
        if reference is None:
            return no_reference
        share = f"{self.percent:.0f} % of the reference {reference.score:.0f}"
        if self.in_focus:
            return f"in focus ({share})"
        return f"NOT in focus ({share}; in focus from {100 * reference.in_focus_fraction:.0f} %)"


def judge_focus(score: float, reference: FocusReference | None) -> FocusVerdict:
    """Whether ``score`` is in focus by ``reference``."""
    return FocusVerdict(score, reference)


def parse_focus_reference(row: Calibration) -> FocusReference:
    """The reference a ``camera_focus_calibration`` row keeps; ValueError saying why it cannot be used."""
    try:
        data = json.loads(row.calibration_data)
    except ValueError as exc:
        raise ValueError(f"calibration #{row.calibration_id}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"calibration #{row.calibration_id}: not a JSON object")
    score = data.get("focus_score_reference")
    fraction = data.get("in_focus_fraction", DEFAULT_IN_FOCUS_FRACTION)
    for name, value in (("focus_score_reference", score), ("in_focus_fraction", fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"calibration #{row.calibration_id}: {name} is not a number")
    assert isinstance(score, int | float) and isinstance(fraction, int | float)
    if score <= 0:
        raise ValueError(f"calibration #{row.calibration_id}: focus_score_reference must be above 0")
    if not 0 < fraction <= 1:
        raise ValueError(f"calibration #{row.calibration_id}: in_focus_fraction must be within (0, 1]")
    return FocusReference(row.calibration_id, float(score), float(fraction), row.calibration_date)


async def focus_reference(sessions: async_sessionmaker[AsyncSession]) -> FocusReference | None:
    """The camera's active focus reference, or None when there is none; ValueError for one that cannot be
    used (its data is not a reference)."""
    async with sessions() as db:
        rows = await CalibrationsRepository(db).history(FOCUS_DEVICE)
    for row in rows:  # newest first
        if row.is_active and row.calibration_type == FOCUS_CALIBRATION:
            return parse_focus_reference(row)
    return None


def focus_stack_notes(stack: FocusStack, verdict: FocusVerdict) -> str:
    """One line about a stack: its frames, the sharpest and its focus, judged by the reference."""
    best = stack.sharpest
    return (
        f"focus stack: {len(stack.frames)} frames over {stack.duration_s:.1f} s, sharpest frame {best.frame} "
        f"({best.file}, focus {best.score:.0f}): {verdict.words('no earlier focus reference to judge it by')}"
    )


async def record_focus_stack_recording(
    sessions: async_sessionmaker[AsyncSession], session_id: int, stack: FocusStack, verdict: FocusVerdict
) -> None:
    """The ``session_recordings`` row of a stack taken during session ``session_id``."""
    async with sessions() as db, db.begin():
        await db.execute(
            insert(SessionRecording).values(
                session_id=session_id,
                recording_type="focus_stack",
                file_path=str(stack.index),
                file_size_bytes=stack.total_bytes,
                duration_seconds=round(stack.duration_s, 3),
                timestamp=utc_now(),
                frame_count=len(stack.frames),
                resolution=stack.resolution,
                notes=focus_stack_notes(stack, verdict),
            )
        )


def focus_calibration_data(
    stack: FocusStack, previous: FocusReference | None, fraction: float = DEFAULT_IN_FOCUS_FRACTION
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``calibration_data`` and ``validation_data`` of the focus calibration a stack makes."""
    best = stack.sharpest
    scores = [round(f.score, 3) for f in stack.frames]
    data = {
        "focus_score_reference": round(best.score, 3),
        "in_focus_fraction": fraction,
        "focus_measure": "variance of the Laplacian of the full-resolution grey frame",
        "stack_folder": str(stack.folder),
        "index_file": str(stack.index),
        "frames": len(stack.frames),
        "sharpest_frame": best.frame,
        "sharpest_file": best.file,
        "resolution": stack.resolution,
    }
    earlier = judge_focus(best.score, previous)
    validation = {
        "scores": scores,
        "min_score": min(scores),
        "max_score": max(scores),
        "previous_reference": None if previous is None else previous.score,
        "previous_calibration_id": None if previous is None else previous.calibration_id,
        "in_focus_against_previous": earlier.in_focus,
    }
    return data, validation


async def record_focus_calibration(
    sessions: async_sessionmaker[AsyncSession],
    stack: FocusStack,
    *,
    tech_id: int,
    previous: FocusReference | None,
    device_serial_number: str | None = None,
) -> int:
    """Keep a stack taken outside a session as the camera's active focus calibration (the one before it is
    retired in the same transaction); returns its ``calibration_id``."""
    data, validation = focus_calibration_data(stack, previous)
    row = Calibration(
        calibration_date=utc_now(),
        tech_id=tech_id,
        device_type=FOCUS_DEVICE,
        device_serial_number=device_serial_number,
        calibration_type=FOCUS_CALIBRATION,
        calibration_data=json.dumps(data, allow_nan=False),
        validation_data=json.dumps(validation, allow_nan=False),
        is_active=True,
        notes=focus_stack_notes(stack, judge_focus(stack.sharpest.score, previous)),
    )
    async with sessions() as db, db.begin():
        await CalibrationsRepository(db).add(row)
        return row.calibration_id


__all__ = [
    "DEFAULT_IN_FOCUS_FRACTION",
    "FOCUS_CALIBRATION",
    "FOCUS_DEVICE",
    "FocusReference",
    "FocusVerdict",
    "SnapshotRecord",
    "focus_calibration_data",
    "focus_reference",
    "focus_stack_notes",
    "judge_focus",
    "parse_focus_reference",
    "record_focus_calibration",
    "record_focus_stack_recording",
    "session_snapshots",
]
