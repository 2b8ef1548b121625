"""The session recorder: ordered batches, durable safety rows, the journal, health and recovery, telemetry."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import control.recorder as recorder_module
from control.recorder import (
    DEFAULT_DURABLE_WITHIN_S,
    EVENT_TYPES,
    GUARD_PERIOD_S,
    MAX_BATCH_ROWS,
    Recorder,
    RecorderError,
    storage_failure,
)
from storage import apply_pragmas, create_engine, session_factory, utc_now
from storage.journal import MARK_KEY, Journal, JournalEntry, write_entries
from storage.safety_records import SafetyRecord
from storage.telemetry_line import TelemetrySample, decode_sample
from tests.support import FakeClock, wait_until

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


class JournalDisk:
    """``os.write`` for the journal file that fails with "No space left on device" while ``full``."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


@pytest.fixture
def journal_disk() -> JournalDisk:
    return JournalDisk()


@pytest.fixture
def disk() -> FakeDisk:
    return FakeDisk(10 * 1024 * MIB)


@pytest.fixture
def mono() -> FakeMono:
    return FakeMono(1000.0)


@pytest.fixture
async def recorder(
    fast_sessions: async_sessionmaker[AsyncSession],
    data_root: Path,
    disk: FakeDisk,
    mono: FakeMono,
    journal_disk: JournalDisk,
) -> AsyncIterator[Recorder]:
    rec = Recorder(
        fast_sessions,
        data_root=data_root,
        clock=FakeClock(START),
        mono=mono,
        disk_usage=disk,
        journal_write=journal_disk,
        space_check_interval_s=0.05,
        retry_interval_s=0.2,
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
    await wait_until(lambda: len(_events(db_path)) == 3 and recorder.held_rows == 0, timeout_s=2.0)
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


async def test_with_a_database_thread_the_batches_are_written_there_in_order_and_it_ends_with_close(
    fast_sessions: async_sessionmaker[AsyncSession],
    db_path: Path,
    data_root: Path,
    mono: FakeMono,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writers: list[str] = []

    async def watched(session: AsyncSession, entries: Sequence[JournalEntry]) -> None:
        writers.append(threading.current_thread().name)
        await write_entries(session, entries)

    monkeypatch.setattr(recorder_module, "write_entries", watched)
    rec = Recorder(fast_sessions, data_root=data_root, mono=mono, db_path=db_path)
    try:
        await rec.begin_session(1, 1, started_mono=1000.0, started_at=START)
        assert "recorder-db" in {t.name for t in threading.enumerate()}
        for index in range(5):
            mono.now = 1000.0 + index
            rec.event("power_change", commanded_w=float(index))
        await rec.safety(SafetyRecord(event_type="fault_reset", severity="info", description="reset"))
        rows = _rows(db_path, "SELECT laser_power_commanded_watts FROM treatment_events ORDER BY event_id")
        assert [r[0] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert _rows(db_path, "SELECT COUNT(*) FROM safety_log WHERE event_type = 'fault_reset'")[0][0] == 1
        assert writers and set(writers) == {"recorder-db"}, writers
        assert rec.healthy
    finally:
        await rec.close()
    assert "recorder-db" not in {t.name for t in threading.enumerate()}


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


async def test_safety_records_are_written_at_once_with_the_session_and_its_technician(
    recorder: Recorder, db_path: Path
) -> None:
    await recorder.safety(
        SafetyRecord(
            event_type="controller_started",
            severity="info",
            description="Controller started",
            system_state="IDLE",
        )
    )
    await recorder.begin_session(2, 1, started_mono=1000.0, started_at=START)
    await recorder.safety(
        SafetyRecord(
            event_type="photodiode_deviation",
            severity="warning",
            description="Measured power 18 % below commanded",
            system_state="TREATING",
            laser_state="on",
            footpedal_state=True,
            smoothing_device_state=True,
            photodiode_voltage_v=2.1,
            action_taken="logged",
            details={"deviation_percent": -18.0},
        )
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
        await recorder.safety(SafetyRecord(event_type="x", severity="bad", description="d"))
    with pytest.raises(ValueError, match="photodiode_voltage_v must be a finite number"):
        await recorder.safety(
            SafetyRecord(event_type="x", severity="info", description="d", photodiode_voltage_v=math.nan)
        )
    assert len(_rows(db_path, "SELECT * FROM safety_log")) == 3
    assert recorder.healthy


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
    assert recorder.held_rows == 0 and len(_events(db_path)) == 1  # rows are written all the same
    assert await recorder.recheck() is False
    disk.free = 60 * MIB
    assert await recorder.recheck() is True

    # The background task notices space running out during a session.
    await recorder.begin_session(2, 1, started_mono=1000.0, started_at=START)
    assert recorder.healthy
    disk.free = 49 * MIB
    await wait_until(lambda: not recorder.healthy)
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


def _sample(t: float, *, pd_v: float = 0.5) -> TelemetrySample:
    return TelemetrySample(
        t=t,
        pd_v=pd_v,
        p_w=None,
        cmd_w=0.0,
        on=False,
        pedal=True,
        estop=False,
        vib_g=0.0,
        enable=False,
        state="ready",
        pos_um=None,
    )


async def test_the_telemetry_file_is_closed_at_the_end_and_its_summary_returned(
    recorder: Recorder, db_path: Path, data_root: Path
) -> None:
    relative = Path("sessions/P-2026-0001/1/telemetry.jsonl")
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START, telemetry_path=relative)
    for index in range(120):
        recorder.telemetry(_sample(index / 100, pd_v=index / 40))
    with pytest.raises(ValueError, match="'pd_v' is not a finite number"):
        recorder.telemetry(_sample(1.2, pd_v=math.nan))
    recorder.event("laser_on")
    summary = await recorder.end_session()
    assert summary is not None and recorder.session_id is None
    data = (data_root / relative).read_bytes()
    assert summary.path == data_root / relative
    assert (summary.line_count, summary.size_bytes) == (120, len(data))
    decoded = [decode_sample(line, f"line {n}") for n, line in enumerate(data.splitlines(), start=1)]
    assert decoded == [_sample(index / 100, pd_v=index / 40) for index in range(120)]
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert len(_events(db_path)) == 1 and recorder.healthy
    with pytest.raises(RecorderError, match="no telemetry file is open"):
        recorder.telemetry(_sample(0.0))
    with pytest.raises(RecorderError, match="no session is being recorded"):
        await recorder.end_session()


async def test_an_existing_telemetry_file_refuses_the_session(recorder: Recorder, data_root: Path) -> None:
    target = data_root / "sessions" / "P-2026-0001" / "1" / "telemetry.jsonl"
    target.parent.mkdir(parents=True)
    target.write_bytes(b'{"old":1}\n')
    with pytest.raises(RecorderError, match="already exists"):
        await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START, telemetry_path=target)
    assert recorder.session_id is None and target.read_bytes() == b'{"old":1}\n'


def test_settings_are_checked(fast_sessions: async_sessionmaker[AsyncSession], data_root: Path) -> None:
    for kwargs, message in (
        ({"min_free_bytes": -1}, "min_free_bytes"),
        ({"batch_interval_s": 0.5}, "batch_interval_s"),
        ({"space_check_interval_s": 0}, "space_check_interval_s"),
        ({"max_held_rows": 0}, "max_held_rows"),
    ):
        with pytest.raises(ValueError, match=message):
            Recorder(fast_sessions, data_root=data_root, **kwargs)


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


async def test_a_full_disk_under_the_telemetry_file_makes_it_unhealthy_until_the_lines_are_written(
    fast_sessions: async_sessionmaker[AsyncSession], data_root: Path
) -> None:
    full = {"on": True}

    def disk(fd: int, data: memoryview) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0), telemetry_write=disk)
    changes = _health_log(rec)
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START, telemetry_path=Path("t.jsonl"))
        for index in range(50):  # the 50th line is written at once, and fails
            rec.telemetry(_sample(index))
        assert not rec.healthy and len(changes) == 1 and rec.telemetry_open
        assert changes[0][1] is not None
        assert changes[0][1].startswith("the disk holding the records is full: telemetry write to")
        rec.telemetry(_sample(50))  # held behind the others
        assert await rec.recheck() is False
        full["on"] = False  # space freed: the telemetry flusher writes every held line
        await wait_until(lambda: rec.healthy)
        assert changes[-1] == (True, None)
        summary = await rec.end_session()
        assert summary is not None and summary.line_count == 51
        lines = (data_root / "t.jsonl").read_text().splitlines()
        assert [json.loads(line)["t"] for line in lines] == list(range(51))
    finally:
        await rec.close()


