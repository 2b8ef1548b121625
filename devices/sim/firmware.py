"""The safety board's real firmware (``firmware/safety``) on a simulated ATmega328P, in place of
:class:`devices.sim.safety.SafetyBoardSim`.

The C harness ``firmware/sim/harness.c`` runs the firmware under simavr. It exchanges pin states with this
module as text lines on its stdin and stdout (the format is at the top of ``harness.c`` and in
``firmware/safety/README.md``): footpedal and E-stop levels and the two analog inputs go in, LASER_ENABLE, the
motor PWM duty, the aiming beam and chip resets come out, each stamped with the simulated cycle.

Two ways to run it:

* :class:`FirmwareSafetyBoard`: real time, for the simulated rig. Simulated time follows the wall clock, the
  firmware's UART is a pty of the harness, and :class:`FirmwarePort` (a :class:`~devices.sim.pty.PtyDevice`)
  relays the bytes between that pty and the port a driver opens, so unplug, replug, stall and garbage work
  exactly as for every other simulated device. LASER_ENABLE reaches ``model.laser_enable`` (the laser
  simulator's interlock input), the PWM duty reaches ``model.motor_pwm``, and the photodiode and vibration
  voltages of the model are sent to the ADC inputs every few milliseconds.
* :class:`LockstepBoard`: lock-step, for firmware-level tests and the benchmark. Time moves only when told to,
  in exact cycles, and the UART is read and written through the harness's own lines.

:func:`build` compiles the firmware and the harness with ``make`` into a cache directory (``make`` rebuilds
only what changed) and raises :class:`ToolchainMissing` when avr-gcc, avr-libc or simavr are not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import shutil
import subprocess
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from devices.sim.pty import LineHandler, PtyDevice

_LOG = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE_DIR = ROOT / "firmware"
F_CPU_HZ = 16_000_000
CYCLES_PER_MS = F_CPU_HZ // 1000
#: Analog front ends: photodiode 0..5 V straight to ADC0, vibration envelope 1 V per g to ADC1.
ADC_FULL_SCALE_MV = 5000
ADC_STEPS = 1023
VIBRATION_MV_PER_G = 1000.0
#: How often the model's analog voltages are sent to the ADC inputs, s.
ANALOG_PERIOD_S = 0.005
TOOLS = ("make", "cc", "avr-gcc", "avr-objcopy", "avr-size", "avr-objdump")
SIMAVR_HEADER = Path("/usr/include/simavr/sim_avr.h")


class ToolchainMissing(RuntimeError):
    """The AVR toolchain or simavr is not installed (``.ci/run`` installs them)."""


class FirmwareBuildError(RuntimeError):
    """``make`` failed; the message holds its output."""


@dataclass(frozen=True)
class FirmwareBuild:
    """Paths of one build: the firmware, its test build that can hang, and the harness."""

    elf: Path
    hex: Path
    hang_elf: Path
    harness: Path


def missing_tools() -> list[str]:
    """What is missing to build and run the firmware under simavr (empty when everything is there)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not SIMAVR_HEADER.exists():
        missing.append("simavr headers (libsimavr-dev)")
    if not Path("/usr/lib/avr/include/avr/io.h").exists():
        missing.append("avr-libc")
    return missing


def default_build_dir() -> Path:
    """``$TOSCA_FIRMWARE_BUILD``, else ``firmware/build`` in the checkout (ignored by git)."""
    configured = os.environ.get("TOSCA_FIRMWARE_BUILD")
    return Path(configured) if configured else FIRMWARE_DIR / "build"


