"""Storage failure and recovery on the simulated rig: the controller in-process, the records database
locked by another process or its disk full during emission.

What the operator and the records would show: whether the laser stayed on or went off (and how fast), the
storage interlock, the fault and its reset, and, row for row and in order, every treatment event and safety
row the recorder accepted before, during and after the failure, in the database at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from account_fixtures import CHEAP
from controller_fixtures import (
    PASSWORD,
    USERNAME,
    open_and_treat,
    prepare_data_dir,
    wait_prechecks,
    wait_until,
)

from control.controller import Controller
from control.controller.monitors import TICK_S
from control.recorder import DEFAULT_DURABLE_WITHIN_S, GUARD_PERIOD_S, Recorder, RecorderError
from control.supervisor import Refused, SystemState, Term
from storage import DataDir, scan_telemetry
from storage.safety_records import SafetyRecord
from storage.telemetry import DEFAULT_FLUSH_INTERVAL_S
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST

# One long step at 2 W: the session never ends by itself during a test.
LONG_PROTOCOL = protocol_json((120.0, 2.0, 2.0, 2.0, "constant"))
#: The bound on emission after a row can be neither written nor journaled: the recorder's durability bound,
#: its guard's period and the supervisor's tick; the rest is margin for a loaded two-core machine.
STOP_BOUND_S = DEFAULT_DURABLE_WITHIN_S + GUARD_PERIOD_S + TICK_S
#: A full disk is seen sooner: the telemetry file's next write fails (at most one flush interval later).
FULL_DISK_BOUND_S = DEFAULT_FLUSH_INTERVAL_S + TICK_S
MARGIN_S = 0.3

_HOLD_LOCK = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
connection.close()
"""


@contextlib.asynccontextmanager
async def lock_held_by_another_process(db_path: Path) -> AsyncIterator[None]:
    """A second process holds the database's write lock (``BEGIN EXCLUSIVE``, as in the sqlite3 CLI) until
    the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_LOCK,
        str(db_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 10.0)
        assert line.strip() == b"locked", line
        yield
    finally:
        with contextlib.suppress(OSError):
            process.stdin.write(b"release\n")
            await process.stdin.drain()
        try:
            await asyncio.wait_for(process.wait(), 10.0)
        except TimeoutError:
            process.kill()
            await process.wait()


class Accepted:
    """Every row the controller's recorder accepted, in order: event types and safety descriptions."""

    def __init__(self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        self.safety: list[str] = []
        event, safety = recorder.event, recorder.safety

        def spy_event(event_type: str, **columns: Any) -> None:
            dropped = recorder.dropped_events
            event(event_type, **columns)
            assert recorder.dropped_events == dropped
            self.events.append(event_type)

        async def spy_safety(record: SafetyRecord) -> None:
            try:
                await safety(record)
            except RecorderError as exc:
                if "not durable yet" not in str(exc):
                    raise
                self.safety.append(record.description)  # accepted and held; written when storage recovers
                raise
            self.safety.append(record.description)

        monkeypatch.setattr(recorder, "event", spy_event)
        monkeypatch.setattr(recorder, "safety", spy_safety)


def _last_ids(data: DataDir) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(data.db_path)) as db:
        events = db.execute("SELECT coalesce(max(event_id), 0) FROM treatment_events").fetchone()[0]
        safety = db.execute("SELECT coalesce(max(log_id), 0) FROM safety_log").fetchone()[0]
    return int(events), int(safety)


def _recorded(data: DataDir, after: tuple[int, int]) -> tuple[list[str], list[str]]:
    """Event types and safety descriptions written since ``after`` (from :func:`_last_ids`), in order."""
    with contextlib.closing(sqlite3.connect(data.db_path)) as db:
        events = db.execute(
            "SELECT event_type FROM treatment_events WHERE event_id > ? ORDER BY event_id", (after[0],)
        ).fetchall()
        safety = db.execute(
            "SELECT description FROM safety_log "
            "WHERE log_id > ? AND event_type != 'session_aborted_at_startup' ORDER BY log_id",
            (after[1],),
        ).fetchall()
    return [r[0] for r in events], [r[0] for r in safety]


