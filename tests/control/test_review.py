"""The review of a session: summary, merged events and power trace, from a real simulated session's records.

One short session is run once for the module on the simulated rig (real ptys, real SQLite file, real telemetry
file). Each test works on its own copy of that data directory, whose session row is pointed at the copied
telemetry file (a path relative to the data directory), so a test may damage its copy freely.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import open_and_treat, prepare_data_dir, wait_session_end
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.controller import Controller
from control.review import (
    DEFAULT_MAX_POINTS,
    SYSTEM_ACTOR,
    PowerTrace,
    ReviewSummary,
    details_text,
    downsample_min_max,
    load_review,
)
from control.sessions import SessionRefused, SessionService
from storage import DataDir, create_engine, session_factory
from tests.support import protocol_json

# Two steps: 1.5 s constant at 2 W, then a 1 s ramp from 2 W to 3 W (expected energy 3 + 2.5 = 5.5 J).
SHORT_PROTOCOL = protocol_json((1.5, 2.0, 2.0, 2.0, "constant"), (1.0, 2.0, 3.0, 2.2, "linear"))


@dataclass(frozen=True)
class Recorded:
    root: Path
    session_id: int
    telemetry: Path


async def _run_one_session(root: Path, template: Path) -> Recorded:
    data = await prepare_data_dir(root, template, {"short": SHORT_PROTOCOL})
    controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test")
    await controller.start()
    try:
        session_id = await open_and_treat(controller, "short")
        await wait_session_end(controller, 20.0)
    finally:
        await controller.close()
    with sqlite3.connect(data.db_path) as db:
        (path,) = db.execute(
            "SELECT telemetry_path FROM sessions WHERE session_id = ?", (session_id,)
        ).fetchone()
    return Recorded(data.root, session_id, Path(path))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Recorded:
    root = tmp_path_factory.mktemp("review") / "data"
    return asyncio.run(_run_one_session(root, migrated_template))


@dataclass(frozen=True)
class Copy:
    data: DataDir
    session_id: int
    telemetry: Path


@pytest.fixture
def copy(recorded: Recorded, tmp_path: Path) -> Copy:
    """This test's own copy of the recorded data directory."""
    root = tmp_path / "data"
    shutil.copytree(recorded.root, root, ignore=shutil.ignore_patterns("*.sock", "*.lock"))
    relative = recorded.telemetry.relative_to(recorded.root)
    with sqlite3.connect(root / "tosca.db") as db:
        db.execute(
            "UPDATE sessions SET telemetry_path = ? WHERE session_id = ?",
            (str(relative), recorded.session_id),
        )
    return Copy(DataDir(root), recorded.session_id, root / relative)


@pytest.fixture
async def sessions(copy: Copy) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(copy.data.db_path)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def test_the_review_of_a_real_session(copy: Copy, sessions: async_sessionmaker[AsyncSession]) -> None:
    review = await load_review(sessions, copy.data, copy.session_id)

    expected = await SessionService(sessions, copy.data).summary_of(copy.session_id)
    assert asdict(review.summary) == expected
    assert review.summary.status == "completed"
    assert review.expected_energy_j == pytest.approx(5.5)
    assert (review.steps_planned, review.steps_completed) == (2, 2)
    assert review.trace_problem is None

    events = review.events
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert events[0].kind == "session_open" and events[-1].kind == "session_completed"
    descriptions = [e.description for e in events]
    for transition in ("ready -> armed", "armed -> treating", "ready -> idle: session completed"):
        assert any(transition in d for d in descriptions), transition
    assert any(d.startswith("step 1 started") for d in descriptions)
    assert any(d.startswith("step 2 ended") for d in descriptions)
    kinds = {e.kind for e in events}
    assert {"laser_on", "laser_off", "protocol_step_start", "protocol_step_end", "state_change"} <= kinds
    assert len([e for e in events if e.source == "treatment"]) == review.summary.event_count
    assert len([e for e in events if e.source == "safety"]) == review.summary.safety_event_count
    assert {e.who for e in events if e.source == "treatment"} == {"tech1"}

    trace = review.trace
    assert trace.sample_count == review.summary.telemetry_line_count > 100
    assert 0 < len(trace.commanded) <= DEFAULT_MAX_POINTS and 0 < len(trace.measured) <= DEFAULT_MAX_POINTS
    assert trace.max_power_w == pytest.approx(3.0, abs=0.3)

    # Every sample kept: measured power follows the commanded power while the laser is on.
    full = (await load_review(sessions, copy.data, copy.session_id, max_points=100_000)).trace
    assert len(full.commanded) == trace.sample_count
    records = [json.loads(line) for line in copy.telemetry.read_text().splitlines()]
    on_times = {r["t"] for r in records if r["on"]}
    commanded_at = dict(full.commanded)
    treating = [(t, w) for t, w in full.measured if t in on_times]
    assert len(treating) > 100, "measured samples while the laser was on"
    close = [abs(w - commanded_at[t]) <= 0.15 * commanded_at[t] for t, w in treating]
    assert sum(close) >= 0.9 * len(close), "within the 15 % warning threshold nearly all the time"


