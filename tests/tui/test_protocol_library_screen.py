"""The admin's protocol library screen on a real migrated database: every protocol and version listed with
its status; an import through the dialog stored as a draft, a refused file shown with every error and nothing
stored; submit, approve (not by the author), reject with a reason, retire; each refusal shown; a change made
meanwhile by another admin refused with what changed; a technician refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from admin_records_fixtures import AdminScreenApp
from console_fixtures import DATA_DIR, FakeClock, enter_text, status_text, wait_until
from protocol_library_fixtures import (
    NAME,
    library_audits,
    library_loaded,
    library_rows,
    library_screen,
    protocol_text,
    seed_library,
    stored_versions,
    write_file,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Label

from control.protocol_approval import APPROVED, change_version_status
from storage import create_engine, session_factory
from tui.screens.dialogs import ConfirmDialog, ReasonDialog
from tui.screens.home import menu_for
from tui.screens.protocol_library import ImportDialog, ProtocolLibraryScreen

SEED = "Seed example (60 s at 5 W, 30 s ramp to 8 W)"


async def highlight(pilot: Pilot[Any], name: str, version: int) -> ProtocolLibraryScreen:
    screen = await library_loaded(pilot)
    rows = [(entry.name, info.version) for entry, info in screen.rows]
    table = screen.query_one("#library-table", DataTable)
    table.focus()
    table.move_cursor(row=rows.index((name, version)))
    await pilot.pause()
    return screen


async def wait_status(pilot: Pilot[Any], start: str) -> str:
    await wait_until(pilot, lambda: status_text(pilot).startswith(start), f"the status {start!r}")
    return status_text(pilot)


def dialog_error(pilot: Pilot[Any]) -> str:
    return str(pilot.app.screen.query_one("#dialog-error", Label).render())


async def import_through_dialog(pilot: Pilot[Any], path: Path, name: str) -> ImportDialog:
    await pilot.press("i")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, ImportDialog), "the import dialog")
    dialog = pilot.app.screen
    assert isinstance(dialog, ImportDialog)
    await enter_text(pilot, str(path))
    await pilot.press("enter")
    await pilot.pause()
    dialog.field("name").value = name
    await pilot.press("enter")
    await wait_until(pilot, lambda: not dialog.saving, "the import to finish")
    return dialog


def test_the_admin_home_offers_the_library_and_a_technician_not() -> None:
    assert "protocol_library" in [entry.name for entry in menu_for("admin")]
    assert "protocol_library" not in [entry.name for entry in menu_for("technician")]


async def test_every_version_is_listed_with_its_status(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await library_loaded(pilot)
        rows = library_rows(pilot)
        seed_row = rows[[(e.name, v.version) for e, v in screen.rows].index((SEED, 1))]
        assert seed_row[0].startswith("Seed example (60 s") and seed_row[0].endswith("…")  # cut to fit
        assert seed_row[1:] == ["1", "approved", "the system", "the system", "in use"]
        assert [NAME, "1", "draft", "ada", "", ""] in rows
        screen = await highlight(pilot, NAME, 1)
        detail = str(screen.query_one("#library-detail", Label).render())
        assert detail == f"{NAME} v1: draft; by ada at 2026-03-14 09:00 UTC; created"


async def test_an_import_is_stored_as_a_draft_and_shown(
    data_dir: object, clock: FakeClock, tmp_path: Path
) -> None:
    await seed_library(imported=False)
    file = write_file(tmp_path, "warm.json", protocol_text(3.0))
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await library_loaded(pilot)
        await import_through_dialog(pilot, file, "Warm 3 W")
        text = await wait_status(pilot, "Warm 3 W v1 stored as a draft")
        assert "(a new protocol)" in text
        await wait_until(
            pilot, lambda: ["Warm 3 W", "1", "draft"] in [r[:3] for r in library_rows(pilot)], "row"
        )
    assert stored_versions() == [("Warm 3 W", 1, "draft")]
    assert library_audits("protocol_import") == [("success", "ada")]


async def test_a_name_refused_in_the_dialog_is_audited(
    data_dir: object, clock: FakeClock, tmp_path: Path
) -> None:
    await seed_library(imported=False)
    file = write_file(tmp_path, "warm.json", protocol_text(3.0))
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await library_loaded(pilot)
        dialog = await import_through_dialog(pilot, file, "   ")
        assert pilot.app.screen is dialog and dialog_error(pilot) == "a protocol needs a name"
        await wait_until(pilot, lambda: library_audits("protocol_import") != [], "the refusal audited")
    assert stored_versions() == []
    assert library_audits("protocol_import") == [("failure", "ada")]


async def test_a_refused_file_shows_every_error_and_stores_nothing(
    data_dir: object, clock: FakeClock, tmp_path: Path
) -> None:
    await seed_library(imported=False)
    bad = write_file(tmp_path, "bad.json", protocol_text(12.0, colour="red"))
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await library_loaded(pilot)
        dialog = await import_through_dialog(pilot, bad, "Too hot")
        assert pilot.app.screen is dialog
        shown = dialog_error(pilot)
        assert "bad.json: colour: unknown key" in shown and "12.0 W exceeds" in shown
        dialog.field("path").value = str(tmp_path / "absent.json")
        dialog.field("name").focus()
        await pilot.press("enter")
        await wait_until(pilot, lambda: "no such file" in dialog_error(pilot), "the missing file refused")
        await wait_until(pilot, lambda: len(library_audits("protocol_import")) == 2, "the refusal audited")
    assert stored_versions() == []
    # The file read before its rules are checked is audited as much as the one its rules refuse.
    assert library_audits("protocol_import") == [("failure", "ada"), ("failure", "ada")]


async def test_the_author_may_not_approve_and_another_admin_does(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await highlight(pilot, NAME, 1)
        await pilot.press("a")  # refused at once, without asking to confirm, and audited
        text = await wait_status(pilot, "refused: ")
        assert text == f"refused: {NAME} v1: ada is its author; another admin must approve it"
        assert not isinstance(pilot.app.screen, ConfirmDialog)
        await wait_until(pilot, lambda: library_audits("protocol_approve") != [], "the refusal audited")
    assert stored_versions() == [(NAME, 1, "draft")]
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        await highlight(pilot, NAME, 1)
        await pilot.press("s")
        await wait_status(pilot, f"{NAME} v1: draft -> submitted")
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await wait_status(pilot, f"{NAME} v1: submitted -> approved")
        await wait_until(
            pilot,
            lambda: [NAME, "1", "approved", "ada", "bob", "in use"] in library_rows(pilot),
            "the approved row",
        )
        # Approved once: approving it again is refused at once, and audited.
        await pilot.press("a")
        text = await wait_status(pilot, "refused: ")
        assert text == f"refused: {NAME} v1: already approved; a version is decided once"
        await wait_until(pilot, lambda: len(library_audits("protocol_approve")) == 3, "the refusal audited")
    assert library_audits("protocol_approve") == [("failure", "ada"), ("success", "bob"), ("failure", "bob")]


async def test_a_rejection_takes_a_reason(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        await highlight(pilot, NAME, 1)
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ReasonDialog), "the reason dialog")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ReasonDialog)  # a blank reason is refused in the dialog
        await enter_text(pilot, "ring too small for the site")
        await pilot.press("enter")
        await wait_status(pilot, f"{NAME} v1: draft -> rejected")
        await wait_until(
            pilot,
            lambda: (
                [NAME, "1", "rejected", "ada", "bob", "ring too small for the site"] in library_rows(pilot)
            ),
            "the rejected row",
        )
    assert stored_versions() == [(NAME, 1, "rejected")]


async def test_a_change_made_meanwhile_by_another_admin_is_refused_with_what_changed(
    data_dir: object, clock: FakeClock
) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="bob")
    async with app.run_test(size=(120, 40)) as pilot:
        await highlight(pilot, NAME, 1)
        # Meanwhile, another admin (cy's stand-in: the technician may not; bob's other console) approves it.
        engine = create_engine(DATA_DIR / "tosca.db")
        try:
            await change_version_status(session_factory(engine), NAME, 1, APPROVED, admin="bob")
        finally:
            await engine.dispose()
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ReasonDialog), "the reason dialog")
        await enter_text(pilot, "not for this clinic")
        await pilot.press("enter")
        text = await wait_status(pilot, "refused: ")
        assert "it was draft when you looked and has since been approved by bob" in text
        await wait_until(
            pilot, lambda: [NAME, "1", "approved"] in [r[:3] for r in library_rows(pilot)], "reload"
        )
    assert stored_versions() == [(NAME, 1, "approved")]


async def test_retire_keeps_the_protocol(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await highlight(pilot, NAME, 1)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await wait_status(pilot, f"{NAME} retired")
        await wait_until(pilot, lambda: f"{NAME} (retired)" in [r[0] for r in library_rows(pilot)], "marked")
    assert stored_versions() == [(NAME, 1, "draft")]
    assert library_audits("protocol_retire") == [("success", "ada")]


async def test_a_technician_is_refused(data_dir: object, clock: FakeClock) -> None:
    await seed_library()
    app = AdminScreenApp(library_screen, clock, username="tina")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, ProtocolLibraryScreen), "the screen")
        await wait_status(pilot, "only an admin may use this screen (tina is technician)")
        assert library_rows(pilot) == []
        await pilot.press("i")
        await wait_status(
            pilot, "refused: only an admin may change the protocol library (tina is technician)"
        )
        assert isinstance(pilot.app.screen, ProtocolLibraryScreen)
        await pilot.press("a")
        await wait_until(pilot, lambda: len(library_audits("protocol_approve")) == 1, "the approval audited")
        await wait_until(pilot, lambda: len(library_audits("protocol_import")) == 2, "the import audited")
    # The import of the fixtures is ada's success; tina's tries are refusals.
    assert library_audits("protocol_import") == [("success", "ada"), ("failure", "tina")]
    assert library_audits("protocol_approve") == [("failure", "tina")]
