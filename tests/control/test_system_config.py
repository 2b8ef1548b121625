"""The settings model is the one statement of every system_config key: the migrations' seed rows agree with
it, the database holds no key it does not know, stored values are checked through it, and no other module
states a default of its own."""

from __future__ import annotations

import importlib
import math
import re
import sqlite3
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import prepare_data_dir
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.controller import Controller
from control.protocols import DEFAULT_LOOP_HZ, DEFAULT_MAX_SYSTEM_POWER_W, LimitsError, load_limits
from control.settings import read_subject_code_pattern
from control.subject_codes import CodePatternError
from control.supervisor import Limits
from control.system_config import (
    DEFAULTS,
    SETTING_KEYS,
    SettingError,
    check_setting,
    known_keys,
    read_setting,
    read_system_settings,
    settings_from,
    spec,
)
from storage.repositories import parse_config_value
from tui.settings import read_auto_lock_minutes

ROOT = Path(__file__).resolve().parents[2]


def _seed_rows() -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    initial = importlib.import_module("migrations.versions.20261123_001_initial_schema")
    rows.extend(initial.DEFAULT_CONFIG)
    later = importlib.import_module("migrations.versions.20261206_001_session_uid_and_site_settings")
    rows.extend(later.SETTINGS)
    aiming = importlib.import_module("migrations.versions.20261207_003_aiming_beam_setting")
    rows.extend(aiming.SETTINGS)
    retention = importlib.import_module("migrations.versions.20261207_005_signed_sessions_retention")
    rows.extend(retention.SETTINGS)
    return rows


@pytest.mark.parametrize(("key", "value", "kind", "description"), _seed_rows(), ids=lambda v: str(v)[:40])
def test_every_seeded_row_is_a_setting_with_the_models_type_and_default(
    key: str, value: str, kind: str, description: str
) -> None:
    described = spec(key)
    assert described.config_type == kind
    assert parse_config_value(key, value, kind) == described.default
    assert description


#: Settings no migration seeds: stored only once an admin changes them, read as their defaults until then.
UNSEEDED = (
    "backup_retention_days",
    "calibration_validity_days",
    "max_session_duration_minutes",
    "focus_stack_frames",
)


def test_the_migrations_seed_every_key_but_those_read_as_their_defaults_until_changed() -> None:
    seeded = [key for key, *_ in _seed_rows()]
    assert len(seeded) == len(set(seeded))
    assert set(seeded) <= set(SETTING_KEYS)
    assert sorted(set(SETTING_KEYS) - set(seeded)) == sorted(UNSEEDED)


def test_a_fresh_database_holds_every_seeded_setting_at_its_default_and_no_unknown_key(
    db_path: Path,
) -> None:
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT config_key, config_value, config_type FROM system_config").fetchall()
    stored = {key: parse_config_value(key, value, kind) for key, value, kind in rows}
    assert set(stored) <= known_keys()
    assert set(SETTING_KEYS) - set(stored) == set(UNSEEDED)
    defaults = DEFAULTS.model_dump()
    assert {key: stored[key] for key in SETTING_KEYS if key in stored} == {
        key: value for key, value in defaults.items() if key not in UNSEEDED
    }


