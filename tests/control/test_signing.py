"""Electronic signatures of finished sessions: signing with the password and a meaning, a wrong password
refused and audited, signed addenda, nothing signed ever changed, and verification naming a signed record
that was altered behind the triggers."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from signing_fixtures import PASSWORD, PROTOCOL, TECHNICIAN, Finished, copy_template, finished_session

from control.sessions import SessionRefused
from control.signing import SignatureRefused, sign_session, signatures
from storage import DataDir, UsersRepository, create_engine, session_factory
from storage.chain_verify import verify_database
from storage.models import TechUser
from tui import cli


@pytest.fixture
async def done(tmp_path: Path, migrated_template: Path) -> AsyncIterator[Finished]:
    data_dir = copy_template(migrated_template, DataDir(tmp_path / "data"))
    engine = create_engine(data_dir.db_path)
    try:
        yield await finished_session(session_factory(engine), data_dir)
    finally:
        await engine.dispose()


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def test_signing_records_who_when_what_and_the_hash_and_the_records_verify(done: Finished) -> None:
    await done.service.add_notes(done.session_id, "skin intact, no redness", username="jdoe")
    done.clock.advance(timedelta(minutes=1))
    signed = await sign_session(done.accounts, done.session_id, "jdoe", PASSWORD, "performed by")
    assert (signed.printed_name, signed.meaning) == (TECHNICIAN, "performed by")
    shown = await signatures(done.accounts.sessions, done.session_id)
    assert [s.describe() for s in shown] == ["performed by Jane Doe (jdoe), 2026-03-14 09:31 UTC"]
    assert len(shown[0].record_hash) == 64
    db = done.data_dir.db_path
    assert _rows(db, "SELECT kind FROM session_records ORDER BY record_id") == [("final",), ("signature",)]
    assert _rows(db, "SELECT outcome FROM audit_log WHERE action = 'session_sign'") == [("success",)]
    result = verify_database(db)
    assert result.failure is None and result.signatures == 1


async def test_a_wrong_password_is_refused_audited_and_signs_nothing(done: Finished) -> None:
    with pytest.raises(SignatureRefused, match="not signed: wrong"):
        await sign_session(done.accounts, done.session_id, "jdoe", "not my password", "performed by")
    db = done.data_dir.db_path
    assert _rows(db, "SELECT kind FROM session_records") == [("final",)]
    assert _rows(db, "SELECT outcome, username FROM audit_log WHERE action = 'session_sign'") == [
        ("failure", "jdoe")
    ]
    assert await signatures(done.accounts.sessions, done.session_id) == []
    with pytest.raises(SignatureRefused, match="meaning must be one of"):
        await sign_session(done.accounts, done.session_id, "jdoe", PASSWORD, "witnessed by")
    assert _rows(db, "SELECT count(*) FROM session_records") == [(1,)]


async def test_later_notes_are_a_signed_addendum_and_nothing_signed_changes(done: Finished) -> None:
    await sign_session(done.accounts, done.session_id, "jdoe", PASSWORD, "performed by")
    with pytest.raises(SessionRefused, match="signed: later notes are added as a signed addendum"):
        await done.service.add_notes(done.session_id, "forgot: mild redness", username="jdoe")
    done.clock.advance(timedelta(hours=2))
    await sign_session(
        done.accounts, done.session_id, "jdoe", PASSWORD, "performed by", addendum="mild redness at 2 h"
    )
    shown = await signatures(done.accounts.sessions, done.session_id)
    assert [(s.kind, s.notes) for s in shown] == [("signature", None), ("addendum", "mild redness at 2 h")]
    assert shown[1].record_hash != shown[0].record_hash
    db = done.data_dir.db_path
    connection = sqlite3.connect(str(db))
    try:
        for sql in (
            f"UPDATE sessions SET post_treatment_notes = 'x' WHERE session_id = {done.session_id}",
            "UPDATE session_records SET meaning = 'reviewed by'",
            "DELETE FROM session_records",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                connection.execute(sql)
    finally:
        connection.close()
    assert verify_database(db).failure is None


async def test_a_signed_record_altered_behind_the_triggers_fails_verification_naming_it(
    done: Finished, capsys: pytest.CaptureFixture[str]
) -> None:
    await sign_session(done.accounts, done.session_id, "jdoe", PASSWORD, "performed by")
    db = done.data_dir.db_path
    connection = sqlite3.connect(str(db))
    with connection:
        connection.execute("DROP TRIGGER trg_sessions_signed_no_update")
        connection.execute(
            f"UPDATE sessions SET total_energy_joules = 12.0 WHERE session_id = {done.session_id}"
        )
    connection.close()
    assert cli.main(["audit", "verify", "--data-dir", str(done.data_dir.root)]) == 1
    err = capsys.readouterr().err
    assert f"session {done.session_id}: final record 1" in err
    assert "summary differs" in err
    result = verify_database(db)
    assert result.failure is not None and result.failure.kind == "record"


async def test_changed_notes_break_the_signature_not_the_final_record(done: Finished) -> None:
    await done.service.add_notes(done.session_id, "as signed", username="jdoe")
    await sign_session(done.accounts, done.session_id, "jdoe", PASSWORD, "performed by")
    db = done.data_dir.db_path
    connection = sqlite3.connect(str(db))
    with connection:
        connection.execute("DROP TRIGGER trg_sessions_signed_no_update")
        connection.execute(
            f"UPDATE sessions SET post_treatment_notes = 'rewritten' WHERE session_id = {done.session_id}"
        )
    connection.close()
    failure = verify_database(db).failure
    assert failure is not None
    assert failure.message == (
        f"session {done.session_id}: signature 2 (performed by Jane Doe, 2026-03-14 09:30:30): the session's "
        "record no longer matches what was signed (altered)"
    )


async def test_a_session_closed_at_start_up_has_its_final_record_chained(
    tmp_path: Path, migrated_template: Path
) -> None:
    data_dir = copy_template(migrated_template, DataDir(tmp_path / "data"))
    engine = create_engine(data_dir.db_path)
    try:
        done = await finished_session(session_factory(engine), data_dir)
        reopened = await done.service.open(
            subject_code="P-2026-0001", username="jdoe", protocol_name=PROTOCOL, backup=False
        )
        assert await done.service.close_interrupted() == [reopened.session_id]
    finally:
        await engine.dispose()
    db = data_dir.db_path
    assert _rows(db, "SELECT session_id, kind FROM session_records ORDER BY record_id") == [
        (done.session_id, "final"),
        (reopened.session_id, "final"),
    ]
    assert verify_database(db).failure is None


async def test_only_the_technician_who_treated_signs_performed_by_others_review(done: Finished) -> None:
    hashed = await done.accounts.hash_password(PASSWORD)
    async with done.accounts.sessions() as s, s.begin():
        await UsersRepository(s).add(
            TechUser(username="rroe", full_name="Rick Roe", role="technician", password_hash=hashed)
        )
    with pytest.raises(
        SignatureRefused, match=f"only the technician who performed session {done.session_id}"
    ):
        await sign_session(done.accounts, done.session_id, "rroe", PASSWORD, "performed by")
    db = done.data_dir.db_path
    assert _rows(db, "SELECT kind FROM session_records") == [("final",)]
    assert _rows(db, "SELECT outcome, username FROM audit_log WHERE action = 'session_sign'") == [
        ("failure", "rroe")
    ]
    signed = await sign_session(done.accounts, done.session_id, "rroe", PASSWORD, "reviewed by")
    assert (signed.printed_name, signed.meaning) == ("Rick Roe", "reviewed by")
    assert verify_database(db).failure is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda path: path.write_text('{"t": 1}\n', encoding="utf-8"), "no longer matches the SHA-256"),
        (lambda path: path.unlink(), "is missing (no retention run removed it)"),
    ],
)
async def test_a_telemetry_file_changed_or_removed_after_the_session_fails_verification_naming_it(
    done: Finished, capsys: pytest.CaptureFixture[str], change: Callable[[Path], object], named: str
) -> None:
    root = str(done.data_dir.root)
    assert cli.main(["audit", "verify", "--data-dir", root]) == 0
    assert "1 telemetry files match their recorded SHA-256" in capsys.readouterr().out
    (telemetry,) = done.data_dir.root.glob("sessions/*/*/telemetry.jsonl")
    change(telemetry)
    assert cli.main(["audit", "verify", "--data-dir", root]) == 1
    err = capsys.readouterr().err
    assert f"session {done.session_id}: its telemetry file" in err and named in err
