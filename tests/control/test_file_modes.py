"""Nobody but the data directory's owner and group reads it: the real ``tosca`` commands, started under the
permissive umask 022, leave no world permission bit on anything under the data directory (folders at most
0750, files at most 0640), also for a directory and files made looser before."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST

TOSCA = str(Path(sys.executable).with_name("tosca"))
PASSWORD = "correct horse 9"


def _under_umask_022() -> None:
    os.umask(0o022)


def _tosca(data: Path, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOSCA, "--data-dir", str(data), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_under_umask_022,  # the point of the test: a permissive parent umask
    )


def _too_open(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) with a world bit, a folder above 0750 or a file above
    0640, with its mode."""
    found: list[str] = []
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            limit = 0o750
        elif stat.S_ISREG(info.st_mode):
            limit = 0o640
        else:
            limit = 0o770  # sockets keep their own modes, but never a world bit
        if mode & ~limit:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


@pytest.mark.timeout(300)
def test_the_real_commands_leave_nothing_readable_by_other_users(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A data directory made before, under umask 022, with a world-readable file in it.
    (data / "logs").mkdir(parents=True)
    data.chmod(0o755)
    (data / "logs").chmod(0o755)
    (data / "logs" / "old.log").write_text("earlier log\n")
    (data / "logs" / "old.log").chmod(0o644)

    done = _tosca(data, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert _too_open(data) == []

    done = _tosca(
        data,
        "user",
        "add",
        "--username",
        "tech1",
        "--full-name",
        "Tech One",
        "--role",
        "technician",
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0, done.stderr
    assert _too_open(data) == []

    protocol = tmp_path / "short.json"
    protocol.write_text(protocol_json((2.0, 2.0, 2.0, 2.0, "constant")), encoding="utf-8")
    done = _tosca(
        data, "sim", "run", str(protocol), "--subject", "P-2026-0001", "--user", "tech1", stdin=PASSWORD
    )
    assert done.returncode == 0, done.stderr
    assert "status: completed" in done.stdout
    assert _too_open(data) == []  # the session's folder, telemetry and video as the session left them

    done = _tosca(data, "db", "backup")
    assert done.returncode == 0, done.stderr

    videos = list((data / "sessions").rglob("video*.mkv"))
    telemetry = list((data / "sessions").rglob("telemetry.jsonl"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert len(telemetry) == 1
    assert list((data / "backups").glob("tosca_*.db"))
    assert (data / "tosca.db").is_file()
    assert _too_open(data) == []
    assert stat.S_IMODE(videos[0].stat().st_mode) == 0o640
    assert stat.S_IMODE((data / "tosca.db").stat().st_mode) == 0o640
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