def build(build_dir: Path | None = None) -> FirmwareBuild:
    """Build (or bring up to date) the firmware, its hang test build and the harness.

    Concurrent callers (parallel test workers) are serialised on a lock file in ``build_dir``.

    Raises:
        ToolchainMissing: naming what is not installed.
        FirmwareBuildError: with make's output.
    """
    missing = missing_tools()
    if missing:
        raise ToolchainMissing(f"cannot build the safety firmware: missing {', '.join(missing)}")
    where = build_dir if build_dir is not None else default_build_dir()
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for directory, targets, sub in (("safety", ["all", "hang"], "safety"), ("sim", ["all"], "sim")):
            result = subprocess.run(
                ["make", "-s", "-C", str(FIRMWARE_DIR / directory), f"BUILD={where / sub}", *targets],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise FirmwareBuildError(
                    f"make in firmware/{directory} failed:\n{result.stdout}{result.stderr}"
                )
    return FirmwareBuild(
        elf=where / "safety" / "safety.elf",
        hex=where / "safety" / "safety.hex",
        hang_elf=where / "safety" / "safety-hang.elf",
        harness=where / "sim" / "harness",
    )


def adc_millivolts(volts: float) -> int:
    """The input voltage, mV, that the simulated 10-bit ADC (0..5 V) reads as the code nearest ``volts``.

    simavr truncates ``mV x 1023 / 5000``; rounding the code's voltage up to a whole millivolt lands inside
    the code's step.
    """
    code = round(min(ADC_FULL_SCALE_MV, max(0.0, volts * 1000.0)) / ADC_FULL_SCALE_MV * ADC_STEPS)
    return min(ADC_FULL_SCALE_MV, math.ceil(code * ADC_FULL_SCALE_MV / ADC_STEPS))


# ------------------------------------------------------------------------------------------------ lock-step


@dataclass
class PinChange:
    """One output change reported by the harness: ``kind`` L (LASER_ENABLE), M (motor duty), B (aiming
    beam)."""

    kind: str
    value: int
    cycle: int


@dataclass
class LockstepBoard:
    """The firmware under simavr in lock-step: time moves only in :meth:`run`, measured in cycles."""

    elf: Path
    harness: Path
    seed: int = 0
    cycle: int = 0
    enable: bool = False
    duty: int = 0
    beam: bool = False
    changes: list[PinChange] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)
    #: Every line the board sent, with the cycle at which its last byte left the UART.
    sent: list[tuple[int, str]] = field(default_factory=list)
    crashed: bool = False

    def __post_init__(self) -> None:
        self._proc = subprocess.Popen(
            [str(self.harness), "--lockstep", "--seed", str(self.seed), str(self.elf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._read_until("READY")

    def _stdin(self) -> IO[str]:
        assert self._proc.stdin is not None
        return self._proc.stdin

    def _read_until(self, *ends: str) -> list[str]:
        assert self._proc.stdout is not None
        while True:
            line = self._proc.stdout.readline()
            if not line:
                raise RuntimeError("the harness ended")
            words = line.split()
            if not words:
                continue
            kind = words[0]
            if kind == "ERR":
                raise ValueError(line.strip())
            cycle = int(words[-1])
            self.cycle = max(self.cycle, cycle)
            if kind in ("L", "M", "B"):
                value = int(words[1])
                self.changes.append(PinChange(kind, value, cycle))
                if kind == "L":
                    self.enable = bool(value)
                elif kind == "M":
                    self.duty = value
                else:
                    self.beam = bool(value)
            elif kind == "RESET":
                self.resets.append(cycle)
            elif kind == "TX":
                self.sent.append((cycle, bytes.fromhex(words[1]).decode("latin-1").rstrip("\n")))
            elif kind == "CRASH":
                self.crashed = True
                raise RuntimeError(f"the simulated core stopped at cycle {cycle}")
            if kind in ends:
                return words

    def _command(self, text: str, end: str = "OK") -> int:
        self._stdin().write(text + "\n")
        self._stdin().flush()
        return int(self._read_until(end)[-1])

    def run(self, cycles: int) -> None:
        """Run the firmware for ``cycles`` cycles (16 per microsecond)."""
        if cycles > 0:
            self._command(f"RUN {int(cycles)}", end="T")

    def run_ms(self, ms: float) -> None:
        self.run(round(ms * CYCLES_PER_MS))

    def pedal(self, pressed: bool) -> int:
        """Press or release the footpedal now; returns the cycle of the edge."""
        return self._command(f"PEDAL {int(pressed)}")

    def estop(self, pressed: bool) -> int:
        """Press or release the E-stop now; returns the cycle of the edge."""
        return self._command(f"ESTOP {int(pressed)}")

    def analog(self, channel: int, volts: float) -> None:
        """Set an analog input: channel 0 photodiode, 1 vibration (1 V per g)."""
        self._command(f"ADC {channel} {adc_millivolts(volts)}")

    def flood(self, on: bool) -> None:
        """Keep the serial input saturated with random bytes and over-long lines, or stop."""
        self._command(f"FLOOD {int(on)}")

    def write(self, data: bytes) -> None:
        """Queue bytes for the UART (delivered at line rate while time runs)."""
        for start in range(0, len(data), 512):
            self._command(f"RX {data[start : start + 512].hex()}")

    def deepest_stack_bytes(self) -> int:
        """Bytes of stack in use at the deepest point so far (RAMEND 0x8FF minus the lowest stack pointer)."""
        self._stdin().write("STACK\n")
        self._stdin().flush()
        return 0x8FF - int(self._read_until("STACK")[1])

    def replies_since(self, index: int) -> list[str]:
        """Lines sent since ``sent[index]`` that are neither push events nor samples."""
        return [text for _, text in self.sent[index:] if not text.startswith(("EVT:", "S:"))]

    def query(self, command: str, *, replies: int = 1, limit_ms: float = 100.0) -> list[str]:
        """Send ``command`` and run until ``replies`` reply lines came back (at most ``limit_ms``)."""
        mark = len(self.sent)
        self.write(command.encode("latin-1") + b"\n")
        deadline = self.cycle + round(limit_ms * CYCLES_PER_MS)
        while len(self.replies_since(mark)) < replies and self.cycle < deadline:
            self.run(4000)
        got = self.replies_since(mark)
        if len(got) < replies:
            raise TimeoutError(f"no reply to {command!r} within {limit_ms} ms (got {got})")
        return got[:replies]

    def close(self) -> None:
        """End the harness."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self._stdin().write("QUIT\n")
            self._stdin().flush()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, BrokenPipeError):
                    stream.close()

    def __enter__(self) -> LockstepBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ real time


class _Emitter(Protocol):
    def write_raw(self, data: bytes) -> None: ...


class FirmwarePort(PtyDevice):
    """The pty a driver opens for the firmware-backed board: received bytes go to the firmware untouched
    (``forward``), and the board's bytes come out through :meth:`write_raw`.

    Lines are still framed for :attr:`history` and handed to ``handler`` as an observer (its reply lines, if
    any, are sent as well; :class:`FirmwareSafetyBoard` returns none).
    """

    def __init__(
        self,
        name: str,
        handler: LineHandler,
        *,
        forward: Callable[[bytes], None],
        eol: bytes,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(name, handler, eol=eol, link=link, seed=seed)
        self._forward = forward

    def _feed(self, data: bytes) -> None:
        self._forward(data)
        super()._feed(data)


class FirmwareSafetyBoard:
    """The safety board firmware under simavr in real time, wired to the shared physical model.

    Same surface as :class:`devices.sim.safety.SafetyBoardSim` for the rig and the tests: :meth:`attach`,
    :meth:`start`, :meth:`stop`, :meth:`set_pedal`, :meth:`set_estop`, :attr:`laser_enable`, and the levels
    last driven (:attr:`pedal`, :attr:`estop`). :attr:`wdt_expired` and :attr:`sent` are read from what the
    firmware sends. :meth:`receive` takes the bytes a driver wrote (``FirmwarePort``'s ``forward``).
    """

    def __init__(self, model: Any, *, build_dir: Path | None = None, seed: int | None = None) -> None:
        self.model = model
        self._build_dir = build_dir
        self._seed = seed
        self._device: _Emitter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._analog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._out_pending = bytearray()
        self._writer_registered = False
        self._line = bytearray()
        self._ready = asyncio.Event()
        self._analog_sent: list[int | None] = [None, None]
        self.pedal = False
        self.estop = False
        self.aiming_beam = False
        self.wdt_expired = False
        self.resets = 0
        self._enable = False
        #: The most recent push and sample lines the firmware sent, newest last.
        self.sent: deque[str] = deque(maxlen=2000)
        self.model.laser_enable = False

    # ---------------------------------------------------------------- lifecycle
    def attach(self, device: _Emitter) -> None:
        """Send the firmware's bytes out through ``device.write_raw`` (a :class:`FirmwarePort`)."""
        self._device = device

    def handle_line(self, line: str) -> list[str]:
        """Observer hook of :class:`FirmwarePort`: the firmware itself answers, so nothing is added here."""
        del line
        return []

    async def start(self) -> None:
        """Build if needed, start the harness, open the firmware's UART pty and wait until it runs."""
        if self._proc is not None:
            return
        self._loop = asyncio.get_running_loop()
        paths = await asyncio.to_thread(build, self._build_dir)
        seed = self._seed if self._seed is not None else 0
        self._ready = asyncio.Event()
        self._proc = await asyncio.create_subprocess_exec(
            str(paths.harness),
            "--seed",
            str(seed),
            str(paths.elf),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C or SIGTERM for the rig's process group must not cut the board's power
            # while the controller is still switching the laser off through it. It ends when its stdin closes.
            start_new_session=True,
        )
        try:
            assert self._proc.stdout is not None
            first = (await asyncio.wait_for(self._proc.stdout.readline(), 10.0)).decode().split()
            if len(first) != 2 or first[0] != "PTY":
                raise RuntimeError(f"safety firmware harness: unexpected first line {first!r}")
            fd = os.open(first[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd)
            self._fd = fd
            self._loop.add_reader(fd, self._on_uart)
            self._reader = asyncio.create_task(self._read_pins(), name="safety-firmware-pins")
            self._send_analog()
            self._send_pins()
            await asyncio.wait_for(self._ready.wait(), 10.0)
            self._analog = asyncio.create_task(self._analog_loop(), name="safety-firmware-analog")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the harness (the board loses power: LASER_ENABLE low) and close its pty."""
        for task in (self._analog, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._analog = self._reader = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            if self._writer_registered:
                self._loop.remove_writer(self._fd)
            self._writer_registered = False
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.write(b"QUIT\n")
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._set_enable(False)

    # ---------------------------------------------------------------- rig inputs
    def set_pedal(self, pressed: bool) -> None:
        """Press (True) or release (False) the footpedal: the pin changes at once; the firmware reacts."""
        if pressed == self.pedal:
            return
        self.pedal = pressed
        self._pin(f"PEDAL {int(pressed)}")

    def set_estop(self, pressed: bool) -> None:
        """Press (True) or release (False) the E-stop."""
        if pressed == self.estop:
            return
        self.estop = pressed
        self._pin(f"ESTOP {int(pressed)}")

    @property
    def laser_enable(self) -> bool:
        """The LASER_ENABLE line as the firmware last drove it."""
        return self._enable

    # ---------------------------------------------------------------- harness channel
    def _pin(self, text: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return
        proc.stdin.write(text.encode("ascii") + b"\n")

    def _send_pins(self) -> None:
        self._pin(f"PEDAL {int(self.pedal)}")
        self._pin(f"ESTOP {int(self.estop)}")

    def _send_analog(self) -> None:
        values = (self.model.photodiode_v(), self.model.vibration_g() * VIBRATION_MV_PER_G / 1000.0)
        for channel, volts in enumerate(values):
            mv = adc_millivolts(volts)
            if mv != self._analog_sent[channel]:
                self._analog_sent[channel] = mv
                self._pin(f"ADC {channel} {mv}")

    async def _analog_loop(self) -> None:
        while True:
            await asyncio.sleep(ANALOG_PERIOD_S)
            self._send_analog()

    def _set_enable(self, on: bool) -> None:
        self._enable = on
        self.model.laser_enable = on

    async def _read_pins(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        while True:
            raw = await stdout.readline()
            if not raw:
                if self._proc is not None:
                    _LOG.error("safety firmware harness ended")
                self._set_enable(False)
                return
            words = raw.decode("ascii", errors="replace").split()
            if len(words) < 2:
                continue
            kind = words[0]
            if kind == "L":
                self._set_enable(words[1] == "1")
            elif kind == "M":
                self.model.motor_pwm = int(words[1])
            elif kind == "B":
                self.aiming_beam = words[1] == "1"
            elif kind == "RESET":
                self.resets += 1
                _LOG.warning("safety firmware: the chip was reset by its watchdog")
            elif kind == "READY":
                self._ready.set()
            elif kind == "CRASH":
                _LOG.error("safety firmware: the simulated core stopped")
                self._set_enable(False)
            elif kind == "ERR":
                _LOG.error("safety firmware harness: %s", " ".join(words))

    def receive(self, data: bytes) -> None:
        """Bytes from the driver, for the firmware's UART. The analog inputs are brought up to date first, so
        a reading asked for right after a change in the model sees it, as on the real board."""
        if self._fd is None:
            return
        self._send_analog()
        self._out_pending.extend(data)
        self._flush()

    def _flush(self) -> None:
        fd = self._fd
        if fd is None:
            return
        while self._out_pending:
            try:
                written = os.write(fd, self._out_pending)
            except BlockingIOError:
                break
            except OSError:
                # The harness is gone (the board has no power): nothing reaches the firmware.
                self._out_pending.clear()
                break
            del self._out_pending[:written]
        want = bool(self._out_pending)
        if want != self._writer_registered and self._loop is not None:
            if want:
                self._loop.add_writer(fd, self._flush)
            else:
                self._loop.remove_writer(fd)
            self._writer_registered = want

    def _on_uart(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO: the harness closed its side (it ended); stop watching a descriptor that will not recover.
            if self._loop is not None:
                self._loop.remove_reader(fd)
            return
        if not data:
            return
        if self._device is not None:
            self._device.write_raw(data)
        self._line.extend(data)
        while b"\n" in self._line:
            raw, _, rest = bytes(self._line).partition(b"\n")
            self._line[:] = rest
            self._observe(raw.decode("latin-1"))
        if len(self._line) > 4096:
            self._line.clear()

    def _observe(self, line: str) -> None:
        if line.startswith(("EVT:", "S:")):
            self.sent.append(line)
        if line == "EVT:WDT:1":
            self.wdt_expired = True
        elif line == "OK:WDT_CLEAR":
            self.wdt_expired = False