# ---- storage failure and recovery: nothing accepted is lost


def _journal_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _safety_rows(db_path: Path) -> list[sqlite3.Row]:
    return _rows(
        db_path, "SELECT * FROM safety_log WHERE event_type != 'database_initialized' ORDER BY log_id"
    )


def _marks(db_path: Path) -> list[sqlite3.Row]:
    return _rows(db_path, "SELECT config_value FROM system_config WHERE config_key = ?", (MARK_KEY,))


async def test_a_locked_database_journals_the_rows_stays_healthy_and_the_retry_writes_them_in_order(
    recorder: Recorder, db_path: Path, mono: FakeMono, locked: Callable[[bool], None]
) -> None:
    changes = _health_log(recorder)
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    recorder.event("laser_on", commanded_w=5.0)
    await recorder.flush()
    locked(True)
    for index in range(1, 4):
        mono.now = 1000.0 + index
        recorder.event("power_change", commanded_w=5.0 + index)
    started = time.monotonic()
    # Returns once the row is durable: here in the journal, well within the bound.
    await recorder.safety(
        SafetyRecord(event_type="e_stop_pressed", severity="critical", description="E-stop pressed")
    )
    assert time.monotonic() - started < DEFAULT_DURABLE_WITHIN_S
    await wait_until(lambda: recorder.journaled_rows == 4)
    journal = recorder.journal_path
    assert journal == db_path.parent / "tosca.journal"
    assert journal.stat().st_mode & 0o777 == 0o640
    lines = _journal_lines(journal)
    assert [line["seq"] for line in lines] == [2, 3, 4, 5]  # seq 1 went straight to the database
    assert [line["table"] for line in lines] == ["treatment_events"] * 3 + ["safety_log"]
    assert recorder.healthy and changes == []  # a lock alone does not stop emission
    with pytest.raises(RecorderError, match=r"4 row\(s\) not in the records database yet .*locked"):
        await recorder.flush()
    mono.now = 1005.0
    recorder.event("laser_off")  # after the journal's rows, so into the journal too
    await wait_until(lambda: recorder.journaled_rows == 5)
    assert len(_events(db_path)) == 1

    locked(False)  # nothing else is called: the recorder's own retry writes the journal
    await wait_until(lambda: recorder.held_rows == 0 and not journal.exists(), timeout_s=3.0)
    rows = _events(db_path)
    assert [(r["event_type"], r["time_offset_ms"]) for r in rows] == [
        ("laser_on", 0),
        ("power_change", 1000),
        ("power_change", 2000),
        ("power_change", 3000),
        ("laser_off", 5000),
    ]
    assert [r["event_type"] for r in _safety_rows(db_path)] == ["e_stop_pressed"]
    assert changes == [] and recorder.healthy
    # Direct writes again once the journal is gone.
    recorder.event("pause")
    await wait_until(lambda: len(_events(db_path)) == 6)
    assert not journal.exists()


