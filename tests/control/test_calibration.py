"""Calibration maths (least squares against numpy, piecewise interpolation, every refusal) and the storage
glue (loading the active set, recording with retirement of the previous one, the simulated rig's factory
set)."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.calibration import (
    ACTUATOR,
    CAMERA,
    LASER,
    PHOTODIODE,
    REQUIRED_KINDS,
    SIM_FACTORY_CALIBRATIONS,
    CalibrationDataError,
    CalibrationError,
    LinearFit,
    MissingCalibrations,
    OutOfCalibratedRange,
    PiecewiseLinear,
    camera_ring_mm,
    install_sim_calibrations_if_missing,
    load_active_calibrations,
    load_camera_scale,
    parse_actuator_calibration,
    parse_laser_calibration,
    parse_photodiode_calibration,
    record_calibration,
)
from devices.sim import camera as sim_camera
from devices.sim.model import PhysicalModel
from storage import TechUser
from storage.repositories import CalibrationsRepository, UsersRepository

# ------------------------------------------------------------------------------------------- LinearFit


def _numpy_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    a = np.vstack([np.asarray(xs), np.ones(len(xs))]).T
    (slope, intercept), *_ = np.linalg.lstsq(a, np.asarray(ys), rcond=None)
    predicted = slope * np.asarray(xs) + intercept
    ss_res = float(np.sum((np.asarray(ys) - predicted) ** 2))
    ss_tot = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return float(slope), float(intercept), 1.0 - ss_res / ss_tot


def _noisy(
    seed: int, n: int, slope: float, intercept: float, noise: float
) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    xs = sorted(rng.uniform(0.0, 10000.0) for _ in range(n))
    return xs, [slope * x + intercept + rng.gauss(0.0, noise) for x in xs]


POINT_SETS = {
    "two points": ([0.0, 1.0], [1.0, 3.0]),
    "seed photodiode": ([0.5, 2.5, 5.0], [1.0, 5.0, 10.0]),
    "seed actuator": ([0.0, 1000.0, 2000.0], [2.0, 3.0, 4.0]),
    "decreasing": ([1.0, 2.0, 3.0, 4.0], [10.0, 7.9, 6.1, 3.8]),
    "noisy laser": _noisy(1, 25, 0.001, -0.5, 0.05),
    "very noisy": _noisy(2, 12, 0.0004, 3.0, 1.5),
    "large offset x": ([1e6 + 1, 1e6 + 2, 1e6 + 3, 1e6 + 5], [2.0, 4.1, 5.9, 10.2]),
}


@pytest.mark.parametrize("name", sorted(POINT_SETS))
def test_linear_fit_matches_numpy_lstsq(name: str) -> None:
    xs, ys = POINT_SETS[name]
    fit = LinearFit.from_points(xs, ys)
    slope, intercept, r2 = _numpy_fit(xs, ys)
    assert fit.n == len(xs)
    assert fit.slope == pytest.approx(slope, rel=1e-9, abs=1e-12)
    assert fit.intercept == pytest.approx(intercept, rel=1e-7, abs=1e-9)
    assert fit.r_squared == pytest.approx(r2, rel=1e-9, abs=1e-12)


def test_linear_fit_of_exact_points_is_exact_and_invertible() -> None:
    fit = LinearFit.from_points([500.0, 1000.0, 5000.0], [0.0, 0.5, 4.5])
    assert fit.slope == pytest.approx(0.001)
    assert fit.intercept == pytest.approx(-0.5)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit(3000.0) == pytest.approx(2.5)
    assert fit.inverse(2.5) == pytest.approx(3000.0)


def test_noisy_fit_has_r_squared_below_one() -> None:
    xs, ys = POINT_SETS["very noisy"]
    assert LinearFit.from_points(xs, ys).r_squared < 0.999


def test_constant_y_gives_flat_exact_fit() -> None:
    fit = LinearFit.from_points([1.0, 2.0, 3.0], [0.1, 0.1, 0.1])
    assert (fit.slope, fit.intercept, fit.r_squared) == (0.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="cannot invert a linear fit with zero slope"):
        fit.inverse(0.1)


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [
        ([1.0], [2.0], "a linear fit needs at least 2 points; got 1"),
        ([], [], "a linear fit needs at least 2 points; got 0"),
        ([1.0, 2.0], [1.0], r"xs and ys differ in length \(2 vs 1\)"),
        ([1.0, math.nan], [1.0, 2.0], r"point 1: x is not finite \(nan\)"),
        ([1.0, 2.0], [math.inf, 2.0], r"point 0: y is not finite \(inf\)"),
        ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0], r"all x values are equal \(3.0\); the slope is undefined"),
    ],
)
def test_linear_fit_refusals(xs: list[float], ys: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinearFit.from_points(xs, ys)


def test_linear_fit_refuses_non_finite_inputs_to_call_and_inverse() -> None:
    fit = LinearFit.from_points([0.0, 1.0], [0.0, 2.0])
    with pytest.raises(ValueError, match=r"x is not finite \(nan\)"):
        fit(math.nan)
    with pytest.raises(ValueError, match=r"y is not finite \(inf\)"):
        fit.inverse(math.inf)


# ------------------------------------------------------------------------------------- PiecewiseLinear


def test_piecewise_interpolates_and_inverts_between_points() -> None:
    pw = PiecewiseLinear([2000.0, 0.0, 1000.0], [4.0, 2.0, 3.5])  # given unsorted
    assert pw.xs == (0.0, 1000.0, 2000.0)
    assert pw.domain == (0.0, 2000.0)
    assert pw.range == (2.0, 4.0)
    assert pw(0.0) == 2.0
    assert pw(500.0) == pytest.approx(2.75)
    assert pw(1000.0) == 3.5
    assert pw(1500.0) == pytest.approx(3.75)
    assert pw(2000.0) == 4.0
    assert pw.inverse(2.75) == pytest.approx(500.0)
    assert pw.inverse(3.75) == pytest.approx(1500.0)
    assert pw.inverse(4.0) == 2000.0


def test_piecewise_decreasing_inverse() -> None:
    pw = PiecewiseLinear([0.0, 1.0, 2.0], [10.0, 6.0, 4.0])
    assert pw.range == (4.0, 10.0)
    assert pw.inverse(8.0) == pytest.approx(0.5)
    assert pw.inverse(5.0) == pytest.approx(1.5)


def test_piecewise_refuses_outside_the_span() -> None:
    pw = PiecewiseLinear([0.0, 1000.0], [2.0, 3.0])
    with pytest.raises(OutOfCalibratedRange, match=r"x = 1000.5 is outside the calibrated span 0.0..1000.0"):
        pw(1000.5)
    with pytest.raises(OutOfCalibratedRange, match=r"y = 1.9 is outside the calibrated span 2.0..3.0"):
        pw.inverse(1.9)
    assert issubclass(OutOfCalibratedRange, ValueError)
    assert pw.extrapolate(2000.0) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("xs", "ys", "message"),
    [
        ([0.0], [1.0], "needs at least 2 points; got 1"),
        ([0.0, 1.0, 1.0], [1.0, 2.0, 3.0], r"x must be strictly increasing; x = 1.0 appears more than once"),
        (
            [0.0, 1.0, 2.0],
            [1.0, 3.0, 2.0],
            r"y must be strictly monotonic; y = 3.0 at x = 1.0 is followed by",
        ),
        ([0.0, 1.0, 2.0], [1.0, 1.0, 2.0], r"y must be strictly monotonic; y = 1.0 at x = 0.0"),
        ([0.0, math.inf], [1.0, 2.0], r"point 1: x is not finite"),
    ],
)
def test_piecewise_refusals(xs: list[float], ys: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PiecewiseLinear(xs, ys)


# ---------------------------------------------------------------------------------------- parse functions


def test_seed_examples_parse_with_their_meanings() -> None:
    actuator = parse_actuator_calibration(
        {
            "calibration_points": [
                {"actuator_position_um": 0, "ring_size_mm": 2.0},
                {"actuator_position_um": 1000, "ring_size_mm": 3.0},
                {"actuator_position_um": 2000, "ring_size_mm": 4.0},
            ],
            "interpolation_method": "linear",
            "fit_equation": "ring_size = 2.0 + (position / 1000)",
        }
    )
    assert actuator.method == "linear" and actuator.piecewise is not None
    photodiode = parse_photodiode_calibration(
        json.dumps(
            {
                "calibration_points": [
                    {"voltage_v": 0.5, "power_watts": 1.0},
                    {"voltage_v": 2.5, "power_watts": 5.0},
                    {"voltage_v": 5.0, "power_watts": 10.0},
                ],
                "fit_equation": "power = voltage * 2.0",
                "r_squared": 0.5,  # kept but not trusted
            }
        )
    )
    assert photodiode.method == "linear_fit" and photodiode.piecewise is None
    assert photodiode.fit.r_squared == pytest.approx(1.0)
    assert photodiode.fit.slope == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", r"laser_current_to_power: calibration_data is not valid JSON \(line 1, column 2"),
        ('{"calibration_points": [{"current_ma": NaN, "power_watts": 1}]}', "NaN is not allowed"),
        ("[]", "laser_current_to_power: calibration_data must be a JSON object"),
        ({}, "laser_current_to_power: calibration_points is missing"),
        ({"calibration_points": {}}, "calibration_points must be a list"),
        ({"calibration_points": [{"current_ma": 1, "power_watts": 1}]}, "needs at least 2 points; got 1"),
        (
            {"calibration_points": [{"current_ma": 500, "power_watts": 0}, {"current_ma": 900}]},
            r"laser_current_to_power: calibration_points\[1\].power_watts is missing",
        ),
        (
            {
                "calibration_points": [
                    {"current_ma": "a", "power_watts": 0},
                    {"current_ma": 2, "power_watts": 1},
                ]
            },
            r"calibration_points\[0\].current_ma must be a number; got 'a'",
        ),
        (
            {
                "calibration_points": [
                    {"current_ma": -1, "power_watts": 0},
                    {"current_ma": 2, "power_watts": 1},
                ]
            },
            r"calibration_points\[0\].current_ma must be >= 0; got -1",
        ),
        (
            {
                "calibration_points": [
                    {"current_ma": 1, "power_watts": 2},
                    {"current_ma": 2, "power_watts": 1},
                ]
            },
            "power_watts must increase with current_ma",
        ),
        (
            {
                "calibration_points": [
                    {"current_ma": 1, "power_watts": 1},
                    {"current_ma": 2, "power_watts": 1},
                ]
            },
            r"the points give a flat line \(power_watts does not change\)",
        ),
        (
            {
                "calibration_points": [
                    {"current_ma": 1, "power_watts": 1},
                    {"current_ma": 2, "power_watts": 2},
                ],
                "interpolation_method": "cubic",
            },
            "interpolation_method 'cubic' is not one of linear_fit, linear",
        ),
        (
            {"calibration_points": [{"current_ma": 1, "power_watts": 1}, "x"]},
            r"calibration_points\[1\] must be an object with current_ma and power_watts",
        ),
    ],
)
def test_laser_parse_refusals_name_the_bad_point_or_key(data: object, message: str) -> None:
    with pytest.raises(CalibrationDataError, match=message):
        parse_laser_calibration(data)  # type: ignore[arg-type]


def test_actuator_ring_must_be_positive() -> None:
    data = {
        "calibration_points": [
            {"actuator_position_um": 0, "ring_size_mm": 0.0},
            {"actuator_position_um": 1000, "ring_size_mm": 1.0},
        ]
    }
    with pytest.raises(
        CalibrationDataError, match=r"calibration_points\[0\].ring_size_mm must be > 0; got 0"
    ):
        parse_actuator_calibration(data)


# ------------------------------------------------------------------------------------------ conversions


def test_factory_calibrations_match_the_simulated_physics() -> None:
    laser = next(f for f in SIM_FACTORY_CALIBRATIONS if f.kind is LASER)
    currents = [p[0] for p in laser.points]
    assert min(currents) == 500.0 and max(currents) == 10000.0
    model = PhysicalModel(seed=1)
    model.laser_output_on = True
    for ma, watts in laser.points:
        model.laser_current_ma = ma
        assert model.light_w() == pytest.approx(watts)
    actuator = next(f for f in SIM_FACTORY_CALIBRATIONS if f.kind is ACTUATOR)
    assert actuator.points[0][0] == 0.0 and actuator.points[-1][0] == 3000.0
    for um, mm in actuator.points:
        model.actuator_position_um = um
        assert model.ring_mm() == pytest.approx(mm)
    photodiode = next(f for f in SIM_FACTORY_CALIBRATIONS if f.kind is PHOTODIODE)
    assert all(w == pytest.approx(2.0 * v) for v, w in photodiode.points)
    camera = next(f for f in SIM_FACTORY_CALIBRATIONS if f.kind is CAMERA)
    assert all(px == pytest.approx(mm * sim_camera.DEFAULT_PX_PER_MM) for px, mm in camera.points)
    assert CAMERA not in REQUIRED_KINDS  # optional: never needed before the laser may emit


# ------------------------------------------------------------------------------------------ storage glue


@pytest.fixture
async def tech_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).add(
            TechUser(username="cal", full_name="Cal Ibrate", role="engineer")
        )
        return user.tech_id


async def test_missing_calibrations_are_all_named(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    with pytest.raises(MissingCalibrations) as info:
        await load_active_calibrations(sessions)
    assert info.value.missing == (
        ("laser", "laser_current_to_power"),
        ("photodiode", "photodiode_voltage_to_power"),
        ("actuator", "actuator_position_to_ring_size"),
    )
    assert "laser (laser_current_to_power)" in str(info.value)
    await record_calibration(
        sessions,
        tech_id=tech_id,
        device_type="laser",
        calibration_type="laser_current_to_power",
        points=[(500.0, 0.0), (10000.0, 9.5)],
    )
    with pytest.raises(MissingCalibrations) as info:
        await load_active_calibrations(sessions)
    assert [device for device, _ in info.value.missing] == ["photodiode", "actuator"]


async def test_sim_factory_set_installs_once_and_converts(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    installed = await install_sim_calibrations_if_missing(sessions, tech_id)
    assert installed == [
        "laser_current_to_power",
        "photodiode_voltage_to_power",
        "actuator_position_to_ring_size",
        "camera_pixels_to_mm",
    ]
    assert await install_sim_calibrations_if_missing(sessions, tech_id) == []
    # camera: the simulated camera's 100 px/mm over 100..600 px; nothing outside that span
    scale = await load_camera_scale(sessions)
    assert scale is not None and scale.device_serial_number == "SIMULATED-CAMERA"
    assert camera_ring_mm(scale, 250.0) == (pytest.approx(2.5), "")
    assert camera_ring_mm(scale, 600.0) == (pytest.approx(6.0), "")
    mm, why = camera_ring_mm(scale, 601.0)
    assert mm is None and "diameter_px 601 px is outside the calibrated range 100..600 px" in why
    assert camera_ring_mm(None, 250.0) == (None, "uncalibrated: no active camera scale calibration")
    cal = await load_active_calibrations(sessions)
    assert cal.laser.device_serial_number is not None and "SIMULATED" in cal.laser.device_serial_number
    # laser: P = 1.0 W/A x (I - 0.5 A)
    assert cal.power_to_current_ma(0.0) == pytest.approx(500.0)
    assert cal.power_to_current_ma(5.0) == pytest.approx(5500.0)
    assert cal.power_to_current_ma(9.5) == pytest.approx(10000.0)
    with pytest.raises(
        OutOfCalibratedRange, match=r"laser power 9.6 W is above the calibrated maximum 9.5 W"
    ):
        cal.power_to_current_ma(9.6)
    with pytest.raises(CalibrationError, match="laser power must be >= 0 W"):
        cal.power_to_current_ma(-0.1)
    assert cal.current_to_power_w(3000.0) == pytest.approx(2.5)
    assert cal.current_to_power_w(100.0) == 0.0
    with pytest.raises(OutOfCalibratedRange, match="laser current 10001 mA is above the calibrated maximum"):
        cal.current_to_power_w(10001.0)
    # photodiode: P = 2 x V, never negative
    assert cal.photodiode_to_watts(2.5) == pytest.approx(5.0)
    assert cal.photodiode_to_watts(0.0) == pytest.approx(0.0, abs=1e-12)
    assert cal.photodiode_to_watts(0.0) >= 0.0
    # actuator: ring = 2.0 + um/1000 over 0..3000 um
    assert cal.ring_range_mm == (2.0, 5.0)
    assert cal.position_to_ring_mm(1250.0) == pytest.approx(3.25)
    assert cal.ring_mm_to_position_um(3.5) == pytest.approx(1500.0)
    assert cal.ring_mm_to_position_um(5.0) == 3000.0
    with pytest.raises(
        OutOfCalibratedRange, match=r"ring_size_mm 5.5 mm is outside the calibrated range 2..5 mm"
    ):
        cal.ring_mm_to_position_um(5.5)
    with pytest.raises(OutOfCalibratedRange, match=r"actuator_position_um 3001 um is outside"):
        cal.position_to_ring_mm(3001.0)


async def test_zero_power_current_never_below_zero(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    # A fit that gives 0 W below 0 mA: 0 W is then 0 mA, not a negative current.
    await install_sim_calibrations_if_missing(sessions, tech_id)
    await record_calibration(
        sessions,
        tech_id=tech_id,
        device_type="laser",
        calibration_type="laser_current_to_power",
        points=[(1000.0, 1.5), (2000.0, 2.5), (3000.0, 3.5)],
    )
    cal = await load_active_calibrations(sessions)
    assert cal.power_to_current_ma(0.0) == 0.0
    assert cal.power_to_current_ma(1.0) == pytest.approx(500.0)


async def test_record_calibration_stores_the_fit_and_retires_the_previous(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    first = await record_calibration(
        sessions,
        tech_id=tech_id,
        device_type="photodiode",
        calibration_type="photodiode_voltage_to_power",
        points=[(0.5, 1.0), (2.5, 5.1), (5.0, 9.9)],
        notes="first",
        device_serial_number="PD-1",
        when=datetime(2026, 3, 1, 10, 0),
    )
    second = await record_calibration(
        sessions,
        tech_id=tech_id,
        device_type="photodiode",
        calibration_type="photodiode_voltage_to_power",
        points=[(0.5, 1.0), (2.5, 5.0), (5.0, 10.0)],
        interpolation_method="linear",
        device_serial_number="PD-1",
        when=datetime(2026, 3, 2, 10, 0),
    )
    async with sessions() as session:
        rows = await CalibrationsRepository(session).history("photodiode")
    by_id = {r.calibration_id: r for r in rows}
    assert by_id[first.calibration_id].is_active is False
    assert by_id[second.calibration_id].is_active is True
    data = json.loads(by_id[first.calibration_id].calibration_data)
    validation = json.loads(by_id[first.calibration_id].validation_data or "{}")
    slope, intercept, r2 = _numpy_fit([0.5, 2.5, 5.0], [1.0, 5.1, 9.9])
    for stored in (data, validation):
        assert stored["slope"] == pytest.approx(slope)
        assert stored["intercept"] == pytest.approx(intercept)
        assert stored["r_squared"] == pytest.approx(r2)
    assert data["interpolation_method"] == "linear_fit"
    assert data["calibration_points"][1] == {"voltage_v": 2.5, "power_watts": 5.1}
    assert by_id[first.calibration_id].notes == "first"
    await install_sim_calibrations_if_missing(sessions, tech_id)  # fills laser and actuator only
    cal = await load_active_calibrations(sessions)
    assert cal.photodiode.calibration_id == second.calibration_id
    assert cal.photodiode.curve.method == "linear"
    assert cal.photodiode.describe() == f"calibration #{second.calibration_id} of 2026-03-02 10:00 UTC"


async def test_record_calibration_refuses_bad_input_and_writes_nothing(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    with pytest.raises(
        CalibrationDataError, match="unknown calibration 'laser'/'photodiode_voltage_to_power'"
    ):
        await record_calibration(
            sessions,
            tech_id=tech_id,
            device_type="laser",
            calibration_type="photodiode_voltage_to_power",
            points=[(0.0, 0.0), (1.0, 2.0)],
        )
    with pytest.raises(CalibrationDataError, match=r"calibration_points\[1\].ring_size_mm is not finite"):
        await record_calibration(
            sessions,
            tech_id=tech_id,
            device_type="actuator",
            calibration_type="actuator_position_to_ring_size",
            points=[(0.0, 2.0), (1000.0, math.nan)],
            interpolation_method="linear",
        )
    async with sessions() as session:
        for device in ("laser", "actuator"):
            assert await CalibrationsRepository(session).history(device) == []


async def test_stored_bad_calibration_is_named_by_id(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    from storage import Calibration

    await install_sim_calibrations_if_missing(sessions, tech_id)
    async with sessions() as session, session.begin():
        row = await CalibrationsRepository(session).add(
            Calibration(
                calibration_date=datetime(2030, 1, 1),
                tech_id=tech_id,
                device_type="actuator",
                calibration_type="actuator_position_to_ring_size",
                calibration_data=json.dumps({"calibration_points": [{"actuator_position_um": 0}]}),
            )
        )
        bad_id = row.calibration_id
    with pytest.raises(CalibrationDataError, match=f"calibration #{bad_id}: actuator_position_to_ring_size"):
        await load_active_calibrations(sessions)
