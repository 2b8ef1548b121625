"""Protocol files: parsing with every problem listed, limits, plans (time line, power, energy, setpoints),
the limits read from the database, and the shipped library."""

from __future__ import annotations

import copy
import itertools
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.calibration import install_sim_calibrations_if_missing, record_calibration
from control.protocols import (
    PlanStep,
    ProtocolDefinition,
    ProtocolError,
    ValidationLimits,
    check_protocol,
    compile_plan,
    default_limits,
    install_library_protocols,
    load_library,
    load_limits,
    parse_protocol,
    protocol_type,
    validate_protocol,
)
from storage import TechUser
from storage.repositories import ConfigRepository, ProtocolsRepository, UsersRepository

#: The seed's "Protocol Data JSON Format" example.
SEED: dict[str, Any] = {
    "version": "1.0",
    "steps": [
        {
            "step_number": 1,
            "duration_seconds": 60,
            "power_start_watts": 5.0,
            "power_end_watts": 5.0,
            "ring_size_mm": 3.0,
            "ramp_type": "constant",
        },
        {
            "step_number": 2,
            "duration_seconds": 30,
            "power_start_watts": 5.0,
            "power_end_watts": 8.0,
            "ring_size_mm": 3.5,
            "ramp_type": "linear",
        },
    ],
    "safety_limits": {"max_power_watts": 10.0, "max_duration_seconds": 300},
}

LIMITS = ValidationLimits(max_system_power_w=10.0, ring_min_mm=2.0, ring_max_mm=5.0, source="test travel")


def seed(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SEED)
    for path, value in changes.items():
        target: Any = data
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = value
    return data


def errors_of(text: str, limits: ValidationLimits | None = None) -> list[str]:
    with pytest.raises(ProtocolError) as info:
        if limits is None:
            parse_protocol(text)
        else:
            check_protocol(text, limits)
    assert str(info.value).startswith("protocol refused (")
    return info.value.errors


# -------------------------------------------------------------------------------------------- the seed


def test_seed_example_gives_90_s_and_exactly_495_j() -> None:
    defn = parse_protocol(json.dumps(SEED))
    plan = compile_plan(defn)
    assert protocol_type(defn) == "multi_step"
    assert plan.total_duration_s == 90.0
    assert plan.expected_energy_j == 495.0
    assert plan.max_power_w == 8.0
    assert [(s.number, s.start_s, s.duration_s, s.ramp) for s in plan.steps] == [
        (1, 0.0, 60.0, "constant"),
        (2, 60.0, 30.0, "linear"),
    ]


def test_power_and_step_along_the_time_line() -> None:
    plan = compile_plan(parse_protocol(json.dumps(SEED)))
    assert plan.power_at(0.0) == 5.0
    assert plan.power_at(59.999) == 5.0
    assert plan.step_at(59.999).number == 1
    assert plan.step_at(60.0).number == 2
    assert plan.power_at(75.0) == pytest.approx(6.5)
    assert plan.power_at(90.0) == 8.0  # exactly the end power
    assert plan.step_at(90.0).number == 2
    with pytest.raises(ValueError, match=r"time 90.5 s is outside the plan \(0..90.0 s\)"):
        plan.power_at(90.5)
    with pytest.raises(ValueError, match=r"time -1\.0 s is outside the plan"):
        plan.step_at(-1.0)
    with pytest.raises(ValueError, match="time must be a finite number of seconds"):
        plan.power_at(math.nan)


def test_linear_ramp_reaches_exactly_its_end_power() -> None:
    step = PlanStep(
        number=1,
        start_s=0.0,
        duration_s=0.3,
        power_start_w=0.1,
        power_end_w=0.7,
        ring_size_mm=3.0,
        ramp="linear",
    )
    assert step.power_at_elapsed(0.3) == 0.7
    assert step.power_at_elapsed(0.1 + 0.2) == 0.7
    assert step.power_at_elapsed(5.0) == 0.7
    assert step.power_at_elapsed(0.0) == 0.1
    assert step.power_at_elapsed(0.15) == pytest.approx(0.4)
    text = json.dumps(
        seed(
            steps__1__duration_seconds=0.3,
            steps__1__power_start_watts=0.1,
            steps__1__power_end_watts=0.7,
            steps__0__power_start_watts=0.1,
            steps__0__power_end_watts=0.1,
        )
    )
    plan = compile_plan(parse_protocol(text))
    assert plan.power_at(plan.total_duration_s) == 0.7


