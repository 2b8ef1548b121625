"""The session recorder: ordered batches, immediate safety records, health on failure, recheck, telemetry."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from control.recorder import EVENT_TYPES, MAX_BATCH_ROWS, Recorder, RecorderError
from storage import apply_pragmas, create_engine, session_factory, utc_now
from tests.support import FakeClock

START = datetime(2026, 3, 14, 9, 30, 0)
MIB = 1024 * 1024


class FakeMono:
    """A monotonic clock the test sets by hand (seconds)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Usage:
    free: int


class FakeDisk:
    """``shutil.disk_usage`` with a free space the test sets; counts its calls."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: Path) -> Usage:
        self.calls += 1
        return Usage(self.free)


async def _wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def _insert_session(db_path: Path) -> None:
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('jane', 'Jane', 'technician')"
        )
        connection.execute(
            "INSERT INTO subjects (subject_code, created_by_tech_id) VALUES ('P-2026-0001', 1)"
        )
        for _ in range(2):
            connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
                "VALUES (1, 1, '2026-03-14 09:30:00', 'in_progress')"
            )
    connection.close()


def _rows(db_path: Path, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
    connection = sqlite3.connect(str(db_path))
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def _events(db_path: Path) -> list[sqlite3.Row]:
    return _rows(db_path, "SELECT * FROM treatment_events ORDER BY event_id")


@pytest.fixture
def data_root(db_path: Path) -> Path:
    _insert_session(db_path)
    return db_path.parent


@pytest.fixture
async def fast_sessions(db_path: Path, data_root: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions whose connections give up on a locked database after 50 ms."""
    engine = create_engine(db_path, busy_timeout_ms=50)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def disk() -> FakeDisk:
    return FakeDisk(10 * 1024 * MIB)


@pytest.fixture
def mono() -> FakeMono:
    return FakeMono(1000.0)


@pytest.fixture
async def recorder(
    fast_sessions: async_sessionmaker[AsyncSession], data_root: Path, disk: FakeDisk, mono: FakeMono
) -> AsyncIterator[Recorder]:
    rec = Recorder(
        fast_sessions,
        data_root=data_root,
        clock=FakeClock(START),
        mono=mono,
        disk_usage=disk,
        space_check_interval_s=0.05,
    )
    try:
        yield rec
    finally:
        await rec.close()


@pytest.fixture
def locked(db_path: Path) -> Iterator[Callable[[bool], None]]:
    """``locked(True)`` takes the write lock from another connection; ``locked(False)`` frees it."""
    connection = sqlite3.connect(str(db_path), isolation_level=None)

    def hold(on: bool) -> None:
        connection.execute("BEGIN EXCLUSIVE" if on else "ROLLBACK")

    try:
        yield hold
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


def _health_log(recorder: Recorder) -> list[tuple[bool, str | None]]:
    changes: list[tuple[bool, str | None]] = []
    recorder.on_health_change(lambda healthy, problem: changes.append((healthy, problem)))
    return changes


async def test_events_land_in_batches_in_order_with_offsets_from_the_session_start(
    recorder: Recorder, db_path: Path, mono: FakeMono
) -> None:
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    assert recorder.session_id == 1
    recorder.event("protocol_step_start", ring_mm=3.0, position_um=1000.0, details={"step": 1})
    mono.now = 1000.25
    recorder.event(
        "laser_on",
        commanded_w=5.0,
        actual_w=4.9,
        photodiode_v=2.45,
        footpedal=True,
        smoothing=True,
        interlocks={"estop": True, "footpedal": True},
    )
    mono.now = 1002.0
    recorder.event("power_change", commanded_w=6.0, at_mono=1001.5)  # happened half a second ago
    # Written by the background task (at least every 0.1 s), without a flush.
    await _wait_until(lambda: len(_events(db_path)) == 3 and recorder.held_rows == 0, within_s=2.0)
    rows = _events(db_path)
    assert [r["event_type"] for r in rows] == ["protocol_step_start", "laser_on", "power_change"]
    assert [r["time_offset_ms"] for r in rows] == [0, 250, 1500]
    assert [r["session_id"] for r in rows] == [1, 1, 1]
    assert rows[1]["laser_power_actual_watts"] == 4.9 and rows[1]["footpedal_state"] == 1
    assert json.loads(rows[1]["interlock_status"]) == {"estop": True, "footpedal": True}
    assert json.loads(rows[0]["event_details"]) == {"step": 1}
    assert rows[0]["ring_size_mm"] == 3.0 and rows[0]["actuator_position_um"] == 1000.0
    # The clock stands still in this test: the late event is stamped half a second before "now".
    assert rows[2]["timestamp"] == "2026-03-14 09:29:59.500000"
    assert recorder.healthy and recorder.held_rows == 0


