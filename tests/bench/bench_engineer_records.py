"""The engineer's records benchmark: the safety log browser's pages on a large log, and a research export of a
long session.

Run from the project root::

    python tests/bench/bench_engineer_records.py                 # 1,000,000 rows in each table
    python tests/bench/bench_engineer_records.py --rows 100000 --rounds 10

A database at the current schema (cached under /tmp by row count and schema revision) gets ``--rows`` safety
log rows (one in 2,000 a critical ``interlock_failure``) and as many treatment events, over a year, in 2,000
sessions, filled with raw ``executemany``. Each
query the browser makes is timed through :mod:`storage.event_query` (the screen's own code) on a fresh
read-only connection: the first page, the next and one half-way down (keyset), and each filter. Then one
session with a 10-minute telemetry file at 100 Hz (60,000 lines) is exported in both formats, with its power
trace picture, through :func:`storage.export.export_session`. Medians, p95 in ms; the goal for a page is
p95 < 100 ms.

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storage.audit_query import open_read_only  # noqa: E402
from storage.event_query import EventCursor, EventFilter, fetch_page  # noqa: E402
from storage.export import export_session  # noqa: E402
from storage.maintenance import head_revision, upgrade  # noqa: E402
from storage.paths import DataDir  # noqa: E402

GOAL_P95_MS = 100.0
START = datetime(2025, 12, 1)
SESSIONS = 2_000
SAFETY_TYPES = ["state_change"] * 20 + ["photodiode_warning", "tec_out_of_window", "emergency_stop"]
EVENT_TYPES = ["power_set"] * 10 + ["laser_on", "laser_off", "protocol_step_start", "safety_warning"]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _stamp(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="microseconds")


def build_database(rows: int) -> DataDir:
    folder = Path(tempfile.gettempdir()) / f"tosca_bench_engineer_v2_{rows}_{head_revision()}"
    data = DataDir(folder)
    if (folder / "complete").is_file():
        return data
    shutil.rmtree(folder, ignore_errors=True)
    upgrade(data)
    rng = random.Random(16)
    step = timedelta(days=365) / rows
    started = time.perf_counter()
    connection = sqlite3.connect(str(data.db_path))
    try:
        with connection:
            connection.execute(
                "INSERT INTO tech_users (tech_id, username, full_name, role) "
                "VALUES (1, 'tina', 'T', 'technician')"
            )
            connection.execute("INSERT INTO subjects (subject_id, subject_code) VALUES (1, 'P-2025-0001')")
            connection.executemany(
                "INSERT INTO sessions (session_id, subject_id, tech_id, start_time, status) "
                "VALUES (?, 1, 1, ?, 'completed')",
                [(n + 1, _stamp(START + timedelta(days=365) * n / SESSIONS)) for n in range(SESSIONS)],
            )
            for first in range(0, rows, 50_000):
                chunk = range(first, min(rows, first + 50_000))
                connection.executemany(
                    "INSERT INTO safety_log (timestamp, session_id, event_type, severity, description) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            _stamp(START + step * n),
                            1 + n * SESSIONS // rows,
                            kind := "interlock_failure" if n % 2_000 == 0 else rng.choice(SAFETY_TYPES),
                            "info" if kind == "state_change" else "critical" if n % 2_000 == 0 else "warning",
                            f"entry {n}",
                        )
                        for n in chunk
                    ],
                )
                connection.executemany(
                    "INSERT INTO treatment_events (session_id, timestamp, time_offset_ms, event_type, "
                    "laser_power_commanded_watts) VALUES (?, ?, ?, ?, 2.0)",
                    [
                        (
                            1 + n * SESSIONS // rows,
                            _stamp(START + step * n),
                            n % 600_000,
                            rng.choice(EVENT_TYPES),
                        )
                        for n in chunk
                    ],
                )
        connection.execute("ANALYZE")
    finally:
        connection.close()
    (folder / "complete").write_text("ok\n")
    print(
        f"built {rows:,} safety rows and {rows:,} events in {time.perf_counter() - started:.1f} s at {folder}"
    )
    return data


def _time(data: DataDir, call: Callable[[sqlite3.Connection], int], rounds: int) -> tuple[list[float], int]:
    samples: list[float] = []
    result = 0
    for _ in range(rounds):
        started = time.perf_counter()
        connection = open_read_only(data.db_path)
        try:
            result = call(connection)
        finally:
            connection.close()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, result


def _line(name: str, rows: int, samples: list[float]) -> str:
    return f"{name:32} {rows:>5} {sorted(samples)[len(samples) // 2]:8.1f} {percentile(samples, 0.95):8.1f}"


def _long_session(data: DataDir) -> int:
    """Session 1 gets a 10-minute telemetry file (100 Hz) and its record; returns its id."""
    folder = data.root / "sessions" / "P-2025-0001" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "telemetry.jsonl"
    lines = []
    for k in range(60_000):
        t = k / 100
        on = 5 <= t < 595
        sample = {
            "t": t, "pd_v": 1.0 if on else 0.0, "p_w": 1.96 if on else 0.0, "cmd_w": 2.0 if on else 0.0,
            "on": on, "pedal": on, "estop": False, "vib_g": 1.0, "enable": on,
            "state": "treating" if on else "ready", "pos_um": 0.0,
        }  # fmt: skip
        lines.append(json.dumps(sample) + "\n")
    content = "".join(lines).encode()
    path.write_bytes(content)
    with sqlite3.connect(str(data.db_path)) as connection:
        connection.execute(
            "UPDATE sessions SET telemetry_path = ?, telemetry_line_count = 60000, telemetry_sha256 = ?, "
            "status = 'completed' WHERE session_id = 1",
            ("sessions/P-2025-0001/1/telemetry.jsonl", hashlib.sha256(content).hexdigest()),
        )
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    data = build_database(args.rows)
    end = START + timedelta(days=365)
    cases = {
        "first page (no filter)": EventFilter(),
        "one session": EventFilter.build(session=str(SESSIONS // 2)),
        "severity warning+": EventFilter.build(severity="warning+"),
        "severity critical": EventFilter.build(severity="critical"),
        "type emergency_stop": EventFilter.build(event_type="emergency_stop"),
        "a rare type (1 row in 2,000)": EventFilter.build(event_type="interlock_failure"),
        "severity critical+": EventFilter.build(severity="critical+"),
        "last 7 days": EventFilter.build(since=end - timedelta(days=7)),
        "a week in the middle, warning+": EventFilter.build(
            since=START + timedelta(days=180), until=START + timedelta(days=187), severity="warning+"
        ),
        "safety rows only": EventFilter.build(source="safety"),
    }
    print(
        f"rows: {args.rows:,} safety + {args.rows:,} events; {args.rounds} rounds; "
        f"goal p95 < {GOAL_P95_MS:.0f} ms"
    )
    print(f"{'case':32} {'rows':>5} {'median':>8} {'p95':>8}")
    worst = 0.0
    for name, filters in cases.items():
        samples, found = _time(data, lambda c, f=filters: len(fetch_page(c, f).rows), args.rounds)
        print(_line(name, found, samples))
        worst = max(worst, percentile(samples, 0.95))

    def second(connection: sqlite3.Connection) -> int:
        first = fetch_page(connection)
        assert first.next_cursor is not None
        return len(fetch_page(connection, after=first.next_cursor).rows)

    middle = EventCursor(START + timedelta(days=182), "safety", args.rows // 2)
    for name, call in (
        ("first + next page (keyset)", second),
        ("a page half-way (keyset)", lambda c: len(fetch_page(c, after=middle).rows)),
    ):
        samples, found = _time(data, call, args.rounds)
        print(_line(name, found, samples))
        worst = max(worst, percentile(samples, 0.95))
    verdict = "PASS" if worst < GOAL_P95_MS else "FAIL"
    print(f"worst p95: {worst:.1f} ms ({verdict}, goal < {GOAL_P95_MS:.0f} ms)")

    session_id = _long_session(data)
    target = Path(tempfile.mkdtemp()) / "export"
    started = time.perf_counter()
    result = export_session(data, session_id, target=target)
    took = time.perf_counter() - started
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(
        f"export of a 10-minute session (60,000 telemetry lines): {took:.2f} s, {result.files} files, "
        f"{size:,} bytes"
    )
    shutil.rmtree(target.parent, ignore_errors=True)
    return 0 if worst < GOAL_P95_MS else 1


if __name__ == "__main__":
    sys.exit(main())
