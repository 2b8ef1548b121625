"""Encryption at rest of the records database: SQLCipher with a raw 256-bit key read from a key file.

One switch: ``tosca db encrypt --key-file FILE`` converts the database and writes the key file's *path* (never
the key) into ``tosca.db.key-location`` beside it. From then on every connection to the database, its backups
and its restore copies is opened by :func:`connect`, which finds the key:

1. at ``$TOSCA_DB_KEY_FILE`` when that variable is set;
2. else at the path recorded in ``tosca.db.key-location`` in the file's folder or the folder above it (the
   data directory holds the database; its ``backups/`` folder holds the copies), or in the data directory
   a ``tosca`` command works on (:func:`use_data_dir`).

Whether a file needs the key is read from the file itself: a plain SQLite file begins with the text
``SQLite format 3``; an SQLCipher file begins with 16 random bytes (its salt). An absent or empty file is
created encrypted when a key location is recorded for it.

The key file holds exactly 32 bytes (made with ``os.urandom``, mode 0600). It is handed to SQLCipher as a raw
key (``PRAGMA key = "x'...'"``), so no key derivation runs when a connection opens (well under a millisecond).
A missing, unreadable or wrongly sized key file, or a key that does not open the file, raises
:class:`DatabaseKeyError` whose one line names where the key was looked for: ``$TOSCA_DB_KEY_FILE`` unset or
set to a file, the location file missing or pointing to a key file that is missing or of the wrong length.
A file that is not plain SQLite by its header and a whole number of pages long is taken for an encrypted
database even when no key is set or recorded (:func:`looks_encrypted`), so a deleted location file is named
instead of SQLite's "file is not a database"; a damaged plain database keeps its header and still gets the
damaged-database message.

SQLCipher connections come from the ``sqlcipher3`` package, whose errors are its own classes. Every call on
a connection from here re-raises them as the standard library's :mod:`sqlite3` errors of the same name (with
the same SQLite error code), so code written against :mod:`sqlite3` and SQLAlchemy's error wrapping work
unchanged. SQLCipher's own log is switched off, so it never writes onto the console's screen.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import quote

from storage.errors import DatabaseCheckError, StorageError

#: Environment variable naming the key file; it wins over the recorded location.
KEY_FILE_ENV: Final = "TOSCA_DB_KEY_FILE"
#: File beside the database holding the key file's path (one line of text).
KEY_LOCATION_NAME: Final = "tosca.db.key-location"
#: Bytes in a database key (SQLCipher's AES-256 key).
KEY_BYTES: Final = 32
#: First bytes of every plain SQLite file.
SQLITE_MAGIC: Final = b"SQLite format 3\x00"

_T = TypeVar("_T")


class DatabaseKeyError(StorageError):
    """The database is encrypted and its key file is missing, unreadable, the wrong size or the wrong key."""


class MissingKeyError(DatabaseKeyError, DatabaseCheckError):
    """A database file is not plain SQLite (encrypted, or damaged) and no key file is set or recorded for it:
    a refusal of the file as well (a restore reports it as a bad file)."""


@dataclass(frozen=True, slots=True)
class DatabaseKey:
    """A database key and the file it was read from (the key never appears in ``repr``)."""

    path: Path
    raw: bytes = field(repr=False)

    def pragma(self, schema: str | None = None) -> str:
        """The ``PRAGMA key`` statement that hands this key, raw, to SQLCipher (for ``schema`` if given)."""
        target = f"{schema}." if schema else ""
        return f"PRAGMA {target}key = \"x'{self.raw.hex()}'\""

    def attach_clause(self) -> str:
        """The ``KEY`` clause of an ``ATTACH DATABASE`` that opens the attached file with this key."""
        return f"KEY \"x'{self.raw.hex()}'\""


# ---- where the key is


def key_location_file(folder: Path) -> Path:
    """The file in ``folder`` (a data directory) that records where the database key file is."""
    return Path(folder) / KEY_LOCATION_NAME


def recorded_key_file(folder: Path) -> Path | None:
    """The key file path recorded in the data directory ``folder``, or None when none is recorded."""
    try:
        text = key_location_file(folder).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatabaseKeyError(f"cannot read {key_location_file(folder)}: {exc.strerror or exc}") from None
    return Path(text) if text else None


def record_key_file(folder: Path, key_file: Path) -> Path:
    """Record ``key_file``'s absolute path (never the key) in the data directory ``folder``; return the
    record's path. Written to a temporary name, flushed and renamed, so a crash leaves the old record or
    the new one."""
    target = key_location_file(folder)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(f"{Path(key_file).resolve()}\n", encoding="utf-8")
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target


_data_dirs: list[Path] = []


def use_data_dir(folder: Path) -> None:
    """Let this process look for the key location of the data directory ``folder`` too, for a database file
    kept elsewhere (a backup brought on a USB stick to ``tosca db restore``)."""
    resolved = Path(folder).absolute()
    if resolved not in _data_dirs:
        _data_dirs.append(resolved)


def _location_folders(path: Path) -> tuple[Path, ...]:
    folder = Path(path).absolute().parent
    return (folder, folder.parent, *_data_dirs)


def _find_recorded(path: Path) -> tuple[Path, Path] | None:
    """(key file, record) for the database file ``path``: the record in its folder or the one above."""
    for folder in _location_folders(path):
        recorded = recorded_key_file(folder)
        if recorded is not None:
            return recorded, key_location_file(folder)
    return None


def switch_on(path: Path) -> bool:
    """True when a key file is recorded for the database file ``path`` (encryption is switched on)."""
    return _find_recorded(path) is not None


def _key_source(path: Path) -> tuple[Path | None, str]:
    """The key file for the database file ``path`` (or None) and where it was looked for, in words."""
    configured = os.environ.get(KEY_FILE_ENV, "").strip()
    if configured:
        return Path(configured), f"${KEY_FILE_ENV} is set to {configured}"
    found = _find_recorded(path)
    if found is not None:
        key_file, record = found
        return key_file, f"${KEY_FILE_ENV} is unset and the location file {record} points to {key_file}"
    beside = key_location_file(Path(path).absolute().parent)
    return None, f"${KEY_FILE_ENV} is unset and the location file {beside} is missing"


def key_file_for(path: Path) -> Path | None:
    """The key file that opens the database file ``path``: ``$TOSCA_DB_KEY_FILE``, else the recorded one."""
    return _key_source(path)[0]


def _key_problem(key_file: Path) -> tuple[DatabaseKey | None, str]:
    try:
        raw = Path(key_file).read_bytes()
    except FileNotFoundError:
        return None, "which is missing"
    except OSError as exc:
        return None, f"which cannot be read: {exc.strerror or exc}"
    if len(raw) != KEY_BYTES:
        return None, f"which holds {len(raw)} bytes, not {KEY_BYTES}"
    return DatabaseKey(Path(key_file), raw), ""


def read_key_file(key_file: Path) -> DatabaseKey:
    """The key in ``key_file``; :class:`DatabaseKeyError` (one line naming the file) when it is missing,
    unreadable or not exactly :data:`KEY_BYTES` bytes."""
    key, problem = _key_problem(key_file)
    if key is not None:
        return key
    if problem == "which is missing":
        raise DatabaseKeyError(f"no database key file at {key_file}")
    if problem.startswith("which holds"):
        raise DatabaseKeyError(f"the database key file {key_file} {problem.removeprefix('which ')}")
    raise DatabaseKeyError(f"cannot read the database key file {key_file}: {problem.split(': ', 1)[1]}")


def required_key(path: Path) -> DatabaseKey:
    """The key of the encrypted database file ``path`` (or of a file of its data directory), found as the
    module says; :class:`DatabaseKeyError` in one line naming every place looked at when it cannot be had
    (:class:`MissingKeyError` when no key file is set or recorded at all)."""
    name = Path(path).name
    key_file, where = _key_source(path)
    if key_file is None:
        raise MissingKeyError(
            f"{name} is not an SQLite database as it stands (encrypted, or damaged) and no key was found: "
            f"{where}"
        )
    key, problem = _key_problem(key_file)
    if key is None:
        raise DatabaseKeyError(f"{name} is encrypted and its key cannot be read: {where}, {problem}")
    return key


def create_key_file(key_file: Path) -> DatabaseKey:
    """Write a new random key to ``key_file`` (created 0600, never over an existing file); return it."""
    key_file = Path(key_file)
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw = os.urandom(KEY_BYTES)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    return DatabaseKey(key_file, raw)


def _read_head(path: Path, count: int) -> bytes:
    """The first ``count`` bytes of ``path``, read without dropping this process's SQLite locks on it.

    SQLite's locks are POSIX locks, held per process and file: closing *any* descriptor of the file drops
    them all, under every open connection (another process may then delete the write-ahead log they use).
    When this process already has the file open, its bytes are read through that descriptor (``pread``, no
    close); only a file this process does not hold is opened, read and closed."""
    info = os.stat(path)
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                fd = int(name)
                held = os.fstat(fd)
            except (ValueError, OSError):
                continue
            if (held.st_dev, held.st_ino) == (info.st_dev, info.st_ino):
                with contextlib.suppress(OSError):
                    return os.pread(fd, count, 0)
        break
    with open(path, "rb") as handle:
        return handle.read(count)


def is_encrypted_file(path: Path) -> bool:
    """True when ``path`` is a non-empty file that does not begin as a plain SQLite file does."""
    try:
        head = _read_head(path, len(SQLITE_MAGIC))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return bool(head) and head != SQLITE_MAGIC


def looks_encrypted(path: Path) -> bool:
    """True when ``path`` may be an SQLCipher database: not plain SQLite by its header, and a whole number of
    pages long (512 bytes at least, a multiple of 512), as every SQLCipher file is. A text file or a file
    cut mid-page is not taken for one."""
    if not is_encrypted_file(path):
        return False
    try:
        size = Path(path).stat().st_size
    except OSError:
        return False
    return size >= 512 and size % 512 == 0


def needs_key(path: Path) -> bool:
    """True when ``path`` is opened as an encrypted database: a non-empty file that is not plain SQLite, with
    a key file known for it (set or recorded), or that looks like one (:func:`looks_encrypted`; opening it
    then names where the key was looked for). Any other file is opened (and refused) as not a database."""
    return is_encrypted_file(path) and (key_file_for(path) is not None or looks_encrypted(path))


def key_for(path: Path) -> DatabaseKey | None:
    """The key that opens the database file ``path``, or None when it is (or will be created) plain.

    A file that is not plain SQLite by its header needs a key (:func:`required_key`): with none set or
    recorded, :class:`MissingKeyError` names where it was looked for, unless the file cannot be an SQLCipher
    database (:func:`looks_encrypted`), which is then opened plain and refused as not a database. An absent
    or empty file is encrypted when a key location is recorded for it. :class:`DatabaseKeyError` names the
    places looked at when the key file is missing, unreadable or of the wrong length.
    """
    path = Path(path)
    if is_encrypted_file(path):
        if key_file_for(path) is None and not looks_encrypted(path):
            return None
        return required_key(path)
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        empty = True
    if not (empty and switch_on(path)):
        return None
    return required_key(path)


# ---- SQLCipher connections that raise the standard library's errors

_sqlcipher: ModuleType | None = None
_factories: tuple[type[Any], type[Any]] | None = None
_load_lock = threading.Lock()


def _translate(error: BaseException) -> sqlite3.Error:
    kind = getattr(sqlite3, type(error).__name__, None)
    if not (isinstance(kind, type) and issubclass(kind, sqlite3.Error)):
        kind = sqlite3.DatabaseError
    translated = kind(*getattr(error, "args", ()))
    for name in ("sqlite_errorcode", "sqlite_errorname"):
        value = getattr(error, name, None)
        if value is not None:
            setattr(translated, name, value)
    return translated


def _load() -> tuple[ModuleType, type[Any], type[Any]]:
    """Import ``sqlcipher3`` (first use only), switch SQLCipher's log off, and build the connection and cursor
    classes whose calls raise :mod:`sqlite3` errors."""
    global _sqlcipher, _factories
    with _load_lock:
        if _sqlcipher is not None and _factories is not None:
            return _sqlcipher, _factories[0], _factories[1]
        try:
            from sqlcipher3 import dbapi2 as module  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise DatabaseKeyError(
                f"the database is encrypted and sqlcipher3 cannot be loaded: {exc}"
            ) from None
        error = module.Error

        def guarded(call: Callable[[], _T]) -> _T:
            try:
                return call()
            except error as exc:
                raise _translate(exc) from exc

        class Cursor(module.Cursor):  # type: ignore[misc]
            def execute(self, *args: Any) -> Any:
                return guarded(lambda: super(Cursor, self).execute(*args))

            def executemany(self, *args: Any) -> Any:
                return guarded(lambda: super(Cursor, self).executemany(*args))

            def executescript(self, *args: Any) -> Any:
                return guarded(lambda: super(Cursor, self).executescript(*args))

            def fetchone(self) -> Any:
                return guarded(lambda: super(Cursor, self).fetchone())

            def fetchmany(self, *args: Any, **kwargs: Any) -> Any:
                return guarded(lambda: super(Cursor, self).fetchmany(*args, **kwargs))

            def fetchall(self) -> Any:
                return guarded(lambda: super(Cursor, self).fetchall())

            def __next__(self) -> Any:
                try:
                    return super().__next__()
                except error as exc:
                    raise _translate(exc) from exc

        class Connection(module.Connection):  # type: ignore[misc]
            def cursor(self, factory: Any = Cursor) -> Any:
                return guarded(lambda: super(Connection, self).cursor(factory))

            def execute(self, *args: Any) -> Any:
                return self.cursor().execute(*args)

            def executemany(self, *args: Any) -> Any:
                return self.cursor().executemany(*args)

            def executescript(self, *args: Any) -> Any:
                return self.cursor().executescript(*args)

            def commit(self) -> None:
                guarded(lambda: super(Connection, self).commit())

            def rollback(self) -> None:
                guarded(lambda: super(Connection, self).rollback())

            def close(self) -> None:
                guarded(lambda: super(Connection, self).close())

            def backup(self, target: Any, *args: Any, **kwargs: Any) -> None:
                guarded(lambda: super(Connection, self).backup(target, *args, **kwargs))

            def __exit__(
                self,
                kind: type[BaseException] | None,
                value: BaseException | None,
                traceback: TracebackType | None,
            ) -> Literal[False]:
                if kind is None:
                    self.commit()
                else:
                    self.rollback()
                return False

        quiet = module.connect(":memory:")
        try:
            # SQLCipher's log is process-wide; by default it writes errors (a wrong key) to stderr.
            quiet.execute("PRAGMA cipher_log_level = NONE").fetchall()
        finally:
            quiet.close()
        _sqlcipher, _factories = module, (Connection, Cursor)
        return module, Connection, Cursor


def sqlcipher_version() -> str:
    """The SQLCipher version built into ``sqlcipher3`` (e.g. ``4.19.0 community``)."""
    module, _connection, _cursor = _load()
    connection = module.connect(":memory:")
    try:
        return str(connection.execute("PRAGMA cipher_version").fetchone()[0])
    finally:
        connection.close()


def _uri(path: Path, read_only: bool) -> str:
    text = f"file:{quote(str(Path(path).absolute()))}"
    return f"{text}?mode=ro" if read_only else text


def connect_keyed(
    path: Path,
    key: DatabaseKey,
    *,
    read_only: bool = False,
    timeout_s: float = 5.0,
    check_same_thread: bool = True,
    verify: bool = True,
) -> sqlite3.Connection:
    """Open the SQLCipher database ``path`` with ``key`` (created when absent, unless ``read_only``).

    With ``verify`` the first page is read at once: a key that does not open the file raises
    :class:`DatabaseKeyError` naming the key file, instead of an error at the first query."""
    module, connection_class, _cursor = _load()
    try:
        raw = module.connect(
            _uri(path, read_only),
            uri=True,
            timeout=timeout_s,
            check_same_thread=check_same_thread,
            factory=connection_class,
        )
    except module.Error as exc:
        raise _translate(exc) from exc
    connection = cast(sqlite3.Connection, raw)
    try:
        connection.execute(key.pragma())
        if verify:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        connection.close()
        if "not a database" in str(exc):
            name = Path(path).name
            raise DatabaseKeyError(f"the key in {key.path} does not open {name} (wrong key)") from None
        raise
    except BaseException:
        connection.close()
        raise
    return connection


def connect(
    path: Path,
    *,
    read_only: bool = False,
    timeout_s: float = 5.0,
    check_same_thread: bool = True,
    key: DatabaseKey | Literal["auto"] | None = "auto",
) -> sqlite3.Connection:
    """Open the database file ``path``: plain with :mod:`sqlite3`, or encrypted with its key.

    ``key`` "auto" finds the key as the module says (:func:`key_for`); None opens it plain; a key opens it
    with that key. ``read_only`` opens it read-only (``mode=ro``: a missing file is an error then, never
    created). ``timeout_s`` is the busy timeout in seconds. Raises :class:`DatabaseKeyError` for a missing,
    malformed or wrong key, and :mod:`sqlite3` errors otherwise."""
    chosen = key_for(path) if key == "auto" else key
    if chosen is not None:
        return connect_keyed(
            path, chosen, read_only=read_only, timeout_s=timeout_s, check_same_thread=check_same_thread
        )
    return sqlite3.connect(
        _uri(path, read_only), uri=True, timeout=timeout_s, check_same_thread=check_same_thread
    )


def export_to(source: sqlite3.Connection, target: Path, key: DatabaseKey | None) -> None:
    """Write every table, index, view, trigger and row of the open database ``source`` into the new file
    ``target``: encrypted with ``key``, or plain when ``key`` is None (SQLCipher's ``sqlcipher_export``; the
    online backup API cannot copy between files of different keys). ``source`` must be a connection from
    this module's SQLCipher (:func:`connect_keyed` or :func:`open_for_export`); the copy is read in one
    transaction, so it is one consistent state of the source."""
    if Path(target).exists():
        raise FileExistsError(f"{target} already exists")
    clause = key.attach_clause() if key is not None else "KEY ''"
    source.execute(f"ATTACH DATABASE ? AS exported {clause}", (str(target),))
    try:
        source.execute("BEGIN")
        try:
            version = source.execute("PRAGMA main.user_version").fetchone()[0]
            source.execute("SELECT sqlcipher_export('exported')").fetchall()
            source.execute(f"PRAGMA exported.user_version = {int(version):d}")
        except BaseException:
            source.rollback()
            raise
        source.commit()
    finally:
        source.execute("DETACH DATABASE exported")


def open_for_export(path: Path, key: DatabaseKey | None, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """Open the database ``path`` (plain when ``key`` is None) with SQLCipher's library, for
    :func:`export_to`."""
    if key is not None:
        return connect_keyed(path, key, timeout_s=timeout_s)
    module, connection_class, _cursor = _load()
    try:
        raw = module.connect(str(path), timeout=timeout_s, factory=connection_class)
    except module.Error as exc:
        raise _translate(exc) from exc
    return cast(sqlite3.Connection, raw)


def is_keyed(connection: object) -> bool:
    """True when ``connection`` is an SQLCipher connection from this module."""
    return _factories is not None and isinstance(connection, _factories[0])


__all__ = [
    "KEY_BYTES",
    "KEY_FILE_ENV",
    "KEY_LOCATION_NAME",
    "DatabaseKey",
    "DatabaseKeyError",
    "MissingKeyError",
    "connect",
    "connect_keyed",
    "create_key_file",
    "export_to",
    "is_encrypted_file",
    "is_keyed",
    "key_file_for",
    "key_for",
    "key_location_file",
    "looks_encrypted",
    "needs_key",
    "open_for_export",
    "read_key_file",
    "record_key_file",
    "recorded_key_file",
    "required_key",
    "sqlcipher_version",
    "switch_on",
    "use_data_dir",
]
