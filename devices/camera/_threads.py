"""Scheduling priority of the camera's worker threads.

A camera read in the calling process (the simulated rig's own camera in ``tosca controller --sim``, tests,
tools) shares it with that process's asyncio loop. Its capture and analysis threads therefore run at a lower
scheduling priority (a higher nice value, Linux per-thread): when the CPU is contended the loop thread is
scheduled first, and the camera reports a lower frame rate instead of delaying the loop. A configured camera
runs in a process of its own (:mod:`devices.camera._process`), which lowers its priority as a whole.
"""

from __future__ import annotations

import os
import threading

MAX_NICE = 19
DEFAULT_THREAD_NICE = 10
"""Default nice increment of the camera threads (0 keeps the process's priority)."""


def check_nice(increment: int) -> int:
    """Validate a nice increment (integer 0..19); raises ValueError otherwise."""
    if isinstance(increment, bool) or not isinstance(increment, int) or not 0 <= increment <= MAX_NICE:
        raise ValueError(f"thread_nice must be an integer 0..{MAX_NICE}, got {increment!r}")
    return increment


def lower_current_thread_priority(increment: int) -> bool:
    """Raise the calling thread's nice value by ``increment`` (capped at 19); True when applied.

    Only Linux schedules threads with their own nice value; elsewhere, or when the system refuses, nothing
    changes and False is returned.
    """
    if increment == 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + increment))
    except OSError:
        return False
    return True
