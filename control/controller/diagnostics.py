"""The controller's diagnostics for an engineer: each device's identity, link, counters and live readings, and
the controller's own loop figures (how late its timer wakes, its CPU use, how fast it reacted to its last
faults). :meth:`ControllerDiagnostics.reply` answers the ``devices`` command on either socket
(:class:`control.messages.Devices`).

Everything here is cheap and read-only on the controller's loop: the device figures are the ones the drivers
and the supervisor already hold (nothing is asked of a device to answer), the lag is measured by one timer
every :data:`LAG_PERIOD_S`, and the percentiles are sorted from at most :data:`LAG_SAMPLES` numbers when
asked.

Loop lag: a timer is set for :data:`LAG_PERIOD_S` ahead; how much later than due the loop runs it is the lag
(a callback that holds the loop delays the timer, and every safety reaction, by that much).

Fault reaction: the supervisor latches a fault synchronously in the callback of the input that caused it (a
safety board sample or push event, a laser, TEC or actuator reading), after putting "output off" on the
laser's line. The reaction time is from that input's arrival (its receive time, monotonic) to the state change
to FAULT: the newest input that arrived at most :data:`INPUT_CAUSE_S` before the fault is taken as its cause.
A fault the periodic check latched (a reading that did not come in time) has no such input, and no reaction
time. Nothing is scheduled per input: the board listener only notes the arrival time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime

from control import messages as msg
from control.controller.monitors import Readouts
from control.supervisor import SafetySupervisor, SystemState
from devices.rig import DeviceHealth, Rig
from devices.safety import SafetyEvent, SafetySample
from devices.transport import LineTransport

#: How often the loop's lag is sampled, s.
LAG_PERIOD_S = 0.05
#: How many lag samples are kept (60 s at LAG_PERIOD_S).
LAG_SAMPLES = 1200
#: CPU use is measured over this many seconds (one sample a second).
CPU_WINDOW_S = 5
#: Faults whose reaction is remembered.
FAULTS_KEPT = 5
#: An input that arrived at most this long before the fault is taken as its cause, s (the board samples
#: every 10 ms and the monitors poll every 30 ms, so an older input is not the one being handled).
INPUT_CAUSE_S = 0.005


def _percentile(ordered: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of an ordered, non-empty list (nearest rank)."""
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class LoopWatch:
    """Samples the loop's lag and the process's CPU time in a task of its own (:meth:`run`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._cpu: deque[tuple[float, float]] = deque(maxlen=CPU_WINDOW_S + 1)
        self._started = clock()

    def record_lag(self, lag_s: float) -> None:
        """One lag sample, s (negative values count as 0)."""
        self._lags.append(max(0.0, lag_s))

    def record_cpu(self) -> None:
        """One CPU sample: the wall clock and the process's CPU time now."""
        self._cpu.append((self._clock(), self._cpu_clock()))

    async def run(self) -> None:
        """Sample until cancelled: the lag every :data:`LAG_PERIOD_S`, the CPU time every second."""
        loop = asyncio.get_running_loop()
        self.record_cpu()
        next_cpu = loop.time() + 1.0
        while True:
            due = loop.time() + LAG_PERIOD_S
            await asyncio.sleep(LAG_PERIOD_S)
            now = loop.time()
            self.record_lag(now - due)
            if now >= next_cpu:
                self.record_cpu()
                next_cpu = now + 1.0

    def figures(self) -> msg.LoopFigures:
        """The lag percentiles (ms) over the samples kept, the CPU use (percent of one core) over the last
        seconds, and the uptime."""
        ordered = sorted(self._lags)
        cpu = None
        if len(self._cpu) >= 2:
            (wall0, cpu0), (wall1, cpu1) = self._cpu[0], self._cpu[-1]
            if wall1 > wall0:
                cpu = max(0.0, (cpu1 - cpu0) / (wall1 - wall0) * 100.0)
        return msg.LoopFigures(
            lag_p50_ms=_percentile(ordered, 0.50) * 1000 if ordered else None,
            lag_p99_ms=_percentile(ordered, 0.99) * 1000 if ordered else None,
            lag_max_ms=ordered[-1] * 1000 if ordered else None,
            samples=len(ordered),
            window_s=len(ordered) * LAG_PERIOD_S,
            cpu_percent=cpu,
            uptime_s=max(0.0, self._clock() - self._started),
        )


