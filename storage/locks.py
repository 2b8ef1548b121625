"""Who is using the database right now: the console lock and the rig lock.

A running console holds a shared :func:`fcntl.flock` on ``DataDir.console_lock`` for as long as it runs
(:func:`share_console_lock`: several consoles share it); the controller (which records treatments) holds
``DataDir.rig_lock`` exclusively, with its PID written in the file. The kernel drops a lock when its
process ends, however it ends, so a stale file never blocks anyone. Maintenance that replaces the database
(``tosca db restore``, ``tosca db upgrade``) takes both locks (:func:`hold_database_exclusively`), so it
cannot run under a console or a controller, and neither can start in the middle of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage.errors import DatabaseInUseError
from storage.paths import DataDir


def _read_pid(handle: BinaryIO) -> int | None:
    handle.seek(0)
    content = handle.read(64).decode("ascii", "replace").strip()
    return int(content) if content.isdigit() else None


class PidLock:
    """An exclusive, non-blocking :func:`fcntl.flock` on ``path``, with the holder's PID written in the file.

    :meth:`acquire` raises :class:`DatabaseInUseError` ("<what> in use by process N") at once when another
    open lock has it, in this process or another. The file stays after :meth:`release`; only the PID is
    cleared. The kernel drops the lock when the holding process ends, however it ends.
    """

    def __init__(self, path: Path, *, what: str = "database") -> None:
        self.path = path
        self.what = what
        self._handle: BinaryIO | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._handle is not None

    @property
    def file(self) -> BinaryIO:
        """The open lock file (raises RuntimeError when the lock is not held)."""
        if self._handle is None:
            raise RuntimeError(f"{self.path} is not locked by this object")
        return self._handle

    def acquire(self) -> None:
        """Take the lock or raise :class:`DatabaseInUseError` naming the holder."""
        if self._handle is not None:
            raise DatabaseInUseError(os.getpid(), self.what)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "a+b" never truncates on open: the holder's PID must survive a failed attempt to take the lock.
        handle: BinaryIO = open(self.path, "a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(handle)
            handle.close()
            raise DatabaseInUseError(pid, self.what) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode("ascii"))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Release the lock (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()
                handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def _hold(path: Path) -> Iterator[BinaryIO]:
    with PidLock(path) as lock:
        yield lock.file


def _holder(path: Path, *, shared_too: bool = False) -> int | None:
    try:
        handle: BinaryIO = open(path, "rb")
    except FileNotFoundError:
        return None
    with handle:
        try:
            # An exclusive try also meets shared holders (consoles), which write no PID.
            fcntl.flock(handle.fileno(), (fcntl.LOCK_EX if shared_too else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(handle)
            return 0 if pid is None else pid
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None


@contextlib.contextmanager
def hold_console_lock(data_dir: DataDir) -> Iterator[BinaryIO]:
    """Hold the console lock while the ``with`` block runs; yield the open lock file (our PID written in it).

    Raises :class:`DatabaseInUseError` ("database in use by process N") at once, without waiting, if another
    open lock (another process, or another holder in this one) has it.
    """
    with _hold(data_dir.console_lock) as handle:
        yield handle


@contextlib.contextmanager
def share_console_lock(data_dir: DataDir) -> Iterator[None]:
    """Hold the console lock *shared* while the ``with`` block runs: any number of consoles (the kiosk's,
    remote ones, a desktop one) hold it together, and maintenance, which takes it exclusively
    (:func:`hold_database_exclusively`), is refused while one does, and refuses them while it runs.

    A console whose Unix user may not create the lock file (a remote console, with read access to the data
    directory only) shares it when it exists and runs without it when it does not (then no console has
    ever run there, and the lock's holders are the controller's rig lock and maintenance).

    Raises :class:`DatabaseInUseError` ("database in use by process N") at once if maintenance holds it.
    """
    path = data_dir.console_lock
    handle: BinaryIO | None
    try:
        handle = open(path, "a+b")
    except PermissionError:
        try:
            handle = open(path, "rb")
        except (FileNotFoundError, PermissionError):
            handle = None
    if handle is None:
        yield
        return
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseInUseError(_read_pid(handle)) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def console_lock_holder(data_dir: DataDir) -> int | None:
    """Return the PID of the process holding the console lock, or None if nobody holds it.

    Returns 0 when the lock is held but without a PID: by consoles sharing it (they write none), or by
    maintenance that has not written its PID yet (it does so right after taking the lock).
    """
    return _holder(data_dir.console_lock, shared_too=True)


def rig_lock_holder(data_dir: DataDir) -> int | None:
    """Return the PID of the process holding the rig lock (a controller), or None; 0 if its PID is unknown."""
    return _holder(data_dir.rig_lock)


@contextlib.contextmanager
def hold_database_exclusively(data_dir: DataDir) -> Iterator[None]:
    """Hold both the console lock and the rig lock while the ``with`` block runs.

    Raises :class:`DatabaseInUseError` naming the holder if a console or a controller is running.
    """
    with _hold(data_dir.console_lock), _hold(data_dir.rig_lock):
        yield
