"""Test pieces used across the test folders: a hand-driven wall clock, cheap password hashing and protocol
JSON."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from control.accounts import HashingParameters

#: Cheap argon2id parameters so the tests stay fast (the product default is RFC 9106's low-memory profile).
CHEAP = HashingParameters(time_cost=1, memory_cost_kib=8, parallelism=1)


class FakeClock:
    """A clock the test moves by hand; returns naive UTC."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def protocol_json(
    *steps: tuple[float, float, float, float, str], max_power: float = 10.0, max_duration: float = 600
) -> str:
    """A protocol in the seed's JSON of (duration s, start W, end W, ring mm, ramp) steps."""
    return json.dumps(
        {
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
    )


#: Marks the tests that run a controller on the simulated rig for a long time: they run one at a time (the
#: ``xdist_group`` of ``--dist loadgroup``). The rig's readings must stay under 100 ms old; two of these at
#: once, beside the other worker's tests on two cores, have starved a controller into that fault.
RIG_TEST = pytest.mark.xdist_group("rig")
