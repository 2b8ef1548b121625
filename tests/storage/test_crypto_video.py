"""Encrypted records and the session video: a recording cut short (its writer killed) still reads back up to
its last sealed chunk, and the controller's start-up sweep encrypts the plain files a crash left behind."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from control.controller import Controller
from storage import DataDir
from storage.backup import backup_database
from storage.crypto_db import KEY_FILE_ENV, read_key_file
from storage.crypto_files import (
    MAGIC,
    SessionFileError,
    encrypt_file,
    is_encrypted_session_file,
    open_session_file,
    read_session_file,
    seal_left_plain_files,
    session_key,
)
from storage.crypto_setup import encrypt_database
from storage.video_seal import VideoSeal
from tests.support import wait_until
from tests.video_frames import EBML, decoded_frames

# A camera's recording: the project's recorder writing 160 x 120 frames at 30 a second into the FIFO, until
# it is killed.
WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from devices.camera import VideoRecorder
fifo = Path(sys.argv[1])
recorder = VideoRecorder(fifo.parent, (160, 120), fps=30.0, stem=fifo.stem)
print(recorder.path, flush=True)
frame = 0
while True:
    image = np.full((120, 160, 3), frame % 250, np.uint8)
    image[frame % 120, :, :] = 255
    recorder.write(image)
    frame += 1
    time.sleep(1 / 30)
"""


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.mark.timeout(60)
async def test_a_recording_whose_writer_is_killed_reads_back_up_to_its_last_sealed_chunk(
    tmp_path: Path,
) -> None:
    key = os.urandom(32)
    target = tmp_path / "session" / "video.mkv"
    target.parent.mkdir()
    seal = await VideoSeal.start(target, key, period_s=0.2)
    assert seal.fifo.suffix == ".mkv" and seal.fifo.parent.stat().st_mode & 0o777 == 0o700
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(seal.fifo), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        opened = await writer.stdout.readline()
        assert opened.decode().strip() == str(seal.fifo)  # the recorder wrote into the FIFO, not beside it
        # Several chunks sealed (each at most 0.2 s of video), then the camera dies mid-recording.
        await wait_until(lambda: target.stat().st_size > 12_000, 30.0, "sealed video chunks")
    finally:
        writer.kill()
        await writer.wait()
    assert not await seal.finish(complete=False)
    assert not seal.fifo.exists() and list(target.parent.iterdir()) == [target]
    assert target.read_bytes().startswith(MAGIC)
    # Read as a whole it is reported cut short; read up to its last sealed chunk, it is a playable video.
    with pytest.raises(SessionFileError, match=r"video\.mkv is cut short"):
        read_session_file(target, key=key)
    with open_session_file(target, key=key, allow_unfinished=True) as handle:
        video = handle.read()
    assert video.startswith(EBML) and len(video) > 8_000
    assert decoded_frames(video, tmp_path / "decrypted.mkv") >= 5


async def test_the_start_up_sweep_encrypts_left_plain_files_and_never_an_encrypted_one_twice(
    data_dir: DataDir, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backup_database(data_dir)
    key = session_key(read_key_file(encrypt_database(data_dir, tmp_path / "keys" / "db.key").key_file))
    folder = data_dir.sessions / "P-2026-0001" / "uid-1"
    folder.mkdir(parents=True)
    plain = folder / "video.mkv"
    plain.write_bytes(EBML + b"a video left plain by a crash" * 100)
    sealed = folder / "telemetry.jsonl"
    sealed.write_bytes(b'{"t": 0.0}\n')
    assert encrypt_file(sealed, key)
    before = sealed.read_bytes()
    controller = Controller(data_dir.root, sim=True)
    with caplog.at_level(logging.INFO, logger="control.controller.process"):
        await controller._seal_left_plain_files()
    assert "1 plain session files encrypted at start-up" in caplog.text
    assert is_encrypted_session_file(plain) and EBML not in plain.read_bytes()
    assert read_session_file(plain, key=key) == EBML + b"a video left plain by a crash" * 100
    assert sealed.read_bytes() == before  # untouched
    assert seal_left_plain_files(data_dir.root) == 0  # nothing left to do the next time


def test_the_sweep_does_nothing_where_the_records_are_plain(data_dir: DataDir) -> None:
    folder = data_dir.sessions / "P-2026-0001" / "uid-1"
    folder.mkdir(parents=True)
    (folder / "video.mkv").write_bytes(EBML + b"plain, as configured")
    assert seal_left_plain_files(data_dir.root) == 0
    assert (folder / "video.mkv").read_bytes() == EBML + b"plain, as configured"
