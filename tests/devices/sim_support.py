"""Support for the simulator tests: a clock the test moves by hand."""

from __future__ import annotations


class ManualClock:
    """A monotonic clock, in seconds, that only moves when the test says so (``clock.t += 0.5``, or
    :meth:`advance`). Simulators and the physical model take it as their ``clock``."""

    def __init__(self, start_s: float = 500.0) -> None:
        self.t = start_s

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
