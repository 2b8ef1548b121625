"""The whole simulated rig: one physical model, four serial devices on ptys, the simulated camera, and the
simulator command language of docs/devices.md ("The simulated rig").

Usage::

    rig = SimRig()
    await rig.start()
    rig.ports()          # {"laser": ..., "tec": ..., "actuator": ..., "safety": ..., "camera": "sim"}
    rig.command("pedal down")   # -> "ok pedal down"
    await rig.stop()

The safety board is the Python simulator (:class:`devices.sim.safety.SafetyBoardSim`, the default) or, with
``SimRig(safety_board="firmware")`` or ``TOSCA_SIM_SAFETY_BOARD=firmware`` in the environment, the C firmware
of ``firmware/safety`` on a simulated ATmega328P (:mod:`devices.sim.firmware`); the commands below work with
both.

Port names: each serial device is reached through a stable name, a symbolic link in a private directory
pointing at the device's current pty (``/dev/pts/N``). A replugged device gets a new pty and the link
follows it, as a udev rule keeps a real device's name, so a driver reconnecting to the same name finds the
device again. ``stable_names=False`` hands out the ``/dev/pts/N`` paths themselves (which can change on
replug).

Commands (case-insensitive words separated by spaces; every success returns a line starting ``ok``, anything
unknown or malformed raises :class:`SimCommandError` with a one-line reason and changes nothing)::

    pedal down | pedal up
    estop on | estop off
    smoothing fail | smoothing ok
    photodiode gain <x>            0..10, 1.0 nominal
    photodiode offset <volts>      -5..5 V
    laser dropout on | off
    tec drift <degC>               -50..50 degC added to the measured temperature
    actuator fault thermal | actuator fault clear
    unplug <device> | replug <device>      laser, tec, actuator, safety, camera
    garbage <device> <n>           1..4096 random bytes; serial devices only
    stall <device> on | off        serial devices only
    camera freeze on | off
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from devices.sim.actuator import ActuatorSim
from devices.sim.camera import SimCameraSource
from devices.sim.firmware import FirmwarePort, FirmwareSafetyBoard
from devices.sim.laser import LaserSim
from devices.sim.model import PhysicalModel
from devices.sim.pty import LineHandler, PtyDevice
from devices.sim.safety import LINE_MAX_BYTES as SAFETY_LINE_MAX_BYTES
from devices.sim.safety import SafetyBoardSim
from devices.sim.tec import TecSim

SERIAL_DEVICES = ("laser", "tec", "actuator", "safety")
ALL_DEVICES = (*SERIAL_DEVICES, "camera")
MAX_GARBAGE_BYTES = 4096
#: Which safety board the simulated rig runs: the Python simulator, or the C firmware under simavr.
SAFETY_BOARDS = ("python", "firmware")
#: Environment variable naming the safety board when the caller does not (``tosca ... --safety-board``).
SAFETY_BOARD_ENV = "TOSCA_SIM_SAFETY_BOARD"


def safety_board_choice(choice: str | None = None) -> str:
    """``choice``, else ``$TOSCA_SIM_SAFETY_BOARD``, else ``"python"``; ValueError for anything else."""
    picked = choice or os.environ.get(SAFETY_BOARD_ENV) or "python"
    if picked not in SAFETY_BOARDS:
        raise ValueError(f"unknown safety board {picked!r} (expected one of: {', '.join(SAFETY_BOARDS)})")
    return picked


class SimCommandError(ValueError):
    """A simulator command was unknown or malformed; nothing was changed."""


def _switch(word: str, on: str, off: str, what: str) -> bool:
    if word == on:
        return True
    if word == off:
        return False
    raise SimCommandError(f"{what}: expected '{on}' or '{off}', got '{word}'")


def _number(word: str, what: str, low: float, high: float) -> float:
    try:
        value = float(word)
    except ValueError:
        raise SimCommandError(f"{what}: '{word}' is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise SimCommandError(f"{what}: {word} is outside {low:g}..{high:g}")
    return value


class SimRig:
    """The simulated rig. ``seed`` makes noise and garbage reproducible; ``clock`` (s) drives the physics."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        stable_names: bool = True,
        camera_frame_rate_hz: float | None = 30.0,
        safety_board: str | None = None,
    ) -> None:
        self.safety_board = safety_board_choice(safety_board)
        self.model = PhysicalModel(seed=seed, clock=clock)
        self.laser = LaserSim(self.model, seed=seed)
        self.tec = TecSim(self.model)
        self.actuator = ActuatorSim(self.model, clock=clock)
        self.safety: SafetyBoardSim | FirmwareSafetyBoard
        if self.safety_board == "firmware":
            self.safety = FirmwareSafetyBoard(self.model, seed=seed)
        else:
            self.safety = SafetyBoardSim(self.model, clock=clock)
        self._camera_source: SimCameraSource | None = None
        self._camera_frame_rate_hz = camera_frame_rate_hz
        self._stable_names = stable_names
        self._seed = seed
        self._link_dir: Path | None = None
        self.devices: dict[str, PtyDevice] = {}
        self._started = False

    @property
    def camera(self) -> SimCameraSource:
        """The simulated camera, whose ring follows the model's actuator position and which shows the safety
        board's aiming beam as a spot at the ring's centre (built on first use)."""
        if self._camera_source is None:
            safety = self.safety
            self._camera_source = SimCameraSource(
                self.model.ring_mm,
                seed=self._seed,
                frame_rate_hz=self._camera_frame_rate_hz,
                aiming=lambda: bool(safety.aiming_beam),
            )
        return self._camera_source

    async def start(self) -> None:
        """Create the ptys and start the simulators' background tasks."""
        if self._started:
            return
        link_dir = Path(tempfile.mkdtemp(prefix="tosca-sim-")) if self._stable_names else None
        self._link_dir = link_dir
        handlers: dict[str, LineHandler] = {
            "laser": self.laser,
            "tec": self.tec,
            "actuator": self.actuator,
            "safety": self.safety,
        }
        eols = {"laser": b"\r\n", "tec": b"\r\n", "actuator": b"\n", "safety": b"\n"}
        try:
            for index, name in enumerate(SERIAL_DEVICES):
                link = (link_dir / name) if link_dir is not None else None
                device_seed = None if self._seed is None else self._seed + index
                device: PtyDevice
                if name == "safety" and isinstance(self.safety, FirmwareSafetyBoard):
                    device = FirmwarePort(
                        name,
                        self.safety,
                        forward=self.safety.receive,
                        eol=eols[name],
                        link=link,
                        seed=device_seed,
                    )
                else:
                    device = PtyDevice(
                        name,
                        handlers[name],
                        eol=eols[name],
                        link=link,
                        seed=device_seed,
                        max_line_bytes=SAFETY_LINE_MAX_BYTES if name == "safety" else 256,
                    )
                self.devices[name] = device
                await device.start()
            self.actuator.attach(self.devices["actuator"])
            self.safety.attach(self.devices["safety"])
            await self.actuator.start()
            await self.safety.start()
        except BaseException:
            await self._teardown()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop everything and remove the ptys and their names. Idempotent."""
        await self._teardown()
        self._started = False

    async def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            await self.actuator.stop()
        with contextlib.suppress(Exception):
            await self.safety.stop()
        for device in self.devices.values():
            await device.stop()
        self.devices.clear()
        if self._camera_source is not None:
            self._camera_source.release()
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None

    async def __aenter__(self) -> SimRig:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def ports(self) -> dict[str, str]:
        """The port name of each serial device, and ``"sim"`` for the camera."""
        if not self._started:
            raise RuntimeError("the simulated rig is not started")
        ports = {name: self.devices[name].port for name in SERIAL_DEVICES}
        ports["camera"] = "sim"
        return ports

    # ------------------------------------------------------------------------------------ commands
    def command(self, line: str) -> str:
        """Execute one line of the simulator command language; returns ``"ok ..."``.

        Raises :class:`SimCommandError` (one line) for anything unknown or malformed.
        """
        if not self._started:
            raise SimCommandError("the simulated rig is not started")
        words = line.lower().split()
        if not words:
            raise SimCommandError("empty command")
        verb, args = words[0], words[1:]
        handler = self._verbs().get(verb)
        if handler is None:
            raise SimCommandError(f"unknown command '{verb}' (try: {', '.join(sorted(self._verbs()))})")
        return handler(args)

    def _verbs(self) -> dict[str, Callable[[list[str]], str]]:
        return {
            "pedal": self._pedal,
            "estop": self._estop,
            "smoothing": self._smoothing,
            "photodiode": self._photodiode,
            "laser": self._laser,
            "tec": self._tec,
            "actuator": self._actuator,
            "unplug": self._unplug,
            "replug": self._replug,
            "garbage": self._garbage,
            "stall": self._stall,
            "camera": self._camera,
        }

    @staticmethod
    def _arity(args: list[str], count: int, usage: str) -> None:
        if len(args) != count:
            raise SimCommandError(f"usage: {usage}")

    def _pedal(self, args: list[str]) -> str:
        self._arity(args, 1, "pedal down|up")
        pressed = _switch(args[0], "down", "up", "pedal")
        self.safety.set_pedal(pressed)
        return f"ok pedal {args[0]}"

    def _estop(self, args: list[str]) -> str:
        self._arity(args, 1, "estop on|off")
        pressed = _switch(args[0], "on", "off", "estop")
        self.safety.set_estop(pressed)
        return f"ok estop {args[0]}"

    def _smoothing(self, args: list[str]) -> str:
        self._arity(args, 1, "smoothing fail|ok")
        self.model.smoothing_fail = _switch(args[0], "fail", "ok", "smoothing")
        return f"ok smoothing {args[0]}"

    def _photodiode(self, args: list[str]) -> str:
        self._arity(args, 2, "photodiode gain <x> | photodiode offset <volts>")
        what, value = args
        if what == "gain":
            self.model.photodiode_gain = _number(value, "photodiode gain", 0.0, 10.0)
            return f"ok photodiode gain {self.model.photodiode_gain:g}"
        if what == "offset":
            self.model.photodiode_offset_v = _number(value, "photodiode offset", -5.0, 5.0)
            return f"ok photodiode offset {self.model.photodiode_offset_v:g} V"
        raise SimCommandError(f"photodiode: expected 'gain' or 'offset', got '{what}'")

    def _laser(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] != "dropout":
            raise SimCommandError("usage: laser dropout on|off")
        self.model.laser_dropout = _switch(args[1], "on", "off", "laser dropout")
        return f"ok laser dropout {args[1]}"

    def _tec(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] != "drift":
            raise SimCommandError("usage: tec drift <degC>")
        self.model.tec_drift_c = _number(args[1], "tec drift", -50.0, 50.0)
        return f"ok tec drift {self.model.tec_drift_c:g} degC"

    def _actuator(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] != "fault":
            raise SimCommandError("usage: actuator fault thermal|clear")
        if args[1] == "thermal":
            self.actuator.thermal_fault()
        elif args[1] == "clear":
            self.actuator.clear_fault()
        else:
            raise SimCommandError(f"actuator fault: expected 'thermal' or 'clear', got '{args[1]}'")
        return f"ok actuator fault {args[1]}"

    @staticmethod
    def _device_name(word: str, allowed: tuple[str, ...]) -> str:
        if word not in allowed:
            raise SimCommandError(f"unknown device '{word}' (expected one of: {', '.join(allowed)})")
        return word

    def _unplug(self, args: list[str]) -> str:
        self._arity(args, 1, "unplug <device>")
        name = self._device_name(args[0], ALL_DEVICES)
        if name == "camera":
            if self.camera.unplugged:
                raise SimCommandError("camera is already unplugged")
            self.camera.unplug()
        else:
            device = self.devices[name]
            if not device.plugged:
                raise SimCommandError(f"{name} is already unplugged")
            device.unplug()
        return f"ok unplug {name}"

    def _replug(self, args: list[str]) -> str:
        self._arity(args, 1, "replug <device>")
        name = self._device_name(args[0], ALL_DEVICES)
        if name == "camera":
            if not self.camera.unplugged:
                raise SimCommandError("camera is not unplugged")
            self.camera.replug()
            return "ok replug camera"
        device = self.devices[name]
        if device.plugged:
            raise SimCommandError(f"{name} is not unplugged")
        device.replug()
        return f"ok replug {name} {device.port}"

    def _garbage(self, args: list[str]) -> str:
        self._arity(args, 2, "garbage <device> <n>")
        name = self._device_name(args[0], SERIAL_DEVICES)
        if not args[1].isdigit() or not 1 <= int(args[1]) <= MAX_GARBAGE_BYTES:
            raise SimCommandError(
                f"garbage: n must be a whole number 1..{MAX_GARBAGE_BYTES}, got '{args[1]}'"
            )
        count = int(args[1])
        if not self.devices[name].plugged:
            raise SimCommandError(f"{name} is unplugged")
        self.devices[name].garbage(count)
        return f"ok garbage {name} {count}"

    def _stall(self, args: list[str]) -> str:
        self._arity(args, 2, "stall <device> on|off")
        name = self._device_name(args[0], SERIAL_DEVICES)
        self.devices[name].stalled = _switch(args[1], "on", "off", "stall")
        return f"ok stall {name} {args[1]}"

    def _camera(self, args: list[str]) -> str:
        if len(args) != 2 or args[0] != "freeze":
            raise SimCommandError("usage: camera freeze on|off")
        self.camera.frozen = _switch(args[1], "on", "off", "camera freeze")
        return f"ok camera freeze {args[1]}"
