"""Rig: laser output off first on open, health, and the exclusive lock against a second process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.controller.rig_lock import DataDirRigLock
from devices.rig import Rig, RigConfig, RigError, RigInUse
from devices.sim.rig import SimRig
from devices.transport import LinkState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[SimRig]:
    rig = SimRig(seed=2)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


def switch_laser_on_behind_the_console(sim: SimRig) -> None:
    sim.model.tec_output_on = True
    sim.model.laser_enable = True
    sim.laser.handle_line("LAS:LDI 1500;OUT 1")
    assert sim.model.laser_output_on and sim.model.light_w() > 0


async def test_open_sends_output_off_first_and_verifies_it(sim: SimRig, tmp_path: Path) -> None:
    switch_laser_on_behind_the_console(sim)
    rig = Rig(RigConfig.from_ports(sim.ports(), with_camera=False), DataDirRigLock(tmp_path))
    await rig.open()
    try:
        history = list(sim.devices["laser"].history)
        assert history[:2] == ["LAS:OUT 0", "LAS:OUT?"]
        assert not sim.model.laser_output_on
        for name in ("tec", "actuator", "safety"):
            assert sim.devices[name].lines_received > 0, name
        health = rig.health()
        assert set(health) == {"laser", "tec", "actuator", "safety"}
        assert all(h.ok for h in health.values()), health
        assert health["laser"].identity is not None and "6310" in health["laser"].identity
        assert health["tec"].identity is not None and "5305" in health["tec"].identity
        assert health["safety"].identity == "TOSCA safety firmware, protocol 3.1"
        assert health["actuator"].detail
    finally:
        await rig.close()
    assert rig.health()["laser"].state == "closed"


async def test_health_follows_a_device_that_disappears(sim: SimRig, tmp_path: Path) -> None:
    async with Rig(RigConfig.from_ports(sim.ports(), with_camera=False), DataDirRigLock(tmp_path)) as rig:
        sim.command("unplug tec")
        assert rig.tec is not None
        await rig.tec.transport.wait_for_state(LinkState.RECONNECTING, 2.0)
        tec = rig.health()["tec"]
        assert tec.state == "reconnecting" and not tec.ok
        assert tec.last_error is not None and "port lost" in tec.last_error
        sim.command("replug tec")


async def test_camera_is_opened_and_reported(sim: SimRig, tmp_path: Path) -> None:
    rig = Rig(RigConfig.from_ports(sim.ports()), DataDirRigLock(tmp_path), camera_source=sim.camera)
    async with rig:
        assert rig.camera is not None
        frame = await rig.camera.next_frame(timeout_s=5.0)
        assert frame is not None
        assert rig.health()["camera"].identity == "simulated camera"


async def test_a_failing_device_closes_everything_and_releases_the_lock(sim: SimRig, tmp_path: Path) -> None:
    ports = sim.ports()
    sim.command("unplug safety")
    rig = Rig(RigConfig.from_ports(ports, with_camera=False), DataDirRigLock(tmp_path))
    with pytest.raises(RigError, match=r"safety: .*cannot open"):
        await rig.open()
    assert not rig.lock.held
    assert rig.transports == {}
    sim.command("replug safety")
    async with Rig(RigConfig.from_ports(ports, with_camera=False), DataDirRigLock(tmp_path)) as again:
        assert again.health()["safety"].ok


async def test_second_holder_in_another_process_is_refused(sim: SimRig, tmp_path: Path) -> None:
    async with Rig(RigConfig.from_ports(sim.ports(), with_camera=False), DataDirRigLock(tmp_path)):
        code = (
            "import asyncio, sys\n"
            "from control.controller.rig_lock import DataDirRigLock\n"
            "from devices.rig import Rig, RigConfig, RigInUse\n"
            "config = RigConfig('/none/a', '/none/b', '/none/c', '/none/d', None)\n"
            "async def main():\n"
            f"    rig = Rig(config, DataDirRigLock({str(tmp_path)!r}))\n"
            "    try:\n"
            "        await rig.open()\n"
            "    except RigInUse as exc:\n"
            "        print(exc)\n"
            "        return 3\n"
            "    return 0\n"
            "sys.exit(asyncio.run(main()))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 3, stderr.decode()
        assert stdout.decode().strip() == f"rig in use by process {os.getpid()}"
    assert sim.devices["laser"].history[0] == "LAS:OUT 0"


async def test_second_holder_in_this_process_is_refused(sim: SimRig, tmp_path: Path) -> None:
    config = RigConfig.from_ports(sim.ports(), with_camera=False)
    async with Rig(config, DataDirRigLock(tmp_path)):
        other = Rig(config, DataDirRigLock(tmp_path))
        with pytest.raises(RigInUse, match=f"rig in use by process {os.getpid()}"):
            await other.open()
    # Released on close: a new holder gets it.
    async with Rig(config, DataDirRigLock(tmp_path)) as third:
        assert third.is_open


def test_config_from_ports_needs_every_serial_device() -> None:
    with pytest.raises(ValueError, match="no port for: tec, safety"):
        RigConfig.from_ports({"laser": "/dev/a", "actuator": "/dev/c"})