async def test_a_key_no_migration_seeds_reads_as_its_default(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        assert await read_setting(session, "backup_retention_days") == 30
        assert await read_setting(session, "calibration_validity_days") == 365
        assert await read_setting(session, "max_session_duration_minutes") == 60
        assert await read_setting(session, "focus_stack_frames") == 15


def test_the_storage_layers_own_retention_reader_agrees_with_the_model() -> None:
    """storage/ may not import control/, so storage.backups reads backup_retention_days itself: its key,
    default and range must be the model's."""
    from storage.backup import RETENTION_DAYS
    from storage.backups import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS, RETENTION_KEY

    described = spec("backup_retention_days")
    assert RETENTION_KEY == described.key
    assert (RETENTION_DAYS, MIN_RETENTION_DAYS, MAX_RETENTION_DAYS) == (
        described.default,
        described.low,
        described.high,
    )


async def test_reading_a_fresh_database_gives_the_defaults(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        assert await read_system_settings(session) == DEFAULTS


def test_the_supervisor_and_the_protocol_checks_take_their_defaults_from_the_model() -> None:
    limits = Limits()
    assert limits.max_power_w == DEFAULTS.max_laser_power_watts == DEFAULT_MAX_SYSTEM_POWER_W == 10.0
    assert limits.photodiode_warning_percent == DEFAULTS.photodiode_warning_threshold_percent == 15.0
    assert limits.photodiode_fault_percent == DEFAULTS.photodiode_fault_threshold_percent == 30.0
    assert DEFAULT_LOOP_HZ == DEFAULTS.treatment_loop_frequency_hz == 10


_READERS = ("read_setting(", "_setting_or_default(", "default_setting(")


def test_no_other_module_reads_or_defaults_a_setting_on_its_own() -> None:
    """Outside the model, a key is named in quotes only as the argument of a reader that goes through it."""
    offenders: list[str] = []
    quoted = re.compile("[\"']({})[\"']".format("|".join(SETTING_KEYS)))
    for package in ("control", "storage", "tui", "devices"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "system_config.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if quoted.search(line) and not any(reader in line for reader in _READERS):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    # The storage layer's own reader of the retention (see the test above that holds it to the model).
    assert offenders == ['storage/backups.py:43: RETENTION_KEY: Final = "backup_retention_days"']


def test_no_other_module_states_a_number_beside_a_settings_name() -> None:
    """A key's name with a literal number beside it (``backup_retention_days, default 30``,
    ``max_session_duration_minutes = 60``) outside the model is a default stated twice."""
    names = "|".join(SETTING_KEYS)
    beside = re.compile(rf"\b({names})\b\W{{0,3}}(?:[A-Za-z_]+\W{{1,3}}){{0,2}}\d")
    offenders: list[str] = []
    for package in ("control", "storage", "tui", "devices"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "system_config.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if beside.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_laser_power_watts", math.nan, "finite"),
        ("max_laser_power_watts", math.inf, "finite"),
        ("max_laser_power_watts", 0.0, "greater than 0"),
        ("max_laser_power_watts", -1.0, "greater than 0"),
        ("max_laser_power_watts", 10.5, "less than or equal to 10"),
        ("max_laser_power_watts", "5", "valid number"),
        ("max_laser_power_watts", True, "valid number"),
        ("treatment_loop_frequency_hz", 2.5, "valid integer"),
        ("treatment_loop_frequency_hz", 0, "greater than or equal to 1"),
        ("photodiode_fault_threshold_percent", 101.0, "less than or equal to 100"),
        ("auto_lock_minutes", 0, "greater than or equal to 1"),
        ("min_free_disk_mb", -1, "greater than or equal to 0"),
        ("video_resolution", "big", "WIDTHxHEIGHT"),
        ("subject_code_pattern", "P-YYYY-0000", "needs a run of N"),
        ("no_such_key", 1, "no such setting"),
    ],
)
def test_a_refused_value_names_the_key_and_the_reason(key: str, value: object, reason: str) -> None:
    with pytest.raises(SettingError, match=rf"^config {key}: .*{re.escape(reason)}"):
        check_setting(key, value)


def test_values_in_range_are_taken_and_a_whole_number_of_watts_is_a_float() -> None:
    assert check_setting("max_laser_power_watts", 10.0) == 10.0
    assert check_setting("max_laser_power_watts", 5) == 5.0
    assert isinstance(check_setting("max_laser_power_watts", 5), float)
    assert check_setting("subject_code_pattern", "LX_NNNNN") == "LX_NNNNN"


def test_the_warning_threshold_must_stay_below_the_fault_threshold() -> None:
    with pytest.raises(SettingError, match=r"warning_threshold_percent \(35 %\) must be below .* \(30 %\)"):
        settings_from({"photodiode_warning_threshold_percent": 35.0})
    lowered = settings_from({"photodiode_warning_threshold_percent": 25.0})
    assert lowered.photodiode_warning_threshold_percent == 25.0


async def _store(sessions: async_sessionmaker[AsyncSession], key: str, text: str) -> None:
    async with sessions() as session, session.begin():
        from sqlalchemy import text as sql

        await session.execute(
            sql("UPDATE system_config SET config_value = :v WHERE config_key = :k"), {"v": text, "k": key}
        )


@pytest.mark.parametrize("stored", ["12.0", "-1", "0", "nan", "inf", "ten"])
async def test_an_unusable_stored_power_ceiling_is_never_used(
    sessions: async_sessionmaker[AsyncSession], stored: str
) -> None:
    await _store(sessions, "max_laser_power_watts", stored)
    async with sessions() as session:
        with pytest.raises(SettingError, match=r"^config max_laser_power_watts: "):
            await read_system_settings(session)
        with pytest.raises(SettingError, match=r"^config max_laser_power_watts: "):
            await read_setting(session, "max_laser_power_watts")
    with pytest.raises(LimitsError, match="max_laser_power_watts"):
        await load_limits(sessions)


async def test_a_lowered_power_ceiling_reaches_the_protocol_checks(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _store(sessions, "max_laser_power_watts", "6.5")
    assert (await load_limits(sessions)).max_system_power_w == 6.5


async def test_an_absent_key_gives_its_default(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session, session.begin():
        from sqlalchemy import text as sql

        await session.execute(sql("DELETE FROM system_config WHERE config_key = 'max_laser_power_watts'"))
    async with sessions() as session:
        assert await read_setting(session, "max_laser_power_watts") == 10.0
    assert (await load_limits(sessions)).max_system_power_w == 10.0


async def test_lenient_and_strict_readers(sessions: async_sessionmaker[AsyncSession]) -> None:
    await _store(sessions, "auto_lock_minutes", "100000")
    minutes, problem = await read_auto_lock_minutes(sessions)
    assert minutes == 10
    assert problem == (
        "config auto_lock_minutes: 100000 refused: must be less than or equal to 720 min; using 10 minutes"
    )
    await _store(sessions, "subject_code_pattern", "P/NN")
    async with sessions() as session:
        with pytest.raises(CodePatternError, match=r"^config subject_code_pattern: 'P/NN' refused: .*'/'"):
            await read_subject_code_pattern(session)


# ---- the controller takes its limits from the model


async def _controller_limits(tmp_path: Path, template: Path, stored_power: str) -> Controller:
    data = await prepare_data_dir(tmp_path / "data", template, {})
    with sqlite3.connect(data.db_path) as db:
        db.execute(
            "UPDATE system_config SET config_value = ? WHERE config_key = 'max_laser_power_watts'",
            (stored_power,),
        )
    return Controller(data.root, sim=True, hashing=CHEAP, terminal="test")


async def test_the_controller_takes_a_lowered_power_ceiling(tmp_path: Path, migrated_template: Path) -> None:
    controller = await _controller_limits(tmp_path, migrated_template, "6.5")
    await controller.start()
    try:
        assert controller.supervisor.limits.max_power_w == 6.5
        assert controller.supervisor.limits.photodiode_fault_percent == 30.0
    finally:
        await controller.close()


async def test_the_controller_refuses_to_start_with_a_power_ceiling_the_model_refuses(
    tmp_path: Path, migrated_template: Path
) -> None:
    controller = await _controller_limits(tmp_path, migrated_template, "50")
    refused = r"^config max_laser_power_watts: 50\.0 refused: .* less than or equal to 10"
    with pytest.raises(SettingError, match=refused):
        await controller.start()
    assert controller.sim_rig is not None
    assert not controller.sim_rig.model.laser_output_on
