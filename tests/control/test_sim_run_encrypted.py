"""A whole simulated session with encryption at rest switched on (``tosca db encrypt``): nothing of the
session (subject code, notes, protocol name) is on disk in plain text, in the database, its write-ahead log,
any backup or any file of the session folder; the record chain verifies; and everything reads back with the
key."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import PASSWORD, USERNAME, prepare_data_dir

from control.controller import Controller
from control.review import SessionReviewData, load_review
from control.sessions import SessionService
from control.simrun import run_simulated_session
from control.supervisor import SystemState
from storage import DataDir, create_engine, scan_telemetry, session_factory
from storage.crypto_db import KEY_FILE_ENV, connect, is_encrypted_file
from storage.crypto_files import HEADER_BYTES, MAGIC, is_encrypted_session_file, read_session_file
from storage.engine import finish_closing_connections
from tests.support import RIG_TEST, protocol_json, wait_until
from tests.video_frames import EBML, decoded_frames

pytestmark = RIG_TEST

TOSCA = [str(Path(sys.executable).with_name("tosca"))]
PROTOCOL = "Omega corneal crosslinking"
SUBJECT = "P-2026-0917"
NOTES = "Subject reported a faint violet glare afterwards"


def _tosca(data: DataDir, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_FILE_ENV}
    return subprocess.run(
        [*TOSCA, "--data-dir", str(data.root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path, monkeypatch: pytest.MonkeyPatch) -> DataDir:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    # The template's chain keys come along: its checkpoints were signed with them.
    shutil.copytree(migrated_template.parent / "keys", tmp_path / "data" / "keys")
    return await prepare_data_dir(
        tmp_path / "data", migrated_template, {PROTOCOL: protocol_json((3.0, 2.0, 2.0, 2.0, "constant"))}
    )


async def _add_notes_and_review(data: DataDir, session_id: int) -> SessionReviewData:
    engine = create_engine(data.db_path)
    try:
        await SessionService(session_factory(engine), data).add_notes(session_id, NOTES, username=USERNAME)
        return await load_review(session_factory(engine), data, session_id)
    finally:
        await engine.dispose()
        await finish_closing_connections()


@pytest.mark.timeout(180)
async def test_an_encrypted_session_leaves_nothing_readable_without_the_key(
    data: DataDir, tmp_path: Path
) -> None:
    key_file = tmp_path / "keys" / "tosca-db.key"
    done = await asyncio.to_thread(_tosca, data, "db", "encrypt", "--key-file", str(key_file))
    assert done.returncode == 0, done.stderr
    assert f"encrypted with the key file {key_file}" in done.stdout

    snapshots: list[asyncio.Task[object]] = []
    seen_while_recording: list[tuple[str, bytes]] = []

    def snapshot_while_treating(controller: Controller) -> None:
        async def take() -> object:
            await wait_until(lambda: controller.supervisor.state is SystemState.TREATING, 30.0, "TREATING")
            assert controller.session is not None and controller.session.video is not None
            video = controller.session.video
            # The video is encrypted while it is recorded: a sealed chunk is on disk within about a second.
            await wait_until(lambda: video.stat().st_size > 2 * HEADER_BYTES, 10.0, "a sealed video chunk")
            for path in sorted(video.parent.rglob("*")):
                if path.is_file():
                    seen_while_recording.append((path.name, path.read_bytes()[:10]))
            return await controller.take_snapshot(by=USERNAME)

        snapshots.append(asyncio.get_running_loop().create_task(take()))

    result = await run_simulated_session(
        data.root,
        protocol=PROTOCOL,
        subject_code=SUBJECT,
        username=USERNAME,
        password=PASSWORD,
        script=[],
        hashing=CHEAP,
        say=lambda line: None,
        on_started=snapshot_while_treating,
    )
    assert result.exit_code == 0, result
    assert result.session_id is not None
    await snapshots[0]
    # While recording, the session folder held no plain video: no file began with Matroska's EBML header.
    assert ("video.mkv", MAGIC) in seen_while_recording, seen_while_recording
    assert not [name for name, head in seen_while_recording if head.startswith(EBML)], seen_while_recording
    review = await _add_notes_and_review(data, result.session_id)
    # The review screen reads the encrypted telemetry: the power trace is there and matches the record.
    assert review.trace_problem is None and review.trace.sample_count > 100
    done = await asyncio.to_thread(_tosca, data, "db", "backup")
    assert done.returncode == 0, done.stderr

    # Nothing of the session in plain text: database, write-ahead log, every backup, every session file.
    secrets = [SUBJECT.encode(), NOTES.encode(), PROTOCOL.encode()]
    session_files = sorted(p for p in data.sessions.rglob("*") if p.is_file())
    suffixes = sorted(p.suffix for p in session_files)
    assert suffixes == [".jsonl", ".mkv", ".png", ".png"], session_files
    backups = sorted(data.backups.glob("tosca_*.db"))
    assert len(backups) >= 2  # the one taken by the conversion and the one taken after the session
    wal = Path(f"{data.db_path}-wal")
    checked = [
        data.db_path,
        *([wal] if await asyncio.to_thread(wal.exists) else []),
        *backups,
        *session_files,
    ]
    for path in checked:
        content = path.read_bytes()
        for secret in secrets:
            assert secret not in content, f"{secret!r} in plain text in {path}"
    assert all(is_encrypted_file(p) for p in [data.db_path, *backups])
    assert all(is_encrypted_session_file(p) for p in session_files)

    # The record chain verifies.
    done = await asyncio.to_thread(_tosca, data, "audit", "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every chain, checkpoint and signature verifies" in done.stdout

    # And everything reads back with the key.
    connection = connect(data.db_path, read_only=True)
    try:
        row = connection.execute(
            "SELECT s.subject_code, x.post_treatment_notes, x.telemetry_path, x.telemetry_line_count, "
            "x.telemetry_sha256 FROM sessions x JOIN subjects s ON s.subject_id = x.subject_id "
            "WHERE x.session_id = ?",
            (result.session_id,),
        ).fetchone()
    finally:
        connection.close()
    code, notes, telemetry_path, line_count, sha256 = row
    assert (code, notes) == (SUBJECT, NOTES)
    found = scan_telemetry(Path(telemetry_path))
    assert (found.line_count, found.sha256, found.partial_tail_bytes) == (line_count, sha256, 0)
    assert line_count > 100
    by_suffix = {p.suffix: read_session_file(p) for p in session_files}
    assert by_suffix[".png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert by_suffix[".mkv"].startswith(EBML)
    # The decrypted video plays, with the frames the session's record counts.
    connection = connect(data.db_path, read_only=True)
    try:
        frames, notes = connection.execute(
            "SELECT frame_count, notes FROM session_recordings "
            "WHERE session_id = ? AND recording_type = 'video'",
            (result.session_id,),
        ).fetchone()
    finally:
        connection.close()
    assert notes is None and frames > 10
    assert decoded_frames(by_suffix[".mkv"], tmp_path / "decrypted.mkv") == frames
    counts = []
    for backup in backups:
        check = connect(backup, read_only=True)
        try:
            found_rows = check.execute("SELECT count(*) FROM subjects WHERE subject_code = ?", (SUBJECT,))
            counts.append(found_rows.fetchone()[0])
        finally:
            check.close()
    assert counts[0] == 0 and counts[-1] == 1  # before the session, and after it
