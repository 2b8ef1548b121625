"""Record chain benchmark: the cost of chaining event appends, and the speed of ``tosca audit verify``.

Run from the project root::

    python tests/bench/bench_chain.py                     # 100,000 events; ~60 s of rows for verify
    python tests/bench/bench_chain.py --events 20000 --generate-seconds 10

(a) Appending events: 100,000 ``treatment_events`` rows through ``TreatmentEventsRepository.add_many`` on the
    async engine, one commit per batch (``--batch``, default 100, the size of a recorder batch at a busy
    moment), with the chain on, against the same calls with the chain off (``add_many`` with its append
    swapped for the plain ``executemany`` it made before the chain, so both sides do the same checks). The
    two run batch by batch in turn, each into its own fresh database, so the machine's load falls on both
    alike. Prints the median and p99 ms per batch and events/s of each, and the ratio chain on / chain off
    (events/s; goal >= 0.7).
(b) Verification: as many chained events as the real append path writes in ``--generate-seconds`` (default
    60) into a fresh database, then :func:`storage.chain_verify.verify_database` (what ``tosca audit verify``
    runs) over all of it: rows/s, and the time that rate gives for 5,000,000 rows (goal < 30 s).

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

import storage.repositories as repositories  # noqa: E402
from storage import DataDir, create_engine, session_factory  # noqa: E402
from storage.chain import SqliteExecutor, append  # noqa: E402
from storage.chain_verify import verify_database  # noqa: E402
from storage.engine import connect_sqlite  # noqa: E402
from storage.maintenance import upgrade, upgrade_async  # noqa: E402
from storage.models import Subject, TechUser, TreatmentSession  # noqa: E402

GOAL_RATIO = 0.7
GOAL_VERIFY_S = 30.0
TARGET_ROWS = 5_000_000
START = datetime(2026, 3, 1, 9, 0)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def event(session_id: int, n: int) -> dict[str, Any]:
    """One event as the recorder gives it: a power sample with the pedal, ring and photodiode."""
    return {
        "session_id": session_id,
        "timestamp": START + timedelta(milliseconds=10 * n),
        "time_offset_ms": 10 * n,
        "event_type": "power_sample",
        "laser_power_commanded_watts": 5.0,
        "laser_power_actual_watts": 4.9 + (n % 100) / 1000,
        "ring_size_mm": 3.0,
        "photodiode_voltage_v": 2.45 + (n % 7) / 100,
        "footpedal_state": True,
        "interlock_status": '{"door": true, "key": true}',
    }


async def plain_append(session: AsyncSession, table: str, columns: Sequence[str], rows: Sequence[Any]) -> int:
    """The insert ``add_many`` made before the chain: one ``executemany`` of the given columns."""
    if session.new or session.dirty:
        await session.flush()
    connection = await session.connection()
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"
    await connection.exec_driver_sql(sql, [tuple(row) for row in rows])  # type: ignore[arg-type]
    return 0


async def _prepare(root: Path) -> tuple[Any, Any, int]:
    data_dir = DataDir(root)
    await upgrade_async(data_dir)
    engine = create_engine(data_dir.db_path)
    factory = session_factory(engine)
    async with factory() as s, s.begin():
        tech = TechUser(username="bench", full_name="Bench", role="technician")
        subject = Subject(subject_code="P-2026-0001")
        s.add_all([tech, subject])
        await s.flush()
        row = TreatmentSession(
            subject_id=subject.subject_id, tech_id=tech.tech_id, start_time=START, status="in_progress"
        )
        s.add(row)
        await s.flush()
        session_id = row.session_id
    return engine, factory, session_id


async def bench_append(events: int, batch: int, folder: Path) -> tuple[float, float, float]:
    chained_append = repositories.append_async
    sides = {}
    for name in ("on", "off"):
        sides[name] = await _prepare(folder / f"append_{name}")
    times: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for index in range(0, events, batch):
            rows = [event(0, n) for n in range(index, min(events, index + batch))]
            order = ("on", "off") if (index // batch) % 2 == 0 else ("off", "on")
            for name in order:
                _engine, factory, session_id = sides[name]
                for row in rows:
                    row["session_id"] = session_id
                repositories.append_async = chained_append if name == "on" else plain_append  # type: ignore[assignment]
                started = time.perf_counter()
                async with factory() as s:
                    await repositories.TreatmentEventsRepository(s).add_many(rows)
                    await s.commit()
                times[name].append(time.perf_counter() - started)
    finally:
        repositories.append_async = chained_append
        for engine, _factory, _id in sides.values():
            await engine.dispose()
    rates = {}
    for name in ("on", "off"):
        samples = times[name]
        total = sum(samples)
        rates[name] = events / total
        print(
            f"  chain {name:3s}: {len(samples)} batches of {batch}: "
            f"median {statistics.median(samples) * 1e3:7.2f} ms, "
            f"p99 {percentile(samples, 0.99) * 1e3:7.2f} ms per batch; {rates[name]:9.0f} events/s"
        )
    ratio = rates["on"] / rates["off"]
    median_ratio = statistics.median(times["off"]) / statistics.median(times["on"])
    verdict = "meets" if ratio >= GOAL_RATIO else "MISSES"
    print(
        f"  ratio chain on / off: {ratio:.2f} (events/s), {median_ratio:.2f} (median batch) -> {verdict} the "
        f"goal >= {GOAL_RATIO}"
    )
    return rates["on"], rates["off"], ratio


def generate(db_path: Path, seconds: float, batch: int = 20_000) -> int:
    """Append chained events through the real append path for ``seconds``; return how many."""
    connection = connect_sqlite(db_path)
    connection.execute("PRAGMA synchronous = OFF")  # generation speed only; verification reads the same rows
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('b', 'B', 'technician')"
        )
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2026-0001')")
        connection.execute(
            "INSERT INTO sessions (subject_id, tech_id, start_time, status) VALUES (1, 1, ?, 'completed')",
            (START.isoformat(" "),),
        )
    executor = SqliteExecutor(connection)
    template = event(1, 0)
    columns = tuple(template)
    written = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        rows = [tuple(event(1, n).values()) for n in range(written, written + batch)]
        with connection:
            append(executor, "treatment_events", columns, rows)
        written += batch
    connection.close()
    return written


def bench_verify(seconds: float, folder: Path) -> tuple[int, float]:
    data_dir = DataDir(folder / "verify")
    upgrade(data_dir)
    started = time.perf_counter()
    rows = generate(data_dir.db_path, seconds)
    took = time.perf_counter() - started
    print(f"  generated {rows:,} chained events in {took:.1f} s ({rows / took:,.0f} rows/s through append)")
    verify_database(data_dir.db_path)  # warm the page cache as a second run would find it
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(3):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = verify_database(data_dir.db_path)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
        if result.failure is not None:
            raise SystemExit(f"verification failed: {result.failure.message}")
    total = sum(count.rows for count in result.counts)
    # Verification is one thread: its CPU time is its time on one core, whatever else the machine runs.
    for label, runs in (("wall", walls), ("cpu", cpus)):
        best = statistics.median(runs)
        rate = total / best
        extrapolated = TARGET_ROWS / rate
        verdict = "meets" if extrapolated < GOAL_VERIFY_S else "MISSES"
        print(
            f"  verify {total:,} rows, {label:4s} time: {best:.2f} s (median of {len(runs)}), "
            f"{rate:,.0f} rows/s "
            f"-> {TARGET_ROWS:,} rows in {extrapolated:.1f} s: {verdict} the goal < {GOAL_VERIFY_S:.0f} s"
        )
    return total, total / statistics.median(cpus)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--events", type=int, default=100_000, help="events appended per side (default 100000)"
    )
    parser.add_argument("--batch", type=int, default=100, help="events per commit (default 100)")
    parser.add_argument(
        "--generate-seconds", type=float, default=60.0, help="seconds of chained rows to verify (default 60)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tosca_bench_chain_") as folder:
        print(f"(a) appending {args.events:,} events, chain on vs off, one commit per batch of {args.batch}")
        asyncio.run(bench_append(args.events, args.batch, Path(folder)))
        print(f"(b) verification of the chained rows written in {args.generate_seconds:.0f} s")
        bench_verify(args.generate_seconds, Path(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
