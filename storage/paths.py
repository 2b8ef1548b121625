"""Where things live in a data directory.

```
DIR/tosca.db                             the records database
DIR/backups/tosca_YYYYMMDD_HHMMSS.db     verified online backups (30 days kept)
DIR/sessions/<subject_code>/<session_id>/ telemetry, video and snapshots of one session
DIR/logs/                                controller and console logs
DIR/rig.lock                             held by the process that owns the devices
DIR/console.lock                         held by a console using the database
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    def session_folder(self, subject_code: str, session_id: int) -> Path:
        return self.sessions / subject_code / str(session_id)

    def ensure(self) -> DataDir:
        """Create the directory tree (idempotent) and return self."""
        for path in (self.root, self.backups, self.sessions, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self
