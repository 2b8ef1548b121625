"""SimRig: ports, every command of the simulator command language, and clear errors for bad ones."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from devices.laser import LaserDriver
from devices.sim.rig import SERIAL_DEVICES, SimCommandError, SimRig
from devices.transport import LineTransport, LinkState


def exists(path: str) -> bool:
    """Whether a port name exists now (a plain check of the file system)."""
    return os.path.exists(path)


def resolved(path: str) -> str:
    """The pty a port name points at."""
    return os.path.realpath(path)


@pytest.fixture
async def rig() -> AsyncIterator[SimRig]:
    sim = SimRig(seed=11, camera_frame_rate_hz=None)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def open_link(rig: SimRig, name: str) -> LineTransport:
    eol = b"\r\n" if name in ("laser", "tec") else b"\n"
    link = LineTransport(
        name,
        rig.ports()[name],
        baudrate=38400 if eol == b"\r\n" else 115200,
        eol=eol,
        is_unsolicited=lambda line: line.startswith(("EVT:", "S:")),
    )
    await link.open()
    return link


async def test_ports_name_every_device_and_resolve_to_ptys(rig: SimRig) -> None:
    ports = rig.ports()
    assert set(ports) == {"laser", "tec", "actuator", "safety", "camera"}
    assert ports["camera"] == "sim"
    for name in SERIAL_DEVICES:
        assert resolved(ports[name]).startswith("/dev/pts/"), ports[name]
        assert resolved(ports[name]) == rig.devices[name].path


async def test_each_device_answers_on_its_port(rig: SimRig) -> None:
    questions = {
        "laser": ("*IDN?", "Arroyo 6310"),
        "tec": ("*IDN?", "Arroyo 5305"),
        "actuator": ("EPOS=?", "EPOS="),
        "safety": ("VERSION?", "VERSION:3.1"),
    }
    for name, (question, start) in questions.items():
        link = await open_link(rig, name)
        try:
            reply = await link.query(question)
            assert isinstance(reply, str) and reply.startswith(start)
        finally:
            await link.close()


def test_pedal_and_estop(rig: SimRig) -> None:
    assert rig.command("pedal down") == "ok pedal down"
    assert rig.safety.pedal is True
    assert rig.command("PEDAL UP") == "ok pedal up"
    assert rig.safety.pedal is False
    assert rig.command("estop on") == "ok estop on"
    assert rig.safety.estop is True
    assert rig.command("estop off") == "ok estop off"
    assert rig.safety.estop is False


def test_smoothing_photodiode_dropout_drift(rig: SimRig) -> None:
    assert rig.command("smoothing fail") == "ok smoothing fail"
    assert rig.model.smoothing_fail
    assert rig.command("smoothing ok") == "ok smoothing ok"
    assert not rig.model.smoothing_fail
    assert rig.command("photodiode gain 0.5") == "ok photodiode gain 0.5"
    assert rig.model.photodiode_gain == 0.5
    assert rig.command("photodiode offset 0.2") == "ok photodiode offset 0.2 V"
    assert rig.model.photodiode_offset_v == 0.2
    assert rig.command("laser dropout on") == "ok laser dropout on"
    assert rig.model.laser_dropout
    assert rig.command("laser dropout off") == "ok laser dropout off"
    assert not rig.model.laser_dropout
    assert rig.command("tec drift 1.5") == "ok tec drift 1.5 degC"
    assert rig.model.tec_drift_c == 1.5


def test_actuator_fault_and_clear(rig: SimRig) -> None:
    assert rig.command("actuator fault thermal") == "ok actuator fault thermal"
    (stat,) = rig.actuator.handle_line("STAT=?")
    assert int(stat.split("=")[1]) & (1 << 2)
    assert rig.command("actuator fault clear") == "ok actuator fault clear"
    (stat,) = rig.actuator.handle_line("STAT=?")
    assert int(stat.split("=")[1]) & (1 << 2), "clearing the cause never clears the latched stop"


def test_camera_freeze_unplug_replug(rig: SimRig) -> None:
    assert rig.command("camera freeze on") == "ok camera freeze on"
    assert rig.camera.frozen
    assert rig.command("camera freeze off") == "ok camera freeze off"
    assert not rig.camera.frozen
    with pytest.raises(SimCommandError, match="camera freeze: expected 'on' or 'off'"):
        rig.command("camera freeze maybe")
    assert not rig.camera.frozen
    assert rig.command("unplug camera") == "ok unplug camera"
    assert rig.camera.unplugged
    assert rig.command("replug camera") == "ok replug camera"
    assert not rig.camera.unplugged


async def test_stall_and_garbage_reach_the_driver(rig: SimRig) -> None:
    link = await open_link(rig, "laser")
    try:
        assert rig.command("stall laser on") == "ok stall laser on"
        with pytest.raises(Exception, match="no reply"):
            await link.query("*IDN?", timeout_s=0.05)
        assert rig.command("stall laser off") == "ok stall laser off"
        assert rig.command("garbage laser 8") == "ok garbage laser 8"
        with pytest.raises(Exception, match=r"undecodable|control bytes"):
            await LaserDriver(link).identify()
        ident = await LaserDriver(link).identify()
        assert ident.model == "6310"
    finally:
        await link.close()


async def test_unplug_and_replug_a_serial_device(rig: SimRig) -> None:
    link = await open_link(rig, "tec")
    try:
        assert rig.command("unplug tec") == "ok unplug tec"
        await link.wait_for_state(LinkState.RECONNECTING, 2.0)
        assert not exists(rig.ports()["tec"])
        reply = rig.command("replug tec")
        assert reply == f"ok replug tec {rig.ports()['tec']}"
        await link.wait_for_state(LinkState.OPEN, 5.0)
        assert await link.query("TEC:LIM:THI?") == "35.00"
    finally:
        await link.close()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "empty command"),
        ("   ", "empty command"),
        ("fire laser", "unknown command 'fire'"),
        ("pedal", "usage: pedal down|up"),
        ("pedal sideways", "pedal: expected 'down' or 'up', got 'sideways'"),
        ("estop maybe", "estop: expected 'on' or 'off'"),
        ("smoothing broken", "smoothing: expected 'fail' or 'ok'"),
        ("photodiode gain", "usage: photodiode gain"),
        ("photodiode gain x", "photodiode gain: 'x' is not a number"),
        ("photodiode gain nan", "outside 0..10"),
        ("photodiode gain 11", "outside 0..10"),
        ("photodiode offset 6", "outside -5..5"),
        ("photodiode bias 1", "expected 'gain' or 'offset'"),
        ("laser dropout", "usage: laser dropout on|off"),
        ("laser power 3", "usage: laser dropout on|off"),
        ("tec drift", "usage: tec drift <degC>"),
        ("tec drift inf", "outside -50..50"),
        ("actuator fault melt", "expected 'thermal' or 'clear'"),
        ("actuator reset", "usage: actuator fault thermal|clear"),
        ("unplug", "usage: unplug <device>"),
        ("unplug printer", "unknown device 'printer'"),
        ("replug laser", "laser is not unplugged"),
        ("replug camera", "camera is not unplugged"),
        ("garbage laser", "usage: garbage <device> <n>"),
        ("garbage laser many", "n must be a whole number"),
        ("garbage laser 0", "n must be a whole number"),
        ("garbage laser 5000", "n must be a whole number"),
        ("garbage camera 3", "unknown device 'camera'"),
        ("stall tec", "usage: stall <device> on|off"),
        ("stall camera on", "unknown device 'camera'"),
        ("stall tec maybe", "stall: expected 'on' or 'off'"),
        ("camera freeze", "usage: camera freeze on|off"),
        ("camera zoom 2", "usage: camera freeze on|off"),
    ],
)
def test_bad_commands_raise_one_line_errors_and_change_nothing(rig: SimRig, line: str, message: str) -> None:
    before = (
        rig.model.photodiode_gain,
        rig.model.photodiode_offset_v,
        rig.model.tec_drift_c,
        rig.safety.pedal,
        [d.stalled for d in rig.devices.values()],
    )
    with pytest.raises(SimCommandError) as caught:
        rig.command(line)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    after = (
        rig.model.photodiode_gain,
        rig.model.photodiode_offset_v,
        rig.model.tec_drift_c,
        rig.safety.pedal,
        [d.stalled for d in rig.devices.values()],
    )
    assert after == before


def test_double_unplug_is_an_error(rig: SimRig) -> None:
    rig.command("unplug laser")
    with pytest.raises(SimCommandError, match="already unplugged"):
        rig.command("unplug laser")
    with pytest.raises(SimCommandError, match="laser is unplugged"):
        rig.command("garbage laser 3")
    rig.command("replug laser")


async def test_commands_before_start_are_refused() -> None:
    sim = SimRig(camera_frame_rate_hz=None)
    with pytest.raises(SimCommandError, match="not started"):
        sim.command("pedal down")
    with pytest.raises(RuntimeError):
        sim.ports()
    await sim.stop()


async def test_stop_removes_the_port_names() -> None:
    sim = SimRig(camera_frame_rate_hz=None)
    async with sim:
        ports = sim.ports()
    for name in SERIAL_DEVICES:
        assert not exists(ports[name])
