"""Test pieces used across the test folders: a hand-driven wall clock, cheap password hashing, protocol
JSON, waiting for a condition, and an event loop on a hand-driven clock."""

from __future__ import annotations

import asyncio
import json
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from control.accounts import HashingParameters

T = TypeVar("T")

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


async def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 5.0,
    what: str = "the condition",
    *,
    poll: Callable[[], Awaitable[object]] | None = None,
    describe: Callable[[], str] | None = None,
) -> None:
    """Let the loop run until ``predicate()`` holds; fail, naming ``what``, after ``timeout_s`` seconds of the
    loop's own clock.

    ``poll`` is awaited between two looks (default: a 5 ms sleep; a Textual test passes its pilot's pause);
    ``describe`` adds what the test was seeing when it gave up. The time limit only bounds a test that would
    otherwise hang: no test may rely on it to pass.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            seen = f"; {describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")
        if poll is None:
            await asyncio.sleep(0.005)
        else:
            await poll()


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that never sleeps: when nothing is ready it moves the virtual clock to the next timer."""

    def __init__(self, advance: Callable[[float], object]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise RuntimeError("the event loop would wait forever: nothing is ready and no timer is due")
        if timeout > 0:
            self._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a hand-driven clock: ``time()`` reads ``clock``, and when every task waits for a
    timer the clock jumps straight to it. ``asyncio.sleep(2)`` then takes two seconds of the clock and no
    real time, so a test of timing is exact and fast, whatever the machine's load."""

    def __init__(self, clock: Callable[[], float], advance: Callable[[float], object]) -> None:
        super().__init__(_VirtualSelector(advance))
        self._virtual_clock = clock

    def time(self) -> float:
        return self._virtual_clock()


def run_in_virtual_time(
    main: Callable[[], Coroutine[Any, Any, T]], clock: Callable[[], float], advance: Callable[[float], object]
) -> T:
    """Run ``main()`` to its end on a :class:`VirtualTimeLoop`; every task it leaves behind fails the test."""
    loop = VirtualTimeLoop(clock, advance)
    try:
        result = loop.run_until_complete(main())
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            raise AssertionError(f"tasks left running: {[t.get_coro() for t in left]}")
        return result
    finally:
        loop.close()