def test_setpoints_sample_the_plan_and_end_at_its_end() -> None:
    plan = compile_plan(parse_protocol(json.dumps(SEED)))
    points = plan.setpoints(1.0)
    assert len(points) == 91
    assert points[0] == (0.0, 5.0)
    assert points[75] == (75.0, pytest.approx(6.5))
    assert points[-1] == (90.0, 8.0)
    odd = plan.setpoints(0.7)
    assert odd[-1] == (90.0, 8.0)
    assert all(b[0] > a[0] for a, b in itertools.pairwise(odd))
    # The trapezoid sum of a fine sampling agrees with the exact energy.
    fine = plan.setpoints(10.0)
    area = math.fsum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(fine))
    assert area == pytest.approx(plan.expected_energy_j, rel=1e-9)
    for bad, message in ((0, "rate must be > 0 Hz"), (math.inf, "finite number of hertz"), (1e9, "at most")):
        with pytest.raises(ValueError, match=message):
            plan.setpoints(bad)


def test_protocol_types() -> None:
    constant = seed()
    constant["steps"] = constant["steps"][:1]
    ramp = seed()
    ramp["steps"] = ramp["steps"][1:]
    ramp["steps"][0]["step_number"] = 1
    assert protocol_type(parse_protocol(json.dumps(constant))) == "constant"
    assert protocol_type(parse_protocol(json.dumps(ramp))) == "linear_ramp"


# ------------------------------------------------------------------------------------------- refusals

CASES: list[tuple[str, str, str]] = [
    ("invalid JSON", '{\n  "version": "1.0",\n  "steps": [\n}', "invalid JSON at line 4, column 1"),
    ("unknown key", json.dumps(seed(steps__0__colour="red")), "steps[0].colour: unknown key"),
    ("unknown top key", json.dumps(seed(name="x")), "name: unknown key"),
    (
        "NaN token",
        json.dumps(SEED).replace('"power_end_watts": 8.0', '"power_end_watts": NaN'),
        "steps[1].power_end_watts: must be a finite number, got NaN",
    ),
    (
        "Infinity token",
        json.dumps(SEED).replace('"max_power_watts": 10.0', '"max_power_watts": Infinity'),
        "safety_limits.max_power_watts: must be a finite number, got Infinity",
    ),
    (
        "steps out of order",
        json.dumps(seed(steps__0__step_number=2, steps__1__step_number=1)),
        "steps[0].step_number: expected 1, got 2 (steps are numbered 1..N in order)",
    ),
    (
        "duration 0",
        json.dumps(seed(steps__0__duration_seconds=0)),
        "steps[0].duration_seconds: must be > 0.0, got 0",
    ),
    (
        "negative power",
        json.dumps(seed(steps__1__power_start_watts=-1.5)),
        "steps[1].power_start_watts: must be >= 0.0, got -1.5",
    ),
    (
        "bad ramp_type",
        json.dumps(seed(steps__1__ramp_type="exponential")),
        "steps[1].ramp_type: must be 'constant' or 'linear', got \"exponential\"",
    ),
    (
        "constant with a slope",
        json.dumps(seed(steps__0__power_end_watts=6.0)),
        "steps[0].power_end_watts: a constant step must end at its start power (5.0 W), got 6.0 W",
    ),
    (
        "over own limit",
        json.dumps(seed(steps__1__power_end_watts=12.0)),
        "steps[1].power_end_watts: 12.0 W exceeds safety_limits.max_power_watts (10.0 W)",
    ),
    (
        "too long",
        json.dumps(seed(steps__0__duration_seconds=280)),
        "steps: total duration 310.0 s exceeds safety_limits.max_duration_seconds (300.0 s)",
    ),
    (
        "missing key",
        json.dumps(seed(steps__0__ring_size_mm=None)),
        "steps[0].ring_size_mm: must be a number, got null",
    ),
    (
        "boolean as number",
        json.dumps(seed(steps__0__duration_seconds=True)),
        "steps[0].duration_seconds: must be",
    ),
    ("string as number", json.dumps(seed(steps__0__duration_seconds="60")), 'must be a number, got "60"'),
    ("ring zero", json.dumps(seed(steps__0__ring_size_mm=0)), "steps[0].ring_size_mm: must be > 0.0, got 0"),
    ("version", json.dumps(seed(version="2.0")), "version: must be '1.0', got \"2.0\""),
    ("no steps", json.dumps(seed(steps=[])), "steps: must not be empty"),
    ("not an object", "[1, 2]", "protocol: must be a JSON object"),
    ("duplicate key", '{"version": "1.0", "version": "1.0"}', 'duplicate key "version"'),
]


