"""Errors raised by the storage layer; each message is one line a person can act on."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage error."""


class PragmaError(StorageError):
    """A connection could not be put into the state the console requires (WAL, foreign keys, full sync)."""


class DatabaseCheckError(StorageError):
    """A database file is damaged, not a TOSCA database, or at an unknown schema revision."""


class DatabaseInUseError(StorageError):
    """Another process (a running console) holds the database."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"database in use by {who}")


class BackupError(StorageError):
    """A backup could not be written or did not verify."""


class RestoreError(StorageError):
    """A restore was refused; the database it would have replaced is unchanged."""


class ConfigValueError(StorageError):
    """A configuration value does not match its declared type, or the key is unknown."""
