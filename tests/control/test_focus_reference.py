"""The camera's focus reference: a score is in focus from 80 % of the reference on (or the calibration's own
fraction), and a calibration row that is not a usable reference says why."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from control.imaging_records import FocusReference, judge_focus, parse_focus_reference
from storage.models import Calibration

WHEN = datetime(2026, 3, 14, 9, 0, 0)


def _row(data: object) -> Calibration:
    return Calibration(
        calibration_id=7,
        calibration_date=WHEN,
        tech_id=1,
        device_type="camera",
        calibration_type="camera_focus_calibration",
        calibration_data=json.dumps(data),
        is_active=True,
    )


@pytest.mark.parametrize(("score", "in_focus"), [(399.9, False), (400.0, True), (400.1, True), (500.0, True)])
def test_in_focus_from_80_percent_of_the_reference(score: float, in_focus: bool) -> None:
    reference = parse_focus_reference(_row({"focus_score_reference": 500.0}))
    assert reference == FocusReference(7, 500.0, 0.8, WHEN)
    verdict = judge_focus(score, reference)
    assert verdict.in_focus is in_focus
    assert verdict.words().startswith("in focus (" if in_focus else "NOT in focus (")
    assert f"{100 * score / 500:.0f} % of the reference 500" in verdict.words()


def test_the_calibrations_own_fraction_is_used() -> None:
    reference = parse_focus_reference(_row({"focus_score_reference": 200.0, "in_focus_fraction": 0.9}))
    assert judge_focus(179.9, reference).in_focus is False
    assert judge_focus(180.0, reference).in_focus is True
    assert "in focus from 90 %" in judge_focus(100.0, reference).words()


def test_without_a_reference_nothing_is_judged() -> None:
    verdict = judge_focus(350.0, None)
    assert verdict.in_focus is None and verdict.percent is None
    assert verdict.words().startswith("no focus reference yet")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "focus_score_reference is not a number"),
        ({"focus_score_reference": "high"}, "focus_score_reference is not a number"),
        ({"focus_score_reference": 0}, "must be above 0"),
        ({"focus_score_reference": 300, "in_focus_fraction": 1.5}, r"within \(0, 1\]"),
        ([300], "not a JSON object"),
    ],
)
def test_a_row_that_is_no_reference_says_why(data: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_focus_reference(_row(data))