@pytest.mark.parametrize(("name", "text", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_problem_has_its_own_message(name: str, text: str, message: str) -> None:
    errors = errors_of(text)
    assert any(message in e for e in errors), errors


def test_missing_key_is_named() -> None:
    data = seed()
    del data["steps"][1]["ramp_type"]
    del data["safety_limits"]
    errors = errors_of(json.dumps(data))
    assert "steps[1].ramp_type: required key is missing" in errors
    assert "safety_limits: required key is missing" in errors


def test_every_problem_is_listed_at_once() -> None:
    data = seed(
        steps__0__step_number=3,
        steps__0__duration_seconds=-5,
        steps__0__extra=1,
        steps__1__power_end_watts=11.0,
        steps__1__ramp_type="step",
        steps__1__ring_size_mm=9.0,
    )
    errors = errors_of(json.dumps(data), LIMITS)
    assert errors == [
        "steps[0].duration_seconds: must be > 0.0, got -5",
        "steps[0].extra: unknown key",
        "steps[0].step_number: expected 1, got 3 (steps are numbered 1..N in order)",
        "steps[1].ramp_type: must be 'constant' or 'linear', got \"step\"",
        "steps[1].power_end_watts: 11.0 W exceeds safety_limits.max_power_watts (10.0 W)",
        "steps[1].power_end_watts: 11.0 W exceeds the system limit max_laser_power_watts (10.0 W)",
        "steps[1].ring_size_mm: 9.0 mm is outside the actuator's range 2.0..5.0 mm (test travel)",
    ]


def test_the_model_itself_refuses_what_the_file_breaks() -> None:
    with pytest.raises(ValidationError, match=r"exceeds safety_limits\.max_power_watts"):
        ProtocolDefinition.model_validate(seed(steps__1__power_end_watts=12.0))
    with pytest.raises(ValidationError, match="expected 1, got 2"):
        ProtocolDefinition.model_validate(seed(steps__0__step_number=2, steps__1__step_number=1))


# --------------------------------------------------------------------------------------- system limits


def test_validate_against_the_system() -> None:
    defn = parse_protocol(json.dumps(seed(steps__1__power_end_watts=9.0, steps__1__ring_size_mm=4.5)))
    assert validate_protocol(defn, LIMITS) == []
    tight = ValidationLimits(
        max_system_power_w=6.0, ring_min_mm=3.2, ring_max_mm=4.0, source="calibration #7"
    )
    laser = ValidationLimits(10.0, 2.0, 5.0, "x", laser_max_power_w=8.5, laser_source="calibration #3")
    assert validate_protocol(defn, laser) == [
        "steps[1].power_end_watts: 9.0 W is above the laser calibration's maximum 8.5 W (calibration #3)"
    ]
    assert validate_protocol(defn, tight) == [
        "steps[0].ring_size_mm: 3.0 mm is outside the actuator's range 3.2..4.0 mm (calibration #7)",
        "steps[1].power_end_watts: 9.0 W exceeds the system limit max_laser_power_watts (6.0 W)",
        "steps[1].ring_size_mm: 4.5 mm is outside the actuator's range 3.2..4.0 mm (calibration #7)",
    ]


def test_check_protocol_returns_the_plan_when_within_limits() -> None:
    plan = check_protocol(json.dumps(SEED), LIMITS)
    assert plan.expected_energy_j == 495.0
    over_system = ValidationLimits(7.5, 2.0, 5.0, "x")
    assert errors_of(json.dumps(SEED), over_system) == [
        "steps[1].power_end_watts: 8.0 W exceeds the system limit max_laser_power_watts (7.5 W)"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 2.0, 5.0), "max_system_power_w must be > 0 W"),
        ((math.nan, 2.0, 5.0), "max_system_power_w must be a finite number"),
        ((10.0, 5.0, 2.0), "the ring range must satisfy 0 < min <= max"),
        ((10.0, 0.0, 2.0), "the ring range must satisfy 0 < min <= max"),
        ((10.0, 2.0, 5.0, 0.0), "laser_max_power_w must be a finite number > 0 W"),
    ],
)
def test_validation_limits_refuse_nonsense(args: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValidationLimits(*args[:3], source="x", laser_max_power_w=args[3] if len(args) > 3 else None)


def test_default_limits() -> None:
    limits = default_limits()
    assert (limits.max_system_power_w, limits.ring_min_mm, limits.ring_max_mm) == (10.0, 2.0, 5.0)
    assert limits.source.startswith("default actuator travel 0..3000 um")


@pytest.fixture
async def tech_id(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).add(
            TechUser(username="eng", full_name="Eng Ineer", role="engineer")
        )
        return user.tech_id


async def test_load_limits_default_travel_then_active_calibration(
    sessions: async_sessionmaker[AsyncSession], tech_id: int
) -> None:
    limits = await load_limits(sessions)
    assert (limits.max_system_power_w, limits.ring_min_mm, limits.ring_max_mm) == (10.0, 2.0, 5.0)
    assert limits.source.startswith("default actuator travel")
    assert limits.laser_max_power_w is None
    await install_sim_calibrations_if_missing(sessions, tech_id)
    limits = await load_limits(sessions)
    assert limits.laser_max_power_w == pytest.approx(9.5)
    assert limits.laser_source.startswith("active calibration #")
    assert "laser calibrated up to 9.5 W (active calibration #" in limits.describe()
    above_laser = json.dumps(seed(steps__1__power_end_watts=9.8))
    assert errors_of(above_laser, limits) == [
        "steps[1].power_end_watts: 9.8 W is above the laser calibration's maximum 9.5 W "
        f"({limits.laser_source})"
    ]
    narrow = await record_calibration(
        sessions,
        tech_id=tech_id,
        device_type="actuator",
        calibration_type="actuator_position_to_ring_size",
        points=[(0.0, 2.5), (1000.0, 3.4), (2000.0, 4.2)],
        interpolation_method="linear",
    )
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set("max_laser_power_watts", 6.0, modified_by=tech_id)
    limits = await load_limits(sessions)
    assert (limits.max_system_power_w, limits.ring_min_mm, limits.ring_max_mm) == (6.0, 2.5, 4.2)
    assert limits.source == f"active {narrow.describe()}"
    assert limits.source.startswith(f"active calibration #{narrow.calibration_id} of ")
    errors = errors_of(json.dumps(SEED), limits)
    assert "steps[1].power_end_watts: 8.0 W exceeds the system limit max_laser_power_watts (6.0 W)" in errors


# ------------------------------------------------------------------------------------------- library


def test_library_holds_the_seed_example_and_three_more() -> None:
    library = load_library()
    assert len(library) == 4
    by_file = {item.file: item for item in library}
    assert json.loads(by_file["seed_example.json"].text) == SEED
    assert by_file["seed_example.json"].name.startswith("Seed example")
    types = sorted(protocol_type(item.definition) for item in library)
    assert types == ["constant", "linear_ramp", "multi_step", "multi_step"]
    for item in library:
        assert item.description
        check_protocol(item.text, default_limits())


async def test_install_library_adds_only_missing_names(sessions: async_sessionmaker[AsyncSession]) -> None:
    library = load_library()
    keep = library[1]
    async with sessions() as session, session.begin():
        await ProtocolsRepository(session).add(
            keep.name, "constant", json.dumps(SEED), description="site copy"
        )
    added = await install_library_protocols(sessions)
    assert added == [item.name for item in library if item.name != keep.name]
    assert await install_library_protocols(sessions) == []
    async with sessions() as session:
        repo = ProtocolsRepository(session)
        kept = await repo.get_by_name(keep.name)
        assert kept is not None and kept.description == "site copy"
        for item in library:
            row = await repo.get_by_name(item.name)
            assert row is not None
            if item.name != keep.name:
                assert row.protocol_data == item.text
                assert row.protocol_type == protocol_type(item.definition)
                assert row.created_by_tech_id is None
                assert len(await repo.versions(row.protocol_id)) == 1
