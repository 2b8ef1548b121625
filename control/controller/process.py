"""The controller process's wiring: :class:`Controller` opens the rig, the database, the safety board and
the sockets in order, starts the device monitors and the snapshot feed, and closes it all again.

Start-up order: the rig first (its lock, then "output off" to the laser driver, verified, before anything
else), then the database (upgraded to the head revision; sessions left open by a crash closed as aborted;
where the records are encrypted, plain files a crash left in the session folders encrypted), then the safety
board's watchdog, heartbeat and sample stream, then the device monitors and the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from pathlib import Path

from control.accounts import AccountService, HashingParameters
from control.authority import Authority
from control.controller.commands import ControllerCommands
from control.controller.diagnostics import ControllerDiagnostics
from control.controller.monitors import DeviceMonitors, Readouts
from control.controller.ports import SupervisorBoard, SupervisorLaser
from control.controller.records_upkeep import RecordsUpkeep
from control.controller.remote import RemoteConsoles
from control.controller.rig_lock import DataDirRigLock
from control.ipc.server import ControllerServer
from control.preview import PreviewProducer
from control.protocols import install_library_protocols
from control.recorder import Recorder
from control.sessions import SessionService
from control.supervisor import BoardLink, SafetySupervisor
from control.vocabulary import Severity
from devices.rig import Rig, RigConfig
from devices.safety import BoardStatus, UnknownCommand, WatchdogState
from storage import DataDir, create_engine, session_factory
from storage.crypto_files import seal_left_plain_files
from storage.errors import StorageError
from storage.maintenance import upgrade_async

_LOG = logging.getLogger(__name__)

CONTROL_SOCKET = "control.sock"
OBSERVE_SOCKET = "observe.sock"
#: Safety board sample rate (Hz): photodiode, pedal, E-stop, vibration, enable.
STREAM_HZ = 100
WATCHDOG_TIMEOUT_MS = 1000
HEARTBEAT_PERIOD_S = 0.2
#: Snapshots pushed to clients per second (the server coalesces to at most 30/s per client).
SNAPSHOT_HZ = 30


class Controller(ControllerCommands):
    """Everything the controller process runs. ``sim_rig`` (started by the caller, or by :meth:`start` when
    ``sim`` is true) provides the ports and the simulator command language; otherwise ``rig_config`` names
    the real ports."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        sim: bool = False,
        rig_config: RigConfig | None = None,
        hashing: HashingParameters | None = None,
        terminal: str = "controller",
        serve: bool = True,
    ) -> None:
        if not sim and rig_config is None:
            raise ValueError("a real rig needs its port configuration")
        self.data = DataDir(Path(data_dir).absolute())
        self.sim = sim
        self.rig_config = rig_config
        self.hashing = hashing or HashingParameters()
        self.terminal = terminal
        self.serve = serve
        self.sim_rig = None
        self._rig = None
        self.session = None
        self.last_session_id = None
        self.authority = Authority()
        self.readouts = Readouts()
        self.monitors = None
        self.calibrations = None
        self.server = None
        self.preview = None
        self._tasks = []
        self._seq = 0
        self._closing = False
        self.supervisor = SafetySupervisor(
            SupervisorLaser(
                lambda: self._rig,
                lambda: self.session.calibrations if self.session is not None else None,
                self.readouts,
            ),
            SupervisorBoard(lambda: self._rig),
            self._write_safety,
        )
        self.supervisor.on_state_change(self._on_state_change)
        self.supervisor.on_state_change(self._authority_state)
        self.diagnostics = ControllerDiagnostics(self.supervisor, self.readouts)

    async def start(self) -> None:
        """Open the rig (laser off, verified, first), the database, the board stream and the sockets."""
        data = self.data.ensure()
        if self.sim:
            from devices.sim.rig import SimRig

            self.sim_rig = SimRig()
            await self.sim_rig.start()
            config = RigConfig.from_ports(self.sim_rig.ports())
            self._rig = Rig(config, DataDirRigLock(data.root), camera_source=self.sim_rig.camera)
        else:
            assert self.rig_config is not None
            self._rig = Rig(self.rig_config, DataDirRigLock(data.root))
        try:
            await self.rig.open()
            await upgrade_async(data)
            self.engine_db = create_engine(data.db_path)
            self.db = session_factory(self.engine_db)
            self.accounts = AccountService(sessions=self.db, terminal=self.terminal, hashing=self.hashing)
            self.remote_consoles = RemoteConsoles(self.accounts)
            self.sessions = SessionService(self.db, data)
            # First the rows a previous process left in the recorder's journal (a crash, a locked database).
            self.recorder = Recorder(self.db, data_root=data.root, db_path=data.db_path)
            self.recorder.on_health_change(self._on_storage_health)
            await self.recorder.start()
            closed = await self.sessions.close_interrupted()
            if closed:
                _LOG.warning("sessions closed as aborted at start-up: %s", closed)
            await self._seal_left_plain_files()
            await install_library_protocols(self.db)
            await self._load_limits()  # SettingError: a refused value stops the start
            self.supervisor.start()
            await self._reload_calibrations()
            await self._start_board()
            monitors = DeviceMonitors(self.rig, self.supervisor, self.readouts, self._event)
            self.monitors = monitors
            for name, transport in self.rig.transports.items():
                self.supervisor.set_link(name, transport.state.value)
                transport.on_state_change(monitors.link_callback(name))
            self._tasks = monitors.tasks()
            self._tasks.append(asyncio.create_task(self.diagnostics.loop.run(), name="loop-watch"))
            upkeep = RecordsUpkeep.of_database(self.db, data.db_path, data.root, lambda: self.session is None)
            self._tasks.append(asyncio.create_task(upkeep.run(), name="records-upkeep"))
            if self.serve:
                self.server = ControllerServer(
                    data.root / CONTROL_SOCKET,
                    data.root / OBSERVE_SOCKET,
                    self,
                    on_operator_disconnect=self._operator_gone,
                )
                await self.server.start()
                self._tasks.append(asyncio.create_task(self._publish(), name="publish"))
                server = self.server
                self.preview = PreviewProducer(
                    self.rig.camera,
                    server.publish_preview,
                    lambda: bool(server.peers),
                    expected_ring_mm=lambda: self.session.engine.ring_mm if self.session else None,
                    ring_scale=lambda: self.camera_scale,
                )
                self.preview.start()
        except BaseException:
            await self.close()
            raise
        # Everything made so far lives as long as the controller: out of the collector's full passes, which
        # otherwise walk it all with this loop stopped (measured 30 to 75 ms, the supervisor's tick included).
        gc.freeze()

    async def _seal_left_plain_files(self) -> None:
        """Where the records are encrypted, encrypt the plain files a crash left in the session folders,
        on a worker thread, before any session can open; the count goes to the log."""
        try:
            count = await asyncio.to_thread(seal_left_plain_files, self.data.root)
        except (StorageError, OSError) as exc:
            _LOG.error("plain session files left as they are, not encrypted: %s", exc)
            return
        if count:
            _LOG.warning("%d plain session files encrypted at start-up", count)

    async def close(self) -> None:
        """Stop emission, close any session as aborted, stop every task, disarm the board and switch its
        aiming beam off, close devices and sockets."""
        if self._closing:
            return
        self._closing = True
        self.supervisor.output_off_now()
        if self.server is not None:
            await self.server.close()
        if self.preview is not None:
            await self.preview.aclose()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await self._close_session("aborted", "the controller was shut down during the session")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        board = self._rig.safety if self._rig is not None else None
        if board is not None:
            with contextlib.suppress(ValueError):
                board.remove_listener(self._on_board)
            with contextlib.suppress(ValueError):
                board.remove_listener(self.diagnostics.faults.on_board)
            with contextlib.suppress(Exception):
                await board.disarm()
            await self.aim_off_at_shutdown()
            with contextlib.suppress(Exception):
                await board.motor_off()
        await self.supervisor.close()
        if hasattr(self, "recorder"):
            with contextlib.suppress(Exception):
                await self.recorder.close()
        if self._rig is not None:
            await self._rig.close()
        if hasattr(self, "engine_db"):
            await self.engine_db.dispose()
        if self.sim_rig is not None:
            await self.sim_rig.stop()

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start_board(self) -> None:
        """The safety board as this process finds it: read its arming and watchdog, disarm it, clear a
        watchdog a previous controller left expired (a safety_log row: it stopped without closing, a crash),
        then the heartbeat and the sample stream. A watchdog that stays expired is a fault to reset."""
        board = self.rig.safety
        assert board is not None
        await board.set_watchdog_timeout(WATCHDOG_TIMEOUT_MS)
        try:
            found: BoardStatus | None = await board.read_status()
        except UnknownCommand:
            found = None  # firmware 3.0 cannot tell: a clear changes nothing on a watchdog that runs
        await board.disarm()
        if found is None or found.watchdog is WatchdogState.EXPIRED or board.watchdog_expired:
            await board.clear_watchdog()
        if found is None:
            _LOG.info("safety board firmware cannot report its watchdog: WDT_CLEAR sent at start-up")
        elif found.watchdog is WatchdogState.EXPIRED or found.armed:
            left = "watchdog expired" if found.watchdog is WatchdogState.EXPIRED else "board armed"
            self.supervisor.log(
                "system_watchdog_timeout" if found.watchdog is WatchdogState.EXPIRED else "board_disarmed",
                Severity.WARNING,
                f"safety board found with its {left} at start-up: the previous controller stopped without "
                "disarming it (a crash or a kill)",
                action="DISARM and WDT_CLEAR sent; arming needs the password again",
                details={"armed": found.armed, "watchdog": found.watchdog.value},
            )
        if found is not None:
            after = await board.read_status()
            self.supervisor.readings.watchdog_expired = after.watchdog is WatchdogState.EXPIRED
        board.add_listener(self.diagnostics.faults.on_board)  # before the supervisor's: it times reactions
        board.add_listener(self._on_board)
        board.start_heartbeat(HEARTBEAT_PERIOD_S)
        self.supervisor.readings.watchdog_timeout_s = WATCHDOG_TIMEOUT_MS / 1000
        pedal, estop = await board.footpedal(), await board.estop()
        self.supervisor.update_board_link(BoardLink(board.last_heartbeat_ok, watchdog_expired=False))
        self.supervisor.update_switches(pedal=pedal, estop=estop)
        await board.set_stream(STREAM_HZ)

    def _on_storage_health(self, ok: bool, problem: str | None) -> None:
        self.supervisor.set_storage(ok, problem)
        if not ok:
            self._event(Severity.CRITICAL, f"storage cannot record: {problem}")
        else:
            self._event(Severity.INFO, "storage records again")

    async def _publish(self) -> None:
        """Build a snapshot, then encode and queue it in a turn of the loop of its own: a safety edge that
        arrives meanwhile waits for one half, not for both."""
        while True:
            if self.server is not None and self.server.peers:
                try:
                    snapshot = self.snapshot()
                    await asyncio.sleep(0)
                    if self.server is not None:
                        self.server.publish(snapshot)
                except Exception:
                    _LOG.exception("snapshot not published")
            await asyncio.sleep(1.0 / SNAPSHOT_HZ)