async def test_a_large_burst_is_written_in_several_batches_in_order(
    recorder: Recorder, db_path: Path, mono: FakeMono
) -> None:
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    count = MAX_BATCH_ROWS * 2 + 37
    for index in range(count):
        mono.now = 1000.0 + index / 1000
        recorder.event("power_change", commanded_w=index / 100)
    await recorder.flush()
    rows = _rows(
        db_path, "SELECT time_offset_ms, laser_power_commanded_watts FROM treatment_events ORDER BY event_id"
    )
    assert [r[0] for r in rows] == list(range(count))
    assert [r[1] for r in rows] == [index / 100 for index in range(count)]


async def test_bad_events_are_refused_and_nothing_is_queued(recorder: Recorder, mono: FakeMono) -> None:
    with pytest.raises(RecorderError, match="no session is being recorded"):
        recorder.event("laser_on")
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    assert "laser_on" in EVENT_TYPES and len(EVENT_TYPES) == 14
    cases: list[tuple[dict[str, object], str]] = [
        ({"event_type": "laser_blast"}, "unknown event type 'laser_blast'"),
        ({"event_type": "power_set", "commanded_w": -1.0}, "commanded_w must be a finite number >= 0"),
        ({"event_type": "power_set", "actual_w": float("nan")}, "actual_w must be a finite number >= 0"),
        ({"event_type": "ring_size_set", "ring_mm": float("inf")}, "ring_mm must be a finite number"),
        ({"event_type": "laser_on", "footpedal": 1}, "footpedal must be True, False or None"),
        ({"event_type": "laser_on", "interlocks": {"estop": "ok"}}, "interlocks must map names"),
        ({"event_type": "user_action", "details": {"x": float("nan")}}, "details cannot be stored as JSON"),
        ({"event_type": "laser_on", "at_mono": 999.0}, "before the session start"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            recorder.event(**kwargs)  # type: ignore[arg-type]
    assert recorder.held_rows == 0
    with pytest.raises(RecorderError, match="still being recorded"):
        await recorder.begin_session(2, 1, started_mono=1000.0, started_at=START)
    await recorder.end_session()
    with pytest.raises(RecorderError, match="session 99 does not exist"):
        await recorder.begin_session(99, 1, started_mono=1000.0, started_at=START)
    with pytest.raises(ValueError, match="session_id must be a positive int"):
        await recorder.begin_session(0, 1, started_mono=1000.0, started_at=START)
    assert recorder.session_id is None


async def test_a_locked_database_makes_it_unhealthy_once_and_recheck_writes_the_held_rows(
    recorder: Recorder, db_path: Path, mono: FakeMono, disk: FakeDisk, locked: Callable[[bool], None]
) -> None:
    changes = _health_log(recorder)
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    recorder.event("laser_on", commanded_w=5.0)
    await recorder.flush()
    locked(True)
    for index in range(1, 4):
        mono.now = 1000.0 + index
        recorder.event("power_change", commanded_w=5.0 + index)
    await _wait_until(lambda: not recorder.healthy)
    assert changes == [(False, "records database write failed: database is locked")]
    assert recorder.problem == "records database write failed: database is locked"
    with pytest.raises(RecorderError, match=r"storage unhealthy .* 3 event row\(s\) held"):
        await recorder.flush()
    mono.now = 1005.0
    recorder.event("laser_off")  # still accepted and held, in order
    assert recorder.held_rows == 4

    locked(False)
    # The background task keeps running (free-space checks) but never heals the recorder by itself.
    calls = disk.calls
    await _wait_until(lambda: disk.calls >= calls + 2)
    assert not recorder.healthy and recorder.held_rows == 4 and len(changes) == 1

    assert await recorder.recheck() is True
    assert changes == [(False, "records database write failed: database is locked"), (True, None)]
    assert recorder.healthy and recorder.problem is None and recorder.held_rows == 0
    rows = _events(db_path)
    assert [(r["event_type"], r["time_offset_ms"]) for r in rows] == [
        ("laser_on", 0),
        ("power_change", 1000),
        ("power_change", 2000),
        ("power_change", 3000),
        ("laser_off", 5000),
    ]


async def test_recheck_fails_while_the_database_is_still_locked(
    recorder: Recorder, db_path: Path, locked: Callable[[bool], None]
) -> None:
    changes = _health_log(recorder)
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    locked(True)
    recorder.event("laser_on")
    with pytest.raises(RecorderError):
        await recorder.flush()
    assert await recorder.recheck() is False  # no held row is lost by a failed recheck
    assert recorder.held_rows == 1 and changes == [
        (False, "records database write failed: database is locked")
    ]
    locked(False)
    assert await recorder.recheck() is True
    assert len(_events(db_path)) == 1


async def test_recheck_with_nothing_held_proves_the_database_writable(
    recorder: Recorder, locked: Callable[[bool], None]
) -> None:
    locked(True)
    with pytest.raises(RecorderError, match="database is locked"):
        await recorder.safety("e_stop_pressed", "critical", "E-stop pressed")
    assert recorder.held_rows == 0
    assert await recorder.recheck() is False
    locked(False)
    assert await recorder.recheck() is True


async def test_safety_records_are_written_at_once_with_the_session_and_its_technician(
    recorder: Recorder, db_path: Path
) -> None:
    await recorder.safety("controller_started", "info", "Controller started", system_state="IDLE")
    await recorder.begin_session(2, 1, started_mono=1000.0, started_at=START)
    await recorder.safety(
        "photodiode_deviation",
        "warning",
        "Measured power 18 % below commanded",
        system_state="TREATING",
        laser_state="on",
        footpedal_state=True,
        smoothing_device_state=True,
        photodiode_voltage_v=2.1,
        action_taken="logged",
        details={"deviation_percent": -18.0},
    )
    rows = _rows(
        db_path, "SELECT * FROM safety_log WHERE event_type != 'database_initialized' ORDER BY log_id"
    )
    assert [(r["event_type"], r["session_id"], r["tech_id"]) for r in rows] == [
        ("controller_started", None, None),
        ("photodiode_deviation", 2, 1),
    ]
    assert rows[1]["timestamp"] == "2026-03-14 09:30:00.000000"
    assert json.loads(rows[1]["details"]) == {"deviation_percent": -18.0}
    with pytest.raises(ValueError, match="severity must be one of"):
        await recorder.safety("x", "bad", "d")
    with pytest.raises(ValueError, match="photodiode_voltage_v must be a finite number"):
        await recorder.safety("x", "info", "d", photodiode_voltage_v=float("nan"))
    assert len(_rows(db_path, "SELECT * FROM safety_log")) == 3
    assert recorder.healthy


async def test_a_failed_safety_record_raises_and_reports_once(
    recorder: Recorder, db_path: Path, locked: Callable[[bool], None]
) -> None:
    changes = _health_log(recorder)
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    locked(True)
    for _ in range(2):
        with pytest.raises(
            RecorderError, match="safety record 'e_stop_pressed' not written: database is locked"
        ):
            await recorder.safety("e_stop_pressed", "critical", "E-stop pressed")
    assert changes == [(False, "safety record 'e_stop_pressed' not written: database is locked")]
    locked(False)
    assert await recorder.recheck() is True
    await recorder.safety("e_stop_pressed", "critical", "E-stop pressed")
    assert len(_rows(db_path, "SELECT * FROM safety_log WHERE event_type = 'e_stop_pressed'")) == 1


async def test_low_free_space_makes_it_unhealthy_at_begin_and_from_the_background_check(
    recorder: Recorder, disk: FakeDisk, db_path: Path
) -> None:
    changes = _health_log(recorder)
    disk.free = 10 * MIB
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    assert not recorder.healthy
    assert changes == [(False, f"free space under {db_path.parent} is 10.0 MiB, below the 50.0 MiB minimum")]
    recorder.event("laser_on")
    await recorder.end_session()
    assert recorder.held_rows == 1  # held, not written, while unhealthy
    assert await recorder.recheck() is False
    disk.free = 60 * MIB
    assert await recorder.recheck() is True
    assert recorder.held_rows == 0 and len(_events(db_path)) == 1

    # The background task notices space running out during a session.
    await recorder.begin_session(2, 1, started_mono=1000.0, started_at=START)
    assert recorder.healthy
    disk.free = 49 * MIB
    await _wait_until(lambda: not recorder.healthy)
    assert changes[-1] == (
        False,
        f"free space under {db_path.parent} is 49.0 MiB, below the 50.0 MiB minimum",
    )
    assert len(changes) == 3


async def test_an_unreadable_data_root_is_a_storage_problem(
    fast_sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    rec = Recorder(fast_sessions, data_root=tmp_path / "missing", mono=FakeMono(0.0))
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
        assert not rec.healthy and rec.problem is not None
        assert rec.problem.startswith(f"cannot read the free space under {tmp_path / 'missing'}")
    finally:
        await rec.close()


async def test_the_telemetry_file_is_closed_at_the_end_and_its_summary_returned(
    recorder: Recorder, db_path: Path, data_root: Path
) -> None:
    relative = Path("sessions/P-2026-0001/1/telemetry.jsonl")
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START, telemetry_path=relative)
    for index in range(120):
        recorder.telemetry({"t_ms": index * 10, "photodiode_v": index / 40, "pedal": True})
    with pytest.raises(ValueError, match="'photodiode_v' is not a finite number"):
        recorder.telemetry({"t_ms": 1200, "photodiode_v": float("nan")})
    recorder.event("laser_on")
    summary = await recorder.end_session()
    assert summary is not None and recorder.session_id is None
    data = (data_root / relative).read_bytes()
    assert summary.path == data_root / relative
    assert (summary.line_count, summary.size_bytes) == (120, len(data))
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert len(_events(db_path)) == 1 and recorder.healthy
    with pytest.raises(RecorderError, match="no telemetry file is open"):
        recorder.telemetry({"t_ms": 0})
    with pytest.raises(RecorderError, match="no session is being recorded"):
        await recorder.end_session()


async def test_an_existing_telemetry_file_refuses_the_session(recorder: Recorder, data_root: Path) -> None:
    target = data_root / "sessions" / "P-2026-0001" / "1" / "telemetry.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b'{"old":1}\n')
    with pytest.raises(RecorderError, match="already exists"):
        await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START, telemetry_path=target)
    assert recorder.session_id is None and target.read_bytes() == b'{"old":1}\n'


async def test_rows_beyond_the_memory_limit_are_counted_and_logged(
    fast_sessions: async_sessionmaker[AsyncSession],
    data_root: Path,
    locked: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0), max_held_rows=2)
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
        locked(True)
        with caplog.at_level(logging.ERROR, logger="control.recorder"):
            for _ in range(3):
                rec.event("user_action")
        assert rec.held_rows == 2 and rec.dropped_events == 1
        assert any("not recorded: 2 rows already held (1 dropped so far)" in m for m in caplog.messages)
        with pytest.raises(RecorderError):
            await rec.flush()
        with caplog.at_level(logging.ERROR, logger="control.recorder"):
            assert await rec.close() == 2  # held rows that could not be written are reported, not hidden
        assert any("recorder closed with 2 event row(s)" in m for m in caplog.messages)
    finally:
        await rec.close()


