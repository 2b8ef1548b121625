"""Test pieces used across the test folders: a hand-driven wall clock and cheap password hashing."""

from __future__ import annotations

from datetime import datetime, timedelta

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
