"""The collector policy: full passes kept short while the laser is armed or emitting, one afterwards."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tui.memory import REFREEZE_S, SETTLE_AFTER_S, QuietCollector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()
    gc.unfreeze()  # the collector's state is the process's: leave it as found


class Cycle:
    """An object in a reference cycle: only a full pass of the collector reclaims it."""

    def __init__(self) -> None:
        self.me = self


def test_objects_made_while_emission_is_possible_are_exempted_until_it_has_not_been_for_a_while(
    clock: Clock,
) -> None:
    collector = QuietCollector(clock)
    collector.update(emission_possible=True)
    assert collector.holding
    garbage = Cycle()
    alive = weakref.ref(garbage)
    clock.now += 2 * REFREEZE_S
    collector.update(emission_possible=True)  # exempted now
    del garbage
    gc.collect()
    assert alive() is not None, "a full pass leaves the exempted objects alone"

    collector.update(emission_possible=False)  # emission just became impossible: not yet
    clock.now += SETTLE_AFTER_S / 2
    collector.update(emission_possible=False)
    assert collector.settled == 0 and collector.holding

    clock.now += SETTLE_AFTER_S
    collector.update(emission_possible=False)
    assert collector.settled == 1 and not collector.holding
    assert alive() is None, "the full pass reclaimed it"


def test_arming_again_before_the_pass_cancels_it(clock: Clock) -> None:
    collector = QuietCollector(clock)
    collector.update(emission_possible=True)
    collector.update(emission_possible=False)
    clock.now += SETTLE_AFTER_S / 2
    collector.update(emission_possible=True)
    clock.now += SETTLE_AFTER_S
    collector.update(emission_possible=False)
    assert collector.settled == 0, "the idle time counts from when emission stopped being possible, again"
    clock.now += SETTLE_AFTER_S
    collector.update(emission_possible=False)
    assert collector.settled == 1


def test_nothing_is_held_or_collected_when_the_laser_is_never_armed(clock: Clock) -> None:
    collector = QuietCollector(clock)
    for _ in range(5):
        collector.update(emission_possible=False)
        clock.now += SETTLE_AFTER_S
    assert collector.settled == 0 and not collector.holding
