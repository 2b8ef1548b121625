"""Storage benchmark: event insert throughput, and the seed's six common queries on a large database.

Run from the project root::

    python tests/bench/bench_storage.py          # 2,000 subjects, 50,000 sessions, 5,000,000 events
    python tests/bench/bench_storage.py --quick  # ten times fewer rows

(a) ``treatment_events`` inserts through the storage layer (``TreatmentEventsRepository.add_many`` on the
    async engine, one commit per batch, ``synchronous=FULL``) against raw ``sqlite3.executemany`` into the
    same schema with the same pragmas and batch size: rows/s, median of several rounds, and their ratio
    (goal >= 0.5).
(b) The six common queries on a generated database (built with raw ``executemany`` in one transaction and
    cached under /tmp, so reruns are quick): p50 and p95 in ms through the repositories and as raw SQL
    (goal p95 < 10 ms), and ``EXPLAIN QUERY PLAN`` of the seed's SQL for each, flagging any full SCAN of
    ``treatment_events``.

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from storage import DataDir, connect_sqlite, create_engine, session_factory, utc_now  # noqa: E402
from storage.maintenance import head_revision, upgrade  # noqa: E402
from storage.repositories import (  # noqa: E402
    CalibrationsRepository,
    ProtocolsRepository,
    SafetyLogRepository,
    SessionsRepository,
    SubjectsRepository,
    TreatmentEventsRepository,
)

CACHE_DIR = Path(tempfile.gettempdir())

# The seed's common queries, verbatim (seed 000, "Common Queries"); 1 and 4 get their literal as a parameter.
SEED_QUERIES: dict[str, str] = {
    "1 find subject by code": "SELECT * FROM subjects\nWHERE subject_code = ?;",
    "2 sessions for subject": """SELECT
    s.session_id,
    s.start_time,
    s.end_time,
    s.status,
    s.protocol_name,
    s.total_energy_joules,
    t.full_name as technician
FROM sessions s
JOIN tech_users t ON s.tech_id = t.tech_id
WHERE s.subject_id = ?
ORDER BY s.start_time DESC;""",
    "3 events for session": """SELECT
    timestamp,
    event_type,
    laser_power_commanded_watts,
    laser_power_actual_watts,
    ring_size_mm,
    photodiode_voltage_v
FROM treatment_events
WHERE session_id = ?
ORDER BY time_offset_ms;""",
    "4 active calibration": """SELECT calibration_data
FROM calibrations
WHERE device_type = ?
      AND is_active = 1
ORDER BY calibration_date DESC
LIMIT 1;""",
    "5 safety events 24h": """SELECT
    timestamp,
    event_type,
    severity,
    description,
    session_id
FROM safety_log
WHERE timestamp >= datetime('now', '-1 day')
ORDER BY timestamp DESC;""",
    "6 protocol usage": """SELECT
    protocol_name,
    usage_count,
    last_used_date,
    (SELECT COUNT(*) FROM sessions WHERE protocol_id = p.protocol_id) as actual_usage
