"""Protocol limits at their edges, with small numbers: an own maximum power under 1 W, steps shorter than a
second against the maximum duration, a ring far below the actuator's 2 to 5 mm, each limit met exactly (which
is allowed) and passed by a little (which is not); and values of the wrong type anywhere in the file, which
are listed with the other problems, never raised as an error of their own."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocols import (
    LimitsError,
    PlanStep,
    ProtocolError,
    ValidationLimits,
    check_protocol,
    load_limits,
    parse_protocol,
    validate_protocol,
)
from storage.repositories import ConfigRepository

#: The actuator's default travel gives rings of 2 to 5 mm; the system allows 10 W; the loop runs at 10 Hz.
LIMITS = ValidationLimits(max_system_power_w=10.0, ring_min_mm=2.0, ring_max_mm=5.0, source="default travel")


def protocol(
    *steps: tuple[float, float, float, float, str], max_power: Any = 10.0, max_duration: Any = 300
) -> dict[str, Any]:
    """A protocol of (duration s, start W, end W, ring mm, ramp) steps."""
    return {
        "version": "1.0",
        "steps": [
            {
                "step_number": n,
                "duration_seconds": d,
                "power_start_watts": p0,
                "power_end_watts": p1,
                "ring_size_mm": ring,
                "ramp_type": ramp,
            }
            for n, (d, p0, p1, ring, ramp) in enumerate(steps, start=1)
        ],
        "safety_limits": {"max_power_watts": max_power, "max_duration_seconds": max_duration},
    }


def refused(data: Any, limits: ValidationLimits | None = LIMITS) -> list[str]:
    """The problems listed when the protocol is refused (it must be)."""
    text = json.dumps(data)
    with pytest.raises(ProtocolError) as info:
        if limits is None:
            parse_protocol(text)
        else:
            check_protocol(text, limits)
    return info.value.errors


def accepted(data: Any, limits: ValidationLimits = LIMITS) -> None:
    check_protocol(json.dumps(data), limits)


# ------------------------------------------------------------------------------- the protocol's own power
def test_an_own_maximum_of_half_a_watt_is_enforced() -> None:
    data = protocol((10, 0.6, 0.6, 3.0, "constant"), max_power=0.5)
    assert refused(data) == [
        "steps[0].power_start_watts: 0.6 W exceeds safety_limits.max_power_watts (0.5 W)",
        "steps[0].power_end_watts: 0.6 W exceeds safety_limits.max_power_watts (0.5 W)",
    ]
    accepted(protocol((10, 0.5, 0.5, 3.0, "constant"), max_power=0.5))


def test_a_ramp_ending_over_the_own_maximum_is_refused_at_its_end_power() -> None:
    data = protocol((10, 0.2, 0.75, 3.0, "linear"), max_power=0.7)
    assert refused(data, None) == [
        "steps[0].power_end_watts: 0.75 W exceeds safety_limits.max_power_watts (0.7 W)"
    ]


def test_power_exactly_at_the_system_limit_is_allowed_and_a_little_over_is_not() -> None:
    accepted(protocol((10, 10.0, 10.0, 3.0, "constant"), max_power=12.0))
    assert refused(protocol((10, 10.01, 10.01, 3.0, "constant"), max_power=12.0)) == [
        "steps[0].power_start_watts: 10.01 W exceeds the system limit max_laser_power_watts (10.0 W)",
        "steps[0].power_end_watts: 10.01 W exceeds the system limit max_laser_power_watts (10.0 W)",
    ]


def test_power_exactly_at_the_laser_calibrations_maximum_is_allowed() -> None:
    laser = ValidationLimits(10.0, 2.0, 5.0, "x", laser_max_power_w=0.8, laser_source="calibration #3")
    accepted(protocol((10, 0.8, 0.8, 3.0, "constant")), laser)
    assert refused(protocol((10, 0.3, 0.81, 3.0, "linear")), laser) == [
        "steps[0].power_end_watts: 0.81 W is above the laser calibration's maximum 0.8 W (calibration #3)"
    ]


# ------------------------------------------------------------------------------------------- durations
def test_steps_shorter_than_a_second_count_against_the_maximum_duration() -> None:
    data = protocol((0.5, 1.0, 1.0, 3.0, "constant"), (0.5, 1.0, 1.0, 3.0, "constant"), max_duration=0.8)
    assert refused(data, None) == [
        "steps: total duration 1.0 s exceeds safety_limits.max_duration_seconds (0.8 s)"
    ]


def test_a_total_exactly_at_the_maximum_duration_is_allowed() -> None:
    accepted(protocol((0.25, 1.0, 1.0, 3.0, "constant"), (0.25, 1.0, 1.0, 3.0, "constant"), max_duration=0.5))
    accepted(protocol((100, 1.0, 1.0, 3.0, "constant"), (200, 1.0, 1.0, 3.0, "constant"), max_duration=300))
    assert refused(protocol((100, 1.0, 1.0, 3.0, "constant"), (200.5, 1.0, 1.0, 3.0, "constant"))) == [
        "steps: total duration 300.5 s exceeds safety_limits.max_duration_seconds (300.0 s)"
    ]


def test_a_step_of_exactly_one_loop_period_is_allowed_and_a_shorter_one_is_not() -> None:
    accepted(protocol((0.1, 1.0, 1.0, 3.0, "constant")))
    assert refused(protocol((0.09, 1.0, 1.0, 3.0, "constant"))) == [
        "steps[0].duration_seconds: 0.09 s is shorter than one period of the control loop (0.1 s at "
        "treatment_loop_frequency_hz 10.0)"
    ]


# ------------------------------------------------------------------------------------------ ring sizes
@pytest.mark.parametrize("ring", [0.5, 1.99, 5.01])
def test_a_ring_outside_the_actuators_range_is_refused(ring: float) -> None:
    assert refused(protocol((10, 1.0, 1.0, ring, "constant"))) == [
        f"steps[0].ring_size_mm: {ring} mm is outside the actuator's range 2.0..5.0 mm (default travel)"
    ]


@pytest.mark.parametrize("ring", [2.0, 5.0])
def test_a_ring_at_either_end_of_the_range_is_allowed(ring: float) -> None:
    accepted(protocol((10, 1.0, 1.0, ring, "constant")))


def test_validate_protocol_reports_a_half_millimetre_ring() -> None:
    defn = parse_protocol(json.dumps(protocol((10, 1.0, 1.0, 0.5, "constant"))))
    assert validate_protocol(defn, LIMITS) == [
        "steps[0].ring_size_mm: 0.5 mm is outside the actuator's range 2.0..5.0 mm (default travel)"
    ]


# ------------------------------------------------------------------------------------------ wrong types
NUMBER_FIELDS = ("duration_seconds", "power_start_watts", "power_end_watts", "ring_size_mm")
WRONG = [("sixty", '"sixty"'), ([1], "[1]"), ({"w": 1}, "{'w': 1}"), (None, "null"), ("", '""')]


@pytest.mark.parametrize("field", NUMBER_FIELDS)
@pytest.mark.parametrize(("value", "shown"), WRONG, ids=[w[1] for w in WRONG])
def test_a_step_number_of_the_wrong_type_is_listed(field: str, value: Any, shown: str) -> None:
    data = protocol((10, 1.0, 1.0, 3.0, "linear"), (20, 1.0, 2.0, 3.0, "linear"))
    data["steps"][1][field] = value
    assert refused(data) == [f"steps[1].{field}: must be a number, got {shown}"]


@pytest.mark.parametrize("field", ["max_power_watts", "max_duration_seconds"])
@pytest.mark.parametrize(("value", "shown"), WRONG, ids=[w[1] for w in WRONG])
def test_a_safety_limit_of_the_wrong_type_is_listed(field: str, value: Any, shown: str) -> None:
    data = protocol((10, 1.0, 1.0, 3.0, "constant"))
    data["safety_limits"][field] = value
    assert refused(data) == [f"safety_limits.{field}: must be a number, got {shown}"]


def test_every_wrong_type_is_listed_at_once() -> None:
    data = protocol((10, 1.0, 1.0, 3.0, "constant"), (20, 1.0, 2.0, 3.0, "linear"))
    data["steps"][0]["step_number"] = "one"
    data["steps"][0]["ramp_type"] = 1
    data["steps"][1]["duration_seconds"] = "twenty"
    data["steps"][1]["power_end_watts"] = [2.0]
    data["safety_limits"]["max_power_watts"] = "ten"
    assert refused(data) == [
        'safety_limits.max_power_watts: must be a number, got "ten"',
        'steps[0].step_number: must be a whole number, got "one"',
        "steps[0].ramp_type: must be 'constant' or 'linear', got 1",
        'steps[1].duration_seconds: must be a number, got "twenty"',
        "steps[1].power_end_watts: must be a number, got [2.0]",
    ]


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        ({"version": "1.0", "steps": "all of them", "safety_limits": {}}, ["steps: must be a JSON list"]),
        ({"version": "1.0", "steps": [3], "safety_limits": []}, ["safety_limits: must be a JSON object"]),
        ({"version": 1.0, "steps": [[]], "safety_limits": "none"}, ["version: must be '1.0', got 1.0"]),
    ],
)
def test_containers_of_the_wrong_type_are_listed(data: dict[str, Any], problems: list[str]) -> None:
    errors = refused(data, None)
    assert all(p in errors for p in problems), errors


@pytest.mark.parametrize(("text", "kind"), [(b'{"version": "1.0"}', "bytes"), (None, "NoneType"), (3, "int")])
def test_protocol_text_that_is_not_text_is_refused_with_the_reason(text: Any, kind: str) -> None:
    for call in (lambda: parse_protocol(text), lambda: check_protocol(text, LIMITS)):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value.errors == [f"protocol: must be JSON text, got {kind}"]


def test_a_boolean_is_not_a_number_even_where_the_rules_compare_numbers() -> None:
    data = protocol((10, 1.0, 1.0, 3.0, "constant"), max_power=True, max_duration=True)
    data["steps"][0]["power_start_watts"] = True
    errors = refused(data)
    assert "steps[0].power_start_watts: must be a number, got true" in errors
    assert not any("exceeds" in e for e in errors), errors


def test_the_seed_shape_is_untouched_by_the_checks() -> None:
    data = protocol((60, 5.0, 5.0, 3.0, "constant"), (30, 5.0, 8.0, 3.5, "linear"))
    before = copy.deepcopy(data)
    accepted(data)
    assert data == before


# ---------------------------------------------------------------------------------- the file's numbers
def test_a_number_of_40_characters_is_read_and_one_of_41_is_refused() -> None:
    forty = "3." + "0" * 38
    text = json.dumps(protocol((10, 1.0, 1.0, 3.0, "constant"))).replace(
        '"ring_size_mm": 3.0', f'"ring_size_mm": {forty}'
    )
    assert parse_protocol(text).steps[0].ring_size_mm == 3.0
    with pytest.raises(ProtocolError) as info:
        parse_protocol(text.replace(forty, forty + "0"))
    assert info.value.errors == [
        "invalid JSON: a number written with 41 characters; numbers in a protocol have at most 40"
    ]


def test_a_zero_duration_is_reported_once_not_also_as_shorter_than_a_loop_period() -> None:
    assert refused(protocol((0, 1.0, 1.0, 3.0, "constant"))) == [
        "steps[0].duration_seconds: must be > 0.0, got 0"
    ]


def test_the_definition_gives_its_total_duration() -> None:
    defn = parse_protocol(
        json.dumps(protocol((0.25, 1.0, 1.0, 3.0, "constant"), (60, 1.0, 2.0, 3.0, "linear")))
    )
    assert defn.total_duration_s == 60.25


@pytest.mark.parametrize(("ring_min", "ring_max"), [(0.5, 5.0), (3.0, 3.0)])
def test_a_ring_range_may_start_under_1_mm_or_be_a_single_size(ring_min: float, ring_max: float) -> None:
    limits = ValidationLimits(10.0, ring_min, ring_max, "calibration #9")
    accepted(protocol((10, 1.0, 1.0, ring_max, "constant")), limits)
    assert refused(protocol((10, 1.0, 1.0, ring_max + 0.5, "constant")), limits) == [
        f"steps[0].ring_size_mm: {ring_max + 0.5} mm is outside the actuator's range "
        f"{ring_min}..{ring_max} mm (calibration #9)"
    ]


# --------------------------------------------------------------------------------------- plans and limits
def test_a_ramp_gives_its_start_power_before_it_starts_and_a_constant_step_never_drifts() -> None:
    ramp = PlanStep(1, 0.0, 10.0, 2.0, 6.0, 3.0, "linear")
    assert ramp.power_at_elapsed(-0.5) == 2.0
    assert ramp.power_at_elapsed(0.0) == 2.0
    assert ramp.power_at_elapsed(2.5) == 3.0
    constant = PlanStep(1, 0.0, 10.0, 0.1, 0.1, 3.0, "constant")
    assert {constant.power_at_elapsed(k / 10) for k in range(101)} == {0.1}


def test_a_plan_gives_exactly_a_million_setpoints_and_not_one_more() -> None:
    plan = check_protocol(
        json.dumps(protocol((99999.9, 1.0, 1.0, 3.0, "constant"), max_duration=100000)), LIMITS
    )
    assert len(plan.setpoints(10.0)) == 1_000_000
    with pytest.raises(ValueError, match="gives 1000001 setpoints; at most 1000000 are allowed"):
        check_protocol(
            json.dumps(protocol((100000, 1.0, 1.0, 3.0, "constant"), max_duration=100000)), LIMITS
        ).setpoints(10.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_laser_power_watts", 0, "config max_laser_power_watts: 0.0 refused: must be greater than 0 W"),
        (
            "max_laser_power_watts",
            -1.0,
            "config max_laser_power_watts: -1.0 refused: must be greater than 0 W",
        ),
        (
            "treatment_loop_frequency_hz",
            0,
            "config treatment_loop_frequency_hz: 0 refused: must be greater than or equal to 1 Hz",
        ),
    ],
)
async def test_system_limits_not_above_zero_are_refused(
    sessions: async_sessionmaker[AsyncSession], key: str, value: Any, message: str
) -> None:
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set(key, value, modified_by=None)
    with pytest.raises(LimitsError, match=re.escape(message)):
        await load_limits(sessions)


async def test_system_limits_just_above_zero_are_read(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        await ConfigRepository(session).set("max_laser_power_watts", 0.5, modified_by=None)
        await ConfigRepository(session).set("treatment_loop_frequency_hz", 1, modified_by=None)
    limits = await load_limits(sessions)
    assert (limits.max_system_power_w, limits.loop_hz, limits.min_step_s) == (0.5, 1.0, 1.0)