async def test_when_neither_the_database_nor_the_journal_takes_a_row_it_is_unhealthy_within_the_bound(
    recorder: Recorder,
    db_path: Path,
    mono: FakeMono,
    locked: Callable[[bool], None],
    journal_disk: JournalDisk,
) -> None:
    changes = _health_log(recorder)
    await recorder.begin_session(1, 1, started_mono=1000.0, started_at=START)
    locked(True)
    journal_disk.full = True
    accepted = time.monotonic()
    recorder.event("laser_on", commanded_w=5.0)
    await wait_until(lambda: not recorder.healthy, timeout_s=2.0)
    took = time.monotonic() - accepted
    # The bound: a row neither written nor journaled DEFAULT_DURABLE_WITHIN_S (1 s) after it was accepted,
    # checked every GUARD_PERIOD_S; the rest is this test's own polling and a loaded machine.
    assert DEFAULT_DURABLE_WITHIN_S <= took < DEFAULT_DURABLE_WITHIN_S + GUARD_PERIOD_S + 0.2
    assert len(changes) == 1 and changes[0][1] is not None
    assert (
        f"neither in the database nor in the journal within {DEFAULT_DURABLE_WITHIN_S:g} s" in changes[0][1]
    )
    assert "the disk holding the records is full: No space left on device" in changes[0][1]
    assert "the records database is locked by another process" in changes[0][1]
    with pytest.raises(RecorderError, match="safety record 'interlock_failure' not durable yet"):
        await recorder.safety(
            SafetyRecord(
                event_type="interlock_failure", severity="critical", description="storage cannot record"
            )
        )
    mono.now = 1001.0
    recorder.event("laser_off")
    assert recorder.held_rows == 3 and recorder.journaled_rows == 0

    journal_disk.full = False  # space freed: the journal takes the rows, the database is still locked
    await wait_until(lambda: recorder.healthy, timeout_s=3.0)
    assert changes[-1] == (True, None) and recorder.journaled_rows == 3
    locked(False)
    await wait_until(lambda: recorder.held_rows == 0, timeout_s=3.0)
    assert [r["event_type"] for r in _events(db_path)] == ["laser_on", "laser_off"]
    assert [r["event_type"] for r in _safety_rows(db_path)] == ["interlock_failure"]
    assert len(changes) == 2


