"""``tosca controller`` as its own process: sockets up, a client's commands answered, a clean stop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from controller_fixtures import prepare_data_dir

from control import messages as msg
from control.ipc.client import ControllerClient
from storage import DataDir
from tests.support import RIG_TEST, protocol_json

pytestmark = RIG_TEST


TOSCA = str(Path(sys.executable).with_name("tosca"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    return await prepare_data_dir(
        tmp_path / "data", migrated_template, {"p": protocol_json((2.0, 1.0, 1.0, 2.0, "constant"))}
    )


@pytest.mark.timeout(60)
async def test_controller_process_serves_both_sockets_and_stops_cleanly(data: DataDir) -> None:
    child = await asyncio.to_thread(
        subprocess.Popen,
        [TOSCA, "--data-dir", str(data.root), "controller", "--sim"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.to_thread(child.stdout.readline)
        assert line.startswith("controller ready"), line + (child.stderr.read() if child.stderr else "")
        # It says what scheduling priority it got (raised where the system allows it, else why not).
        assert "scheduling priority: " in line and "nice" in line, line
        control = data.root / "control.sock"
        assert control.stat().st_mode & 0o777 == 0o600
        client = await ControllerClient.connect(control)
        try:
            assert (await client.call(msg.Ping()))["pong"] is True
            status = await client.call(msg.Status())
            assert status["state"] == "idle" and status["sim"] is True
            health = await client.call(msg.Health())
            assert health["laser"]["state"] == "open"
            snapshot = await client.wait_snapshot(lambda s: s.state == "idle", 3.0)
            assert {d.name for d in snapshot.devices} >= {"laser", "tec", "actuator", "safety"}
            refused = await client.request(msg.Arm(password="whatever"))
            assert not refused.ok and "authenticate this connection first" in (refused.error or "")
        finally:
            await client.close()
        # A second controller on the same data directory is refused: the rig is held.
        second = await asyncio.to_thread(
            subprocess.run,
            [TOSCA, "--data-dir", str(data.root), "controller", "--sim"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "in use by process" in second.stderr or "already running" in second.stderr
    finally:
        child.send_signal(signal.SIGTERM)
        _, errors = await asyncio.to_thread(child.communicate, timeout=20)
        assert child.returncode == 0, errors
    assert not (data.root / "control.sock").exists()
    assert not (data.root / "observe.sock").exists()