def test_settings_are_checked(fast_sessions: async_sessionmaker[AsyncSession], data_root: Path) -> None:
    for kwargs, message in (
        ({"min_free_bytes": -1}, "min_free_bytes"),
        ({"batch_interval_s": 0.5}, "batch_interval_s"),
        ({"space_check_interval_s": 0}, "space_check_interval_s"),
        ({"max_held_rows": 0}, "max_held_rows"),
    ):
        with pytest.raises(ValueError, match=message):
            Recorder(fast_sessions, data_root=data_root, **kwargs)  # type: ignore[arg-type]


async def test_the_default_clocks_stamp_events_with_utc_now(
    fast_sessions: async_sessionmaker[AsyncSession], db_path: Path, data_root: Path
) -> None:
    rec = Recorder(fast_sessions, data_root=data_root)
    try:
        await rec.begin_session(1, 1, started_mono=time.monotonic(), started_at=START)
        rec.event("pause")
        await rec.end_session()
    finally:
        await rec.close()
    row = _events(db_path)[0]
    stamp = datetime.fromisoformat(row["timestamp"])
    assert abs(utc_now() - stamp) < timedelta(minutes=1)
    assert 0 <= row["time_offset_ms"] < 60_000


async def test_a_read_only_database_makes_it_unhealthy_and_safety_records_raise(
    db_path: Path, data_root: Path
) -> None:
    # The database opened read-only, as on a medium that turned read-only (chmod does not stop root).
    engine = create_async_engine(f"sqlite+aiosqlite:///file:{db_path}?mode=ro&uri=true")
    event.listen(engine.sync_engine, "connect", lambda connection, _record: apply_pragmas(connection, 50))
    rec = Recorder(session_factory(engine), data_root=data_root, mono=FakeMono(0.0))
    changes = _health_log(rec)
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
        rec.event("laser_on")
        with pytest.raises(RecorderError, match=r"1 event row\(s\) held"):
            await rec.flush()
        problem = "records database write failed: attempt to write a readonly database"
        assert changes == [(False, problem)]
        with pytest.raises(RecorderError, match="attempt to write a readonly database"):
            await rec.safety("e_stop_pressed", "critical", "E-stop pressed")
        assert await rec.recheck() is False
        assert changes == [(False, problem)] and rec.held_rows == 1
    finally:
        assert await rec.close() == 1
        await engine.dispose()
    assert _events(db_path) == []


async def test_a_failed_telemetry_write_makes_it_unhealthy_until_the_session_ends(
    fast_sessions: async_sessionmaker[AsyncSession], data_root: Path
) -> None:
    def full_disk(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0), telemetry_write=full_disk)
    changes = _health_log(rec)
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START, telemetry_path=Path("t.jsonl"))
        for index in range(50):  # the 50th line is written at once, and fails
            rec.telemetry({"t": index})
        assert not rec.healthy and len(changes) == 1
        assert changes[0][1] is not None and "No space left on device" in changes[0][1]
        with pytest.raises(RecorderError, match="No space left on device"):
            rec.telemetry({"t": 50})
        assert await rec.recheck() is False  # the session's telemetry is broken for good
        summary = await rec.end_session()
        assert summary is not None and summary.line_count == 0
        assert await rec.recheck() is True  # the next session starts with a new file
    finally:
        await rec.close()
