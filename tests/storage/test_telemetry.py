"""Session telemetry files: exclusive creation, prompt writes, exact checksums, failures, crash leftovers."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from storage_support import Child

from storage import telemetry as telemetry_module
from storage.telemetry import TelemetryError, TelemetryWriter, encode_record, scan_telemetry
from tests.support import wait_until


def _sample(seq: int) -> dict[str, object]:
    return {
        "seq": seq,
        "t_ms": seq * 10,
        "photodiode_v": 1.25 + seq / 1000,
        "pedal": seq % 2 == 0,
        "mode": "é",
    }


async def test_sha256_line_count_and_size_match_the_file_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sessions" / "P-2026-0001" / "7" / "telemetry.jsonl"
    writer = TelemetryWriter(path)
    await writer.start()
    for seq in range(237):
        writer.append(_sample(seq))
    summary = await writer.close()

    data = path.read_bytes()
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert (summary.path, summary.line_count, summary.size_bytes, summary.partial_tail_bytes) == (
        path,
        237,
        len(data),
        0,
    )
    lines = data.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [_sample(seq) for seq in range(237)]
    assert lines[0] == '{"seq":0,"t_ms":0,"photodiode_v":1.25,"pedal":true,"mode":"é"}'  # compact, one line
    assert scan_telemetry(path) == summary
    assert await writer.close() is summary  # closing twice changes nothing
    with pytest.raises(TelemetryError, match="closed"):
        writer.append(_sample(0))


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.jsonl"
    path.write_bytes(b'{"kept":1}\n')
    with pytest.raises(TelemetryError, match=r"already exists; a telemetry file is never overwritten"):
        TelemetryWriter(path)
    assert path.read_bytes() == b'{"kept":1}\n'


async def test_nan_and_infinity_are_refused_by_key_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TelemetryWriter(path, flush_lines=1)
    with pytest.raises(ValueError, match="'photodiode_v' is not a finite number"):
        writer.append({"t_ms": 1, "photodiode_v": float("nan")})
    with pytest.raises(ValueError, match=r"'axes\.z\[1\]' is not a finite number"):
        writer.append({"t_ms": 2, "axes": {"z": [0.0, float("inf")]}})
    with pytest.raises(TypeError, match="keys must be strings"):
        writer.append({1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        writer.append({"when": object()})
    assert path.read_bytes() == b""
    writer.append({"t_ms": 3})  # a refused record does not spoil the writer
    summary = await writer.close()
    assert summary.line_count == 1 and path.read_bytes() == b'{"t_ms":3}\n'


def test_encode_record_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(TypeError, match="must be a mapping"):
        encode_record([1, 2])  # type: ignore[arg-type]


def test_settings_outside_the_promptness_bounds_are_refused(tmp_path: Path) -> None:
    for kwargs, message in (
        ({"flush_interval_s": 0.5}, "flush_interval_s"),
        ({"flush_lines": 51}, "flush_lines"),
        ({"flush_lines": 0}, "flush_lines"),
        ({"fsync_interval_s": 0}, "fsync_interval_s"),
    ):
        with pytest.raises(ValueError, match=message):
            TelemetryWriter(tmp_path / "refused.jsonl", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "refused.jsonl").exists()


async def test_fifty_lines_reach_the_os_at_once_and_fewer_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    writer = TelemetryWriter(path)
    for seq in range(49):
        writer.append(_sample(seq))
    assert path.stat().st_size == 0 and writer.pending_lines == 49
    writer.append(_sample(49))  # the 50th line: written at once, without the flusher
    assert writer.pending_lines == 0
    assert path.read_bytes().count(b"\n") == 50

    await writer.start()
    started = time.monotonic()
    writer.append(_sample(50))
    await wait_until(lambda: path.read_bytes().count(b"\n") == 51)
    # The flusher runs every 0.1 s; allow for a loaded machine, but not for a lost line.
    assert time.monotonic() - started < 1.0
    summary = await writer.close()
    assert summary.line_count == 51


async def test_fsync_runs_in_a_worker_thread_about_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(telemetry_module.os, "fsync", recording_fsync)
    writer = TelemetryWriter(tmp_path / "t.jsonl", fsync_interval_s=0.05)
    await writer.start()
    writer.append(_sample(0))
    await wait_until(lambda: len(calls) >= 1)
    assert all(name != threading.main_thread().name for name in calls)
    before_idle = len(calls)
    await writer.close()
    # Nothing new was written after the first sync except by close, which syncs once more at most.
    assert len(calls) <= before_idle + 1


async def test_a_full_disk_makes_the_writer_unhealthy_once_and_writes_every_held_line_when_space_returns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    failures: list[str] = []
    recovered: list[bool] = []
    budget = {"bytes": 100}

    def small_disk(fd: int, data: memoryview) -> int:
        if budget["bytes"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = min(len(data), budget["bytes"])
        budget["bytes"] -= count
        return os.write(fd, data[:count])

    writer = TelemetryWriter(
        path,
        flush_lines=5,
        on_failure=failures.append,
        on_recover=lambda: recovered.append(True),
        write=small_disk,
    )
    for seq in range(5):  # five lines of about 70 bytes: the write is cut after 100 bytes
        writer.append(_sample(seq))
    assert not writer.healthy and not writer.broken
    assert writer.error is not None
    assert writer.error.startswith("the disk holding the records is full: telemetry write to")
    assert failures == [writer.error]
    writer.append(_sample(5))  # held behind the others
    writer.flush()
    assert failures == [writer.error] and recovered == []  # reported once
    assert len(path.read_bytes()) == 100 and writer.pending_lines == 5

    budget["bytes"] = 1 << 20  # space freed: the next flush writes the rest of the cut line and the others
    writer.flush()
    assert writer.healthy and recovered == [True] and writer.pending_lines == 0
    writer.append(_sample(6))
    summary = await writer.close()
    expected = b"".join(encode_record(_sample(seq)) for seq in range(7))
    assert path.read_bytes() == expected
    assert (summary.line_count, summary.partial_tail_bytes) == (7, 0)
    assert summary.sha256 == hashlib.sha256(expected).hexdigest()
    assert scan_telemetry(path) == summary


async def test_lines_past_the_held_bound_are_lost_counted_and_the_file_fails_for_good(tmp_path: Path) -> None:
    full = {"on": True}

    def disk(fd: int, data: memoryview) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    writer = TelemetryWriter(tmp_path / "t.jsonl", flush_lines=1, write=disk, max_held_bytes=200)
    with pytest.raises(TelemetryError, match="telemetry lines lost after 200 bytes were held"):
        for seq in range(10):
            writer.append(_sample(seq))
    assert writer.broken and writer.lost_lines == 1
    full["on"] = False
    writer.flush()  # the lines held before the loss still reach the file
    assert not writer.healthy  # a file with a gap is never healthy again
    with pytest.raises(TelemetryError, match="lines lost"):
        writer.append(_sample(99))
    summary = await writer.close()
    assert 0 < summary.line_count < 10
    expected = b"".join(encode_record(_sample(seq)) for seq in range(summary.line_count))
    assert (tmp_path / "t.jsonl").read_bytes() == expected


async def test_an_io_error_from_the_flusher_is_reported_once(tmp_path: Path) -> None:
    failures: list[str] = []

    def broken(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    writer = TelemetryWriter(tmp_path / "t.jsonl", on_failure=failures.append, write=broken)
    await writer.start()
    writer.append(_sample(0))
    await wait_until(lambda: not writer.healthy)
    assert failures == [writer.error] and "Input/output error" in failures[0]
    summary = await writer.close()
    assert (summary.line_count, summary.size_bytes) == (0, 0)


def test_scan_reports_a_cut_last_line_and_leaves_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "crashed.jsonl"
    complete = b"".join(encode_record(_sample(seq)) for seq in range(3))
    original = complete + b'{"seq":3,"t_'
    path.write_bytes(original)
    summary = scan_telemetry(path)
    assert (summary.line_count, summary.size_bytes, summary.partial_tail_bytes) == (3, len(complete), 12)
    assert summary.sha256 == hashlib.sha256(complete).hexdigest()
    assert path.read_bytes() == original

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert scan_telemetry(empty).line_count == 0
    assert scan_telemetry(empty).sha256 == hashlib.sha256(b"").hexdigest()


def test_scan_names_the_first_line_that_is_not_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a":1}\n[1,2]\n')
    with pytest.raises(TelemetryError, match="line 2 is not a JSON object"):
        scan_telemetry(path)
    path.write_bytes(b'{"a":1}\n{"a":2}\n{"a":NaN}\n')
    with pytest.raises(TelemetryError, match="line 3 is not valid JSON"):
        scan_telemetry(path)
    assert scan_telemetry(path, parse=False).line_count == 3
    with pytest.raises(TelemetryError, match="cannot read"):
        scan_telemetry(tmp_path / "missing.jsonl")


CHILD_WRITER = """
import asyncio, sys
from pathlib import Path
from storage.telemetry import TelemetryWriter

async def main() -> None:
    writer = TelemetryWriter(Path(sys.argv[1]))
    await writer.start()
    seq = 0
    while True:
        writer.append({"seq": seq, "photodiode_v": seq / 7, "label": "x" * (seq % 300)})
        seq += 1
        if seq == 2000:
            writer.flush()
            print("ready", flush=True)
        if seq % 25 == 0:
            await asyncio.sleep(0)

asyncio.run(main())
"""


def test_a_writer_killed_mid_session_leaves_only_whole_parseable_lines(
    tmp_path: Path, child: type[Child]
) -> None:
    path = tmp_path / "killed.jsonl"
    process = child(CHILD_WRITER, str(path))
    assert process.read_line() == "ready"
    os.kill(process.process.pid, signal.SIGKILL)
    assert process.process.wait(timeout=10) == -signal.SIGKILL

    before = path.read_bytes()
    summary = scan_telemetry(path)
    assert summary.line_count >= 2000
    lines = before[: summary.size_bytes].decode("utf-8").splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(summary.line_count))
    assert summary.sha256 == hashlib.sha256(before[: summary.size_bytes]).hexdigest()
    assert summary.size_bytes + summary.partial_tail_bytes == len(before)
    assert path.read_bytes() == before
