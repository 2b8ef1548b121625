"""When the console lets Python's cyclic garbage collector make its full passes.

A full pass walks every container object the process holds, with everything else stopped: the drawing, the
event loop, and the terminal's input thread that sends the stop key (it needs the interpreter too). With
Textual, SQLAlchemy and pydantic loaded that is hundreds of thousands of objects, measured at 170 to 270 ms
a pass on the console; one landing on an F12 delays the stop by as much.

So, while the laser is armed or emitting, the console keeps full passes short: every
:data:`REFREEZE_S` seconds it exempts what is alive (:func:`gc.freeze`), so a pass only walks what was made
since. Cyclic garbage made meanwhile waits (memory, not time). Young-generation passes (a few ms) go on as
usual. Once emission has not been possible for :data:`SETTLE_AFTER_S`, everything goes back to the
collector, one full pass reclaims what was held meanwhile, and what survives is exempted again.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

#: While emission is possible, what is alive is exempted this often, s (a freeze costs microseconds: it
#: moves the collector's lists, it does not walk them). A full pass then walks a fraction of a second's
#: survivors.
REFREEZE_S = 0.1
#: Emission impossible for this long, s, before the full pass that reclaims what was held.
SETTLE_AFTER_S = 1.0


class QuietCollector:
    """Keeps the collector's full passes short while the laser is armed or emitting (see the module)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._frozen_at = -float("inf")
        #: When emission last stopped being possible (None while it is, or when nothing is held).
        self._cooled_at: float | None = None
        self._holding = False
        #: Full passes made by :meth:`settle` (for tests and the log).
        self.settled = 0

    @property
    def holding(self) -> bool:
        """True while objects exempted during an armed or emitting period wait for the next full pass."""
        return self._holding

    def freeze(self) -> None:
        """Exempt every object alive now from full passes."""
        gc.freeze()
        self._frozen_at = self._clock()

    def settle(self) -> None:
        """A full pass over everything (the exempted objects too), then exempt what survives."""
        gc.unfreeze()
        gc.collect()
        self.freeze()
        self._holding = False
        self._cooled_at = None
        self.settled += 1

    def update(self, emission_possible: bool) -> None:
        """Called with each snapshot: whether the laser is armed or emitting now."""
        now = self._clock()
        if emission_possible:
            self._cooled_at = None
            if not self._holding or now - self._frozen_at >= REFREEZE_S:
                self.freeze()
                self._holding = True
            return
        if not self._holding:
            return
        if self._cooled_at is None:
            self._cooled_at = now
        elif now - self._cooled_at >= SETTLE_AFTER_S:
            self.settle()
