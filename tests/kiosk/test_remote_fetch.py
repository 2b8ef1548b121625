"""The SSH forced command's one allowed command, ``fetch-export NAME``: the name's check (anything but a plain
folder name refused, every other command refused as before), and the tar stream ``tosca export fetch``
writes for it (run through the forced command with the real ``tosca``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REMOTE_SESSION = Path(__file__).resolve().parents[2] / "kiosk" / "tosca-remote-session"
TOSCA = Path(sys.executable).parent / "tosca"


def forced(tmp_path: Path, command: str, tosca: Path, **extra_env: str) -> subprocess.CompletedProcess[bytes]:
    """Run the forced command as sshd would for ``ssh -T host COMMAND`` (no terminal)."""
    conf = tmp_path / "remote.conf"
    conf.write_text(f"TOSCA_BIN={tosca}\nTOSCA_DATA_DIR={tmp_path / 'data'}\n", encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "TOSCA_REMOTE_CONF": str(conf),
        "SSH_ORIGINAL_COMMAND": command,
        "SSH_CONNECTION": "192.0.2.5 50000 192.0.2.1 22",
        "TOSCA_KIOSK_CONF": str(tmp_path / "no-kiosk.conf"),
        **extra_env,
    }
    return subprocess.run(
        ["/bin/bash", str(REMOTE_SESSION)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    """A stand-in ``tosca`` that writes its arguments to standard output."""
    fake = tmp_path / "fake-tosca"
    fake.write_text('#!/bin/sh\nprintf "%s|" "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    return fake


@pytest.mark.parametrize("name", ["session_7_20261207_101500", "sessions_20261201_20261207_1", "a.b+c-d"])
def test_fetch_export_with_a_plain_name_runs_tosca_export_fetch(
    tmp_path: Path, recorder: Path, name: str
) -> None:
    done = forced(tmp_path, f"fetch-export {name}", recorder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"--data-dir|{tmp_path / 'data'}|export|fetch|{name}|"


@pytest.mark.parametrize(
    "command",
    [
        "fetch-export ../x",
        "fetch-export ..",
        "fetch-export a..b",
        "fetch-export exports/x",
        "fetch-export /var/lib/tosca/tosca.db",
        "fetch-export -rf",
        "fetch-export --data-dir=/",
        "fetch-export .x.partial-12",
        "fetch-export a b",
        "fetch-export a;id",
        "fetch-export $(id)",
        "fetch-export é",
        "fetch-export",
        "fetch-export ",
        "fetch-export a\nid",
    ],
)
def test_fetch_export_with_any_other_name_is_refused_and_nothing_runs(
    tmp_path: Path, recorder: Path, command: str
) -> None:
    done = forced(tmp_path, command, recorder)
    assert (done.returncode, done.stdout) == (1, b"")
    assert "fetch-export takes one plain export folder name" in done.stderr.decode()


@pytest.mark.parametrize("command", ["/bin/sh -i", "scp -f x", "fetch-exports x", "tosca export fetch x"])
def test_every_other_command_is_refused_as_before(tmp_path: Path, recorder: Path, command: str) -> None:
    done = forced(tmp_path, command, recorder)
    assert (done.returncode, done.stdout) == (1, b"")
    assert "remote console only; no command is run" in done.stderr.decode()


def test_the_real_fetch_streams_the_export_folder_as_a_tar_without_links(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "exports" / "session_3_x"
    (folder / "snapshots").mkdir(parents=True)
    (folder / "manifest.json").write_text('{"sessions": [3]}', encoding="utf-8")
    (folder / "snapshots" / "one.png").write_bytes(b"\x89PNG picture")
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any export", encoding="utf-8")
    (folder / "link.txt").symlink_to(secret)
    done = forced(tmp_path, "fetch-export session_3_x", TOSCA)
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert set(members) == {
            "session_3_x",
            "session_3_x/snapshots",
            "session_3_x/manifest.json",
            "session_3_x/snapshots/one.png",
        }
        picture = tar.extractfile("session_3_x/snapshots/one.png")
        assert picture is not None and picture.read() == b"\x89PNG picture"
    missing = forced(tmp_path, "fetch-export session_4_x", TOSCA)
    assert (missing.returncode, missing.stdout) == (1, b"")
    assert "no export session_4_x" in missing.stderr.decode()


def test_the_real_fetch_streams_a_single_file_export(tmp_path: Path) -> None:
    csv_file = tmp_path / "data" / "exports" / "audit_20261207_120000.csv"
    csv_file.parent.mkdir(parents=True)
    csv_file.write_text("audit_id,username\n1,ada\n", encoding="utf-8")
    done = forced(tmp_path, f"fetch-export {csv_file.name}", TOSCA)
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        assert tar.getnames() == [csv_file.name]
        member = tar.extractfile(csv_file.name)
        assert member is not None and member.read() == b"audit_id,username\n1,ada\n"


def test_what_the_forced_command_runs_is_pinned_to_the_console_cpus_and_niced(tmp_path: Path) -> None:
    """Off the controller's CPU and below the kiosk's console: the kiosk console's CPUs (kiosk.conf), and nice
    10; nothing else is taken from the kiosk's settings."""
    cpu = min(os.sched_getaffinity(0))
    kiosk_conf = tmp_path / "kiosk.conf"
    kiosk_conf.write_text(f"TOSCA_CONSOLE_CPUS={cpu}\nTOSCA_BIN=/nowhere\n", encoding="utf-8")
    probe = tmp_path / "probe-tosca"
    probe.write_text(
        '#!/bin/sh\nprintf "%s %s" "$(taskset -c -p $$ | sed "s/.*: //")" "$(ps -o ni= -p $$ | tr -d " ")"\n',
        encoding="utf-8",
    )
    probe.chmod(0o755)
    done = forced(tmp_path, "fetch-export x", probe, TOSCA_KIOSK_CONF=str(kiosk_conf))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{cpu} 10"
