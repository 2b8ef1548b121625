"""``tosca export``: research exports on real files. What the folder holds (CSV, JSON, the telemetry copy,
the power trace picture with the session's power on it, the snapshots), de-identification and the audit row
of an identified export, the range export, and each refusal (unknown or open session, bad range, a folder
that exists, disk errors), with nothing left behind."""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from console_fixtures import DATA_DIR
from engineer_fixtures import (
    BIRTH_DATE,
    POST_NOTES,
    SUBJECT_NOTES,
    TECH_FULL_NAME,
    audit_rows,
    write_engineer_records,
)
from test_end_session_screen import FIXED_PROTOCOL

from tui.cli import main


def tosca(*argv: str) -> int:
    return main(["--data-dir", str(DATA_DIR), *argv])


def every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def records(data_dir: Path) -> Path:
    write_engineer_records()
    return data_dir


def test_a_session_export_holds_the_record_the_telemetry_the_trace_and_the_snapshots(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = Path("research") / "s1"
    assert tosca("export", "session", "1", "--out", str(out)) == 0
    said = capsys.readouterr().out
    assert said.startswith("exported session 1 (de-identified,") and str(out) in said

    summary = json.loads((out / "summary.json").read_text())
    assert summary["subject_code"] == "P-2026-0001"
    assert (summary["status"], summary["abort_reason"]) == ("aborted", "subject moved")
    assert (summary["energy_j"], summary["max_power_w"], summary["laser_on_time_s"]) == (27.5, 2.74, 13.5)
    assert summary["telemetry_matches_record"] is True and summary["telemetry_line_count"] == 191
    assert read_csv(out / "summary.csv")[0]["energy_j"] == "27.5"

    events = json.loads((out / "events.json").read_text())
    assert len(events) == 11 and [e["event_type"] for e in events][:3] == [
        "ring_size_change",
        "protocol_step_start",
        "laser_on",
    ]
    override = next(
        e
        for e in events
        if e["event_details"] and e["event_details"].get("action") == "protocol_power_override"
    )
    assert override["event_details"]["reason"] == "subject felt warmth"
    assert len(read_csv(out / "events.csv")) == 11
    safety = read_csv(out / "safety_log.csv")
    assert [r["event_type"] for r in safety].count("photodiode_warning") == 1 and len(safety) == 7
    assert json.loads((out / "safety_log.json").read_text())[3]["severity"] == "warning"

    original = (DATA_DIR / "sessions" / "P-2026-0001" / "1" / "telemetry.jsonl").read_bytes()
    assert (out / "telemetry.jsonl").read_bytes() == original
    samples = read_csv(out / "telemetry.csv")
    assert len(samples) == 191 and samples[50]["cmd_w"] == "2.0" and samples[50]["p_w"] == "1.96"
    assert (out / "protocol.json").read_text() == FIXED_PROTOCOL

    # The picture decodes, and its red line is where the session's measured power was.
    image = cv2.imread(str(out / "power_trace.png"))
    assert image is not None and image.shape == (500, 1200, 3)
    axes = summary["power_trace"]
    left, top, right, bottom = axes["plot_box_px"]
    assert axes["power_axis_top_w"] == 5.0 and axes["time_axis_end_s"] == 19.0

    def y_of(watts: float) -> int:
        return bottom - round(watts / axes["power_axis_top_w"] * (bottom - top))

    def red_rows(seconds: float) -> set[int]:
        x = left + round(seconds / axes["time_axis_end_s"] * (right - left))
        column = image[:, x, :]
        return set(np.nonzero((column[:, 2] > 180) & (column[:, 1] < 60) & (column[:, 0] < 60))[0].tolist())

    assert y_of(1.96) in red_rows(5.0)  # step 1 at 1.96 W measured
    assert y_of(0.5) in red_rows(8.1)  # the photodiode dip
    assert not red_rows(5.0) & {y_of(0.5), y_of(4.0)}
    blue = image[y_of(2.0), left + round(5.0 / 19.0 * (right - left))]
    assert blue[0] > 150 and blue[2] < 60, "the commanded 2 W in blue"

    pictures = sorted(p.name for p in (out / "snapshots").iterdir())
    assert pictures == ["snapshot_0001.png", "snapshot_0001_ring.png"]
    folder = DATA_DIR / "sessions" / "P-2026-0001" / "1"
    assert (out / "snapshots" / "snapshot_0001.png").read_bytes() == (
        folder / "snapshot_0001.png"
    ).read_bytes()
    assert [s["resolution"] for s in summary["snapshots"]] == ["64x48", "64x48"]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identified"] is False and manifest["sessions"] == [1]
    assert "power_trace.png" in manifest["files"] and "snapshots/snapshot_0001_ring.png" in manifest["files"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no partial folder left"

    # De-identified: no demographics, no full name, no free-text notes anywhere in the folder.
    content = every_byte(out)
    for secret in (BIRTH_DATE, SUBJECT_NOTES, POST_NOTES, TECH_FULL_NAME, "female"):
        assert secret.encode() not in content, secret
    ((outcome, _user, details),) = audit_rows("research_export")
    assert outcome == "success" and json.loads(details)["identified"] is False
    assert json.loads(details)["sessions"] == [1]


def test_an_identified_export_adds_the_demographics_and_is_audited(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tosca("export", "session", "1", "--out", "idf", "--format", "json", "--identified") == 0
    assert "(identified," in capsys.readouterr().out
    summary = json.loads(Path("idf/summary.json").read_text())
    assert summary["subject_date_of_birth"] == BIRTH_DATE and summary["subject_gender"] == "female"
    assert (summary["technician_full_name"], summary["post_treatment_notes"]) == (TECH_FULL_NAME, POST_NOTES)
    assert summary["subject_notes"] == SUBJECT_NOTES
    assert not list(Path("idf").glob("*.csv")), "only JSON was asked for"
    assert json.loads(Path("idf/manifest.json").read_text())["identified"] is True
    ((outcome, user, details),) = audit_rows("research_export")
    recorded = json.loads(details)
    assert (
        outcome == "success"
        and recorded["identified"] is True
        and recorded["folder"] == str(Path("idf").absolute())
    )
    assert user  # the operating system's account


def test_a_range_export_holds_each_ended_session(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tosca("export", "range", "--since", "2026-03-14", "--until", "2026-03-17", "--format", "csv") == 0
    assert "exported 2 sessions" in capsys.readouterr().out
    (folder,) = (DATA_DIR / "exports").iterdir()
    assert folder.name.startswith("sessions_20260314_20260317_")
    index = read_csv(folder / "sessions.csv")
    assert [row["session_id"] for row in index] == ["1", "2"]
    assert "subject_date_of_birth" not in index[0]
    assert read_csv(folder / "session_2" / "events.csv")[0]["laser_power_actual_watts"] == "1.48"
    assert not (folder / "session_2" / "telemetry.jsonl").exists()  # none recorded
    assert cv2.imread(str(folder / "session_2" / "power_trace.png")) is not None
    # Only a part of the range: the second session alone.
    assert (
        tosca("export", "range", "--since", "2026-03-15T00:00", "--until", "2026-03-17", "--out", "two") == 0
    )
    assert json.loads(Path("two/manifest.json").read_text())["sessions"] == [2]


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert tosca(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tosca: ") and err.count("\n") == 1
    return err


def test_refusals_say_why_and_leave_nothing(records: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no session with id 9" in refused(capsys, "export", "session", "9", "--out", "a")
    assert "start of the time range must be before its end" in refused(
        capsys, "export", "range", "--since", "2026-03-17", "--until", "2026-03-14"
    )
    assert "is not a date" in refused(
        capsys, "export", "range", "--since", "yesterday", "--until", "2026-03-14"
    )
    assert "no ended session started from 2027-01-01" in refused(
        capsys, "export", "range", "--since", "2027-01-01", "--until", "2027-02-01"
    )
    Path("taken").mkdir()
    (Path("taken") / "keep.txt").write_text("mine")
    assert "already exists: an export never overwrites" in refused(
        capsys, "export", "session", "1", "--out", "taken"
    )
    assert [p.name for p in Path("taken").iterdir()] == ["keep.txt"]
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        db.execute("UPDATE sessions SET status = 'paused', end_time = NULL WHERE session_id = 2")
    assert "session 2 is still open" in refused(capsys, "export", "session", "2", "--out", "b")
    assert not Path("a").exists() and not Path("b").exists()
    assert not (DATA_DIR / "exports").exists()
    assert audit_rows("research_export") == []


def test_an_unwritable_place_is_refused_and_nothing_is_left(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (DATA_DIR / "exports").write_text("a file where the folder should be")
    assert "cannot create" in refused(capsys, "export", "session", "1")
    Path("blocker").write_text("x")
    assert "cannot create" in refused(capsys, "export", "session", "1", "--out", "blocker/inner")
    assert audit_rows("research_export") == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0750", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="a full disk is simulated with a small tmpfs, which needs root")
def test_a_full_disk_is_refused_and_leaves_nothing(
    records: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refused(capsys, "export", "session", "1", "--out", str(small_disk / "s1"))
    assert "the disk is full; nothing was exported" in err
    assert list(small_disk.iterdir()) == []
    assert audit_rows("research_export") == []
