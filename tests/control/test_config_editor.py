"""An admin's change of a setting on a real migrated database: the value stored with its type, the audit row
with old and new value and the reason, and every refusal (changes nothing, audited as a failure)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.accounts import AccountService, Actor
from control.config_editor import (
    ConcurrentSettingChange,
    ConfigChangeRefused,
    NotAnAdmin,
    change_setting,
    format_value,
    parse_setting_text,
    read_entries,
    read_entry,
)
from control.system_config import SETTING_KEYS, read_system_settings

CLI = Actor.command_line("opsadmin", "/dev/pts/9")


@pytest.fixture
async def people(service: AccountService) -> None:
    await service.create_user("ada", "Ada Admin", "admin", "ada password 1", CLI)
    await service.create_user("bob", "Bob Admin", "admin", "bob password 1", CLI)
    await service.create_user("tina", "Tina Tech", "technician", "tina password 1", CLI)


def _rows(db_path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        return list(db.execute(sql, args).fetchall())


def _config(db_path: Path, key: str) -> tuple[object, ...] | None:
    rows = _rows(
        db_path,
        "SELECT config_value, config_type, modified_by_tech_id FROM system_config WHERE config_key = ?",
        key,
    )
    return rows[0] if rows else None


def _audits(db_path: Path) -> list[tuple[str, str | None, dict[str, object]]]:
    rows = _rows(
        db_path,
        "SELECT outcome, username, details FROM audit_log WHERE action = 'config_change' ORDER BY audit_id",
    )
    return [(str(o), None if u is None else str(u), json.loads(str(d))) for o, u, d in rows]


async def test_a_change_is_stored_typed_and_audited_with_old_new_and_reason(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    at = datetime(2026, 3, 14, 9, 45, 0)
    done = await change_setting(
        sessions,
        "max_laser_power_watts",
        " 6.5 ",
        admin="ada",
        reason="new fibre",
        expected=10.0,
        terminal="/dev/tty3",
        clock=lambda: at,
    )
    assert (done.old, done.new) == (10.0, 6.5)
    value, kind, by = _config(db_path, "max_laser_power_watts") or ()
    assert (value, kind) == ("6.5", "float")
    assert by == _rows(db_path, "SELECT tech_id FROM tech_users WHERE username = 'ada'")[0][0]
    assert _audits(db_path) == [
        ("success", "ada", {"key": "max_laser_power_watts", "old": 10.0, "new": 6.5, "reason": "new fibre"})
    ]
    assert _rows(
        db_path,
        "SELECT a.timestamp, a.terminal, a.entity_type, c.last_modified FROM audit_log a, system_config c "
        "WHERE a.action = 'config_change' AND c.config_key = 'max_laser_power_watts'",
    ) == [("2026-03-14 09:45:00.000000", "/dev/tty3", "system_config", "2026-03-14 09:45:00.000000")]
    async with sessions() as session:
        assert (await read_system_settings(session)).max_laser_power_watts == 6.5


async def test_a_key_no_migration_seeded_is_inserted_with_its_type(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    assert _config(db_path, "backup_retention_days") is None
    before = await read_entry(sessions, "backup_retention_days")
    assert (before.value, before.stored) == (30, False)
    await change_setting(sessions, "backup_retention_days", "90", admin="ada", reason="policy", expected=30)
    assert _config(db_path, "backup_retention_days")[:2] == ("90", "integer")  # type: ignore[index]
    after = await read_entry(sessions, "backup_retention_days")
    assert (after.value, after.stored, after.changed_by) == (90, True, "ada")


@pytest.mark.parametrize(
    ("key", "text", "why"),
    [
        ("max_laser_power_watts", "12", "less than or equal to 10 W"),
        ("max_laser_power_watts", "0", "greater than 0 W"),
        ("max_laser_power_watts", "ten", "must be a number"),
        ("max_laser_power_watts", "nan", "finite"),
        ("max_laser_power_watts", "-inf", "finite"),
        ("max_laser_power_watts", "1e999", "finite"),
        ("auto_lock_minutes", "2.5", "whole number"),
        ("auto_lock_minutes", "0", "greater than or equal to 1 min"),
        ("backup_retention_days", "3651", "less than or equal to 3650 days"),
        ("video_resolution", "big", "WIDTHxHEIGHT"),
        ("subject_code_pattern", "P/NN", "'/'"),
        ("no_such_key", "1", "no such setting"),
        ("auto_lock_minutes", "   ", "no value"),
        ("aiming_beam_during_emission", "maybe", "true or false"),
    ],
)
async def test_a_refused_value_names_the_key_and_why_changes_nothing_and_is_audited(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None, key: str, text: str, why: str
) -> None:
    before = _rows(db_path, "SELECT * FROM system_config ORDER BY config_key")
    expected = 10.0 if key == "max_laser_power_watts" else None
    with pytest.raises(ConfigChangeRefused, match=rf"^config {key}: .*{why}"):
        await change_setting(sessions, key, text, admin="ada", reason="try", expected=expected)
    assert _rows(db_path, "SELECT * FROM system_config ORDER BY config_key") == before
    [(outcome, user, details)] = _audits(db_path)
    assert (outcome, user) == ("failure", "ada")
    assert details["key"] == key and details["value"] == text and why in str(details["refused"])


async def test_the_warning_threshold_cannot_reach_the_fault_threshold(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    with pytest.raises(
        ConfigChangeRefused, match=r"^config photodiode_warning_threshold_percent: 30\.0 .*below"
    ):
        await change_setting(
            sessions, "photodiode_warning_threshold_percent", "30", admin="ada", reason="x", expected=15.0
        )
    await change_setting(
        sessions, "photodiode_fault_threshold_percent", "40", admin="ada", reason="noisy diode", expected=30.0
    )
    # Against the fault threshold stored now (40 %), not the default.
    await change_setting(
        sessions,
        "photodiode_warning_threshold_percent",
        "35",
        admin="ada",
        reason="noisy diode",
        expected=15.0,
    )
    assert _config(db_path, "photodiode_warning_threshold_percent")[0] == "35.0"  # type: ignore[index]


async def test_an_empty_reason_is_refused(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    with pytest.raises(ConfigChangeRefused, match="a reason is needed"):
        await change_setting(sessions, "auto_lock_minutes", "5", admin="ada", reason="  ", expected=10)
    assert _config(db_path, "auto_lock_minutes")[0] == "10"  # type: ignore[index]
    assert [outcome for outcome, *_ in _audits(db_path)] == ["failure"]


async def test_a_change_made_meanwhile_by_another_admin_is_never_overwritten(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    shown = await read_entry(sessions, "auto_lock_minutes")  # both admins see 10
    await change_setting(
        sessions, "auto_lock_minutes", "5", admin="bob", reason="busy ward", expected=shown.value
    )
    with pytest.raises(
        ConcurrentSettingChange, match=r"^config auto_lock_minutes: changed meanwhile by bob from 10 to 5"
    ):
        await change_setting(
            sessions, "auto_lock_minutes", "20", admin="ada", reason="quiet", expected=shown.value
        )
    assert _config(db_path, "auto_lock_minutes")[0] == "5"  # type: ignore[index]
    assert [(o, u) for o, u, _ in _audits(db_path)] == [("success", "bob"), ("failure", "ada")]


async def test_only_an_active_admin_by_the_databases_role_may_change(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None, service: AccountService
) -> None:
    with pytest.raises(NotAnAdmin, match=r"only an admin .*tina.* is technician"):
        await change_setting(sessions, "auto_lock_minutes", "5", admin="tina", reason="r", expected=10)
    await service.change_role("bob", "technician", CLI)  # demoted after logging in
    with pytest.raises(NotAnAdmin, match="bob"):
        await change_setting(sessions, "auto_lock_minutes", "5", admin="bob", reason="r", expected=10)
    with pytest.raises(NotAnAdmin, match="no user named 'eve'"):
        await change_setting(sessions, "auto_lock_minutes", "5", admin="eve", reason="r", expected=10)
    assert _config(db_path, "auto_lock_minutes")[0] == "10"  # type: ignore[index]
    assert [(o, u) for o, u, _ in _audits(db_path)] == [
        ("failure", "tina"),
        ("failure", "bob"),
        ("failure", "eve"),
    ]


async def test_an_unusable_stored_value_is_listed_with_why_and_can_be_replaced(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE system_config SET config_value = '50' WHERE config_key = 'max_laser_power_watts'")
    entry = await read_entry(sessions, "max_laser_power_watts")
    assert entry.value == 10.0 and entry.problem is not None and "50" in entry.problem
    done = await change_setting(
        sessions, "max_laser_power_watts", "8", admin="ada", reason="fix", expected=10.0
    )
    assert (done.old, done.new) == ("50", 8.0)


def test_a_typed_value_is_converted_to_the_keys_type() -> None:
    assert parse_setting_text("max_laser_power_watts", "5") == 5.0
    assert parse_setting_text("video_resolution", " 1280x720 ") == "1280x720"
    assert parse_setting_text("aiming_beam_during_emission", "Off") is False
    assert parse_setting_text("aiming_beam_during_emission", "true") is True


async def test_a_boolean_setting_is_stored_as_the_table_reads_it(
    sessions: async_sessionmaker[AsyncSession], db_path: Path, people: None
) -> None:
    await change_setting(
        sessions, "aiming_beam_during_emission", "off", admin="ada", reason="clinic rule", expected=True
    )
    assert _config(db_path, "aiming_beam_during_emission")[:2] == ("false", "boolean")  # type: ignore[index]
    async with sessions() as session:
        assert (await read_system_settings(session)).aiming_beam_during_emission is False
    entry = await read_entry(sessions, "aiming_beam_during_emission")
    assert format_value(entry.value) == "false"


async def test_the_list_has_every_key(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert tuple(entry.key for entry in await read_entries(sessions)) == SETTING_KEYS
