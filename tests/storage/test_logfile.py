"""The controller's log file: the line format (ISO time in UTC, level, source), the file handler a controller
adds when its standard error is elsewhere, and following the file without reading it again (the bytes read
are counted by the kernel, in /proc/self/io)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.logfile import IsoFormatter, LogFollower, attach_log_file, log_path, parse_line


def bytes_read() -> int:
    """Bytes this process has read with read() so far (the kernel's count)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_record_reads_back_with_its_iso_time_level_and_source() -> None:
    record = logging.LogRecord(
        "control.supervisor", logging.ERROR, __file__, 1, "fault latched: %s", ("x",), None
    )
    record.created = datetime(2026, 12, 7, 9, 14, 2, 518000, tzinfo=UTC).timestamp()
    text = IsoFormatter().format(record)
    assert text == "2026-12-07T09:14:02.518+00:00 ERROR control.supervisor: fault latched: x"
    line = parse_line(text + "\n")
    assert (line.level, line.source, line.message) == ("ERROR", "control.supervisor", "fault latched: x")
    assert line.at == datetime(2026, 12, 7, 9, 14, 2, 518000, tzinfo=UTC)
    assert line.at_least("WARNING") and not line.at_least("CRITICAL")
    other = parse_line("Traceback (most recent call last):")
    assert other.level is None and other.at_least("INFO") and not other.at_least("WARNING")


def test_the_controller_writes_its_own_file_unless_standard_error_is_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("tosca.test.logfile")
    logger.propagate = False
    path = log_path(tmp_path)
    try:
        assert attach_log_file(tmp_path, logger) == path
        assert attach_log_file(tmp_path, logger) is None, "added once"
        logger.warning("laser link lost")
        for handler in logger.handlers:
            handler.flush()
        (line,) = path.read_text().splitlines()
        assert parse_line(line).message == "laser link lost" and parse_line(line).level == "WARNING"
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
    # A controller a console started has its standard error in the file already: no second copy of each line.
    with path.open("a") as stderr:
        monkeypatch.setattr("sys.stderr", stderr)
        assert attach_log_file(tmp_path, logger) is None
    assert not logger.handlers


def test_following_reads_the_tail_and_then_only_what_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "controller.log"
    with path.open("wb") as handle:
        handle.truncate(50_000_000)  # 50 MB of an old log (no line breaks in it)
        handle.seek(0, os.SEEK_END)
        handle.write(b"".join(b"line %d\n" % n for n in range(20)))
        handle.write(b"half a li")
    with LogFollower(path) as follower:
        before = bytes_read()
        assert follower.last_lines(3) == ["line 17", "line 18", "line 19"]
        assert bytes_read() - before < 200_000, "only the end of the file is read"
        assert follower.new_lines() == []
        with path.open("ab") as handle:
            handle.write(b"ne\nnext\n")
        before = bytes_read()
        assert follower.new_lines() == ["half a line", "next"]
        assert bytes_read() - before < 10_000, "only what was appended is read"
        # Moved aside, a new file at the path: the rest of the old one, then the new one from its start.
        with path.open("ab") as handle:
            handle.write(b"last of the old\n")
        path.rename(tmp_path / "controller.log.1")
        path.write_bytes(b"first of the new\n")
        assert follower.new_lines() == ["last of the old", "first of the new"]
        # Cut short (emptied and written again): read again from its start.
        path.write_bytes(b"again\n")
        assert follower.new_lines() == ["again"]


def test_a_missing_file_reads_empty_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "controller.log"
    with LogFollower(path) as follower:
        assert follower.last_lines(10) == [] and follower.new_lines() == []
        path.parent.mkdir()
        path.write_text("controller ready\n")
        assert follower.new_lines() == ["controller ready"]
