"""``tosca controller --ports FILE``: the rig's port file is read strictly; a bad one starts nothing and says
what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devices.rig import RigConfig
from tui import cli
from tui.commands import controller as controller_command

GOOD: dict[str, Any] = {
    "laser": "/dev/tosca-laser",
    "tec": "/dev/tosca-tec",
    "actuator": "/dev/tosca-actuator",
    "safety": "/dev/tosca-safety",
    "camera": 0,
}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[RigConfig | None]:
    """The configurations the controller would have run with (it is not started)."""
    seen: list[RigConfig | None] = []

    async def serve(data_dir: Path, sim: bool, config: RigConfig | None, priority: str) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(controller_command, "_serve", serve)
    monkeypatch.setattr(controller_command, "raise_priority", lambda: "left as it is")
    return seen


def run_with(tmp_path: Path, ports: object) -> int:
    path = tmp_path / "ports.json"
    path.write_text(json.dumps(ports), encoding="utf-8")
    return cli.main(["controller", "--ports", str(path), "--data-dir", str(tmp_path / "data")])


@pytest.mark.parametrize(
    ("camera", "expected"), [(0, "0"), ("sim", "sim"), ("/srv/ring.mp4", "/srv/ring.mp4"), (None, None)]
)
def test_a_complete_file_names_every_device(
    tmp_path: Path, started: list[RigConfig | None], camera: object, expected: str | None
) -> None:
    assert run_with(tmp_path, {**GOOD, "camera": camera}) == 0
    (config,) = started
    assert config is not None
    assert (config.laser, config.tec, config.actuator, config.safety) == (
        "/dev/tosca-laser",
        "/dev/tosca-tec",
        "/dev/tosca-actuator",
        "/dev/tosca-safety",
    )
    assert config.camera == expected


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "camera"}, "no entry for camera; camera is a device index"),
        ({k: v for k, v in GOOD.items() if k != "tec"}, "no entry for tec"),
        (
            {**GOOD, "lazer": "/dev/ttyUSB0"},
            "unknown entries lazer (expected laser, tec, actuator, safety, camera)",
        ),
        ({**GOOD, "laser": ""}, "the port of laser must be a device path"),
        ({**GOOD, "safety": 3}, "the port of safety must be a device path"),
        ({**GOOD, "camera": True}, "invalid camera True: expected a device index, a file path or 'sim'"),
        ({**GOOD, "camera": [0]}, "invalid camera [0]"),
        ({**GOOD, "camera": -1}, "a camera device index must be >= 0, got -1"),
        (["/dev/tosca-laser"], "not a JSON object"),
    ],
    ids=[
        "no-camera",
        "no-tec",
        "unknown",
        "empty-port",
        "number-port",
        "camera-bool",
        "camera-list",
        "camera-negative",
        "list",
    ],
)
def test_a_bad_file_starts_nothing_and_says_why(
    tmp_path: Path,
    started: list[RigConfig | None],
    capsys: pytest.CaptureFixture[str],
    ports: object,
    message: str,
) -> None:
    assert run_with(tmp_path, ports) == 1
    assert started == []
    err = capsys.readouterr().err
    assert err.startswith(f"tosca: controller: bad port file {tmp_path / 'ports.json'}: ")
    assert message in err


def test_a_file_that_is_not_json_starts_nothing(
    tmp_path: Path, started: list[RigConfig | None], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ports.json"
    path.write_text('{"laser": "/dev/tosca-laser",', encoding="utf-8")
    assert cli.main(["controller", "--ports", str(path), "--data-dir", str(tmp_path / "data")]) == 1
    assert started == []
    assert "bad port file" in capsys.readouterr().err