async def _track(controller: Controller, monkeypatch: pytest.MonkeyPatch) -> tuple[Accepted, tuple[int, int]]:
    """Start counting accepted rows from now (everything accepted before is written first)."""
    await controller.supervisor.drain_log()
    await controller.recorder.flush()
    return Accepted(controller.recorder, monkeypatch), _last_ids(controller.data)


async def _all_written(controller: Controller) -> None:
    await controller.supervisor.drain_log()
    await wait_until(
        lambda: controller.recorder.held_rows == 0 and not controller.recorder.journal_path.exists(),
        10.0,
        "every held row in the database and the journal gone",
    )


def _assert_row_for_row(data: DataDir, accepted: Accepted, after: tuple[int, int]) -> None:
    events, safety = _recorded(data, after)
    assert events == accepted.events
    assert safety == accepted.safety


async def _wait_emitting(controller: Controller, what: str) -> None:
    """Wait until the laser emits; fail at once, saying why, if a fault latches meanwhile."""
    sim = controller.sim_rig
    assert sim is not None

    sup = controller.supervisor
    deadline = time.monotonic() + 5.0
    while not sim.model.laser_output_on:
        fault = sup.fault
        if fault is not None:
            raise AssertionError(f"fault while waiting for {what}: {fault.event_type}: {fault.what}")
        if time.monotonic() > deadline:
            failing = "; ".join(f"{t.term.value}: {t.detail}" for t in sup.failing())
            raise AssertionError(
                f"no {what} after 5 s: state {sup.state.value}, failing: {failing or 'none'}"
            )
        await asyncio.sleep(0.005)


async def _treat_again_and_abort(controller: Controller) -> None:
    """A new session opens, arms and emits after the failure."""
    sim = controller.sim_rig
    assert sim is not None
    sim.command("pedal up")
    await open_and_treat(controller, "long")
    await controller.abort("checking that a new session works")
    sim.command("pedal up")


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(tmp_path / "data", migrated_template, {"long": LONG_PROTOCOL})


@pytest.fixture
async def controller(data: DataDir) -> AsyncIterator[Controller]:
    ctl = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.close()


