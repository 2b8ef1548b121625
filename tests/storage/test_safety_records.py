"""The safety-log row has one shape from the supervisor to the database: the journal keeps it unchanged."""

from __future__ import annotations

from datetime import datetime

import pytest

from control.supervisor import SafetyEntry
from storage.journal import JournalEntry, decode_line, encode_entry
from storage.safety_records import SafetyRecord

RECORD = SafetyRecord(
    event_type="e_stop_pressed",
    severity="critical",
    description="E-stop pressed while treating",
    system_state="fault",
    laser_state="off",
    footpedal_state=True,
    smoothing_device_state=None,
    photodiode_voltage_v=0.42,
    action_taken="laser off",
    details={"term": "estop", "latency_ms": 1.5},
)


def test_the_supervisors_entry_is_the_stored_record() -> None:
    assert SafetyEntry is SafetyRecord


def test_stamping_keeps_the_records_own_technician_and_adds_time_and_session() -> None:
    at = datetime(2026, 3, 14, 9, 30, 0, 125000)
    stamped = RECORD.stamped(timestamp=at, session_id=7, tech_id=3)
    assert (stamped.timestamp, stamped.session_id, stamped.tech_id) == (at, 7, 3)
    own = SafetyRecord(event_type="fault_reset", severity="info", description="reset", tech_id=9)
    assert own.stamped(timestamp=at, session_id=7, tech_id=3).tech_id == 9
    assert RECORD.timestamp is None  # frozen: stamping made a new record


def test_a_record_survives_the_journal_unchanged() -> None:
    stamped = RECORD.stamped(timestamp=datetime(2026, 3, 14, 9, 30, 0, 125000), session_id=7, tech_id=3)
    line = encode_entry(JournalEntry("stream", 1, "safety_log", stamped.check().values()))
    assert SafetyRecord.from_values(decode_line(line, "line 1").values) == stamped


def test_journal_values_with_an_unknown_or_missing_column_are_refused() -> None:
    with pytest.raises(ValueError, match="safety_log has no column colour"):
        SafetyRecord.from_values({**RECORD.values(), "colour": "red"})
    values = RECORD.values()
    del values["severity"]
    with pytest.raises(ValueError, match="safety_log row lacks severity"):
        SafetyRecord.from_values(values)
