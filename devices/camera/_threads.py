"""Scheduling priority of the camera's worker threads.

A camera read in the calling process (the simulated rig's own camera in ``tosca controller --sim``, tests,
tools) shares it with that process's asyncio loop. Its capture and analysis threads therefore run at a lower
scheduling priority (a higher nice value, Linux per-thread): when the CPU is contended the loop thread is
scheduled first, and the camera reports a lower frame rate instead of delaying the loop. A configured camera
runs in a process of its own (:mod:`devices.camera._process`), which lowers its priority as a whole.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, TypeVar

_T = TypeVar("_T")

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


class LowPriorityWorker:
    """One worker thread of its own, ``thread_nice`` steps below the process's priority, that the asyncio
    loop hands work to (:meth:`run`) and never waits on; closed with :meth:`close` or :meth:`aclose`, which
    let work in progress finish and drop what is queued."""

    #: What the subclass is, for the error of a call after it was closed.
    WHAT: ClassVar[str] = "the worker"

    def __init__(self, *, thread_name: str, thread_nice: int) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=thread_name,
            initializer=lower_current_thread_priority,
            initargs=(check_nice(thread_nice),),
        )
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.WHAT} is closed")

    async def run(self, work: Callable[[], _T]) -> _T:
        """``work()`` on the worker thread; RuntimeError once closed."""
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        """Stop the worker thread, waiting for work in progress to finish."""
        self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
