"""A recorder killed outright (SIGKILL) loses nothing it reported committed, and the database stays sound."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from storage_support import Child

from storage.maintenance import check_database

RECORDER = """
import asyncio, sys
from datetime import timedelta
from pathlib import Path
from storage import TreatmentSession, create_engine, session_factory, utc_now
from storage.repositories import SessionsRepository, SubjectsRepository, TreatmentEventsRepository

BATCH = 50

async def main() -> None:
    engine = create_engine(Path(sys.argv[1]))
    factory = session_factory(engine)
    async with factory() as s:
        subject = await SubjectsRepository(s).add("P-2026-0001")
        row = await SessionsRepository(s).add(
            TreatmentSession(
                subject_id=subject.subject_id, tech_id=1, start_time=utc_now(), status="in_progress"
            )
        )
        await s.commit()
        session_id = row.session_id
    start = utc_now()
    batch_number = 0
    while True:
        batch_number += 1
        rows = [
            {
                "session_id": session_id,
                "timestamp": start + timedelta(milliseconds=batch_number * BATCH + i),
                "time_offset_ms": batch_number * BATCH + i,
                "event_type": "power_change",
                "laser_power_commanded_watts": 5.0,
                "laser_power_actual_watts": 4.9,
                "event_details": f'{{"batch": {batch_number}}}',
            }
            for i in range(BATCH)
        ]
        async with factory() as s:
            await TreatmentEventsRepository(s).add_many(rows)
            await s.commit()
        print(batch_number, flush=True)

asyncio.run(main())
"""


def test_killed_recorder_keeps_every_committed_batch(db_path: Path, child: type[Child]) -> None:
    connection = sqlite3.connect(str(db_path))
    with connection:
        connection.execute(
            "INSERT INTO tech_users (username, full_name, role) VALUES ('t', 'T', 'technician')"
        )
    connection.close()

    recorder = child(RECORDER, str(db_path))
    reported: list[int] = []
    while len(reported) < 40:
        reported.append(int(recorder.read_line()))
    recorder.process.send_signal(signal.SIGKILL)
    recorder.process.wait(timeout=10)
    assert recorder.process.returncode == -signal.SIGKILL
    assert recorder.process.stdout is not None
    # Batches committed after the last line we read may have been printed too: count them as reported.
    reported += [int(line) for line in recorder.process.stdout.read().split()]

    # Open the database as the next console start would: the write-ahead log is recovered first.
    report = check_database(db_path)
    assert report.integrity == "ok"
    connection = sqlite3.connect(str(db_path))
    counts = dict(
        connection.execute(
            "SELECT json_extract(event_details, '$.batch'), count(*) FROM treatment_events GROUP BY 1"
        ).fetchall()
    )
    connection.close()
    assert reported == list(range(1, len(reported) + 1))
    for batch in reported:
        assert counts.get(batch) == 50, f"batch {batch} was reported committed but is missing"
    # A batch in flight at the kill is either wholly there or wholly absent, never half-written.
    assert set(counts.values()) == {50}
    assert max(counts) <= reported[-1] + 1
