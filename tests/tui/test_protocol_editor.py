"""The protocol editor on a real migrated database, reached from the library: a version's steps in a form,
each error shown beside its field as it is typed (the words of the file check), the power curve and totals
following the steps; a save stores the protocol's next draft version and leaves the version it started from
as it was; a new protocol from nothing; every refusal (a broken step, a taken name, a version another admin
saved meanwhile) shown and audited, nothing stored."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from admin_records_fixtures import AdminScreenApp
from console_fixtures import DATA_DIR, FakeClock, wait_until
from protocol_library_fixtures import (
    NAME,
    library_audits,
    library_loaded,
    library_screen,
    protocol_text,
    seed_library,
    stored_versions,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Label

from control.protocol_approval import import_protocol
from storage import session_factory
from tui.screens.protocol_editor import ProtocolEditorScreen
from tui.screens.protocol_library import ProtocolLibraryScreen
from tui.widgets.plot import PowerPlot


async def open_editor(pilot: Pilot[Any], key: str, name: str | None = NAME) -> ProtocolEditorScreen:
    screen = await library_loaded(pilot)
    if name is not None:
        table = screen.query_one("#library-table", DataTable)
        table.focus()
        table.move_cursor(row=[(e.name, v.version) for e, v in screen.rows].index((name, 1)))
        await pilot.pause()
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolEditorScreen), "the editor")
    editor = pilot.app.screen
    assert isinstance(editor, ProtocolEditorScreen)
    await wait_until(pilot, lambda: editor.limits is not None, "the system's limits")
    await pilot.pause()
    return editor


async def type_into(pilot: Pilot[Any], box: Input, text: str) -> None:
    """Clear ``box`` and type ``text`` into it key by key."""
    box.focus()
    box.value = ""
    await pilot.pause()
    for char in text:
        await pilot.press(char)
    await pilot.pause()


def row_errors(editor: ProtocolEditorScreen, index: int) -> str:
    return str(editor.rows[index].errors.render())


def status(editor: ProtocolEditorScreen) -> str:
    return str(editor.query_one("#status", Label).render())


def version_data(name: str, version: int) -> str:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        row = db.execute(
            "SELECT v.protocol_data FROM protocol_versions v JOIN protocols p USING (protocol_id) "
            "WHERE p.protocol_name = ? AND v.version = ?",
            (name, version),
        ).fetchone()
    return str(row[0])


def audit_details(action: str) -> list[tuple[str, dict[str, Any]]]:
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        rows = db.execute(
            "SELECT outcome, details FROM audit_log WHERE action = ? ORDER BY audit_id", (action,)
        )
        return [(str(outcome), json.loads(details)) for outcome, details in rows]


async def test_a_version_opens_in_the_form_with_its_curve(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        assert [row.values() for row in editor.rows] == [
            {
                "duration_seconds": "20",
                "power_start_watts": "2.0",
                "power_end_watts": "2.0",
                "ring_size_mm": "3.0",
                "ramp_type": "constant",
            }
        ]
        assert editor.query_one("#name", Input).disabled  # the name of an existing protocol stays
        for key in ("duration_seconds", "ramp_type"):  # each heading above its column
            assert editor.query_one(f"#heading-{key}").region.x == editor.step_input(0, key).region.x
        assert editor.query_one("#curve", PowerPlot).points("setpoint") == [(0.0, 2.0), (20.0, 2.0)]
        assert (
            str(editor.query_one("#totals", Label).render())
            == "1 step, 20.0 s, at most 2.0 W, 40.0 J expected"
        )
        assert editor.errors == []


async def test_each_error_is_shown_under_its_step_as_it_is_typed(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await pilot.press("ctrl+n")  # a copy of step 1 after it
        await wait_until(pilot, lambda: len(editor.rows) == 2, "a second step")
        await type_into(pilot, editor.step_input(1, "ramp_type"), "linear")
        await type_into(pilot, editor.step_input(1, "power_end_watts"), "12")
        errors = row_errors(editor, 1)
        assert "steps[1].power_end_watts: 12.0 W exceeds safety_limits.max_power_watts (8.0 W)" in errors
        assert (
            "steps[1].power_end_watts: 12.0 W exceeds the system limit max_laser_power_watts (10.0 W)"
            in errors
        )
        assert editor.step_input(1, "power_end_watts").has_class("-refused")
        assert not editor.step_input(1, "duration_seconds").has_class("-refused")
        assert row_errors(editor, 0) == ""
        assert editor.query_one("#curve", PowerPlot).series_keys == []  # no curve while invalid
        assert status(editor) == "2 problems to correct before saving"
        await type_into(pilot, editor.step_input(1, "duration_seconds"), "abc")
        assert 'steps[1].duration_seconds: must be a number, got "abc"' in row_errors(editor, 1)
        await type_into(pilot, editor.step_input(1, "ring_size_mm"), "")
        assert "steps[1].ring_size_mm: required key is missing" in row_errors(editor, 1)
        await type_into(pilot, editor.query_one("#max_duration_seconds", Input), "15")
        general = str(editor.query_one("#protocol-errors", Label).render())
        assert "steps[0]" not in general and "max_duration_seconds" not in general  # step 2's duration is bad
        await type_into(pilot, editor.step_input(1, "duration_seconds"), "10")
        await type_into(pilot, editor.step_input(1, "ring_size_mm"), "3")
        await type_into(pilot, editor.step_input(1, "power_end_watts"), "4")
        general = str(editor.query_one("#protocol-errors", Label).render())
        assert general == "steps: total duration 30.0 s exceeds safety_limits.max_duration_seconds (15.0 s)"
        assert editor.query_one("#max_duration_seconds", Input).has_class("-refused")
        await type_into(pilot, editor.query_one("#max_duration_seconds", Input), "600")
        assert editor.errors == []
        assert editor.query_one("#curve", PowerPlot).points("setpoint") == [
            (0.0, 2.0),
            (20.0, 2.0),
            (20.0, 2.0),
            (30.0, 4.0),
        ]


async def test_a_save_is_the_next_draft_and_the_old_version_is_untouched(
    data_dir: object, clock: FakeClock
) -> None:
    await seed_library()
    before = version_data(NAME, 1)
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await type_into(pilot, editor.step_input(0, "power_start_watts"), "3")
        await type_into(pilot, editor.step_input(0, "power_end_watts"), "3")
        await type_into(pilot, editor.query_one("#note", Input), "warmer")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolLibraryScreen), "the library")
        library = pilot.app.screen
        assert isinstance(library, ProtocolLibraryScreen)
        await wait_until(
            pilot,
            lambda: str(library.query_one("#status", Label).render()).startswith(
                f"{NAME} v2 saved as a draft"
            ),
            "the saved status",
        )
    assert stored_versions() == [(NAME, 1, "draft"), (NAME, 2, "draft")]
    assert version_data(NAME, 1) == before
    saved = json.loads(version_data(NAME, 2))
    assert saved["steps"][0]["power_start_watts"] == 3 and saved["steps"][0]["power_end_watts"] == 3
    outcome, details = audit_details("protocol_edit")[-1]
    assert outcome == "success"
    assert details["version"] == 2 and details["based_on"] == 1 and details["new_status"] == "draft"
    with sqlite3.connect(DATA_DIR / "tosca.db") as db:
        (summary,) = db.execute(
            "SELECT change_summary FROM protocol_versions WHERE version = 2 AND protocol_data = ?",
            (version_data(NAME, 2),),
        ).fetchone()
    assert summary == "edited from v1 in the console: warmer"


async def test_a_broken_step_is_refused_audited_and_nothing_stored(
    data_dir: object, clock: FakeClock
) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await type_into(pilot, editor.step_input(0, "power_end_watts"), "5")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: status(editor).startswith("refused"), "the refusal")
        assert "a constant step must end at its start power (2.0 W), got 5.0 W" in status(editor)
        assert "steps[0].power_end_watts: a constant step" in row_errors(editor, 0)
        assert pilot.app.screen is editor
    assert stored_versions() == [(NAME, 1, "draft")]
    outcome, details = audit_details("protocol_edit")[-1]
    assert outcome == "failure" and "a constant step must end" in details["refused"]


async def test_the_same_steps_again_are_refused(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: status(editor).startswith("refused"), "the refusal")
        assert "identical to version 1" in status(editor)
    assert library_audits("protocol_edit") == [("failure", "bob")]


async def test_a_version_saved_meanwhile_refuses_the_save_with_what_changed(
    data_dir: object, clock: FakeClock
) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await type_into(pilot, editor.step_input(0, "duration_seconds"), "30")
        sessions = session_factory(app.engine)
        await import_protocol(sessions, protocol_text(4.0), name=NAME, admin="ada", source="other.json")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: status(editor).startswith("refused"), "the refusal")
        text = status(editor)
        assert "version 2 was saved by ada" in text and "you saw version 1" in text
    assert stored_versions() == [(NAME, 1, "draft"), (NAME, 2, "draft")]  # ada's v2 only
    assert library_audits("protocol_edit") == [("failure", "bob")]


async def test_a_new_protocol_from_nothing(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "n", name=None)
        assert not editor.query_one("#name", Input).disabled
        assert "name: the protocol needs a name" not in editor.errors  # worded by the library
        assert editor.errors == ["name: a protocol needs a name"]
        await type_into(pilot, editor.query_one("#name", Input), NAME)
        assert editor.errors == [f"name: a protocol named {NAME!r} exists; edit it from the library"]
        assert editor.query_one("#name", Input).has_class("-refused")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: status(editor).startswith("refused"), "the refusal")
        await type_into(pilot, editor.query_one("#name", Input), "Short 1 W")
        assert editor.errors == []
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolLibraryScreen), "the library")
    assert ("Short 1 W", 1, "draft") in stored_versions()
    assert library_audits("protocol_edit") == [("failure", "bob"), ("success", "bob")]


async def test_a_step_is_removed_and_the_last_one_kept(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await open_editor(pilot, "e")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: len(editor.rows) == 2, "a second step")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(editor.rows) == 1, "one step again")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert len(editor.rows) == 1 and status(editor) == "a protocol has at least one step"
        await pilot.press("escape")  # nothing changed: straight back
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolLibraryScreen), "the library")