async def test_a_clean_close_with_the_database_locked_journals_every_row_and_the_next_start_writes_them(
    fast_sessions: async_sessionmaker[AsyncSession],
    db_path: Path,
    data_root: Path,
    locked: Callable[[bool], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    mono = FakeMono(0.0)
    rec = Recorder(fast_sessions, data_root=data_root, mono=mono)
    await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
    rec.event("laser_on")
    await rec.flush()
    locked(True)
    for index in range(1, 6):
        mono.now = index / 10
        rec.event("power_change", commanded_w=float(index))
    await rec.safety(
        SafetyRecord(
            event_type="state_change", severity="info", description="treating -> armed: footpedal released"
        )
    )
    mono.now = 0.9
    rec.event("laser_off")
    with caplog.at_level(logging.WARNING, logger="control.recorder"):
        assert await rec.close() == 0  # nothing lost
    assert any("recorder closed with 7 row(s) in the journal" in m for m in caplog.messages)
    lines = _journal_lines(data_root / "tosca.journal")
    assert [line["seq"] for line in lines] == list(range(2, 9))
    assert len(_events(db_path)) == 1
    locked(False)

    after = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0))
    try:
        await after.start()
        assert not (data_root / "tosca.journal").exists() and after.held_rows == 0
    finally:
        assert await after.close() == 0
    rows = _events(db_path)
    assert [(r["event_type"], r["time_offset_ms"]) for r in rows] == [
        ("laser_on", 0),
        *[("power_change", index * 100) for index in range(1, 6)],
        ("laser_off", 900),
    ]
    assert [r["description"] for r in _safety_rows(db_path)] == ["treating -> armed: footpedal released"]
    assert _marks(db_path) == []  # no journal left, nothing to remember


async def test_a_journal_left_by_a_crash_is_written_once_at_the_next_start(
    fast_sessions: async_sessionmaker[AsyncSession],
    db_path: Path,
    data_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stamp = START + timedelta(seconds=1)

    def event(seq: int, event_type: str) -> JournalEntry:
        values = {"session_id": 1, "timestamp": stamp, "time_offset_ms": seq * 10, "event_type": event_type}
        return JournalEntry("crashed", seq, "treatment_events", values)

    safety = JournalEntry(
        "crashed",
        3,
        "safety_log",
        {
            "event_type": "state_change",
            "severity": "info",
            "description": "armed -> treating",
            "session_id": 1,
            "tech_id": 1,
            "details": {"from": "armed", "to": "treating"},
            "timestamp": stamp,
        },
    )
    entries = [event(1, "laser_on"), event(2, "power_change"), safety, event(4, "laser_off")]
    # The first two reached the database (with their mark) before the crash; the journal has them too.
    engine = create_engine(db_path)
    try:
        async with session_factory(engine)() as session:
            await write_entries(session, entries[:2])
            await session.commit()
    finally:
        await engine.dispose()
    journal = Journal(data_root / "tosca.journal")
    journal.append(entries)
    journal.close()
    with (data_root / "tosca.journal").open("ab") as handle:
        handle.write(b'{"stream":"crashed","seq":5,"ta')  # a line the crash cut short: never acknowledged

    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0))
    with caplog.at_level(logging.WARNING, logger="control.recorder"):
        await rec.start()
    try:
        assert any("found a journal of rows not yet in the records database" in m for m in caplog.messages)
        assert not (data_root / "tosca.journal").exists()
    finally:
        await rec.close()
    rows = _events(db_path)
    assert [(r["event_type"], r["time_offset_ms"]) for r in rows] == [
        ("laser_on", 10),
        ("power_change", 20),
        ("laser_off", 40),
    ]
    safety_rows = _safety_rows(db_path)
    assert [(r["description"], r["timestamp"]) for r in safety_rows] == [
        ("armed -> treating", "2026-03-14 09:30:01.000000")
    ]
    assert json.loads(safety_rows[0]["details"]) == {"from": "armed", "to": "treating"}


async def test_a_journal_the_database_cannot_take_at_start_stays_and_new_rows_follow_it(
    fast_sessions: async_sessionmaker[AsyncSession],
    db_path: Path,
    data_root: Path,
    locked: Callable[[bool], None],
) -> None:
    old = JournalEntry(
        "previous",
        1,
        "treatment_events",
        {"session_id": 1, "timestamp": START, "time_offset_ms": 5, "event_type": "laser_off"},
    )
    Journal(data_root / "tosca.journal").append([old])
    locked(True)
    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0), retry_interval_s=0.1)
    try:
        await rec.start()
        assert (data_root / "tosca.journal").exists() and rec.healthy
        await rec.begin_session(2, 1, started_mono=0.0, started_at=START)
        rec.event("laser_on")
        await wait_until(lambda: len(_journal_lines(data_root / "tosca.journal")) == 2)
        locked(False)
        await wait_until(lambda: rec.held_rows == 0 and not (data_root / "tosca.journal").exists())
    finally:
        await rec.close()
    assert [(r["session_id"], r["event_type"]) for r in _events(db_path)] == [
        (1, "laser_off"),
        (2, "laser_on"),
    ]


