"""The one physical model every simulator of the rig shares.

The laser driver, TEC, actuator, safety board and camera simulators read and write this object, so a change
made through one device is seen by the others exactly as on the real rig: the laser current becomes light,
the light reaches the photodiode on the safety board, the safety board's LASER_ENABLE line reaches the laser
driver's interlock input, the actuator position becomes the treatment ring size the camera sees, the
smoothing motor's PWM becomes vibration, and the TEC pulls the diode temperature towards its setpoint.

Units: currents in milliamps (laser) or amps (TEC), light in watts, voltages in volts, positions in
micrometres, ring sizes in millimetres, accelerations in g, temperatures in degrees Celsius, time in seconds
of ``clock``.

Defaults (docs/devices.md, "The simulated rig"):

- light ``P = 1.0 W/A x (I - 0.5 A)`` above the 0.5 A threshold, 0 when the output is off or in dropout;
- photodiode ``V = P / 2.0 x gain + offset`` plus 5 mV of noise, clamped to 0..5 V and quantised to a 10-bit
  ADC;
- ring ``2.0 + position_um / 1000`` mm;
- vibration ``0.5 + 1.0 x PWM / 153`` g with the motor on, about 0.05 g with the motor off or the smoothing
  device failed;
- TEC temperature first-order towards the setpoint (5 s time constant) while the TEC output is on, towards the
  25 degC ambient while it is off, plus any injected drift.

The model is plain Python with no locks: the simulators all run on one asyncio loop; the camera thread only
reads ``ring_mm()``, a single float computation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

#: Laser threshold current, A, and slope efficiency, W/A.
LASER_THRESHOLD_A = 0.5
LASER_SLOPE_W_PER_A = 1.0
#: Photodiode calibration of the simulated rig: optical power (W) = 2.0 x photodiode voltage (V).
PHOTODIODE_W_PER_V = 2.0
PHOTODIODE_NOISE_V = 0.005
ADC_FULL_SCALE_V = 5.0
ADC_STEPS = 1023
#: Ring size at position 0, mm, and ring growth per micrometre of actuator travel, mm/um.
RING_AT_ZERO_MM = 2.0
RING_MM_PER_UM = 0.001
MOTOR_PWM_MAX = 153
VIBRATION_OFF_G = 0.05
VIBRATION_NOISE_G = 0.01
TEC_TIME_CONSTANT_S = 5.0
AMBIENT_C = 25.0
#: Largest current, A, the simulated TEC supply delivers.
TEC_MAX_CURRENT_A = 4.0


class PhysicalModel:
    """Shared state of the simulated rig and the physics linking the devices.

    ``seed`` makes the noise reproducible; ``clock`` (seconds, monotonic) drives the TEC's thermal response
    and lets tests step time by hand.
    """

    def __init__(self, *, seed: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._rng = random.Random(seed)
        # Laser driver side.
        self.laser_output_on: bool = False
        self.laser_current_ma: float = 0.0
        self.laser_dropout: bool = False
        # Photodiode on the safety board.
        self.photodiode_gain: float = 1.0
        self.photodiode_offset_v: float = 0.0
        # LASER_ENABLE: low (interlock open) until the safety board raises it.
        self._laser_enable = False
        self._enable_callbacks: list[Callable[[bool], None]] = []
        # Actuator and smoothing device.
        self.actuator_position_um: float = 0.0
        self.motor_pwm: int = 0
        self.smoothing_fail: bool = False
        # TEC: the temperature relaxes from (_tec_anchor_c at _tec_anchor_t) towards its current target.
        self._tec_setpoint_c = AMBIENT_C
        self._tec_output_on = False
        self.tec_drift_c: float = 0.0
        self._tec_anchor_c = AMBIENT_C
        self._tec_anchor_t = clock()

    # ----------------------------------------------------------------------------------------------- laser
    def light_w(self) -> float:
        """Optical output power, W: slope x (current - threshold) above threshold; 0 when off or in
        dropout."""
        if not self.laser_output_on or self.laser_dropout:
            return 0.0
        current_a = self.laser_current_ma / 1000.0
        return max(0.0, LASER_SLOPE_W_PER_A * (current_a - LASER_THRESHOLD_A))

    def photodiode_v(self) -> float:
        """Photodiode voltage, V, as the safety board's 10-bit ADC reads it (0..5 V)."""
        volts = self.light_w() / PHOTODIODE_W_PER_V * self.photodiode_gain + self.photodiode_offset_v
        volts += self._rng.uniform(-PHOTODIODE_NOISE_V, PHOTODIODE_NOISE_V)
        volts = min(ADC_FULL_SCALE_V, max(0.0, volts))
        return round(volts / ADC_FULL_SCALE_V * ADC_STEPS) * ADC_FULL_SCALE_V / ADC_STEPS

    @property
    def laser_enable(self) -> bool:
        """The LASER_ENABLE wire: True closes the laser driver's interlock input."""
        return self._laser_enable

    @laser_enable.setter
    def laser_enable(self, value: bool) -> None:
        value = bool(value)
        if value == self._laser_enable:
            return
        self._laser_enable = value
        for callback in list(self._enable_callbacks):
            callback(value)

    def on_laser_enable_change(self, cb: Callable[[bool], None]) -> None:
        """Call ``cb(new_value)`` every time LASER_ENABLE changes level."""
        self._enable_callbacks.append(cb)

    # -------------------------------------------------------------------------------------------- actuator
    def ring_mm(self) -> float:
        """Treatment ring diameter, mm, for the actuator's present position."""
        return RING_AT_ZERO_MM + self.actuator_position_um * RING_MM_PER_UM

    # ------------------------------------------------------------------------------------------- smoothing
    def vibration_g(self) -> float:
        """Accelerometer reading of the smoothing device, g (never negative)."""
        if self.motor_pwm > 0 and not self.smoothing_fail:
            base = 0.5 + 1.0 * min(self.motor_pwm, MOTOR_PWM_MAX) / MOTOR_PWM_MAX
        else:
            base = VIBRATION_OFF_G
        return max(0.0, base + self._rng.uniform(-VIBRATION_NOISE_G, VIBRATION_NOISE_G))

    # ------------------------------------------------------------------------------------------------- TEC
    def _tec_target_c(self) -> float:
        return self._tec_setpoint_c if self._tec_output_on else AMBIENT_C

    def _tec_true_c(self, now: float) -> float:
        elapsed = max(0.0, now - self._tec_anchor_t)
        target = self._tec_target_c()
        return target + (self._tec_anchor_c - target) * math.exp(-elapsed / TEC_TIME_CONSTANT_S)

    def _tec_reanchor(self) -> None:
        now = self.clock()
        self._tec_anchor_c = self._tec_true_c(now)
        self._tec_anchor_t = now

    @property
    def tec_setpoint_c(self) -> float:
        """TEC temperature setpoint, degC."""
        return self._tec_setpoint_c

    @tec_setpoint_c.setter
    def tec_setpoint_c(self, value: float) -> None:
        self._tec_reanchor()
        self._tec_setpoint_c = float(value)

    @property
    def tec_output_on(self) -> bool:
        """Whether the TEC is driving the diode temperature towards its setpoint."""
        return self._tec_output_on

    @tec_output_on.setter
    def tec_output_on(self, value: bool) -> None:
        self._tec_reanchor()
        self._tec_output_on = bool(value)

    def tec_temperature_c(self) -> float:
        """Measured diode temperature, degC: the first-order response plus the injected drift."""
        return self._tec_true_c(self.clock()) + self.tec_drift_c

    def tec_current_a(self) -> float:
        """TEC drive current, A: a holding current for the offset from ambient plus a term for the error.

        Positive means cooling. 0 while the TEC output is off; limited to the supply's +-4 A.
        """
        if not self._tec_output_on:
            return 0.0
        error_c = self.tec_temperature_c() - self._tec_setpoint_c
        amps = 0.05 * (AMBIENT_C - self._tec_setpoint_c) + 0.4 + 1.5 * error_c
        return max(-TEC_MAX_CURRENT_A, min(TEC_MAX_CURRENT_A, amps))
