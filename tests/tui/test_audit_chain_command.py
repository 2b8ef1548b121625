"""``tosca audit verify`` and ``tosca audit checkpoint``: a clean database verifies; each kind of tampering
done with the sqlite3 command-line tool after dropping the append-only triggers is found and named; bad keys
are refused with exit code 2."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storage import DataDir, create_engine, session_factory
from storage.chain import Checkpoint, backup_checkpoint_path, key_paths
from storage.maintenance import backup, record_audit, upgrade
from storage.models import Subject, TechUser, TreatmentSession
from storage.repositories import SafetyLogRepository, TreatmentEventsRepository
from storage.safety_records import SafetyRecord
from storage.verifications import last_verification
from tui import cli

SQLITE3 = shutil.which("sqlite3")
needs_sqlite3 = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 command-line tool is not installed")

DROP_TRIGGERS = "".join(
    f"DROP TRIGGER IF EXISTS trg_{table}_no_{op};"
    for table in ("audit_log", "safety_log", "treatment_events", "chain_checkpoints")
    for op in ("update", "delete")
)


def _tosca(*argv: str) -> int:
    return cli.main(list(argv))


async def _fill(db_path: Path, events: int) -> None:
    engine = create_engine(db_path)
    try:
        async with session_factory(engine)() as s, s.begin():
            tech = TechUser(username="ana", full_name="Ana", role="technician")
            s.add(tech)
            subject = Subject(subject_code="P-2026-0001")
            s.add(subject)
            await s.flush()
            session = TreatmentSession(
                subject_id=subject.subject_id,
                tech_id=tech.tech_id,
                start_time=datetime(2026, 3, 1, 9, 0),
                status="in_progress",
            )
            s.add(session)
            await s.flush()
            start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
            await TreatmentEventsRepository(s).add_many(
                [
                    {
                        "session_id": session.session_id,
                        "timestamp": start + timedelta(milliseconds=100 * i),
                        "time_offset_ms": 100 * i,
                        "event_type": "power_sample",
                        "laser_power_commanded_watts": 5,
                        "laser_power_actual_watts": 4.9 + i / 1000,
                        "footpedal_state": i % 2 == 0,
                        "event_details": {"i": i, "note": "é"},
                    }
                    for i in range(events)
                ]
            )
            await SafetyLogRepository(s).add(
                SafetyRecord(
                    event_type="footpedal_released",
                    severity="info",
                    description="pedal up",
                    session_id=session.session_id,
                    footpedal_state=False,
                    photodiode_voltage_v=2,
                )
            )
    finally:
        await engine.dispose()


@pytest.fixture
def chained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory made by the install path (keys created, rows sealed), with rows appended through
    every path: 6 audit rows, 2 safety rows, 20 events."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOSCA_CHAIN_KEY_FILE", raising=False)
    data_dir = DataDir(tmp_path / "data")
    upgrade(data_dir)
    for n in range(6):
        record_audit(data_dir.db_path, f"action_{n}", "success", terminal="tty1", details={"n": n})
    asyncio.run(_fill(data_dir.db_path, 20))
    return data_dir.root


def _sqlite(db_path: Path, script: str) -> None:
    assert SQLITE3 is not None
    done = subprocess.run(
        [SQLITE3, str(db_path)], input=DROP_TRIGGERS + script, text=True, capture_output=True, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


def _verify(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = _tosca("audit", "verify", "--data-dir", str(root), *extra)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_clean_database_verifies_with_its_counts(chained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _verify(capsys, chained)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "audit_log: 6 rows (0 sealed before the chain), 1 checkpoints",
        # The migration's own "database initialised" row was sealed at install; the pedal row was chained.
        "safety_log: 2 rows (1 sealed before the chain), 1 checkpoints",
        "treatment_events: 20 rows (0 sealed before the chain), 1 checkpoints",
        "session_records: 0 rows (0 sealed before the chain), 1 checkpoints",
        "0 signatures and signed addenda match their sessions' records",
        "0 telemetry files match their recorded SHA-256",
        "ok: tosca.db: every chain, checkpoint and signature verifies, and every telemetry file",
    ]


def test_checkpoint_command_signs_each_chain_and_verify_still_passes(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tosca("audit", "checkpoint", "--data-dir", str(chained)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "audit_log: checkpoint 5 at 6 rows",
        "safety_log: checkpoint 6 at 2 rows",
        "treatment_events: checkpoint 7 at 20 rows",
        "session_records: checkpoint 8 at 0 rows",
    ]
    code, out, _err = _verify(capsys, chained)
    assert code == 0 and "audit_log: 6 rows (0 sealed before the chain), 2 checkpoints" in out


@needs_sqlite3
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        pytest.param(
            "UPDATE audit_log SET outcome = 'failure' WHERE audit_id = 3;",
            "audit_log row 3 (seq 3): altered",
            id="edit-a-value",
        ),
        pytest.param(
            "UPDATE treatment_events SET laser_power_actual_watts = 4.95 WHERE event_id = 7;",
            "treatment_events row 7 (seq 7): altered",
            id="edit-an-event",
        ),
        pytest.param(
            "DELETE FROM audit_log WHERE audit_id = 3;", "audit_log seq 3: missing", id="delete-a-row"
        ),
        pytest.param(
            "INSERT INTO audit_log (timestamp, action, outcome) "
            "VALUES ('2026-03-01 10:00:00', 'forged', 'success');",
            "audit_log row 7: inserted",
            id="insert-a-row",
        ),
        pytest.param(
            "INSERT INTO audit_log (timestamp, action, outcome, chain_seq, chain_prev, chain_mac) "
            "SELECT timestamp, 'forged', outcome, 7, chain_mac, chain_mac FROM audit_log WHERE audit_id = 6;",
            "audit_log row 7 (seq 7): altered",
            id="insert-a-row-with-a-made-up-link",
        ),
        pytest.param(
            "INSERT INTO audit_log (timestamp, tech_id, username, action, entity_type, entity_id, terminal, "
            "outcome, details, chain_seq, chain_prev, chain_mac) "
            "SELECT timestamp, tech_id, username, action, entity_type, entity_id, terminal, outcome, "
            "details, chain_seq, chain_prev, chain_mac "
            "FROM audit_log WHERE audit_id = 2;",
            "audit_log row 7: inserted (a copy of seq 2",
            id="insert-a-copied-row",
        ),
        pytest.param(
            "UPDATE audit_log SET audit_id = -audit_id WHERE audit_id IN (3, 4);"
            "UPDATE audit_log SET audit_id = 4 WHERE audit_id = -3;"
            "UPDATE audit_log SET audit_id = 3 WHERE audit_id = -4;",
            "audit_log row 3 (seq 4): reordered (seq 3 was due; it is at row 4)",
            id="swap-two-rows",
        ),
        pytest.param(
            "UPDATE safety_log SET description = 'Database schema altered' WHERE log_id = 1;",
            "safety_log: altered: a row up to id 1 (sealed before the chain by checkpoint 2)",
            id="edit-a-row-sealed-before-the-chain",
        ),
    ],
)
def test_each_kind_of_tampering_is_found_and_named(
    chained: Path, capsys: pytest.CaptureFixture[str], script: str, expected: str
) -> None:
    _sqlite(chained / "tosca.db", script)
    code, out, err = _verify(capsys, chained)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"tosca: verification failed: {expected}"), err


@needs_sqlite3
def test_a_truncated_tail_is_fewer_rows_than_the_last_checkpoint(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tosca("audit", "checkpoint", "--data-dir", str(chained)) == 0
    _sqlite(chained / "tosca.db", "DELETE FROM audit_log WHERE audit_id > 4;")
    code, _out, err = _verify(capsys, chained)
    assert code == 1
    assert err.startswith(
        "tosca: verification failed: audit_log: truncated: 4 rows, fewer than the 6 of checkpoint 5"
    ), err


def _forged(db_path: Path, checkpoint_id: int, key: Ed25519PrivateKey, **changes: object) -> str:
    connection = sqlite3.connect(str(db_path))
    row = connection.execute(
        "SELECT checkpoint_id, chain, length, head_hash, head_row_id, created_at, reason, signature "
        "FROM chain_checkpoints WHERE checkpoint_id = ?",
        (checkpoint_id,),
    ).fetchone()
    connection.close()
    fields = dict(
        zip(
            ("checkpoint_id", "chain", "length", "head_hash", "head_row_id", "created_at", "reason"),
            row[:7],
            strict=True,
        )
    )
    fields.update(changes)
    unsigned = Checkpoint(**fields, signature=b"")
    signature = key.sign(unsigned.message())
    return (
        f"DELETE FROM chain_checkpoints WHERE checkpoint_id = {checkpoint_id};"
        "INSERT INTO chain_checkpoints (checkpoint_id, chain, length, head_hash, head_row_id, created_at, "
        f"reason, signature) VALUES ({unsigned.checkpoint_id}, '{unsigned.chain}', {unsigned.length}, "
        f"X'{bytes(unsigned.head_hash).hex()}', {unsigned.head_row_id}, '{unsigned.created_at}', "
        f"'{unsigned.reason}', X'{signature.hex()}');"
    )


@needs_sqlite3
def test_a_checkpoint_replaced_by_one_signed_with_another_key_is_found(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tosca("audit", "checkpoint", "--data-dir", str(chained)) == 0
    # The tail is cut and the checkpoint that would show it is replaced by one claiming fewer rows.
    script = _forged(chained / "tosca.db", 5, Ed25519PrivateKey.generate(), length=4)
    _sqlite(chained / "tosca.db", "DELETE FROM audit_log WHERE audit_id > 4;" + script)
    code, _out, err = _verify(capsys, chained)
    assert code == 1
    assert err.startswith(
        "tosca: verification failed: checkpoint 5 (audit_log, 4 rows, "
    ) and err.rstrip().endswith("signature invalid (altered, or signed by another key)"), err


@needs_sqlite3
def test_a_checkpoint_removed_from_the_middle_is_found(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tosca("audit", "checkpoint", "--data-dir", str(chained)) == 0
    _sqlite(chained / "tosca.db", "DELETE FROM chain_checkpoints WHERE checkpoint_id = 4;")
    code, _out, err = _verify(capsys, chained)
    assert code == 1
    assert err.startswith(
        "tosca: verification failed: checkpoint 4 is missing: checkpoint ids go from 3 to 5"
    ), err


@needs_sqlite3
def test_a_backup_verifies_with_the_checkpoint_beside_it_and_its_tampering_is_found(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = backup(DataDir(chained))
    beside = backup_checkpoint_path(saved)
    kept = json.loads(beside.read_text())["checkpoints"]
    assert [(c["chain"], c["length"], c["reason"]) for c in kept] == [
        ("audit_log", 6, "backup"),
        ("safety_log", 2, "backup"),
        ("treatment_events", 20, "backup"),
        ("session_records", 0, "backup"),
    ]
    code, out, err = _verify(capsys, chained, "--backup", str(saved))
    assert (code, err) == (0, ""), err
    assert out.splitlines()[-1] == f"ok: {saved.name}: every chain, checkpoint and signature verifies"
    # The backup's last checkpoints removed and the events' tail cut: the copy beside the backup still tells.
    _sqlite(
        saved,
        "DELETE FROM chain_checkpoints WHERE checkpoint_id >= 7;"
        "DELETE FROM treatment_events WHERE event_id > 15;",
    )
    code, _out, err = _verify(capsys, chained, "--backup", str(saved))
    assert code == 1
    assert err == (
        f"tosca: verification failed: checkpoint 7 (treatment_events) differs from its copy in {beside.name} "
        "(replaced or removed in the database)\n"
    )
    # Without the copy beside it, the cut tail goes unnoticed: the copy is what proves it.
    beside.unlink()
    assert _verify(capsys, chained, "--backup", str(saved))[0] == 0


def test_a_key_file_of_the_wrong_length_is_refused_with_exit_2(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _signing = key_paths(chained / "tosca.db")
    key.write_bytes(b"short")
    code, out, err = _verify(capsys, chained)
    assert (code, out) == (2, "")
    assert err == f"tosca: the chain key file {key} holds 5 bytes, not 32\n"
    assert _tosca("audit", "checkpoint", "--data-dir", str(chained)) == 2


def test_a_missing_key_is_refused_with_exit_2_and_never_recreated_by_verify(
    chained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = chained / "nowhere" / "chain.key"
    monkeypatch.setenv("TOSCA_CHAIN_KEY_FILE", str(elsewhere))
    code, _out, err = _verify(capsys, chained)
    assert code == 2 and err == f"tosca: no chain key file at {elsewhere}\n"
    assert not elsewhere.exists()


def test_the_key_files_are_private_and_a_wrong_key_fails_verification(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, signing = key_paths(chained / "tosca.db")
    assert [oct(path.stat().st_mode & 0o777) for path in (key, signing, key.parent)] == [
        "0o600",
        "0o600",
        "0o700",
    ]
    key.write_bytes(os.urandom(32))
    code, _out, err = _verify(capsys, chained)
    assert code == 1 and "altered" in err


def test_verify_without_a_database_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _verify(capsys, tmp_path / "empty")
    assert code == 1 and err == f"tosca: no database at {tmp_path / 'empty' / 'tosca.db'}\n"


@needs_sqlite3
def test_each_verification_of_the_live_database_is_kept_and_the_last_is_read_back(
    chained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = chained / "tosca.db"
    assert last_verification(db_path) is None
    code, _out, _err = _verify(capsys, chained)
    assert code == 0
    first = last_verification(db_path)
    assert first is not None and first.ok
    assert first.describe().startswith("intact on ")
    assert "audit_log 6 rows" in first.summary and "treatment_events 20 rows" in first.summary
    # The row it wrote is chained: the next verification covers it.
    code, out, _err = _verify(capsys, chained)
    assert code == 0 and "audit_log: 7 rows" in out
    _sqlite(db_path, "UPDATE treatment_events SET laser_power_actual_watts = 4.95 WHERE event_id = 7;")
    code, _out, err = _verify(capsys, chained)
    assert code == 1 and "altered" in err
    failed = last_verification(db_path)
    assert failed is not None and not failed.ok
    assert (
        failed.describe().startswith("FAILED on ")
        and "treatment_events row 7 (seq 7): altered" in failed.summary
    )
    with sqlite3.connect(db_path) as db:
        outcomes = [o for (o,) in db.execute("SELECT outcome FROM audit_log WHERE action = 'records_verify'")]
    assert outcomes == ["success", "success", "failure"]
