"""Run ``tosca`` with every asyncio callback of its process timed: which work holds the event loop, and for
how long (a safety edge that arrives meanwhile waits for it).

Run by ``bench_safety.py --profile-loop`` as the controller's command::

    python tests/bench/loop_profile.py REPORT.json controller --ports ... --data-dir ...

Every callback the loop runs (a task step, a reader callback, a timer) is timed with ``time.perf_counter``;
at exit REPORT.json holds a histogram of the durations and, for each callback that took longer than 0.3 ms
at least once, its name (a task's name and coroutine), how often it did and its longest run. The timing
costs a few microseconds per callback, so the figures are slightly high.
"""

from __future__ import annotations

import asyncio.events
import atexit
import json
import sys
import time
from collections import Counter
from typing import Any

#: Histogram bin upper edges, ms.
BINS_MS = (0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf"))
#: Callbacks at least this long (ms) are reported by name.
SLOW_MS = 0.3

_histogram: Counter[float] = Counter()
_slow: Counter[str] = Counter()
_longest: dict[str, float] = {}


def _name(callback: Any) -> str:
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return f"task {owner.get_name()}: {getattr(coro, '__qualname__', type(coro).__name__)}"
    return str(getattr(callback, "__qualname__", None) or type(callback).__name__)


def install(report_path: str) -> None:
    original = asyncio.events.Handle._run

    def timed(handle: asyncio.events.Handle) -> None:
        start = time.perf_counter()
        original(handle)
        ms = (time.perf_counter() - start) * 1e3
        _histogram[next(edge for edge in BINS_MS if ms < edge)] += 1
        if ms >= SLOW_MS:
            name = _name(handle._callback)  # type: ignore[attr-defined]
            _slow[name] += 1
            _longest[name] = max(_longest.get(name, 0.0), ms)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    def write() -> None:
        report = {
            "histogram_ms": {
                ("inf" if edge == float("inf") else str(edge)): _histogram[edge] for edge in BINS_MS
            },
            "slow": [
                {"callback": name, "count": count, "longest_ms": round(_longest[name], 3)}
                for name, count in _slow.most_common()
            ],
        }
        with open(report_path, "w", encoding="utf-8") as out:
            json.dump(report, out)

    atexit.register(write)


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: loop_profile.py REPORT.json TOSCA-ARGS...", file=sys.stderr)
        return 2
    install(sys.argv[1])
    from tui.cli import main as tosca

    return tosca(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
