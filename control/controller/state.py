"""What the controller process holds, and the small helpers every part of it uses.

:class:`ControllerBase` names the controller's state (the rig, the database, the supervisor, the open
session, who holds it) for the parts built on it: the treatment lifecycle
(:mod:`control.controller.treatment`), the commands (:mod:`control.controller.commands`) and the wiring
(:mod:`control.controller.process`), which sets it all up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from control import messages as msg
from control.accounts import AccountService, HashingParameters
from control.authority import Authority
from control.calibration import CalibrationSet
from control.controller.monitors import DeviceMonitors, Readouts
from control.controller.snapshot import build_snapshot
from control.engine import TreatmentEngine
from control.ipc.server import ControllerServer, Peer
from control.preview import PreviewProducer
from control.protocols import Plan
from control.recorder import Recorder
from control.sessions import OpenedSession, SessionService, SummaryAccumulator
from control.supervisor import Refused, SafetyEntry, SafetySupervisor
from control.vocabulary import Severity
from devices.rig import Rig, RigConfig
from storage import DataDir

if TYPE_CHECKING:
    from devices.sim.rig import SimRig

_LOG = logging.getLogger(__name__)


@dataclass
class ActiveSession:
    """The open session and everything that runs for it."""

    opened: OpenedSession
    plan: Plan
    calibrations: CalibrationSet
    engine: TreatmentEngine
    summary: SummaryAccumulator
    started_mono: float
    max_override_w: float
    task: asyncio.Task[None] | None = None
    video: Path | None = None


class ControllerBase:
    """The controller's state. The attributes without a value here are set by :meth:`Controller.start`
    (``control.controller.process``)."""

    data: DataDir
    sim: bool
    rig_config: RigConfig | None
    hashing: HashingParameters
    terminal: str
    serve: bool
    sim_rig: SimRig | None
    _rig: Rig | None
    session: ActiveSession | None
    last_session_id: int | None
    #: Who acts on which connection, and which connection holds the open session.
    authority: Authority
    #: The device figures the monitors keep besides what the supervisor judges.
    readouts: Readouts
    monitors: DeviceMonitors | None
    calibrations: CalibrationSet | None
    server: ControllerServer | None
    preview: PreviewProducer | None
    supervisor: SafetySupervisor
    _tasks: list[asyncio.Task[None]]
    _seq: int
    _closing: bool
    engine_db: AsyncEngine
    db: async_sessionmaker[AsyncSession]
    accounts: AccountService
    sessions: SessionService
    recorder: Recorder
    loop_hz: float
    video_fps: float
    #: Whether the aiming beam is on, as the safety board last acknowledged it
    #: (:mod:`control.controller.imaging`).
    aiming_on: bool = False

    @property
    def rig(self) -> Rig:
        """The open rig; refused before :meth:`Controller.start` opened it."""
        if self._rig is None:
            raise RuntimeError("the rig is not open")
        return self._rig

    def snapshot(self) -> msg.Snapshot:
        """Everything a console shows, now (see :func:`~control.controller.snapshot.build_snapshot`)."""
        self._seq += 1
        return build_snapshot(
            seq=self._seq,
            now=time.monotonic(),
            wall_now=time.time(),
            sim=self.sim,
            supervisor=self.supervisor,
            session=self.session,
            authority=self.authority,
            readouts=self.readouts,
            calibrations=self.calibrations,
            health=self.rig.health(),
            last_session_id=self.last_session_id,
            aiming_beam=self.aiming_on,
        )

    def _event(self, severity: Severity, text: str) -> None:
        self._seq += 1
        event = msg.Event(
            seq=self._seq, time_s=time.monotonic(), kind="controller", severity=severity, message=text
        )
        if self.server is not None:
            self.server.publish_event(event)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short record-keeping coroutine; finished ones are dropped from the task list."""
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def _step_number(self) -> int | None:
        session = self.session
        if session is None or session.engine.progress is None:
            return None
        return session.engine.progress.number

    def _record(self, event_type: str, **columns: Any) -> None:
        if self.session is None:
            return
        if "ring_mm" not in columns and self.session.engine.ring_mm is not None:
            columns["ring_mm"] = self.session.engine.ring_mm
        columns.setdefault("position_um", self.readouts.position_um)
        try:
            self.recorder.event(event_type, **columns)
        except Exception as exc:
            _LOG.error("treatment event %s not queued: %s", event_type, exc)

    def _require_session(self) -> ActiveSession:
        if self.session is None:
            raise Refused("no session is open")
        return self.session

    @staticmethod
    def _peer_details(peer: Peer | None) -> dict[str, Any]:
        """The connection's peer as the audit trail records it."""
        if peer is None:
            return {"connection": None}
        return {"connection": peer.connection, "peer_pid": peer.pid, "peer_uid": peer.uid}

    async def _write_safety(self, entry: SafetyEntry) -> None:
        await self.recorder.safety(entry)
