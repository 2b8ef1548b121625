"""Where things live in a data directory, and who may read it.

```
DIR/tosca.db                             the records database
DIR/backups/tosca_YYYYMMDD_HHMMSS.db     verified online backups (30 days kept)
DIR/sessions/<subject_code>/<folder>/    telemetry, video and snapshots of one session (<folder>: the
                                         session's unique identifier, ``sessions.session_uid``)
DIR/logs/                                controller and console logs
DIR/keys/                                the record chain's HMAC and signing keys (0600; see
                                         docs/records-chain.md; $TOSCA_CHAIN_KEY_FILE may put them elsewhere)
DIR/rig.lock                             held by the process that owns the devices
DIR/console.lock                         held by a console using the database
```

The data directory holds patient data and password hashes, so nobody outside its owner and group reads it:
every ``tosca`` process sets the umask :data:`PROCESS_UMASK` (new files 0640, new folders 0750),
:meth:`DataDir.ensure` creates the folders 0750 and takes group write and every world bit off them, and
:meth:`DataDir.restrict_modes` does the same to everything already in the directory (folders at most 0750,
files at most 0640; sockets keep their own modes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The umask every ``tosca`` process sets: no group write, nothing for others.
PROCESS_UMASK: Final = 0o027
#: The most a folder of the data directory may allow (the kiosk's 0710 is stricter and kept).
DIR_MODE_LIMIT: Final = 0o750
#: The most a file of the data directory may allow.
FILE_MODE_LIMIT: Final = 0o640


def set_process_umask() -> int:
    """Set :data:`PROCESS_UMASK` for this process (and the processes it starts); return the previous one."""
    return os.umask(PROCESS_UMASK)


def _restrict(path: Path, limit: int) -> bool:
    """Take every bit outside ``limit`` off ``path``'s mode; True when it changed. A file that is not ours
    (or gone) is left alone."""
    try:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & ~limit:
            path.chmod(mode & limit)
            return True
    except OSError:
        pass
    return False


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Space on the file system of the data directory, and what its session folders take, in bytes."""

    free_bytes: int
    total_bytes: int
    sessions_bytes: int

    @property
    def free_mb(self) -> float:
        """Free space in megabytes (10^6 bytes)."""
        return self.free_bytes / 1e6

    def describe(self) -> str:
        """One line, e.g. ``12.3 GB free of 50.0 GB; sessions 1.2 GB``."""
        return (
            f"{_size(self.free_bytes)} free of {_size(self.total_bytes)}; "
            f"sessions {_size(self.sessions_bytes)}"
        )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "tosca.db"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def rig_lock(self) -> Path:
        return self.root / "rig.lock"

    @property
    def console_lock(self) -> Path:
        return self.root / "console.lock"

    def session_folder(self, subject_code: str, folder_name: int | str) -> Path:
        """The folder of one session: ``sessions/<subject_code>/<folder_name>`` (new sessions use their
        unique identifier as the folder name; sessions recorded before it existed used their id)."""
        return self.sessions / subject_code / str(folder_name)

    def ensure(self) -> DataDir:
        """Create the directory tree (idempotent) with folders at most 0750, and return self."""
        for path in (self.root, self.backups, self.sessions, self.logs):
            path.mkdir(mode=DIR_MODE_LIMIT, parents=True, exist_ok=True)
            _restrict(path, DIR_MODE_LIMIT)
        return self

    def restrict_modes(self) -> int:
        """Take group write and every world bit off each folder, and group write, execute and every world
        bit off each regular file, in the whole data directory; return how many were changed. Sockets,
        symbolic links and other special files keep their modes. Cheap when nothing needs changing."""
        changed = int(_restrict(self.root, DIR_MODE_LIMIT))
        for folder, dirs, files in os.walk(self.root):
            base = Path(folder)
            for name in dirs:
                path = base / name
                if not path.is_symlink():
                    changed += _restrict(path, DIR_MODE_LIMIT)
            for name in files:
                path = base / name
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(path.lstat().st_mode):
                        changed += _restrict(path, FILE_MODE_LIMIT)
        return changed

    def disk_usage(self) -> DiskUsage:
        """Free and total space of the data directory's file system and the size of ``sessions/`` (walks
        the session folders: call it off the event loop)."""
        usage = shutil.disk_usage(self.root)
        total = 0
        for folder, _dirs, files in os.walk(self.sessions):
            for name in files:
                with contextlib.suppress(OSError):
                    total += (Path(folder) / name).lstat().st_size
        return DiskUsage(free_bytes=usage.free, total_bytes=usage.total, sessions_bytes=total)


__all__ = [
    "DIR_MODE_LIMIT",
    "FILE_MODE_LIMIT",
    "PROCESS_UMASK",
    "DataDir",
    "DiskUsage",
    "set_process_umask",
]
