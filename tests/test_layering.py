"""The layers may only point one way: tui -> control -> devices, storage; devices and storage know nothing of
each other.

Each lower package is imported in a fresh interpreter and the modules it pulled in are checked, so an indirect
import (through a helper module) is caught as well as a direct one.
"""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "control": ("textual", "tui"),
    "devices": ("textual", "tui", "control", "storage"),
    "storage": ("textual", "tui", "control"),
    "migrations": ("textual", "tui", "control"),
}


def _modules_of(package: str) -> list[str]:
    pkg_dir = ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(pkg_dir)], prefix=f"{package}."):
        if package == "migrations" and info.name.startswith("migrations.env"):
            continue  # env.py runs only inside Alembic's context
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(package: str) -> None:
    modules = _modules_of(package)
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = sorted(m for m in loaded for top in FORBIDDEN[package] if m == top or m.startswith(f"{top}."))
    assert not bad, f"{package} pulls in {bad}"


#: What only the controller process runs. The console reaches the controller through the socket client
#: (``control.ipc.client``); the ``tosca controller`` command loads the controller when it runs, not before.
CONTROLLER_ONLY = ("control.controller", "control.ipc.server", "control.engine", "control.recorder")


def test_the_console_loads_no_module_of_the_controller_process() -> None:
    modules = _modules_of("tui")
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "tui.screens.dashboard" in loaded  # the check imported what it meant to
    bad = sorted(m for m in loaded for top in CONTROLLER_ONLY if m == top or m.startswith(f"{top}."))
    assert not bad, f"the console pulls in {bad}"


#: How a console is configured and what only a console reads from the configuration belong to the console
#: (``tui/settings.py``); ``control/`` keeps only the settings the controller reads too.
CONSOLE_ONLY_SETTINGS = ("ConsoleSettings", "ControllerMode", "ImageProtocol", "read_auto_lock_minutes")


def test_console_only_settings_live_in_the_console_not_in_control() -> None:
    import tui.settings

    for name in CONSOLE_ONLY_SETTINGS:
        assert hasattr(tui.settings, name), f"tui/settings.py lacks {name}"
    pattern = re.compile(rf"^(?:class|def|async def|)\s*({'|'.join(CONSOLE_ONLY_SETTINGS)})\b\s*[(:=]", re.M)
    found = [
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for path in sorted((ROOT / "control").rglob("*.py"))
        for match in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert not found, f"console-only settings defined in control/: {found}"
