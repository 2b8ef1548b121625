"""The records database: models, engine, repositories, backups and maintenance.

Import from here::

    from storage import DataDir, create_engine, session_factory, TechUser, UsersRepository

The names below are loaded on first use (PEP 562), so importing one light module (``storage.paths``) does not
pull in SQLAlchemy and Alembic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.backup import (
        BackupInfo,
        backup_database,
        last_backup,
        list_backups,
        prune_backups,
    )
    from storage.engine import (
        DEFAULT_BUSY_TIMEOUT_MS,
        apply_pragmas,
        connect_sqlite,
        create_engine,
        create_sync_engine,
        session_factory,
        sqlite_url,
    )
    from storage.errors import (
        BackupError,
        ConfigValueError,
        DatabaseCheckError,
        DatabaseInUseError,
        PragmaError,
        RestoreError,
        StorageError,
    )
    from storage.locks import (
        console_lock_holder,
        hold_console_lock,
        hold_database_exclusively,
        rig_lock_holder,
    )
    from storage.maintenance import (
        TRIGGER_NAMES,
        CheckReport,
        RestoreResult,
        UpgradeResult,
        alembic_config,
        check_database,
        head_revision,
        quick_check,
        restore,
        schema_revision,
        upgrade,
        upgrade_async,
    )
    from storage.models import (
        APPEND_ONLY_TABLES,
        AUDIT_OUTCOMES,
        CONFIG_TYPES,
        RECORDING_TYPES,
        ROLES,
        SESSION_STATUSES,
        SEVERITIES,
        VIEW_NAMES,
        AuditLog,
        Base,
        Calibration,
        Protocol,
        ProtocolVersion,
        SafetyLog,
        SessionRecording,
        Subject,
        SystemConfig,
        TechUser,
        TreatmentEvent,
        TreatmentSession,
        utc_now,
    )
    from storage.paths import (
        DataDir,
    )
    from storage.repositories import (
        AuditRepository,
        CalibrationsRepository,
        ConfigRepository,
        ProtocolsRepository,
        SafetyLogRepository,
        SessionsRepository,
        SubjectsRepository,
        TreatmentEventsRepository,
        UsersRepository,
    )
    from storage.telemetry import (
        TelemetryError,
        TelemetrySummary,
        TelemetryWriter,
        scan_telemetry,
    )

#: Public name -> the module that defines it.
_SOURCES: dict[str, str] = {
    "BackupInfo": "storage.backup",
    "backup_database": "storage.backup",
    "last_backup": "storage.backup",
    "list_backups": "storage.backup",
    "prune_backups": "storage.backup",
    "DEFAULT_BUSY_TIMEOUT_MS": "storage.engine",
    "apply_pragmas": "storage.engine",
    "connect_sqlite": "storage.engine",
    "create_engine": "storage.engine",
    "create_sync_engine": "storage.engine",
    "session_factory": "storage.engine",
    "sqlite_url": "storage.engine",
    "BackupError": "storage.errors",
    "ConfigValueError": "storage.errors",
    "DatabaseCheckError": "storage.errors",
    "DatabaseInUseError": "storage.errors",
    "PragmaError": "storage.errors",
    "RestoreError": "storage.errors",
    "StorageError": "storage.errors",
    "console_lock_holder": "storage.locks",
    "hold_console_lock": "storage.locks",
    "hold_database_exclusively": "storage.locks",
    "rig_lock_holder": "storage.locks",
    "CheckReport": "storage.maintenance",
    "RestoreResult": "storage.maintenance",
    "TRIGGER_NAMES": "storage.maintenance",
    "UpgradeResult": "storage.maintenance",
    "alembic_config": "storage.maintenance",
    "check_database": "storage.maintenance",
    "head_revision": "storage.maintenance",
    "quick_check": "storage.maintenance",
    "restore": "storage.maintenance",
    "schema_revision": "storage.maintenance",
    "upgrade": "storage.maintenance",
    "upgrade_async": "storage.maintenance",
    "APPEND_ONLY_TABLES": "storage.models",
    "AUDIT_OUTCOMES": "storage.models",
    "AuditLog": "storage.models",
    "Base": "storage.models",
    "CONFIG_TYPES": "storage.models",
    "Calibration": "storage.models",
    "Protocol": "storage.models",
    "ProtocolVersion": "storage.models",
    "RECORDING_TYPES": "storage.models",
    "ROLES": "storage.models",
    "SESSION_STATUSES": "storage.models",
    "SEVERITIES": "storage.models",
    "SafetyLog": "storage.models",
    "SessionRecording": "storage.models",
    "Subject": "storage.models",
    "SystemConfig": "storage.models",
    "TechUser": "storage.models",
    "TreatmentEvent": "storage.models",
    "TreatmentSession": "storage.models",
    "VIEW_NAMES": "storage.models",
    "utc_now": "storage.models",
    "DataDir": "storage.paths",
    "AuditRepository": "storage.repositories",
    "CalibrationsRepository": "storage.repositories",
    "ConfigRepository": "storage.repositories",
    "ProtocolsRepository": "storage.repositories",
    "SafetyLogRepository": "storage.repositories",
    "SessionsRepository": "storage.repositories",
    "SubjectsRepository": "storage.repositories",
    "TreatmentEventsRepository": "storage.repositories",
    "UsersRepository": "storage.repositories",
    "TelemetryError": "storage.telemetry",
    "TelemetrySummary": "storage.telemetry",
    "TelemetryWriter": "storage.telemetry",
    "scan_telemetry": "storage.telemetry",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


__all__ = [
    "APPEND_ONLY_TABLES",
    "AUDIT_OUTCOMES",
    "CONFIG_TYPES",
    "DEFAULT_BUSY_TIMEOUT_MS",
    "RECORDING_TYPES",
    "ROLES",
    "SESSION_STATUSES",
    "SEVERITIES",
    "TRIGGER_NAMES",
    "VIEW_NAMES",
    "AuditLog",
    "AuditRepository",
    "BackupError",
    "BackupInfo",
    "Base",
    "Calibration",
    "CalibrationsRepository",
    "CheckReport",
    "ConfigRepository",
    "ConfigValueError",
    "DataDir",
    "DatabaseCheckError",
    "DatabaseInUseError",
    "PragmaError",
    "Protocol",
    "ProtocolVersion",
    "ProtocolsRepository",
    "RestoreError",
    "RestoreResult",
    "SafetyLog",
    "SafetyLogRepository",
    "SessionRecording",
    "SessionsRepository",
    "StorageError",
    "Subject",
    "SubjectsRepository",
    "SystemConfig",
    "TechUser",
    "TelemetryError",
    "TelemetrySummary",
    "TelemetryWriter",
    "TreatmentEvent",
    "TreatmentEventsRepository",
    "TreatmentSession",
    "UpgradeResult",
    "UsersRepository",
    "alembic_config",
    "apply_pragmas",
    "backup_database",
    "check_database",
    "connect_sqlite",
    "console_lock_holder",
    "create_engine",
    "create_sync_engine",
    "head_revision",
    "hold_console_lock",
    "hold_database_exclusively",
    "last_backup",
    "list_backups",
    "prune_backups",
    "quick_check",
    "restore",
    "rig_lock_holder",
    "scan_telemetry",
    "schema_revision",
    "session_factory",
    "sqlite_url",
    "upgrade",
    "upgrade_async",
    "utc_now",
]
