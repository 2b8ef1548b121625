"""Shared pieces of the account tests: a drivable clock and cheap hashing parameters."""

from __future__ import annotations

from tests.support import CHEAP, FakeClock

__all__ = ["CHEAP", "TERMINAL", "FakeClock"]
#: The terminal the service under test records for logins.
TERMINAL = "ssh:192.0.2.7"
