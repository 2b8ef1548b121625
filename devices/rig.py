"""The rig: every device of a configuration opened together, under an exclusive lock, laser off first.

Usage::

    rig = Rig(RigConfig.from_ports(sim_rig.ports()), lock)   # or RigConfig(laser="/dev/tosca-laser", ...)
    await rig.open()          # lock, laser output off (verified), then every other device
    rig.health()              # {"laser": DeviceHealth(...), ...}
    await rig.close()         # laser output off again (best effort), everything closed, lock released

Order on :meth:`Rig.open` (docs/architecture.md, "Start-up order"):

1. the rig lock, which the caller provides (:class:`RigLock`: the controller's is an ``fcntl.flock`` on the
   data directory's ``rig.lock``, see :mod:`control.controller.rig_lock`); a second holder, in this process
   or another, gets :class:`RigInUse` ("rig in use by process N");
2. the laser driver's port, ``LAS:OUT 0`` and the ``LAS:OUT?`` read-back **before any other command**; then
   the laser's identity and current limit;
3. the TEC (identity and limits), the actuator (its status word), the safety board (protocol version, event
   dispatch started), and the camera capture thread.

If any step fails everything already opened is closed again, the lock is released, and :class:`RigError`
names the device and the reason. Reconnection after a device disappears later is the transport's job;
:meth:`Rig.health` reports each device's link state, identity and last error at any time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from devices.actuator import ActuatorDriver
from devices.camera import Camera, CameraCapture, CameraProcess, CameraSpec, FrameSource
from devices.laser import LaserDriver
from devices.safety import SafetyBoardDriver
from devices.safety import is_unsolicited as safety_is_unsolicited
from devices.tec import TecDriver
from devices.transport import LineTransport, LinkState

_LOG = logging.getLogger(__name__)

ARROYO_BAUD = 38400
LF_DEVICE_BAUD = 115200
SERIAL_DEVICES = ("laser", "tec", "actuator", "safety")


class RigError(Exception):
    """The rig could not be opened (the message names the device and the reason)."""


class RigInUse(RigError):
    """Another holder has the rig lock."""


class RigLock(Protocol):
    """The exclusive lock a rig is opened under (where it lives is the caller's business)."""

    @property
    def held(self) -> bool:
        """True while this lock is held."""

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RigInUse` naming its holder."""

    def release(self) -> None:
        """Release the lock (idempotent)."""


@dataclass(frozen=True)
class RigConfig:
    """Where each device is: a serial port per serial device, and a camera spec (index, file, ``"sim"``).

    ``camera=None`` means no camera is configured. ``timeout_s`` is the reply timeout of every serial link, s.
    """

    laser: str
    tec: str
    actuator: str
    safety: str
    camera: CameraSpec | None = "sim"
    timeout_s: float = 0.25

    @classmethod
    def from_ports(cls, ports: Mapping[str, str], *, with_camera: bool = True) -> RigConfig:
        """A configuration from a port map such as :meth:`devices.sim.rig.SimRig.ports`."""
        missing = [name for name in SERIAL_DEVICES if not ports.get(name)]
        if missing:
            raise ValueError(f"no port for: {', '.join(missing)}")
        camera = ports.get("camera", "sim") if with_camera else None
        return cls(ports["laser"], ports["tec"], ports["actuator"], ports["safety"], camera)


@dataclass(frozen=True)
class DeviceHealth:
    """One device as the rig sees it now: link state, identity, last error, and a short detail."""

    name: str
    state: str
    identity: str | None
    last_error: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the device's link is open (or the camera delivers frames)."""
        return self.state in (LinkState.OPEN.value, "ok")


class Rig:
    """Every device of one configuration, opened under ``lock``.

    ``camera_source`` replaces the source the configuration names (the simulated rig passes its own camera,
    whose ring follows the shared physical model).
    """

    def __init__(
        self,
        config: RigConfig,
        lock: RigLock,
        *,
        camera_source: FrameSource | None = None,
    ) -> None:
        self.config = config
        self.lock = lock
        self._camera_source = camera_source
        self.transports: dict[str, LineTransport] = {}
        self.laser: LaserDriver | None = None
        self.tec: TecDriver | None = None
        self.actuator: ActuatorDriver | None = None
        self.safety: SafetyBoardDriver | None = None
        self.camera: Camera | None = None
        self._identity: dict[str, str] = {}
        self._detail: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self.is_open = False

    # -------------------------------------------------------------------------------------- open/close
    def _transport(self, name: str) -> LineTransport:
        ports = {
            "laser": self.config.laser,
            "tec": self.config.tec,
            "actuator": self.config.actuator,
            "safety": self.config.safety,
        }
        arroyo = name in ("laser", "tec")
        transport = LineTransport(
            name,
            ports[name],
            baudrate=ARROYO_BAUD if arroyo else LF_DEVICE_BAUD,
            eol=b"\r\n" if arroyo else b"\n",
            timeout_s=self.config.timeout_s,
            is_unsolicited=safety_is_unsolicited if name == "safety" else (lambda line: False),
        )
        self.transports[name] = transport
        return transport

    async def open(self) -> None:
        """Lock the rig, switch the laser off (verified) first, then open every other device.

        Raises :class:`RigInUse` when another holder has the lock, :class:`RigError` when a device fails
        (after closing what was opened).
        """
        if self.is_open:
            return
        self.lock.acquire()
        step = "laser"
        try:
            laser_link = self._transport("laser")
            await laser_link.open()
            self.laser = LaserDriver(laser_link)
            left = await self.laser.output_off()
            if left:
                self._errors["laser"] = ", ".join(str(e) for e in left)
                _LOG.warning("laser errors at start-up: %s", self._errors["laser"])
            self._identity["laser"] = str(await self.laser.connect())

            step = "tec"
            tec_link = self._transport("tec")
            await tec_link.open()
            self.tec = TecDriver(tec_link)
            self._identity["tec"] = str(await self.tec.connect())

            step = "actuator"
            actuator_link = self._transport("actuator")
            await actuator_link.open()
            self.actuator = ActuatorDriver(actuator_link)
            self._detail["actuator"] = (await self.actuator.status()).describe()

            step = "safety"
            safety_link = self._transport("safety")
            await safety_link.open()
            self.safety = SafetyBoardDriver(safety_link)
            await self.safety.start()
            version = await self.safety.check_version()
            self._identity["safety"] = f"TOSCA safety firmware, protocol {version}"

            step = "camera"
            if self.config.camera is not None:
                # A configured camera is read by a process of its own, away from the controller's loop.
                if self._camera_source is not None:
                    self.camera = CameraCapture(self._camera_source, thread_name="rig-camera")
                else:
                    self.camera = CameraProcess(self.config.camera)
                self.camera.start()
                self._identity["camera"] = self.camera.description
        except Exception as exc:
            await self._shutdown()
            raise RigError(f"{step}: {exc}") from exc
        self.is_open = True

    async def close(self) -> None:
        """Switch the laser off (best effort, verified), close every device and release the lock.
        Idempotent."""
        await self._shutdown()
        self.is_open = False

    async def _shutdown(self) -> None:
        """Laser off first (best effort), then every device closed; a failing step never skips the others."""
        if self.laser is not None and self.laser.transport.state in (LinkState.OPEN, LinkState.FAULTY):
            try:
                await self.laser.output_off()
            except Exception as exc:
                _LOG.error("laser output off at close failed: %s", exc)
        if self.safety is not None:
            try:
                await self.safety.close()
            except Exception as exc:
                _LOG.error("safety board close failed: %s", exc)
        if self.camera is not None:
            try:
                await self.camera.aclose()
            except Exception as exc:
                _LOG.error("camera close failed: %s", exc)
        for transport in self.transports.values():
            try:
                await transport.close()
            except Exception as exc:
                _LOG.error("%s: close failed: %s", transport.name, exc)
        self.transports.clear()
        self.laser = self.tec = self.actuator = self.safety = None
        self.camera = None
        self.lock.release()

    async def __aenter__(self) -> Rig:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ health
    def health(self) -> dict[str, DeviceHealth]:
        """Each configured device's link state, identity and last error, now."""
        report: dict[str, DeviceHealth] = {}
        for name in SERIAL_DEVICES:
            transport = self.transports.get(name)
            state = transport.state.value if transport is not None else LinkState.CLOSED.value
            last_error = (transport.last_error if transport is not None else None) or self._errors.get(name)
            report[name] = DeviceHealth(
                name, state, self._identity.get(name), last_error, self._detail.get(name, "")
            )
        if self.config.camera is not None:
            if self.camera is None:
                report["camera"] = DeviceHealth("camera", "closed", None, None)
            else:
                status = self.camera.status()
                report["camera"] = DeviceHealth(
                    "camera", str(status.state), self._identity.get("camera"), status.reason or None
                )
        return report