async def test_a_database_locked_during_emission_loses_nothing_and_emission_goes_on(
    controller: Controller, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, sup, recorder = controller.sim_rig, controller.supervisor, controller.recorder
    assert sim is not None
    accepted, after = await _track(controller, monkeypatch)
    await open_and_treat(controller, "long")
    before_lock = len(accepted.events) + len(accepted.safety)
    async with lock_held_by_another_process(data.db_path):
        locked_at = time.monotonic()
        # Longer than the database's 5 s busy timeout: the recorder's writes time out and are retried.
        while time.monotonic() - locked_at < 6.0:
            sim.command("pedal up")
            await wait_until(lambda: sup.state is SystemState.ARMED, 2.0, "ARMED after the pedal release")
            await asyncio.sleep(0.3)  # the operator's foot is up for a moment
            sim.command("pedal down")
            await _wait_emitting(controller, "emission again")
            # Half a second of emission, its rows going to the journal while the database is locked.
            emitted = sup.treating_seconds()
            await wait_until(
                lambda emitted=emitted: (
                    sup.treating_seconds() >= emitted + 0.5 or sup.state is not SystemState.TREATING
                ),
                5.0,
                "0.5 s more of emission",
            )
            assert sup.fault is None and sup.state is SystemState.TREATING
            assert sup.terms()[Term.STORAGE].ok and recorder.healthy
        assert recorder.journaled_rows > 0 and recorder.journal_path.exists()
        during_lock = len(accepted.events) + len(accepted.safety) - before_lock
        assert during_lock >= 10
        assert len(_recorded(data, after)[0]) < len(accepted.events)  # the database has not got them yet
    await _all_written(controller)
    assert sim.model.laser_output_on and sup.fault is None
    await controller.abort("storage test over")
    await _treat_again_and_abort(controller)
    await _all_written(controller)
    _assert_row_for_row(data, accepted, after)
    assert accepted.events.count("laser_on") >= 8


async def test_a_locked_database_and_an_unwritable_journal_stop_emission_within_the_bound_then_recover(
    controller: Controller, data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, sup, recorder = controller.sim_rig, controller.supervisor, controller.recorder
    assert sim is not None
    accepted, after = await _track(controller, monkeypatch)
    await open_and_treat(controller, "long")
    session = controller.session
    assert session is not None
    await sup.drain_log()
    await recorder.flush()  # nothing waits: the row below is the first one neither written nor journaled
    recorder.journal_path.mkdir()  # a directory where the journal goes: it cannot be written, even by root
    async with lock_held_by_another_process(data.db_path):
        accepted_at = time.monotonic()
        session.engine.override_power(2.5, "storage test", actor=USERNAME, step=1)  # one user_action row
        await wait_until(lambda: not sim.model.laser_output_on, 3.0, "laser output off")
        took = time.monotonic() - accepted_at
        assert took < STOP_BOUND_S + MARGIN_S, f"emission stopped {took:.3f} s after the row was accepted"
        assert took >= DEFAULT_DURABLE_WITHIN_S - 0.05  # a lock alone did not stop it: the bound did
        fault = sup.fault
        assert sup.state is SystemState.FAULT and fault is not None and fault.term is Term.STORAGE
        assert "neither in the database nor in the journal" in fault.what
        assert not sup.terms()[Term.STORAGE].ok
        recorder.journal_path.rmdir()  # the journal can take rows again; the database is still locked
        await wait_until(lambda: sup.terms()[Term.STORAGE].ok, 3.0, "the storage interlock to clear")
        assert recorder.journaled_rows > 0
    await _all_written(controller)
    sim.command("pedal up")
    await wait_until(lambda: sup.readings.pedal is False, 2.0, "pedal up")
    await controller.reset_fault(USERNAME, PASSWORD)
    assert controller.supervisor.state is SystemState.READY
    await wait_prechecks(controller)
    await controller.arm(PASSWORD)
    sim.command("pedal down")
    await _wait_emitting(controller, "emission after the reset")
    await controller.abort("storage test over")
    await _treat_again_and_abort(controller)
    await _all_written(controller)
    _assert_row_for_row(data, accepted, after)
    assert any("storage cannot record" in d for d in accepted.safety)  # the fault's own rows are there


async def test_a_clean_shutdown_with_the_database_locked_journals_every_row_and_the_next_start_writes_them(
    data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await first.start()
    try:
        accepted, after = await _track(first, monkeypatch)
        sim = first.sim_rig
        assert sim is not None
        await open_and_treat(first, "long")
        async with lock_held_by_another_process(data.db_path):
            sim.command("pedal up")
            await wait_until(lambda: first.supervisor.state is SystemState.ARMED, 2.0, "ARMED")
            await first.close()  # what SIGTERM does
            journal = first.recorder.journal_path
            assert journal.exists() and journal.stat().st_mode & 0o777 == 0o640
            assert first.recorder.held_rows == first.recorder.journaled_rows > 0
    finally:
        await first.close()
    assert any(d.startswith("treating -> armed") for d in accepted.safety)
    events, safety = _recorded(data, after)
    assert len(events) < len(accepted.events) or len(safety) < len(accepted.safety)

    second = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await second.start()  # writes the journal first
    try:
        assert not journal.exists() and second.recorder.held_rows == 0
    finally:
        await second.close()
    events, safety = _recorded(data, after)
    assert events == accepted.events
    assert safety[: len(accepted.safety)] == accepted.safety


def _fill(path: Path) -> float:
    """Write ``path`` until the disk is full; returns when (monotonic) the disk refused the last byte."""
    chunk = b"\0" * (256 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return time.monotonic()
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        done = subprocess.run(["umount", str(where)], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            held = []
            for fd in Path("/proc/self/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(str(where)):
                        held.append(target)
            subprocess.run(["umount", "-l", str(where)], check=False)
            # Known: after a full disk the closed controller's process still holds descriptors of the database
            # (not Python objects: SQLite's own); the disk is detached lazily and the test says so.
            sys.stderr.write(f"the small disk stayed in use after the test (detached lazily): {held}\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk is simulated with a small tmpfs, which needs root")
async def test_a_full_disk_stops_emission_within_the_bound_and_freeing_it_recovers(
    tmp_path: Path, migrated_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with small_disk(tmp_path / "small", "48m") as disk:
        data = await prepare_data_dir(disk / "data", migrated_template, {"long": LONG_PROTOCOL})
        # The disk is small on purpose: the session's free-space floor is switched off for this test.
        with sqlite3.connect(data.db_path) as db:
            db.execute("UPDATE system_config SET config_value = '0' WHERE config_key = 'min_free_disk_mb'")
        controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
        await controller.start()
        try:
            await _full_disk(controller, data, disk, monkeypatch)
        finally:
            await controller.close()


async def _full_disk(
    controller: Controller, data: DataDir, disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, sup, recorder = controller.sim_rig, controller.supervisor, controller.recorder
    assert sim is not None
    recorder.min_free_bytes = 0  # the disk is small on purpose: only a write that fails counts here
    accepted, after = await _track(controller, monkeypatch)
    await open_and_treat(controller, "long")
    filler = disk / "filler"
    filled_at = await asyncio.to_thread(_fill, filler)
    await wait_until(lambda: not sim.model.laser_output_on, 3.0, "laser output off")
    took = time.monotonic() - filled_at
    assert took < FULL_DISK_BOUND_S + MARGIN_S, f"emission stopped {took:.3f} s after the disk was full"
    fault = sup.fault
    assert sup.state is SystemState.FAULT and fault is not None and fault.term is Term.STORAGE
    assert "the disk holding the records is full" in fault.what
    # Arming is refused, and the refusal says why in words (the console's connection gets the same text as
    # its reply).
    with pytest.raises(Refused, match="the disk holding the records is full") as refused:
        await controller.arm(PASSWORD)
    assert "internal error" not in str(refused.value) and "OperationalError" not in str(refused.value)

    filler.unlink()  # space freed: the held telemetry lines and rows are written, the interlock clears
    await wait_until(lambda: sup.terms()[Term.STORAGE].ok, 5.0, "the storage interlock to clear")
    await _all_written(controller)
    sim.command("pedal up")
    await wait_until(lambda: sup.readings.pedal is False, 2.0, "pedal up")
    await controller.reset_fault(USERNAME, PASSWORD)
    assert controller.supervisor.state is SystemState.READY  # the same session goes on
    await wait_prechecks(controller)
    await controller.arm(PASSWORD)
    sim.command("pedal down")
    await _wait_emitting(controller, "emission after the reset")
    session = controller.session
    assert session is not None
    await controller.abort("storage test over")
    # The session's telemetry file lost no line to the full disk: whole lines only, as many as recorded.
    with contextlib.closing(sqlite3.connect(data.db_path)) as db:
        path, count = db.execute(
            "SELECT telemetry_path, telemetry_line_count FROM sessions WHERE session_id = ?",
            (session.opened.session_id,),
        ).fetchone()
    scanned = scan_telemetry(Path(path))
    assert scanned.partial_tail_bytes == 0 and scanned.line_count == count > 0
    await _treat_again_and_abort(controller)
    await _all_written(controller)
    _assert_row_for_row(data, accepted, after)
    assert any("the disk holding the records is full" in d for d in accepted.safety)