async def test_a_small_point_budget_keeps_the_extremes(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    full = await load_review(sessions, copy.data, copy.session_id, max_points=100_000)
    small = await load_review(sessions, copy.data, copy.session_id, max_points=20)
    assert len(small.trace.commanded) <= 20 and len(small.trace.measured) <= 20
    assert max(w for _, w in small.trace.commanded) == max(w for _, w in full.trace.commanded)
    assert min(w for _, w in small.trace.measured) == min(w for _, w in full.trace.measured)
    assert small.trace.time_range_s == full.trace.time_range_s


async def test_a_missing_file_gives_an_empty_trace_and_says_so(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    copy.telemetry.unlink()
    review = await load_review(sessions, copy.data, copy.session_id)
    assert review.trace.is_empty and review.trace.sample_count == 0
    assert review.trace_problem is not None and "missing" in review.trace_problem
    assert review.summary.status == "completed" and review.events, "the rest of the review is still there"


async def test_a_damaged_file_gives_an_empty_trace_and_is_left_alone(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    lines = copy.telemetry.read_bytes().splitlines(keepends=True)
    lines[10] = b'{"t": 0.1, "cmd_w": \n'
    damaged = b"".join(lines)
    copy.telemetry.write_bytes(damaged)
    review = await load_review(sessions, copy.data, copy.session_id)
    assert review.trace.is_empty
    assert review.trace_problem is not None
    assert "damaged" in review.trace_problem and "line 11" in review.trace_problem
    assert copy.telemetry.read_bytes() == damaged


async def test_a_line_without_the_powers_is_damage(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    lines = copy.telemetry.read_bytes().splitlines(keepends=True)
    lines[3] = b'{"t": 0.03, "pd_v": 0.1}\n'
    copy.telemetry.write_bytes(b"".join(lines))
    review = await load_review(sessions, copy.data, copy.session_id)
    assert review.trace.is_empty
    assert review.trace_problem is not None and "line 4" in review.trace_problem


async def test_a_wrong_checksum_is_reported_and_the_file_kept(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    original = copy.telemetry.read_bytes()
    # Same number of lines, one value changed: only the SHA-256 can tell.
    changed = original.replace(b'"cmd_w":2.0,', b'"cmd_w":2.5,', 1)
    assert changed != original and changed.count(b"\n") == original.count(b"\n")
    copy.telemetry.write_bytes(changed)
    review = await load_review(sessions, copy.data, copy.session_id)
    assert review.trace_problem is not None
    assert "SHA-256" in review.trace_problem and "lines" not in review.trace_problem
    assert not review.trace.is_empty, "shown as found, with the warning"
    assert copy.telemetry.read_bytes() == changed
    with sqlite3.connect(copy.data.db_path) as db:
        (sha,) = db.execute(
            "SELECT telemetry_sha256 FROM sessions WHERE session_id = ?", (copy.session_id,)
        ).fetchone()
    assert sha == hashlib.sha256(original).hexdigest(), "the record is never rewritten"


async def test_extra_lines_and_a_cut_tail_are_reported(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    original = copy.telemetry.read_bytes()
    last = original.splitlines(keepends=True)[-1]
    copy.telemetry.write_bytes(original + last + b'{"t": 99')
    review = await load_review(sessions, copy.data, copy.session_id)
    problem = review.trace_problem
    assert problem is not None
    count = original.count(b"\n")
    assert f"it has {count + 1} lines where the record says {count}" in problem
    assert "unfinished line" in problem and "SHA-256" in problem


async def test_a_session_without_a_telemetry_file(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    with sqlite3.connect(copy.data.db_path) as db:
        db.execute(
            "UPDATE sessions SET telemetry_path = NULL, telemetry_line_count = NULL, telemetry_sha256 = NULL "
            "WHERE session_id = ?",
            (copy.session_id,),
        )
    review = await load_review(sessions, copy.data, copy.session_id)
    assert review.trace.is_empty
    assert review.trace_problem == "no telemetry file is recorded for this session"


async def test_an_unknown_session_is_refused(copy: Copy, sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(SessionRefused, match="no session with id 999"):
        await load_review(sessions, copy.data, 999)
    with pytest.raises(SessionRefused, match="positive whole number"):
        await load_review(sessions, copy.data, 0)
    with pytest.raises(ValueError, match="max_points"):
        await load_review(sessions, copy.data, copy.session_id, max_points=3)


async def test_an_aborted_session_lists_its_reason_and_system_rows(
    copy: Copy, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Rows written by hand around the recorded ones: a controller row naming nobody, and an abort."""
    with sqlite3.connect(copy.data.db_path) as db:
        start, end = db.execute(
            "SELECT start_time, end_time FROM sessions WHERE session_id = ?", (copy.session_id,)
        ).fetchone()
        db.execute(
            "UPDATE sessions SET status = 'aborted', abort_reason = 'subject moved' WHERE session_id = ?",
            (copy.session_id,),
        )
        at = datetime.fromisoformat(start) + timedelta(milliseconds=1)
        db.execute(
            "INSERT INTO safety_log (timestamp, session_id, tech_id, event_type, severity, description) "
            "VALUES (?, ?, NULL, 'link_state', 'warning', 'tec link reconnecting')",
            (at.isoformat(" "), copy.session_id),
        )
    review = await load_review(sessions, copy.data, copy.session_id)
    system = [e for e in review.events if e.kind == "link_state"]
    assert len(system) == 1 and system[0].who == SYSTEM_ACTOR and system[0].severity == "warning"
    assert system[0].offset_s == pytest.approx(0.001)
    closing = review.events[-1]
    assert closing.kind == "session_aborted" and closing.severity == "warning"
    assert closing.description == "session aborted: subject moved"
    assert closing.at == datetime.fromisoformat(end)


def test_reduction_keeps_a_short_dip_and_stays_within_the_budget() -> None:
    points = [(i * 0.01, 2.0) for i in range(10_000)]
    points[4321] = dip = (points[4321][0], 0.4)  # one 10 ms dip in 100 s
    points[7000] = spike = (points[7000][0], 2.6)
    reduced = downsample_min_max(points, 50)
    assert len(reduced) <= 50
    assert dip in reduced and spike in reduced
    assert reduced == sorted(reduced), "time order is kept"
    assert reduced[0] == points[0]
    assert downsample_min_max(points[:30], 50) == points[:30]
    assert reduced[-1] == points[-1], "the time span is kept"
    assert len(downsample_min_max(points, 4)) <= 4
    with pytest.raises(ValueError, match="max_points"):
        downsample_min_max(points, 3)


def test_summary_needs_every_field() -> None:
    with pytest.raises(ValueError, match="lacks session_id"):
        ReviewSummary.from_mapping({})
    assert PowerTrace().time_range_s is None and PowerTrace().max_power_w is None


def test_details_read_as_text() -> None:
    stored = json.dumps(
        {
            "reason": "footpedal released",
            "protocol_step": 2,
            "elapsed_s": 1.25,
            "ramp_end": True,
            "interlocks": {"estop": True},
            "target": None,
        }
    )
    assert details_text(stored) == (
        "reason: footpedal released; protocol step: 2; elapsed s: 1.25; ramp end: yes; target: -"
    )
    assert details_text(None) == "" and details_text("  ") == ""
    assert details_text("not json [/b]") == "not json [/b]", "text that is not JSON is shown as stored"
    assert details_text("[1, 2]") == "[1, 2]"