FROM protocols p
WHERE is_active = 1
ORDER BY usage_count DESC;""",
}

EVENT_TYPES = ("laser_on", "laser_off", "power_change", "ring_size_change", "protocol_step_start", "pause")
DEVICE_TYPES = ("laser", "actuator", "photodiode", "camera")


def _fmt(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="microseconds")


def _template(work: Path) -> Path:
    data_dir = DataDir(work / "template")
    upgrade(data_dir)
    return data_dir.db_path


def _fresh_copy(template: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for extra in ("", "-wal", "-shm"):
        Path(f"{target}{extra}").unlink(missing_ok=True)
    shutil.copyfile(template, target)
    connection = connect_sqlite(target)
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('bench', 'Bench', 'admin')"
        )
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) "
            "VALUES (1, 1, '2026-01-01 00:00:00', 'in_progress')"
        )
    connection.close()
    return target


def _event_dicts(count: int, start: datetime) -> list[dict[str, Any]]:
    return [
        {
            "session_id": 1,
            "timestamp": start + timedelta(milliseconds=10 * i),
            "time_offset_ms": 10 * i,
            "event_type": "power_change",
            "laser_power_commanded_watts": 5.0,
            "laser_power_actual_watts": 4.9 + (i % 7) * 0.01,
            "ring_size_mm": 3.0,
            "actuator_position_um": 1000.0,
            "photodiode_voltage_v": 2.45,
            "footpedal_state": True,
            "smoothing_device_state": True,
        }
        for i in range(count)
    ]


RAW_INSERT = (
    "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
    "laser_power_commanded_watts, laser_power_actual_watts, ring_size_mm, actuator_position_um, "
    "photodiode_voltage_v, footpedal_state, smoothing_device_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _raw_round(db_path: Path, rows: list[dict[str, Any]], batch: int) -> float:
    tuples = [
        (
            r["session_id"],
            _fmt(r["timestamp"]),
            r["time_offset_ms"],
            r["event_type"],
            r["laser_power_commanded_watts"],
            r["laser_power_actual_watts"],
            r["ring_size_mm"],
            r["actuator_position_um"],
            r["photodiode_voltage_v"],
            1,
            1,
        )
        for r in rows
    ]
    connection = connect_sqlite(db_path)
    started = time.perf_counter()
    for offset in range(0, len(tuples), batch):
        with connection:
            connection.executemany(RAW_INSERT, tuples[offset : offset + batch])
    elapsed = time.perf_counter() - started
    connection.close()
    return len(tuples) / elapsed


async def _storage_round(db_path: Path, rows: list[dict[str, Any]], batch: int, *, shared: bool) -> float:
    """Rows/s through ``add_many`` with a commit per batch; ``shared``: one session for all batches (as a
    recorder holds it), else a new session per batch."""
    engine = create_engine(db_path)
    factory = session_factory(engine)
    try:
        async with factory() as session:  # open the pooled connection before timing
            await session.execute(text("SELECT 1"))
            started = time.perf_counter()
            for offset in range(0, len(rows), batch):
                chunk = rows[offset : offset + batch]
                if shared:
                    await TreatmentEventsRepository(session).add_many(chunk)
                    await session.commit()
                else:
                    async with factory() as own:
                        await TreatmentEventsRepository(own).add_many(chunk)
                        await own.commit()
            elapsed = time.perf_counter() - started
    finally:
        await engine.dispose()
    return len(rows) / elapsed


def bench_inserts(work: Path, template: Path, *, rows: int, batch: int, rounds: int) -> None:
    print(f"(a) treatment_events inserts: {rows} rows per round, batches of {batch}, one commit per batch,")
    print(f"    synchronous=FULL, WAL; median of {rounds} rounds (the three kinds of round alternate)")
    data = _event_dicts(rows, datetime(2026, 1, 1))
    rates: dict[str, list[float]] = {"shared": [], "per_batch": [], "raw": []}
    for index in range(rounds):
        for kind in rates:
            db = _fresh_copy(template, work / f"insert_{kind}_{index}.db")
            if kind == "raw":
                rates[kind].append(_raw_round(db, data, batch))
            else:
                rates[kind].append(asyncio.run(_storage_round(db, data, batch, shared=kind == "shared")))
            connection = sqlite3.connect(str(db))
            stored = connection.execute("SELECT count(*) FROM treatment_events").fetchone()[0]
            connection.close()
            if stored != rows:
                raise SystemExit(f"insert round {index}: {db.name} holds {stored} rows, expected {rows}")
    medians = {kind: statistics.median(values) for kind, values in rates.items()}
    labels = {
        "shared": "storage, one session (recorder)",
        "per_batch": "storage, a session per batch",
        "raw": "raw sqlite3.executemany",
    }
    for kind, values in rates.items():
        shown = ", ".join(f"{r:,.0f}" for r in values)
        print(f"    {labels[kind]:<34}{medians[kind]:>10,.0f} rows/s  (rounds: {shown})")
    for kind in ("shared", "per_batch"):
        ratio = medians[kind] / medians["raw"]
        verdict = "meets" if ratio >= 0.5 else "MISSES"
        print(f"    ratio {labels[kind]} / raw: {ratio:.2f} ({verdict} the goal >= 0.5)")


# ---- (b) the generated database


def _generate(path: Path, template: Path, *, subjects: int, sessions: int, events: int) -> None:
    partial = path.with_suffix(".partial")
    for extra in ("", "-wal", "-shm", "-journal"):
        Path(f"{partial}{extra}").unlink(missing_ok=True)
    shutil.copyfile(template, partial)
    rng = random.Random(20261123)
    now = utc_now()
    connection = sqlite3.connect(str(partial))
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("PRAGMA synchronous = OFF")
    index_sql = [
        row[0]
        for row in connection.execute(
            "SELECT sql FROM sqlite_master "
            "WHERE type = 'index' AND tbl_name = 'treatment_events' AND sql IS NOT NULL"
        )
    ]
    started = time.perf_counter()
    connection.execute("BEGIN")
    for name in ("idx_event_session", "idx_event_timestamp", "idx_event_type", "idx_event_session_time"):
        connection.execute(f"DROP INDEX {name}")
    technicians = 10
    connection.executemany(
        "INSERT INTO tech_users (username, full_name, role, password_hash) VALUES (?, ?, ?, 'x')",
        [(f"tech{i}", f"Technician {i}", "technician" if i else "admin") for i in range(technicians)],
    )
    connection.executemany(
        "INSERT INTO subjects (subject_code, created_by_tech_id, created_date) VALUES (?, ?, ?)",
        [
            (f"P-{2020 + i // 9999}-{i % 9999 + 1:04d}", 1 + i % technicians, _fmt(now - timedelta(days=900)))
            for i in range(subjects)
        ],
    )
    protocols = 20
    connection.executemany(
        "INSERT INTO protocols (protocol_name, protocol_type, protocol_data, usage_count, is_active, "
        "last_used_date) VALUES (?, 'multi_step', '{}', ?, ?, ?)",
        [(f"Protocol {i}", sessions // protocols, int(i % 5 != 4), _fmt(now)) for i in range(protocols)],
    )
    per_session = events // sessions
    session_rows = []
    for i in range(sessions):
        start = now - timedelta(days=730) + timedelta(minutes=21 * i)
        done = i < sessions - 3
        session_rows.append(
            (
                1 + i % subjects,
                1 + i % technicians,
                1 + i % protocols,
                _fmt(start),
                _fmt(start + timedelta(minutes=10)) if done else None,
                "completed" if done else "in_progress",
                f"Protocol {i % protocols}",
                rng.uniform(100, 900),
            )
        )
    connection.executemany(
        "INSERT INTO sessions (subject_id, tech_id, protocol_id, start_time, end_time, status, "
        "protocol_name, total_energy_joules) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        session_rows,
    )

    def event_rows() -> Iterator[tuple[Any, ...]]:
        for session_index in range(sessions):
            start = now - timedelta(days=730) + timedelta(minutes=21 * session_index)
            session_id = session_index + 1
            for k in range(per_session):
                power = 5.0 + (k % 10) * 0.1
                yield (
                    session_id,
                    _fmt(start + timedelta(milliseconds=100 * k)),
                    100 * k,
                    EVENT_TYPES[k % len(EVENT_TYPES)],
                    power,
                    power * 0.98,
                    3.0,
                    1000.0,
                    power / 2,
                    1,
                    1,
                )

    connection.executemany(RAW_INSERT, event_rows())
    safety_rows = [
        (
            _fmt(now - timedelta(seconds=rng.uniform(0, 365 * 86400))),
            1 + rng.randrange(sessions),
            rng.choice(("footpedal_released", "photodiode_out_of_range", "e_stop_pressed")),
            rng.choice(("info", "warning", "critical")),
            "generated",
        )
        for _ in range(sessions * 2)
    ]
    safety_rows += [
        (_fmt(now - timedelta(minutes=10 * i)), None, "footpedal_released", "info", "recent")
        for i in range(100)
    ]
    connection.executemany(
        "INSERT INTO safety_log (timestamp, session_id, event_type, severity, description) "
        "VALUES (?, ?, ?, ?, ?)",
        safety_rows,
    )
    calibration_rows = [
        (
            _fmt(now - timedelta(days=400 - i)),
            1,
            DEVICE_TYPES[i % len(DEVICE_TYPES)],
            f"type_{i % len(DEVICE_TYPES)}",
            '{"points": []}',
            int(i >= 196),
        )
        for i in range(200)
    ]
    connection.executemany(
        "INSERT INTO calibrations (calibration_date, tech_id, device_type, calibration_type, "
        "calibration_data, is_active) VALUES (?, ?, ?, ?, ?, ?)",
        calibration_rows,
    )
    for sql in index_sql:
        connection.execute(sql)
    connection.execute("COMMIT")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()
    partial.replace(path)
    print(f"    generated in {time.perf_counter() - started:.1f} s")


def _plans(db_path: Path, params: dict[str, tuple[Any, ...]]) -> None:
    connection = sqlite3.connect(str(db_path))
    print("    EXPLAIN QUERY PLAN of the seed SQL:")
    for name, sql in SEED_QUERIES.items():
        rows = connection.execute(f"EXPLAIN QUERY PLAN {sql}", params[name]).fetchall()
        full_scan = any(str(r[3]).startswith("SCAN treatment_events") for r in rows)
        flag = "   <-- FULL SCAN of treatment_events" if full_scan else ""
        print(f"      {name}:{flag}")
        for row in rows:
            print(f"        {row[3]}")
    connection.close()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return p50 * 1000, p95 * 1000


async def _repo_timings(
    db_path: Path, choose: Callable[[str], tuple[Any, ...]], repeats: int
) -> dict[str, tuple[float, float, int]]:
    engine = create_engine(db_path)
    factory = session_factory(engine)

    def calls(params: tuple[Any, ...], name: str) -> Callable[[Any], Awaitable[Any]]:
        table: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "1 find subject by code": lambda s: SubjectsRepository(s).find_subject_by_code(params[0]),
            "2 sessions for subject": lambda s: SessionsRepository(s).sessions_for_subject(params[0]),
            "3 events for session": lambda s: TreatmentEventsRepository(s).events_for_session(params[0]),
            "4 active calibration": lambda s: CalibrationsRepository(s).active_calibration(params[0]),
            "5 safety events 24h": lambda s: SafetyLogRepository(s).safety_events_last_24h(),
            "6 protocol usage": lambda s: ProtocolsRepository(s).protocol_usage_statistics(),
        }
        return table[name]

    results: dict[str, tuple[float, float, int]] = {}
    try:
        async with factory() as session:
            for name in SEED_QUERIES:  # warm the connection and statement caches
                await calls(choose(name), name)(session)
            for name in SEED_QUERIES:
                samples: list[float] = []
                size = 0
                for _ in range(repeats):
                    call = calls(choose(name), name)
                    started = time.perf_counter()
                    result = await call(session)
                    samples.append(time.perf_counter() - started)
                    size = len(result) if isinstance(result, list) else int(result is not None)
                results[name] = (*_percentiles(samples), size)
    finally:
        await engine.dispose()
    return results


def _raw_timings(
    db_path: Path, choose: Callable[[str], tuple[Any, ...]], repeats: int
) -> dict[str, tuple[float, float]]:
    connection = connect_sqlite(db_path)
    results: dict[str, tuple[float, float]] = {}
    for name, sql in SEED_QUERIES.items():
        connection.execute(sql, choose(name)).fetchall()
        samples = []
        for _ in range(repeats):
            params = choose(name)
            started = time.perf_counter()
            connection.execute(sql, params).fetchall()
            samples.append(time.perf_counter() - started)
        results[name] = _percentiles(samples)
    connection.close()
    return results


def bench_queries(work: Path, template: Path, *, scale: int, repeats: int) -> None:
    subjects, sessions, events = 2000 // scale, 50000 // scale, 5_000_000 // scale
    print(f"(b) the six common queries on {subjects:,} subjects, {sessions:,} sessions, {events:,} events")
    cache = CACHE_DIR / f"tosca_bench_storage_{head_revision()}_{subjects}_{sessions}_{events}.db"
    if cache.exists():
        print(f"    using the cached database {cache}")
    else:
        print(f"    generating {cache} ...")
        _generate(cache, template, subjects=subjects, sessions=sessions, events=events)
    copy = work / "queries.db"
    shutil.copyfile(cache, copy)
    rng = random.Random(7)
    connection = sqlite3.connect(str(copy))
    codes = [r[0] for r in connection.execute("SELECT subject_code FROM subjects")]
    connection.close()

    def choose(name: str) -> tuple[Any, ...]:
        if name.startswith("1"):
            return (rng.choice(codes),)
        if name.startswith("2"):
            return (rng.randint(1, subjects),)
        if name.startswith("3"):
            return (rng.randint(1, sessions),)
        if name.startswith("4"):
            return (rng.choice(DEVICE_TYPES),)
        return ()

    _plans(copy, {name: choose(name) for name in SEED_QUERIES})
    through_storage = asyncio.run(_repo_timings(copy, choose, repeats))
    raw = _raw_timings(copy, choose, repeats)
    print(f"    timings over {repeats} runs each (ms; goal p95 < 10):")
    print(f"      {'query':<26}{'storage p50':>12}{'p95':>9}{'raw p50':>10}{'p95':>9}{'rows':>7}")
    for name in SEED_QUERIES:
        p50, p95, size = through_storage[name]
        r50, r95 = raw[name]
        flag = "" if p95 < 10 else "   <-- over 10 ms"
        print(f"      {name:<26}{p50:>12.3f}{p95:>9.3f}{r50:>10.3f}{r95:>9.3f}{size:>7}{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ten times fewer rows")
    parser.add_argument("--rounds", type=int, default=7, help="insert rounds (default 7)")
    parser.add_argument("--batch", type=int, default=500, help="events per committed batch (default 500)")
    parser.add_argument("--repeats", type=int, default=200, help="runs of each query (default 200)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1 or args.repeats < 2:
        parser.error("--rounds and --batch must be >= 1 and --repeats >= 2")
    scale = 10 if args.quick else 1
    with tempfile.TemporaryDirectory(prefix="tosca_bench_") as tmp:
        work = Path(tmp)
        template = _template(work)
        bench_inserts(work, template, rows=50_000 // scale, batch=args.batch, rounds=args.rounds)
        bench_queries(work, template, scale=scale, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
