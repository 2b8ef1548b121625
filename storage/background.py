"""How a process the controller starts for storage work (a remote console's backup or export, the sealing of
an encrypted video) keeps out of the safety loop's way."""

from __future__ import annotations

import contextlib
import os


def yield_to_the_controller(nice: int) -> None:
    """Give up what this process inherited from the controller: the normal (SCHED_OTHER) policy instead of a
    real-time one, nice ``nice`` at least, and the CPUs the controller is not pinned to, when it is pinned to
    some. Each step that the system refuses is skipped."""
    if hasattr(os, "sched_getscheduler"):
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(0) != os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    if hasattr(os, "sched_getaffinity"):
        with contextlib.suppress(OSError):
            others = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
            if others:
                os.sched_setaffinity(0, others)


__all__ = ["yield_to_the_controller"]
