"""The protocol library's approval rules on a real migrated database: import as a draft, submit, approve or
reject by a second admin, retire; each action and each refusal audited with the old and new status, and a
refusal storing nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import AccountService, Actor
from control.catalog import ProtocolCatalog
from control.protocol_approval import (
    APPROVED,
    MAX_PROTOCOL_FILE_BYTES,
    REJECTED,
    SUBMITTED,
    SYSTEM,
    ApprovalRefused,
    ConcurrentProtocolChange,
    NotAnAdmin,
    change_version_status,
    import_protocol,
    library_entry,
    list_library,
    read_protocol_file,
    retire_protocol,
)
from control.protocols import install_library_protocols, load_library

CLI = Actor.command_line("opsadmin", "/dev/pts/9")
NAME = "Gentle 2 W"


def protocol_text(power_w: float = 2.0, duration_s: float = 20.0, **extra: Any) -> str:
    return json.dumps(
        {
            "version": "1.0",
            "steps": [
                {
                    "step_number": 1,
                    "duration_seconds": duration_s,
                    "power_start_watts": power_w,
                    "power_end_watts": power_w,
                    "ring_size_mm": 3.0,
                    "ramp_type": "constant",
                }
            ],
            "safety_limits": {"max_power_watts": 8.0, "max_duration_seconds": 600},
            **extra,
        }
    )


@pytest.fixture
async def people(service: AccountService) -> None:
    await service.create_user("ada", "Ada Admin", "admin", "ada password 1", CLI)
    await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
    await service.create_user("tina", "Tina Tech", "technician", "tina password 1", CLI)


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute(sql, args).fetchall())


def _audits(db_path: Path, action: str) -> list[tuple[str, str, dict[str, Any]]]:
    rows = _rows(
        db_path, "SELECT outcome, username, details FROM audit_log WHERE action = ? ORDER BY audit_id", action
    )
    return [(str(o), str(u), json.loads(str(d))) for o, u, d in rows]


def _versions(db_path: Path) -> list[tuple[Any, ...]]:
    return _rows(
        db_path,
        "SELECT p.protocol_name, v.version, v.status FROM protocol_versions v "
        "JOIN protocols p USING (protocol_id) ORDER BY p.protocol_name, v.version",
    )


async def test_an_import_is_a_draft_and_a_second_admin_approves_it(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    catalog = ProtocolCatalog(sessions)
    made = await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="gentle.json")
    assert (made.name, made.version, made.created_protocol) == (NAME, 1, True)
    assert _versions(db_path) == [(NAME, 1, "draft")]
    assert NAME not in [s.name for s in await catalog.active()]
    await change_version_status(sessions, NAME, 1, SUBMITTED, admin="ada", expected_status="draft")
    change = await change_version_status(
        sessions, NAME, 1, APPROVED, admin="bob", expected_status="submitted"
    )
    assert (change.old_status, change.new_status) == ("submitted", "approved")
    entry = await library_entry(sessions, NAME)
    approved = entry.approved
    assert approved is not None
    assert (approved.created_by, approved.submitted_by, approved.approved_by) == ("ada", "ada", "bob")
    assert NAME in [s.name for s in await catalog.active()]
    assert [(o, u, d["old_status"], d["new_status"]) for o, u, d in _audits(db_path, "protocol_approve")] == [
        ("success", "bob", "submitted", "approved")
    ]
    assert _audits(db_path, "protocol_import")[0][2]["new_status"] == "draft"


async def test_importing_under_an_existing_name_makes_its_next_draft_and_keeps_the_approved_one(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    made = await import_protocol(
        sessions, protocol_text(3.0), name=NAME, admin="ada", source="b.json", expected_latest=1
    )
    assert (made.version, made.created_protocol) == (2, False)
    assert _versions(db_path) == [(NAME, 1, "approved"), (NAME, 2, "draft")]
    listed = {s.name: s for s in await ProtocolCatalog(sessions).active()}
    assert (listed[NAME].version, listed[NAME].max_power_w) == (1, 2.0)
    # Version 1's data is as it was imported.
    assert (
        json.loads(_rows(db_path, "SELECT protocol_data FROM protocol_versions WHERE version = 1")[0][0])[
            "steps"
        ][0]["power_start_watts"]
        == 2.0
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"version": "1.0", "steps": [', ["invalid JSON"]),
        (protocol_text(colour="red"), ["colour: unknown key"]),
        (protocol_text(power_w=12.0), ["12.0 W exceeds", "max_power_watts"]),
    ],
    ids=["not-json", "unknown-key", "limit-broken"],
)
async def test_a_bad_file_is_refused_with_every_error_and_nothing_is_stored(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None, text: str, expected: list[str]
) -> None:
    with pytest.raises(ApprovalRefused) as caught:
        await import_protocol(sessions, text, name=NAME, admin="ada", source="bad.json")
    joined = " | ".join(caught.value.errors)
    for part in expected:
        assert part in joined
    assert all(error.startswith("bad.json: ") for error in caught.value.errors)
    assert _versions(db_path) == []
    assert [(o, d["protocol"]) for o, _u, d in _audits(db_path, "protocol_import")] == [("failure", NAME)]


async def test_several_errors_are_all_named(sessions: async_sessionmaker[AsyncSession], people: None) -> None:
    text = protocol_text(power_w=12.0, duration_s=-1.0, colour="red")
    with pytest.raises(ApprovalRefused) as caught:
        await import_protocol(sessions, text, name=NAME, admin="ada", source="bad.json")
    assert len(caught.value.errors) >= 3


def test_a_50_mb_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)
    with pytest.raises(ApprovalRefused, match=f"larger than {MAX_PROTOCOL_FILE_BYTES} bytes"):
        read_protocol_file(big)
    with pytest.raises(ApprovalRefused, match="no such file"):
        read_protocol_file(tmp_path / "absent.json")
    (tmp_path / "latin.json").write_bytes(b'{"x": "\xe9"}')
    with pytest.raises(ApprovalRefused, match="not UTF-8"):
        read_protocol_file(tmp_path / "latin.json")


async def test_only_an_admin_imports(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    with pytest.raises(NotAnAdmin, match="tina' is technician"):
        await import_protocol(sessions, protocol_text(), name=NAME, admin="tina", source="a.json")
    assert _versions(db_path) == []
    assert [(o, u) for o, u, _d in _audits(db_path, "protocol_import")] == [("failure", "tina")]


async def test_approval_refusals_are_audited_and_change_nothing(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    with pytest.raises(ApprovalRefused, match="ada is its author; another admin must approve it"):
        await change_version_status(sessions, NAME, 1, APPROVED, admin="ada")
    with pytest.raises(NotAnAdmin, match="only an admin"):
        await change_version_status(sessions, NAME, 1, APPROVED, admin="tina")
    with pytest.raises(ApprovalRefused, match="there is no version 7"):
        await change_version_status(sessions, NAME, 7, APPROVED, admin="bob")
    with pytest.raises(ApprovalRefused, match="no protocol named 'Nothing'"):
        await change_version_status(sessions, "Nothing", 1, APPROVED, admin="bob")
    assert _versions(db_path) == [(NAME, 1, "draft")]
    await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    with pytest.raises(ApprovalRefused, match="already approved"):
        await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    with pytest.raises(ApprovalRefused, match="cannot reject a version that is approved"):
        await change_version_status(sessions, NAME, 1, REJECTED, admin="bob", reason="too late")
    audits = _audits(db_path, "protocol_approve")
    assert [(o, u) for o, u, _d in audits] == [
        ("failure", "ada"),
        ("failure", "tina"),
        ("failure", "bob"),
        ("failure", "bob"),
        ("success", "bob"),
        ("failure", "bob"),
    ]
    assert audits[0][2]["old_status"] == "draft" and audits[0][2]["new_status"] == "approved"
    assert "author" in audits[0][2]["refused"]
    assert audits[-1][2]["old_status"] == "approved"
    assert _audits(db_path, "protocol_reject")[0][0] == "failure"


async def test_a_rejection_needs_a_reason_and_is_kept_with_it(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    with pytest.raises(ApprovalRefused, match="needs a reason"):
        await change_version_status(sessions, NAME, 1, REJECTED, admin="bob", reason="  ")
    with pytest.raises(ApprovalRefused, match="author"):
        await change_version_status(sessions, NAME, 1, REJECTED, admin="ada", reason="mine")
    await change_version_status(
        sessions, NAME, 1, REJECTED, admin="bob", reason="ring too small for the site"
    )
    entry = await library_entry(sessions, NAME)
    version = entry.version(1)
    assert version is not None
    assert (version.status, version.rejected_by, version.rejection_reason) == (
        "rejected",
        "bob",
        "ring too small for the site",
    )
    with pytest.raises(ApprovalRefused, match="cannot approve a version that is rejected"):
        await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    assert _audits(db_path, "protocol_reject")[-1][2]["reason"] == "ring too small for the site"


async def test_two_admins_at_once_the_second_is_refused_with_what_changed(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None, service: AccountService
) -> None:
    await service.create_user("cy", "Cy Admin", "admin", "cy password 11", CLI)
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    # bob and cy both saw version 1 as a draft; bob approves first.
    await change_version_status(sessions, NAME, 1, APPROVED, admin="bob", expected_status="draft")
    with pytest.raises(
        ConcurrentProtocolChange, match="it was draft when you looked and has since been approved by bob"
    ):
        await change_version_status(
            sessions, NAME, 1, REJECTED, admin="cy", reason="no", expected_status="draft"
        )
    # ada and bob both saw version 1 as the newest; ada saves version 2 first.
    await import_protocol(
        sessions, protocol_text(3.0), name=NAME, admin="ada", source="b.json", expected_latest=1
    )
    saved_first = r"version 2 was saved by ada .* \(you saw version 1\)"
    with pytest.raises(ConcurrentProtocolChange, match=saved_first):
        await import_protocol(
            sessions, protocol_text(4.0), name=NAME, admin="bob", source="c.json", expected_latest=1
        )
    with pytest.raises(ConcurrentProtocolChange, match="you saw no protocol"):
        await import_protocol(
            sessions, protocol_text(4.0), name=NAME, admin="bob", source="c.json", expected_latest=0
        )
    assert _versions(db_path) == [(NAME, 1, "approved"), (NAME, 2, "draft")]
    assert [o for o, _u, _d in _audits(db_path, "protocol_import")] == [
        "success",
        "success",
        "failure",
        "failure",
    ]


async def test_an_identical_file_is_not_stored_again(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    with pytest.raises(ApprovalRefused, match="identical to version 1"):
        await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    assert _versions(db_path) == [(NAME, 1, "draft")]


async def test_retire_keeps_the_protocol_and_hides_it_from_the_technician(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    with pytest.raises(NotAnAdmin):
        await retire_protocol(sessions, NAME, admin="tina")
    await retire_protocol(sessions, NAME, admin="ada")
    with pytest.raises(ApprovalRefused, match="already retired"):
        await retire_protocol(sessions, NAME, admin="ada")
    assert NAME not in [s.name for s in await ProtocolCatalog(sessions).active()]
    entries = {e.name: e for e in await list_library(sessions)}
    assert entries[NAME].active is False and len(entries[NAME].versions) == 1
    with pytest.raises(ApprovalRefused, match="retired"):
        await import_protocol(sessions, protocol_text(3.0), name=NAME, admin="ada", source="b.json")
    assert [o for o, _u, _d in _audits(db_path, "protocol_retire")] == ["failure", "success", "failure"]


async def test_the_shipped_protocols_are_approved_by_the_system(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await install_library_protocols(sessions)
    entries = await list_library(sessions)
    assert sorted(e.name for e in entries) == sorted(item.name for item in load_library())
    for entry in entries:
        approved = entry.approved
        assert approved is not None and approved.version == 1
        assert (approved.approved_by, approved.created_by) == (SYSTEM, SYSTEM)


async def test_a_deactivated_admin_is_refused(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None, service: AccountService
) -> None:
    await import_protocol(sessions, protocol_text(), name=NAME, admin="ada", source="a.json")
    await service.deactivate("bob", CLI)
    with pytest.raises(NotAnAdmin, match="deactivated"):
        await change_version_status(sessions, NAME, 1, APPROVED, admin="bob")
    assert _versions(db_path) == [(NAME, 1, "draft")]


async def test_a_status_that_is_not_a_change_is_refused_before_anything_is_read(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    with pytest.raises(ValueError, match="no status change to 'draft'"):
        await change_version_status(sessions, NAME, 1, "draft", admin="bob")
