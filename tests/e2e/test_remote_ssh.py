"""End to end: the remote console over a real sshd on the loopback interface, with the project's own drop-in.

Set-up (as root, which CI is): Debian's ``/usr/sbin/sshd`` on a free port with a generated host key, the
project's ``kiosk/sshd_config.d/00-tosca-engineers.conf`` and its forced command
``kiosk/tosca-remote-session``;
Unix users and groups made for this run with unique names (the kiosk's user, whose primary group is the
records group; an engineer in ``tosca-engineers`` and the records group; an outsider in the records group
only), removed afterwards; a controller on the simulated rig running as the kiosk's user, as its service does.

What is checked, as a person would see it: an SSH login with the engineer's key lands in the TOSCA login (tmux
shows it), not a shell; the console's process runs as the engineer, and that user cannot open control.sock
(the kernel says PermissionError) while observe.sock answers it; the TOSCA login works and the Devices screen
shows the simulated rig's identity; logging out ends the SSH session. A password login (the right password,
offered by the client) and a key login outside the group are refused by sshd.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control.account_rules import Actor
from control.accounts import AccountService
from storage import create_engine, session_factory
from tests.support import CHEAP

PROJECT = Path(__file__).resolve().parents[2]
DROP_IN = PROJECT / "kiosk" / "sshd_config.d" / "00-tosca-engineers.conf"
FORCED = PROJECT / "kiosk" / "tosca-remote-session"
SSHD = "/usr/sbin/sshd"
ENGINEERS = "tosca-engineers"
ENGINEER_PASSWORD = "engineer pass 1"
UNIX_PASSWORD = "unix password 1"


def _need(condition: bool, what: str) -> None:
    if not condition:
        pytest.fail(f"the SSH end-to-end test needs {what}")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


def _reachable_by_all(path: Path) -> bool:
    """Whether every user may run ``path`` (each folder above it searchable by others)."""
    for folder in path.parents:
        if not os.stat(folder).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o001)


def _python_for_everyone() -> str:
    """An interpreter of this Python version that an unprivileged user may run (this one may live under
    /root, which others cannot enter)."""
    mine = Path(os.path.realpath(sys.executable))
    if _reachable_by_all(mine):
        return str(mine)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path("/usr/bin") / version, Path("/usr/local/bin") / version):
        if candidate.exists() and _reachable_by_all(candidate):
            return str(candidate)
    pytest.fail(f"no {version} that an unprivileged user may run (this one is {mine})")


@dataclass
class Rig:
    base: Path
    data: Path
    port: int
    key: Path
    engineer: str
    outsider: str
    kiosk: str
    records: str
    python: str
    sshd_log: Path
    controller_log: Path

    def ssh(self, user: str, *options: str) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            *options,
            f"{user}@127.0.0.1",
        ]

    def as_user(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` as ``user`` (with all its groups), as the remote console would run."""
        entry = pwd.getpwnam(user)
        groups = [g.gr_gid for g in grp.getgrall() if user in g.gr_mem]
        return subprocess.run(
            [self.python, "-c", code],
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=groups,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            tails = "".join(
                f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists()
            )
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{tails}")
        time.sleep(0.05)


def _connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _pids_of(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
    return found


def _no_process_of(uid: int) -> bool:
    return not _pids_of(uid)


async def _accounts(db: Path) -> None:
    engine = create_engine(db)
    try:
        accounts = AccountService(sessions=session_factory(engine), terminal="test", hashing=CHEAP)
        admin = await accounts.create_first_admin("admin1", "Admin One", "admin password 1")
        await accounts.create_user(
            "eric", "Eric Engineer", "engineer", ENGINEER_PASSWORD, Actor.console_user(admin, "test")
        )
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def rig(migrated_template: Path) -> Iterator[Rig]:
    _need(os.geteuid() == 0, "root (to start sshd and make Unix users); CI runs as root")
    for tool in ("tmux", "ssh", "ssh-keygen", "useradd", "groupadd", "chpasswd"):
        _need(shutil.which(tool) is not None, f"{tool} (Debian: see .ci/run)")
    _need(os.access(SSHD, os.X_OK), f"{SSHD} (Debian package openssh-server; .ci/run installs it)")
    python = _python_for_everyone()
    # What this fixture writes must be readable by the users it makes, whatever umask an earlier test in this
    # process left (``tosca`` sets 027).
    umask = os.umask(0o022)
    suffix = uuid.uuid4().hex[:6]
    kiosk, engineer, outsider, records = f"tk{suffix}", f"te{suffix}", f"to{suffix}", f"tr{suffix}"
    base = Path(tempfile.mkdtemp(prefix="tosca-ssh-", dir="/tmp"))
    base.chmod(0o755)
    made_engineers_group = False
    users: list[str] = []
    groups: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if subprocess.run(["getent", "group", ENGINEERS], capture_output=True, check=False).returncode != 0:
            _run("groupadd", "--system", ENGINEERS)
            made_engineers_group = True
        _run("groupadd", records)
        groups.append(records)
        _run("useradd", "--gid", records, "--no-create-home", "--home-dir", str(base / "kiosk"), kiosk)
        users.append(kiosk)
        for user, member_of in ((engineer, f"{ENGINEERS},{records}"), (outsider, records)):
            _run("useradd", "--create-home", "--home-dir", str(base / user), "--shell", "/bin/bash",
                 "--groups", member_of, user)  # fmt: skip
            users.append(user)
        # A password each: the refused password login offers the right one.
        subprocess.run(
            ["chpasswd"], input=f"{engineer}:{UNIX_PASSWORD}\n{outsider}:{UNIX_PASSWORD}\n", text=True,
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

        key = base / "client_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key"))
        for user in (engineer, outsider):
            entry = pwd.getpwnam(user)
            ssh_dir = base / user / ".ssh"
            ssh_dir.mkdir(mode=0o700)
            (ssh_dir / "authorized_keys").write_text((base / "client_key.pub").read_text())
            (ssh_dir / "authorized_keys").chmod(0o600)
            for path in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

        # The data directory as install.sh makes it: the kiosk's, the engineers may pass through it, and what
        # is in it belongs to the records group, readable by its members.
        data = base / "data"
        data.mkdir()
        shutil.copyfile(migrated_template, data / "tosca.db")
        asyncio.run(_accounts(data / "tosca.db"))
        kiosk_entry = pwd.getpwnam(kiosk)
        records_gid = grp.getgrnam(records).gr_gid
        engineers_gid = grp.getgrnam(ENGINEERS).gr_gid
        for path in (data, *data.rglob("*")):
            os.chown(path, kiosk_entry.pw_uid, records_gid)
            path.chmod(0o750 if path.is_dir() else 0o640)
        os.chown(data, kiosk_entry.pw_uid, engineers_gid)
        data.chmod(0o710)

        site = sysconfig.get_paths()["purelib"]
        tosca = base / "tosca"
        tosca.write_text(
            "#!/bin/sh\n"
            f"exec {python} -c \"import site, sys; site.addsitedir({site!r}); sys.argv[0] = 'tosca'; "
            f'from tui.cli import main; sys.exit(main())" "$@"\n'
        )
        tosca.chmod(0o755)
        (base / "remote.conf").write_text(f"TOSCA_BIN={tosca}\nTOSCA_DATA_DIR={data}\n")
        (base / "remote.conf").chmod(0o644)

        # The controller as its service runs it: the kiosk's user, its primary group the records group, with
        # tosca-engineers to give observe.sock to.
        controller_log = base / "controller.log"
        with controller_log.open("wb") as log:
            controller = subprocess.Popen(
                [str(tosca), "--data-dir", str(data), "controller", "--sim"],
                user=kiosk_entry.pw_uid,
                group=records_gid,
                extra_groups=[engineers_gid],
                cwd="/",
                env={"PATH": "/usr/bin:/bin", "HOME": str(base), "LANG": "C.UTF-8"},
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=0o027,
            )
        processes.append(controller)

        port = _free_port()
        sshd_log = base / "sshd.log"
        config = base / "sshd_config"
        # The test's own lines first (sshd keeps the first value it reads): where to listen, the host key, no
        # PAM in a container, and the forced command from this checkout; then the project's drop-in whole.
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\n"
            f"HostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
            f"UsePAM no\nSetEnv TOSCA_REMOTE_CONF={base / 'remote.conf'}\nForceCommand {FORCED}\n"
            f"Include {DROP_IN}\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        with sshd_log.open("wb") as log:
            processes.append(subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log, stdout=log))

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        logs = [controller_log, sshd_log]
        _wait(listening, 10.0, "sshd to listen", logs)
        _wait(lambda: _connects(data / "observe.sock"), 30.0, "the controller's observe.sock", logs)
        yield Rig(base, data, port, key, engineer, outsider, kiosk, records, python, sshd_log, controller_log)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for user in users:
            uid = pwd.getpwnam(user).pw_uid
            for pid in _pids_of(uid):  # this run's users: every process of theirs is this test's
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            gone: Callable[[], bool] = functools.partial(_no_process_of, uid)
            with contextlib.suppress(AssertionError):
                _wait(gone, 5.0, f"the processes of {user} to end", [])
            deleted = subprocess.run(["userdel", user], capture_output=True, text=True, check=False)
            assert deleted.returncode == 0, f"userdel {user}: {deleted.stderr}"
        for group in groups:
            subprocess.run(["groupdel", group], capture_output=True, check=False)
        if made_engineers_group:
            subprocess.run(["groupdel", ENGINEERS], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
        os.umask(umask)


class Terminal:
    """A tmux session running one command; its pane stays after the command ends, to read how it ended."""

    def __init__(self, command: list[str], width: int = 100, height: int = 30) -> None:
        self.name = f"tosca-ssh-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
             " ".join(_quote(word) for word in command)],
            check=True,
        )  # fmt: skip
        subprocess.run(["tmux", "set-option", "-t", self.name, "remain-on-exit", "on"], check=True)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def pane(self, what: str) -> str:
        out = subprocess.run(
            ["tmux", "display", "-p", "-t", self.name, f"#{{{what}}}"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def keys(self, *keys: str, literal: bool = False) -> None:
        subprocess.run(
            ["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys], check=True
        )

    def wait_for(self, text: str, rig: Rig, timeout_s: float = 20.0) -> str:
        screen = ""

        def shown() -> bool:
            nonlocal screen
            screen = self.screen()
            return text in screen

        try:
            _wait(shown, timeout_s, repr(text), [rig.controller_log, rig.sshd_log])
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- the screen:\n{screen}{_audit_tail(rig)}") from None
        return screen

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


def _audit_tail(rig: Rig) -> str:
    with contextlib.suppress(sqlite3.Error), sqlite3.connect(rig.data / "tosca.db") as db:
        rows = db.execute(
            "SELECT action, outcome, username, terminal, details FROM audit_log "
            "ORDER BY audit_id DESC LIMIT 8"
        ).fetchall()
        return "\n--- audit_log (newest first)\n" + "\n".join(map(str, rows))
    return ""


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\"'\"'") + "'"


CONNECT_CONTROL = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except PermissionError as exc:
    print("PermissionError", exc.strerror)
else:
    print("connected")
"""


def test_an_ssh_login_lands_in_the_console_which_cannot_reach_control_sock(rig: Rig) -> None:
    term = Terminal(rig.ssh(rig.engineer, "-tt"))
    try:
        screen = term.wait_for("Log in to the console", rig)
        assert "$ " not in screen and "#" not in screen.splitlines()[-1]  # no shell prompt anywhere
        # The console's own process runs as the engineer: the kernel refuses that user control.sock.
        engineer = pwd.getpwnam(rig.engineer)
        consoles = [
            pid
            for pid in _pids_of(engineer.pw_uid)
            if b"remote" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        ]
        assert consoles, "no remote console process of the engineer's"
        status = Path(f"/proc/{consoles[0]}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(engineer.pw_uid)}
        control = rig.as_user(rig.engineer, CONNECT_CONTROL.format(path=str(rig.data / "control.sock")))
        assert control.stdout.strip() == "PermissionError Permission denied", control.stderr
        observe = rig.as_user(rig.engineer, CONNECT_CONTROL.format(path=str(rig.data / "observe.sock")))
        assert observe.stdout.strip() == "connected", observe.stderr

        term.keys("eric", literal=True)
        term.wait_for("eric", rig)
        term.keys("Enter")
        # One field at a time: the password is typed once the cursor is in its field.
        password_row = next(i for i, line in enumerate(term.screen().splitlines()) if "Password" in line)
        _wait(lambda: term.pane("cursor_y") == str(password_row), 10.0, "the password field", [])
        term.keys(ENGINEER_PASSWORD, literal=True)
        term.wait_for("•" * len(ENGINEER_PASSWORD) + " ", rig, 10.0)
        term.keys("Enter")
        term.wait_for("Welcome, Eric Engineer", rig)
        term.keys("d")
        screen = term.wait_for("SIM-6310-0001", rig)
        assert "Arroyo 6310" in screen and "SIM-5305-0001" in screen
        assert "as " + rig.engineer in screen and "observe.sock only" in screen
        assert "STOP LASER" not in screen
        term.keys("Escape")
        term.wait_for("Welcome, Eric Engineer", rig)
        term.keys("C-o")  # log out: the console ends, and with it the SSH session
        _wait(lambda: term.pane("pane_dead") == "1", 15.0, "the SSH session to end", [rig.sshd_log])
        assert term.pane("pane_dead_status") == "0"
    finally:
        term.close()
    with sqlite3.connect(f"file:{rig.data / 'tosca.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT action, outcome, username, terminal, details FROM audit_log "
            "WHERE action IN ('login', 'logout') AND username = 'eric' ORDER BY audit_id"
        ).fetchall()
    assert [(a, o, u, t) for a, o, u, t, _ in rows] == [
        ("login", "success", "eric", "ssh:127.0.0.1"),
        ("logout", "success", "eric", "ssh:127.0.0.1"),
    ]
    details = json.loads(rows[0][4])
    assert (details["ssh_client"], details["unix_user"]) == ("127.0.0.1", rig.engineer)


def test_a_password_login_is_refused(rig: Rig) -> None:
    askpass = rig.base / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{UNIX_PASSWORD}'\n")
    askpass.chmod(0o700)
    result = subprocess.run(
        [*rig.ssh(rig.engineer, "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
                  "-o", "PreferredAuthentications=password,keyboard-interactive"), "true"],
        env={**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 255, result.stdout + result.stderr
    assert "Permission denied (publickey)" in result.stderr


def test_a_login_outside_the_group_is_refused(rig: Rig) -> None:
    result = subprocess.run(
        [*rig.ssh(rig.outsider, "-o", "BatchMode=yes"), "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 255, result.stdout + result.stderr
    assert "Permission denied" in result.stderr
    _wait(
        lambda: f"User {rig.outsider} from 127.0.0.1 not allowed" in rig.sshd_log.read_text(errors="replace"),
        5.0,
        "sshd to say why",
        [rig.sshd_log],
    )


def test_fetch_export_streams_an_export_as_a_tar_and_refuses_any_other_name(rig: Rig) -> None:
    import io
    import tarfile

    # An export as the controller leaves it: the kiosk's, readable by the records group only.
    folder = rig.data / "exports" / "session_1_20261207_120000"
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text('{"sessions": [1]}')
    (folder / "snapshots" / "one.png").write_bytes(b"\x89PNG picture")
    kiosk = pwd.getpwnam(rig.kiosk).pw_uid
    records = grp.getgrnam(rig.records).gr_gid
    for path in (folder.parent, folder, *folder.rglob("*")):
        os.chown(path, kiosk, records)
        path.chmod(0o750 if path.is_dir() else 0o640)
    fetched = subprocess.run(
        [*rig.ssh(rig.engineer, "-T", "-o", "BatchMode=yes"), f"fetch-export {folder.name}"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    with tarfile.open(fileobj=io.BytesIO(fetched.stdout)) as tar:
        files = {member.name for member in tar.getmembers() if member.isfile()}
        manifest = tar.extractfile(f"{folder.name}/manifest.json")
        assert manifest is not None and json.loads(manifest.read()) == {"sessions": [1]}
    assert files == {f"{folder.name}/manifest.json", f"{folder.name}/snapshots/one.png"}
    refused = subprocess.run(
        [*rig.ssh(rig.engineer, "-T", "-o", "BatchMode=yes"), "fetch-export ../tosca.db"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert (refused.returncode, refused.stdout) == (1, b"")
    assert b"fetch-export takes one plain export folder name" in refused.stderr
