"""Audit trail benchmark: the audit browser's first page and each filter change on 1,000,000 audit rows.

Run from the project root::

    python tests/bench/bench_audit.py            # 1,000,000 audit rows
    python tests/bench/bench_audit.py --rows 100000 --rounds 20

A database at the current schema is made with ``storage.maintenance.upgrade`` and filled with raw
``executemany`` in one transaction (cached under /tmp by row count and schema revision, so reruns are quick):
40 users, 30 actions, about 3 % failures, one row every ~30 s over a year, JSON details. Then each query the
audit screen makes is timed through :mod:`storage.audit_query` (the same code the screen and ``tosca audit
list`` use), each on a fresh connection's warm cache: the first page, a second page and a page half-way
down (keyset), and a page for each filter on its own and combined, including a filter that matches nothing
and a free text found nowhere (a free-text page reads at most ``TEXT_SCAN_WINDOW`` rows). For each it prints
the median, p95 and p99 in ms and the query plan's access path; the goal is p95 < 100 ms.

This is a command that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from storage.audit_query import AuditFilter, Cursor, _where, fetch_page, open_read_only  # noqa: E402
from storage.maintenance import head_revision, upgrade  # noqa: E402
from storage.paths import DataDir  # noqa: E402

GOAL_P95_MS = 100.0
START = datetime(2025, 12, 1)
USERS = [f"user{n:02d}" for n in range(40)]
ACTIONS = [f"action_{n:02d}" for n in range(28)] + ["login", "config_change"]


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def build_database(rows: int) -> Path:
    folder = Path(tempfile.gettempdir()) / f"tosca_bench_audit_{rows}_{head_revision()}"
    db_path = folder / "tosca.db"
    if (folder / "complete").is_file():
        return db_path
    if folder.exists():
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    data_dir = DataDir(folder)
    upgrade(data_dir)
    rng = random.Random(15)
    step = timedelta(days=365) / rows
    started = time.perf_counter()
    connection = sqlite3.connect(str(db_path))
    try:
        with connection:
            batch: list[tuple[object, ...]] = []
            for n in range(rows):
                stamp = START + step * n
                user = rng.choice(USERS)
                action = rng.choice(ACTIONS)
                outcome = "failure" if rng.random() < 0.03 else "success"
                details = json.dumps({"note": f"entry {n}", "value": rng.randint(0, 999)})
                batch.append(
                    (
                        stamp.isoformat(sep=" ", timespec="microseconds"),
                        user,
                        action,
                        "tty1",
                        outcome,
                        details,
                    )
                )
                if len(batch) >= 50_000:
                    connection.executemany(
                        "INSERT INTO audit_log (timestamp, username, action, terminal, outcome, details) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        batch,
                    )
                    batch.clear()
            if batch:
                connection.executemany(
                    "INSERT INTO audit_log (timestamp, username, action, terminal, outcome, details) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    batch,
                )
        connection.execute("ANALYZE")
    finally:
        connection.close()
    (folder / "complete").write_text("ok\n")
    print(f"built {rows:,} audit rows in {time.perf_counter() - started:.1f} s at {db_path}")
    return db_path


def plan(connection: sqlite3.Connection, filters: AuditFilter) -> str:
    where, params = _where(filters, None)
    query = f"EXPLAIN QUERY PLAN SELECT audit_id FROM audit_log{where} ORDER BY timestamp DESC, audit_id DESC"
    return "; ".join(str(row[3]) for row in connection.execute(query, params))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    db_path = build_database(args.rows)
    end = START + timedelta(days=365)
    cases: dict[str, AuditFilter] = {
        "first page (no filter)": AuditFilter(),
        "user": AuditFilter.build(user="user07"),
        "action": AuditFilter.build(action="config_change"),
        "outcome failure": AuditFilter.build(outcome="failure"),
        "last 7 days": AuditFilter.build(since=end - timedelta(days=7)),
        "a week in the middle": AuditFilter.build(
            since=START + timedelta(days=180), until=START + timedelta(days=187)
        ),
        "user + action": AuditFilter.build(user="user07", action="login"),
        "user + outcome failure": AuditFilter.build(user="user07", outcome="failure"),
        "user, range, failure": AuditFilter.build(
            user="user07",
            outcome="failure",
            since=START + timedelta(days=30),
            until=START + timedelta(days=60),
        ),
        "user with no rows": AuditFilter.build(user="nobody"),
        "free text (common)": AuditFilter.build(text="entry 99"),
        "free text, no match": AuditFilter.build(text="no such words"),
        "free text in a month": AuditFilter.build(
            text='value": 7', since=START + timedelta(days=200), until=START + timedelta(days=230)
        ),
    }
    print(f"audit_log rows: {args.rows:,}; {args.rounds} rounds per case; goal p95 < {GOAL_P95_MS:.0f} ms")
    print(f"{'case':28} {'rows':>5} {'median':>8} {'p95':>8} {'p99':>8}  plan")
    worst = 0.0
    for name, filters in cases.items():
        samples = _time(db_path, _page_of(filters), args.rounds)
        found = samples.pop()
        print(_line(name, int(found), samples, _plan_of(db_path, filters)))
        worst = max(worst, percentile(samples, 0.95))

    def second_page(connection: sqlite3.Connection) -> int:
        first = fetch_page(connection)
        assert first.next_cursor is not None
        return len(fetch_page(connection, after=first.next_cursor).rows)

    samples = _time(db_path, second_page, args.rounds)
    found = samples.pop()
    print(_line("first + next page (keyset)", int(found), samples, "two pages"))
    worst = max(worst, percentile(samples, 0.95))

    middle = Cursor(START + timedelta(days=182), args.rows // 2)

    def deep_page(connection: sqlite3.Connection) -> int:
        return len(fetch_page(connection, after=middle).rows)

    samples = _time(db_path, deep_page, args.rounds)
    found = samples.pop()
    print(_line("a page half-way (keyset)", int(found), samples, "after (timestamp, audit_id) cursor"))
    worst = max(worst, percentile(samples, 0.95))
    verdict = "PASS" if worst < GOAL_P95_MS else "FAIL"
    print(f"worst p95: {worst:.1f} ms ({verdict}, goal < {GOAL_P95_MS:.0f} ms)")
    return 0 if worst < GOAL_P95_MS else 1


def _page_of(filters: AuditFilter) -> Callable[[sqlite3.Connection], int]:
    def first_page(connection: sqlite3.Connection) -> int:
        return len(fetch_page(connection, filters).rows)

    return first_page


def _plan_of(db_path: Path, filters: AuditFilter) -> str:
    connection = open_read_only(db_path)
    try:
        return plan(connection, filters)
    finally:
        connection.close()


def _time(db_path: Path, call: Callable[[sqlite3.Connection], int], rounds: int) -> list[float]:
    """Time ``call`` ``rounds`` times on a fresh read-only connection each (as the screen opens one);
    return the samples in ms followed by the last result."""
    samples: list[float] = []
    result = 0
    for _ in range(rounds):
        started = time.perf_counter()
        connection = open_read_only(db_path)
        try:
            result = call(connection)
        finally:
            connection.close()
        samples.append((time.perf_counter() - started) * 1000)
    return [*samples, float(result)]


def _line(name: str, found: int, samples: list[float], how: str) -> str:
    return (
        f"{name:28} {found:>5} {statistics.median(samples):>8.2f} {percentile(samples, 0.95):>8.2f} "
        f"{percentile(samples, 0.99):>8.2f}  {how}"
    )


if __name__ == "__main__":
    sys.exit(main())
