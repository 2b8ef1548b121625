"""Retention and signature benchmark: what the daily retention run and the signature checks cost.

Run from the project root::

    python tests/bench/bench_retention.py        # 200 sessions of 2,000 events, 200,000 audit rows
    python tests/bench/bench_retention.py --sessions 50 --events 1000 --audit 50000

A fresh database gets, spread evenly over eight years, ``--audit`` audit rows and ``--sessions`` finished
sessions of ``--events`` chained events each (each with its final record chained and one signature), all
through the chain's own append. Then it times:

(a) the record hash of one session (what a signature and verification compute per session record row);
(b) ``tosca audit verify``'s :func:`storage.chain_verify.verify_database` over the whole database;
(c) a retention dry run and a real run at the end of the eight years, with a policy of five years for
    sessions and safety rows and six for audit rows: rows/s removed and the wall time (which holds the
    database's write lock for the part after verification).

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storage import DataDir  # noqa: E402
from storage.chain import SqliteExecutor, append, stored_timestamp  # noqa: E402
from storage.chain_verify import verify_database  # noqa: E402
from storage.engine import connect_sqlite  # noqa: E402
from storage.maintenance import upgrade  # noqa: E402
from storage.retention import RetentionPolicy, run_retention  # noqa: E402
from storage.signatures import append_final, append_signature, record_hash  # noqa: E402

START = datetime(2030, 1, 1)
YEARS = 8
POLICY = RetentionPolicy(
    video_days=365, telemetry_days=1095, sessions_days=1826, safety_days=1826, audit_days=2192
)


def generate(data_dir: DataDir, sessions: int, events: int, audit: int) -> None:
    upgrade(data_dir)
    span = timedelta(days=365 * YEARS)
    connection = connect_sqlite(data_dir.db_path)
    executor = SqliteExecutor(connection)
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('bench', 'Bench Tech', 'technician')"
        )
        connection.execute("INSERT INTO subjects (subject_code) VALUES ('P-2030-0001')")
    audit_done = 0
    for index in range(sessions):
        start = START + span * index / sessions
        with connection:
            cursor = connection.execute(
                "INSERT INTO sessions (subject_id, tech_id, start_time, end_time, status) "
                "VALUES (1, 1, ?, ?, 'in_progress')",
                (stored_timestamp(start), stored_timestamp(start + timedelta(minutes=5))),
            )
            session_id = int(cursor.lastrowid or 0)
            append(
                executor,
                "treatment_events",
                ("session_id", "timestamp", "time_offset_ms", "event_type", "laser_power_actual_watts"),
                [
                    (session_id, start + timedelta(milliseconds=10 * i), 10 * i, "power_sample", 1.0)
                    for i in range(events)
                ],
            )
            connection.execute("UPDATE sessions SET status = 'completed' WHERE session_id = ?", (session_id,))
            append_final(executor, session_id, start + timedelta(minutes=5))
            append_signature(
                executor,
                session_id,
                tech_id=1,
                username="bench",
                printed_name="Bench Tech",
                meaning="performed by",
                now=start + timedelta(minutes=6),
            )
            due = audit * (index + 1) // sessions - audit_done
            append(
                executor,
                "audit_log",
                ("timestamp", "action", "outcome"),
                [(start + timedelta(seconds=i), "bench_action", "success") for i in range(due)],
            )
            audit_done += due
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--audit", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = DataDir(Path(tmp) / "data")
        began = time.perf_counter()
        generate(data_dir, args.sessions, args.events, args.audit)
        print(
            f"generated {args.sessions} sessions x {args.events} events, {args.audit} audit rows "
            f"in {time.perf_counter() - began:.1f} s"
        )
        connection = connect_sqlite(data_dir.db_path)
        began = time.perf_counter()
        record_hash(SqliteExecutor(connection), 1, notes=True)
        one = time.perf_counter() - began
        connection.close()
        print(f"(a) record hash of one session of {args.events} events: {one * 1000:.1f} ms")
        began = time.perf_counter()
        result = verify_database(data_dir.db_path)
        took = time.perf_counter() - began
        rows = sum(count.rows for count in result.counts)
        print(
            f"(b) verify: {rows} chained rows and {result.signatures} signatures in {took:.2f} s "
            f"({'ok' if result.ok else result.failure})"
        )
        now = START + timedelta(days=365 * YEARS + 1)
        began = time.perf_counter()
        dry = run_retention(data_dir.db_path, data_dir.root, POLICY, now, dry_run=True)
        took_dry = time.perf_counter() - began
        began = time.perf_counter()
        report = run_retention(data_dir.db_path, data_dir.root, POLICY, now)
        took_run = time.perf_counter() - began
        removed = sum(report.rows.values())
        print(
            f"(c) retention dry run: {took_dry:.2f} s; run: {removed} rows and {len(report.sessions)} "
            f"sessions removed in {took_run:.2f} s ({removed / took_run:,.0f} rows/s, verification included)"
        )
        assert sum(dry.rows.values()) == removed
        began = time.perf_counter()
        after = verify_database(data_dir.db_path)
        verdict = "ok" if after.ok else after.failure
        print(f"    verify after: {verdict} in {time.perf_counter() - began:.2f} s")
        for pruning in after.prunings:
            print(f"    {pruning.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