async def test_rows_beyond_the_memory_limit_are_counted_and_logged(
    fast_sessions: async_sessionmaker[AsyncSession],
    data_root: Path,
    locked: Callable[[bool], None],
    journal_disk: JournalDisk,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(
        fast_sessions, data_root=data_root, mono=FakeMono(0.0), max_held_rows=2, journal_write=journal_disk
    )
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
        locked(True)
        journal_disk.full = True
        with caplog.at_level(logging.ERROR, logger="control.recorder"):
            for _ in range(3):
                rec.event("user_action")
        assert rec.held_rows == 2 and rec.dropped_events == 1
        assert any("not recorded: 2 rows already held (1 dropped so far)" in m for m in caplog.messages)
        with pytest.raises(RecorderError):
            await rec.flush()
        with caplog.at_level(logging.ERROR, logger="control.recorder"):
            assert await rec.close() == 2  # rows neither written nor journaled are reported, not hidden
        assert any(
            "recorder closed with 2 row(s) neither written nor journaled" in m for m in caplog.messages
        )
    finally:
        await rec.close()


async def test_a_read_only_database_makes_it_unhealthy_and_the_journal_keeps_the_rows(
    db_path: Path, data_root: Path
) -> None:
    # The database opened read-only, as on a medium that turned read-only (chmod does not stop root).
    engine = create_async_engine(f"sqlite+aiosqlite:///file:{db_path}?mode=ro&uri=true")
    event.listen(engine.sync_engine, "connect", lambda connection, _record: apply_pragmas(connection, 50))
    rec = Recorder(session_factory(engine), data_root=data_root, mono=FakeMono(0.0))
    changes = _health_log(rec)
    problem = "the records database cannot be written: attempt to write a readonly database"
    try:
        await rec.begin_session(1, 1, started_mono=0.0, started_at=START)
        rec.event("laser_on")
        await wait_until(lambda: not rec.healthy)
        assert changes == [(False, problem)]  # not only a lock: emission must stop
        await rec.safety(
            SafetyRecord(event_type="e_stop_pressed", severity="critical", description="E-stop pressed")
        )  # durable in the journal
        assert await rec.recheck() is False
        assert changes == [(False, problem)] and rec.journaled_rows == 2
    finally:
        assert await rec.close() == 0
        await engine.dispose()
    assert _events(db_path) == []
    assert [line["table"] for line in _journal_lines(data_root / "tosca.journal")] == [
        "treatment_events",
        "safety_log",
    ]


def test_storage_failures_are_said_in_words() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    wrapped = OperationalError("INSERT ...", {}, full)
    assert storage_failure(wrapped) == "the disk holding the records is full: database or disk is full"
    no_space = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert storage_failure(no_space) == "the disk holding the records is full: No space left on device"
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert storage_failure(OperationalError("UPDATE", {}, busy)) == (
        "the records database is locked by another process: database is locked"
    )
    assert storage_failure(ValueError("not storage")) is None
    assert storage_failure(OSError(errno.EIO, "a serial line failed")) is None


async def test_a_journal_that_cannot_be_read_back_is_kept_and_keeps_storage_unhealthy(
    fast_sessions: async_sessionmaker[AsyncSession], data_root: Path
) -> None:
    journal = data_root / "tosca.journal"
    good = JournalEntry(
        "old",
        1,
        "treatment_events",
        {"session_id": 1, "timestamp": START, "time_offset_ms": 0, "event_type": "pause"},
    )
    Journal(journal).append([good])
    with journal.open("ab") as handle:
        handle.write(b"this is not a journal row\n")
    before = journal.read_bytes()
    rec = Recorder(fast_sessions, data_root=data_root, mono=FakeMono(0.0), retry_interval_s=0.1)
    try:
        await rec.start()
        assert not rec.healthy and rec.problem is not None
        assert rec.problem.startswith(
            "the journal cannot be written into the database: tosca.journal at byte"
        )
        await asyncio.sleep(0.3)  # retried, never skipped
        assert not rec.healthy
    finally:
        await rec.close()
    assert journal.read_bytes() == before
