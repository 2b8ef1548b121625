"""Test-wide fixtures.

Every test is checked for what it leaves behind: asyncio tasks still running on the test's loop, threads it
started, and pseudo-terminals (``/dev/ptmx`` or ``/dev/pts/*`` descriptors) it opened. A test that leaks
any of them fails, so device and controller code is forced to clean up after itself.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.maintenance import upgrade
from storage.paths import DataDir


def _pty_fds() -> set[int]:
    found: set[int] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target == "/dev/ptmx" or target.startswith("/dev/pts/"):
            found.add(int(name))
    return found


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_threads_or_ptys() -> Iterator[None]:
    threads_before = _live_threads()
    ptys_before = _pty_fds()
    yield
    deadline = time.monotonic() + 2.0
    while True:
        new_threads = [
            t
            for t in _live_threads() - threads_before
            if not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))
        ]
        new_ptys = _pty_fds() - ptys_before
        if not (new_threads or new_ptys) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems = []
    if new_threads:
        problems.append(f"threads left running: {[t.name for t in new_threads]}")
    if new_ptys:
        problems.append(f"pseudo-terminal descriptors left open: {sorted(new_ptys)}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database brought to head by :func:`storage.maintenance.upgrade` once per run; tests copy it (it is
    closed, so a plain copy is safe)."""
    data_dir = DataDir(tmp_path_factory.mktemp("template"))
    upgrade(data_dir)
    return data_dir.db_path


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    deadline = time.monotonic() + 1.0
    while True:
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    if left:
        for task in left:
            task.cancel()
        pytest.fail(f"asyncio tasks left running: {[t.get_coro() for t in left]}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        if (
            func is not None
            and inspect.iscoroutinefunction(func)
            and "no_leaked_tasks" not in item.fixturenames
        ):
            item.fixturenames.insert(0, "no_leaked_tasks")
