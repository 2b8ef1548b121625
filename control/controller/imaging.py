"""Treatment imaging in the controller process: snapshots of the treatment site and the aiming beam.

**Snapshots.** :meth:`Imaging.take_snapshot` saves the camera's newest frame into the open session's folder
twice, raw at the camera's full resolution and with the detected ring and its diameter drawn
(:mod:`devices.camera.snapshot`). The detection, the PNG encoding and the file writes run in the camera
process (or, on the simulated rig, on a low-priority thread of the controller's), never on this loop, which
only awaits the result: the stop key and the safety supervisor's tick are not held up by a snapshot
(measured by ``tests/bench/bench_snapshots.py``). Each picture becomes a ``session_recordings`` row
(``snapshot``, its size, resolution and time) and the pair one ``image_captured`` treatment event at the
frame's time offset in the session. A camera that is not ok (none, no frame yet, frozen, unplugged) refuses
with the reason and nothing is recorded; a picture that cannot be written (a full disk) refuses with the
reason and leaves no file behind; the treatment goes on either way.

The ``take_snapshot`` command (:meth:`Imaging.start_snapshot`) answers at once, after checking that there is
a session and a usable camera image, and saves in the background: commands on one connection are answered in
order, so a reply that waited for the files would hold up the next command of the operator's console (a
stop among them). The outcome is published as an event of kind ``snapshot`` (:data:`SNAPSHOT_EVENT`), which
the console shows: where the pictures are, or why they were not saved. One snapshot is saved at a time.

**Focus stacks.** :meth:`Imaging.start_focus_stack` (the ``focus_stack`` command of the engineer's camera
focus screen) has the camera take ``focus_stack_frames`` fresh frames (the setting, default 15), one every
:data:`FOCUS_STACK_INTERVAL_S` seconds while the engineer turns the focus ring, each scored and written on the
camera's low-priority thread (:mod:`devices.camera.focus`), and answers at once like a snapshot; how it ended
is an event of kind ``focus_stack`` (:data:`FOCUS_STACK_EVENT`). During a session (from the connection
holding it) the stack goes into the session's folder and is a ``focus_stack`` recording of the session;
otherwise (an engineer or an admin) it goes into ``calibrations/camera/`` of the data directory and is kept as
the camera's focus calibration, whose sharpest score is the new focus reference
(:mod:`control.imaging_records`). The sharpest frame is judged in focus or not by the reference before it.
A camera that is not ok refuses with the reason and nothing is recorded; a stack that cannot be written, or
whose camera stops being ok during it, leaves nothing behind. One stack is taken at a time.

**The aiming beam.** The safety board's ``LASER_ON`` / ``LASER_OFF`` commands switch the visible aiming beam
(docs/devices.md, "Safety board"), never the treatment laser: nothing here touches the supervisor, the laser
driver or the permission to emit, and emission never waits for the aiming beam.
:meth:`Imaging.set_aiming_beam` switches it while a session is open; every change, asked for or forced, is a
``user_action`` treatment event (``action`` ``aiming_beam``, ``on``, ``by`` and ``reason``). It goes off, and
the operator must switch it on again, when:

- the session ends (completed or aborted; before its recording closes, so the event is in its records);
- a fault latches (after the supervisor has started securing the laser: its own tasks are scheduled first);
- nobody holds the session any more (the holding console disconnected, logged out or signed in as someone
  else);
- the controller stops (:meth:`Imaging.aim_off_at_shutdown`, from ``Controller.close``): ``LASER_OFF`` is
  sent whatever the beam is believed to be, so a switch-on acknowledged too late to be known, or a beam a
  previous controller left on, goes off too;
- the treatment laser starts emitting, when the setting ``aiming_beam_during_emission`` is false (default
  true: the beam stays on while the treatment laser emits, as aiming beams usually do); with it false, asking
  for the beam while emitting is refused.

The beam's state as the board last acknowledged it is published in every snapshot (``aiming_beam``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from control import messages as msg
from control.authority import Person
from control.controller.state import ActiveSession, ControllerBase
from control.imaging_records import (
    FocusVerdict,
    focus_reference,
    focus_stack_notes,
    judge_focus,
    record_focus_calibration,
    record_focus_stack_recording,
)
from control.recorder import storage_failure
from control.supervisor import Refused, SystemState
from control.system_config import DEFAULTS, read_setting
from control.vocabulary import Severity
from devices.camera import (
    CameraClosedError,
    CameraState,
    FocusStack,
    NoImageError,
    RecordingError,
    SnapshotFiles,
)
from storage import utc_now
from storage.crypto_files import seal_session_files
from storage.models import SessionRecording

_LOG = logging.getLogger(__name__)

#: Longest wait for the camera to save a snapshot pair, s.
SNAPSHOT_TIMEOUT_S = 10.0
#: Longest wait for the safety board to acknowledge an aiming beam command, s.
AIM_TIMEOUT_S = 2.0
#: The kind of the events that say how a snapshot ended (saved, where; or why not).
SNAPSHOT_EVENT = "snapshot"

#: The kind of the events that say how a focus stack ended.
FOCUS_STACK_EVENT = "focus_stack"
#: Seconds between the frames of a focus stack (15 frames: about 3 s of turning the focus ring).
FOCUS_STACK_INTERVAL_S = 0.2
#: Who may keep the camera's focus calibration (a stack taken outside a session).
FOCUS_ROLES = frozenset({"engineer", "admin"})
#: Where stacks taken outside a session go, inside the data directory.
FOCUS_CALIBRATION_FOLDER = Path("calibrations") / "camera"


@dataclass(frozen=True, slots=True)
class FocusStackTaken:
    """A focus stack saved and recorded: the stack, its sharpest frame judged by the reference, and where it
    was recorded (the session's id, or the calibration's)."""

    stack: FocusStack
    verdict: FocusVerdict
    session_id: int | None
    calibration_id: int | None


def focus_stack_words(taken: FocusStackTaken) -> str:
    """What the console says of a focus stack saved: where, its sharpest frame and its focus."""
    stack = taken.stack
    where = (
        f"recorded with session {taken.session_id}"
        if taken.session_id is not None
        else f"kept as the camera's focus calibration #{taken.calibration_id} (the new reference)"
    )
    return f"focus stack saved in {stack.folder}, {where}; {focus_stack_notes(stack, taken.verdict)}"


def snapshot_words(taken: msg.SnapshotTaken) -> str:
    """What the console says of a snapshot saved: where the two pictures are, and the ring measured."""
    raw, annotated = Path(taken.raw_path), Path(taken.annotated_path)
    ring = f"ring {taken.ring_mm:.2f} mm" if taken.ring_mm is not None else "no ring found"
    return (
        f"snapshot saved at {taken.offset_s:.1f} s ({taken.resolution}, {ring}): "
        f"{raw.name} and {annotated.name} in {raw.parent}"
    )


class Imaging(ControllerBase):
    """Snapshots and the aiming beam, on the controller's state."""

    #: Whether the aiming beam stays on while the treatment laser emits (the session's setting).
    aim_during_emission: bool = True
    #: Bumped by every forced switch-off, so an "on" asked for before it never lands after it.
    _aim_epoch: int = 0
    _aim_lock: asyncio.Lock | None = None
    _snapshot_task: asyncio.Task[None] | None = None
    _focus_task: asyncio.Task[None] | None = None

    # -- snapshots -------------------------------------------------------------------------------------------

    @property
    def snapshot_in_progress(self) -> bool:
        """Whether a snapshot is being saved."""
        return self._snapshot_task is not None and not self._snapshot_task.done()

    def start_snapshot(self, *, by: str) -> msg.SnapshotStarted:
        """Start saving a snapshot of the open session for ``by`` and answer at once (see the module
        documentation); Refused, with the reason, when there is no session or no usable image, or while one
        is being saved."""
        session = self._require_session()
        self._usable_camera()
        if self.snapshot_in_progress:
            raise Refused("a snapshot is being saved: wait for it to finish")
        task = asyncio.get_running_loop().create_task(self._snapshot_in_background(by), name="snapshot")
        self._snapshot_task = task
        self._tasks.append(task)
        return msg.SnapshotStarted(folder=str(session.opened.folder))

    async def _snapshot_in_background(self, by: str) -> None:
        try:
            taken = await self.take_snapshot(by=by)
        except Refused as exc:
            self._snapshot_event(Severity.WARNING, f"snapshot not saved: {exc}")
        except Exception as exc:
            _LOG.exception("snapshot failed")
            words = storage_failure(exc) or f"{type(exc).__name__}: {exc}"
            self._snapshot_event(Severity.WARNING, f"snapshot not saved: {words}")
        else:
            self._snapshot_event(Severity.INFO, snapshot_words(taken))

    def _snapshot_event(self, severity: Severity, text: str, kind: str = SNAPSHOT_EVENT) -> None:
        self._seq += 1
        event = msg.Event(seq=self._seq, time_s=time.monotonic(), kind=kind, severity=severity, message=text)
        if self.server is not None:
            self.server.publish_event(event)

    def _usable_camera(self) -> None:
        camera = self.rig.camera
        if camera is None:
            raise Refused("no image to take: this rig has no camera")
        status = camera.status()
        if status.state is not CameraState.OK:
            raise Refused(f"no image to take: the camera is {status.state.value} ({status.reason})")

    async def take_snapshot(self, *, by: str) -> msg.SnapshotTaken:
        """Save the camera's newest frame as a snapshot pair of the open session, recorded for ``by``."""
        session = self._require_session()
        camera = self.rig.camera
        if camera is None:
            raise Refused("no image to take: this rig has no camera")
        expected = session.engine.ring_mm
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
                files = await camera.save_snapshots(session.opened.folder, expected_mm=expected)
        except NoImageError as exc:
            raise Refused(str(exc)) from None
        except RecordingError as exc:
            raise Refused(str(exc)) from None
        except (CameraClosedError, TimeoutError) as exc:
            raise Refused(f"the camera did not answer ({exc or 'timed out'})") from None
        offset_s = max(0.0, files.frame_timestamp - session.started_mono)
        ring_mm = files.ring.diameter_mm if files.ring is not None else None
        try:
            await asyncio.to_thread(seal_session_files, (files.raw, files.annotated))
            await self._snapshot_rows(session.opened.session_id, files, ring_mm)
        except Exception:
            # The pictures must not outlive a refusal: nothing half-recorded stays behind.
            for path in (files.raw, files.annotated):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        if self.session is session:
            self._record(
                "image_captured",
                image_path=str(files.raw),
                at_mono=files.frame_timestamp,
                details={
                    "by": by,
                    "offset_s": round(offset_s, 3),
                    "annotated_path": str(files.annotated),
                    "resolution": files.resolution,
                    "ring_mm": None if ring_mm is None else round(ring_mm, 3),
                    "no_ring_reason": files.no_ring_reason or None,
                    "frame": files.frame_sequence,
                },
            )
        return msg.SnapshotTaken(
            raw_path=str(files.raw),
            annotated_path=str(files.annotated),
            raw_bytes=files.raw_bytes,
            annotated_bytes=files.annotated_bytes,
            resolution=files.resolution,
            offset_s=offset_s,
            ring_mm=ring_mm,
            no_ring_reason=files.no_ring_reason,
        )

    async def _snapshot_rows(self, session_id: int, files: SnapshotFiles, ring_mm: float | None) -> None:
        """The pair's two ``session_recordings`` rows, in one transaction: one multi-row INSERT rather than
        the ORM's unit of work, so that little Python runs on this loop for a snapshot."""
        ring = f"ring {ring_mm:.2f} mm drawn" if ring_mm is not None else "no ring found"
        taken = utc_now()
        rows = [
            {
                "session_id": session_id,
                "recording_type": "snapshot",
                "file_path": str(path),
                "file_size_bytes": size,
                "duration_seconds": None,
                "timestamp": taken,
                "frame_count": 1,
                "resolution": files.resolution,
                "notes": notes,
            }
            for path, size, notes in (
                (files.raw, files.raw_bytes, "snapshot: the camera frame"),
                (files.annotated, files.annotated_bytes, f"snapshot annotated: {ring}"),
            )
        ]
        async with self.db() as db, db.begin():
            await db.execute(insert(SessionRecording).values(rows))

    # -- focus stacks ----------------------------------------------------------------------------------------

    @property
    def focus_stack_in_progress(self) -> bool:
        """Whether a focus stack is being taken."""
        return self._focus_task is not None and not self._focus_task.done()

    async def _focus_stack_frames(self) -> int:
        """The setting ``focus_stack_frames`` (an unreadable value keeps the default, said in the log)."""
        try:
            async with self.db() as db:
                value = await read_setting(db, "focus_stack_frames")
        except Exception as exc:
            _LOG.error("focus_stack_frames not read, the default is used: %s", exc)
            value = DEFAULTS.focus_stack_frames
        return int(value)

    async def start_focus_stack(self, *, person: Person) -> msg.FocusStackStarted:
        """Start taking a focus stack for ``person`` and answer at once (see the module documentation);
        Refused, with the reason, without a usable camera image or while one is being taken. Who may take one
        is the command's rule (:mod:`control.controller.commands`)."""
        self._usable_camera()
        if self.focus_stack_in_progress:
            raise Refused("a focus stack is being taken: wait for it to finish")
        count = await self._focus_stack_frames()
        self._usable_camera()  # again: the setting was read meanwhile
        if self.focus_stack_in_progress:
            raise Refused("a focus stack is being taken: wait for it to finish")
        session = self.session
        folder = session.opened.folder if session is not None else self.data.root / FOCUS_CALIBRATION_FOLDER
        task = asyncio.get_running_loop().create_task(
            self._focus_in_background(person, session, folder, count), name="focus-stack"
        )
        self._focus_task = task
        self._tasks.append(task)
        return msg.FocusStackStarted(
            folder=str(folder), frames=count, duration_s=round((count - 1) * FOCUS_STACK_INTERVAL_S, 3)
        )

    async def _focus_in_background(
        self, person: Person, session: ActiveSession | None, folder: Path, count: int
    ) -> None:
        try:
            taken = await self.take_focus_stack(person=person, session=session, folder=folder, count=count)
        except Refused as exc:
            self._snapshot_event(Severity.WARNING, f"focus stack not saved: {exc}", FOCUS_STACK_EVENT)
        except Exception as exc:
            _LOG.exception("focus stack failed")
            words = storage_failure(exc) or f"{type(exc).__name__}: {exc}"
            self._snapshot_event(Severity.WARNING, f"focus stack not saved: {words}", FOCUS_STACK_EVENT)
        else:
            self._snapshot_event(Severity.INFO, focus_stack_words(taken), FOCUS_STACK_EVENT)

    async def take_focus_stack(
        self, *, person: Person, session: ActiveSession | None, folder: Path, count: int
    ) -> FocusStackTaken:
        """Take a stack of ``count`` frames into ``folder`` and record it: with ``session`` (its recording),
        else as the camera's focus calibration made by ``person``."""
        camera = self.rig.camera
        if camera is None:
            raise Refused("no image to take: this rig has no camera")
        try:
            stack = await camera.record_focus_stack(folder, count=count, interval_s=FOCUS_STACK_INTERVAL_S)
        except (NoImageError, RecordingError) as exc:
            raise Refused(str(exc)) from None
        except (CameraClosedError, TimeoutError) as exc:
            raise Refused(f"the camera did not answer ({exc or 'timed out'})") from None
        try:
            try:
                previous = await focus_reference(self.db)
            except ValueError as exc:
                _LOG.error("the camera's focus reference cannot be used: %s", exc)
                previous = None
            verdict = judge_focus(stack.sharpest.score, previous)
            if session is not None:
                # In a session's folder the frames and the index are encrypted where the records are.
                files = sorted(path for path in stack.folder.iterdir() if path.is_file())
                await asyncio.to_thread(seal_session_files, files)
                session_id = session.opened.session_id
                await record_focus_stack_recording(self.db, session_id, stack, verdict)
                return FocusStackTaken(stack, verdict, session_id, None)
            calibration_id = await record_focus_calibration(
                self.db, stack, tech_id=person.tech_id, previous=previous
            )
            return FocusStackTaken(stack, verdict, None, calibration_id)
        except BaseException:
            # The files must not outlive a refusal: nothing half-recorded stays behind.
            await asyncio.to_thread(shutil.rmtree, stack.folder, True)
            raise

    # -- the aiming beam -------------------------------------------------------------------------------------

    def _aim_guard(self) -> asyncio.Lock:
        if self._aim_lock is None:
            self._aim_lock = asyncio.Lock()
        return self._aim_lock

    async def _read_aim_setting(self) -> None:
        """The session's ``aiming_beam_during_emission`` (an unreadable value keeps the safer default)."""
        try:
            async with self.db() as db:
                value = await read_setting(db, "aiming_beam_during_emission")
        except Exception as exc:
            _LOG.error("aiming beam setting not read, the beam stays on while emitting: %s", exc)
            value = True
        self.aim_during_emission = bool(value)

    async def set_aiming_beam(self, on: bool, *, by: str) -> msg.AimingBeamState:
        """Switch the aiming beam for the open session's operator ``by``; Refused with the reason."""
        self._require_session()
        if on:
            refusal = self._aim_refusal()
            if refusal is not None:
                raise Refused(refusal)
        epoch = self._aim_epoch
        async with self._aim_guard():
            if on:
                refusal = self._aim_refusal()
                if refusal is None and epoch != self._aim_epoch:
                    refusal = "the aiming beam was switched off meanwhile: ask again"
                if refusal is not None:
                    raise Refused(refusal)
            if self.aiming_on == on:
                return msg.AimingBeamState(on=on)
            try:
                await self._switch_aim(on)
            except Exception as exc:
                raise Refused(f"aiming beam not switched {'on' if on else 'off'}: {exc}") from None
            self._aim_changed(on, by=by, reason="asked for")
        return msg.AimingBeamState(on=self.aiming_on)

    def _aim_refusal(self) -> str | None:
        if self.session is None:
            return "the aiming beam is used only while a session is open"
        state = self.supervisor.state
        if state is SystemState.FAULT:
            return "no aiming beam in fault: reset the fault first"
        if state is SystemState.TREATING and not self.aim_during_emission:
            return "the aiming beam stays off while the treatment laser emits (aiming_beam_during_emission)"
        return None

    async def _switch_aim(self, on: bool) -> None:
        board = self.rig.safety
        if board is None:
            raise Refused("the safety board is not open")
        async with asyncio.timeout(AIM_TIMEOUT_S):
            await board.aiming_beam(on)

    def _aim_changed(self, on: bool, *, by: str, reason: str) -> None:
        self.aiming_on = on
        self._record(
            "user_action",
            details={"action": "aiming_beam", "on": on, "by": by, "reason": reason},
        )
        self._event(Severity.INFO, f"aiming beam {'on' if on else 'off'} ({reason})")

    async def aim_off(self, reason: str) -> None:
        """Switch the aiming beam off (whatever was asked before), recorded with ``reason``; a board that does
        not acknowledge it is logged and said, and the beam is shown as possibly on until one does."""
        self._aim_epoch += 1
        async with self._aim_guard():
            if not self.aiming_on:
                return
            try:
                await self._switch_aim(False)
            except Exception as exc:
                _LOG.error("aiming beam not switched off (%s): %s", reason, exc)
                self._event(Severity.WARNING, f"aiming beam not switched off ({reason}): {exc}")
                return
            self._aim_changed(False, by="controller", reason=reason)

    async def aim_off_at_shutdown(self) -> None:
        """The controller is stopping: ``LASER_OFF`` whatever the beam is believed to be (no session is
        recorded any more, so nothing is recorded); a board that does not acknowledge it is logged."""
        self._aim_epoch += 1
        async with self._aim_guard():
            try:
                await self._switch_aim(False)
            except Exception as exc:
                _LOG.error("aiming beam not switched off at shutdown: %s", exc)
                return
            self.aiming_on = False

    def _aim_off_soon(self, reason: str) -> None:
        """:meth:`aim_off` in the background, scheduled after whatever the caller's turn of the loop starts
        (the supervisor securing the laser after a fault starts first)."""
        self._aim_epoch += 1
        if not self.aiming_on and not self._aim_guard().locked():
            return  # off, and no switch in progress that could leave it on
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _LOG.error("aiming beam not switched off (%s): no event loop", reason)
            return
        loop.call_soon(lambda: self._background(self.aim_off(reason)))

    def _aim_state(self, old: SystemState, new: SystemState, reason: str) -> None:
        """The supervisor's transitions: off on a fault, and when emission starts unless it may stay on."""
        if new is SystemState.FAULT:
            self._aim_off_soon(f"fault: {reason}")
        elif new is SystemState.TREATING and not self.aim_during_emission:
            self._aim_off_soon("the treatment laser emits (aiming_beam_during_emission is false)")