class FaultReactions:
    """Remembers the last faults and how fast each was reacted to (see the module's docstring).

    :meth:`on_board` is a safety board listener that must be added before the supervisor's, and
    :meth:`on_state` a supervisor state listener.
    """

    def __init__(self, supervisor: SafetySupervisor, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._supervisor = supervisor
        self._wall_clock = wall_clock
        self._board_input_at: float | None = None
        self._faults: deque[msg.FaultReaction] = deque(maxlen=FAULTS_KEPT)

    def on_board(self, item: SafetyEvent | SafetySample) -> None:
        """A board input is about to be handled: note when it arrived."""
        self._board_input_at = item.received

    def on_state(self, old: SystemState, new: SystemState, reason: str) -> None:
        """A supervisor transition: a fault is remembered with its reaction time."""
        if new is not SystemState.FAULT:
            return
        sup = self._supervisor
        now = sup.clock()
        r = sup.readings
        arrivals = [
            at for at in (self._board_input_at, r.laser_at, r.tec_at, r.actuator_at) if at is not None
        ]
        latest = max(arrivals, default=None)
        cause = latest if latest is not None and 0 <= now - latest <= INPUT_CAUSE_S else None
        fault = sup.fault
        self._faults.appendleft(
            msg.FaultReaction(
                at=datetime.fromtimestamp(self._wall_clock()).isoformat(timespec="seconds"),
                what=fault.what if fault is not None else reason,
                reaction_ms=max(0.0, (now - cause) * 1000) if cause is not None else None,
            )
        )

    @property
    def faults(self) -> list[msg.FaultReaction]:
        """The faults remembered, newest first."""
        return list(self._faults)


def _on_off(value: bool | None, on: str = "on", off: str = "off") -> str:
    return "unknown" if value is None else (on if value else off)


def _number(value: float | None, unit: str, digits: int = 2) -> str:
    return "unknown" if value is None else f"{value:.{digits}f} {unit}"


def device_readings(
    name: str, supervisor: SafetySupervisor, readouts: Readouts, health: DeviceHealth
) -> list[msg.ReadingView]:
    """The live readings of one device, as the supervisor and the monitors hold them now."""
    r = supervisor.readings
    pairs: list[tuple[str, str]]
    if name == "laser":
        pairs = [
            ("output", _on_off(r.laser_output_on)),
            ("diode current", _number(readouts.current_ma, "mA", 1)),
            ("commanded", _number(supervisor.commanded_w, "W")),
            ("measured", _number(supervisor.measured_power_w(), "W")),
        ]
    elif name == "tec":
        pairs = [
            ("output", _on_off(r.tec_output_on)),
            ("temperature", _number(r.tec_temperature_c, "degC")),
            (
                "setpoint",
                _number(
                    r.tec_setpoint_c if r.tec_setpoint_c is not None else readouts.tec_setpoint_c, "degC"
                ),
            ),
        ]
    elif name == "actuator":
        pairs = [
            ("position", _number(readouts.position_um, "um", 1)),
            ("fault", r.actuator_fault or "none"),
        ]
    elif name == "safety":
        pairs = [
            ("footpedal", _on_off(r.pedal, "pressed", "released")),
            ("E-stop", _on_off(r.estop, "pressed", "released")),
            ("LASER_ENABLE", _on_off(r.laser_enable, "high", "low")),
            ("photodiode", _number(r.photodiode_v, "V", 3)),
            ("vibration", _number(r.vibration_g, "g")),
            ("watchdog", "expired" if r.watchdog_expired else "running"),
        ]
    else:
        pairs = [("state", health.state)]
        if health.detail:
            pairs.append(("detail", health.detail))
    return [msg.ReadingView(name=key, value=value) for key, value in pairs]


def _identity_parts(
    rig: Rig, name: str, health: Mapping[str, DeviceHealth]
) -> tuple[str | None, str | None, str | None]:
    """Model, serial number and firmware of a device, from its identity reply where it gives them."""
    if name in ("laser", "tec"):
        driver = rig.laser if name == "laser" else rig.tec
        identity = getattr(driver, "identity", None) if driver is not None else None
        if identity is not None:
            return (
                f"{identity.maker} {identity.model}",
                identity.serial,
                f"{identity.version} build {identity.build}",
            )
        return None, None, None
    if name == "safety":
        text = health.get("safety")
        version = text.identity.rsplit(" ", 1)[-1] if text is not None and text.identity else None
        return "TOSCA safety board", None, f"protocol {version}" if version else None
    return None, None, None


def _link_figures(transport: LineTransport, now: float) -> dict[str, str | int | float | None]:
    """A serial link's port, counters and the age of its last line (as :class:`DeviceDiagnostics` names
    them)."""
    last = transport.last_rx_monotonic
    return {
        "port": transport.port,
        # The transport counts every line it received (replies, pushed events and samples).
        "replies": int(getattr(transport, "_rx_lines", 0)),
        "bad_replies": transport.bad_reply_count,
        "discarded": transport.discarded_lines,
        "last_reply_age_s": max(0.0, now - last) if last is not None else None,
    }


class ControllerDiagnostics:
    """The ``devices`` answer of one controller: its rig's devices, its loop and its last faults."""

    def __init__(self, supervisor: SafetySupervisor, readouts: Readouts) -> None:
        self.supervisor = supervisor
        self.readouts = readouts
        self.loop = LoopWatch()
        self.faults = FaultReactions(supervisor)
        supervisor.on_state_change(self.faults.on_state)

    def reply(self, rig: Rig | None, *, sim: bool) -> msg.DevicesReply:
        """Every device's diagnostics now, the loop figures and the last faults."""
        now = time.monotonic()
        health: Mapping[str, DeviceHealth] = rig.health() if rig is not None else {}
        devices = []
        for name, device in health.items():
            model, serial, firmware = (
                _identity_parts(rig, name, health) if rig is not None else (None, None, None)
            )
            if name == "camera" and device.identity:
                model = device.identity
            transport = rig.transports.get(name) if rig is not None else None
            fields: dict[str, object] = {
                "name": name,
                "state": device.state,
                "model": model,
                "serial": serial,
                "firmware": firmware,
                "identity": device.identity,
                "last_error": device.last_error,
                "readings": device_readings(name, self.supervisor, self.readouts, device),
            }
            if transport is not None:
                fields.update(_link_figures(transport, now))
            devices.append(msg.DeviceDiagnostics.model_validate(fields))
        return msg.DevicesReply(
            sim=sim,
            state=self.supervisor.state,
            devices=devices,
            loop=self.loop.figures(),
            faults=self.faults.faults,
        )
