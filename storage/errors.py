"""Errors raised by the storage layer; each message is one line a person can act on."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every storage error."""


class PragmaError(StorageError):
    """A connection could not be put into the state the console requires (WAL, foreign keys, full sync)."""


class DatabaseCheckError(StorageError):
    """A database file is damaged, not a TOSCA database, or at an unknown schema revision."""


class DatabaseInUseError(StorageError):
    """Another process (a running console, or the process owning the rig) holds a lock of the data directory.

    ``what`` names what is held ("database", "rig") in the one-line message: "database in use by process N".
    """

    def __init__(self, pid: int | None, what: str = "database") -> None:
        self.pid = pid
        self.what = what
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{what} in use by {who}")


class BackupError(StorageError):
    """A backup could not be written or did not verify."""


class RestoreError(StorageError):
    """A restore was refused; the database it would have replaced is unchanged."""


class ConfigValueError(StorageError):
    """A configuration value does not match its declared type, or the key is unknown."""


def one_line(value: BaseException | str) -> str:
    """An error (or a message) on one line, as a status line or ``tosca: ...`` shows it: its whitespace runs
    made single spaces; an error with no message is named by its type."""
    text = " ".join(str(value).split())
    if text or isinstance(value, str):
        return text
    return type(value).__name__
