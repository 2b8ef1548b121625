"""The rig lock of a data directory: one process at a time drives the rig.

An exclusive ``fcntl.flock`` on the data directory's ``rig.lock`` with the holder's process id in it
(:class:`storage.locks.PidLock`); the kernel drops it when the holder ends, however it ends. The controller
opens its rig under it (:class:`devices.rig.Rig` takes the lock it is given), and the database maintenance
that replaces the database takes it too.
"""

from __future__ import annotations

from pathlib import Path

from devices.rig import RigInUse
from storage.errors import DatabaseInUseError
from storage.locks import PidLock
from storage.paths import DataDir


class DataDirRigLock:
    """The rig lock of the data directory at ``root``, as a :class:`devices.rig.RigLock`."""

    def __init__(self, root: Path | str) -> None:
        self._lock = PidLock(DataDir(Path(root)).rig_lock, what="rig")

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except DatabaseInUseError as exc:
            raise RigInUse(str(exc)) from None

    def release(self) -> None:
        self._lock.release()
