"""A controller that starts after another one died on the same rig: the safety board's watchdog the dead one
left expired is found, cleared and logged (evidence of a crash), the watchdog interlock shows the board's real
state, and the laser arms.

The simulated rig runs in the test's process, so it outlives the controllers: the first is ``tosca
controller --ports`` in a process of its own, killed with SIGKILL; the second runs in-process on the same
ports, as systemd's restart would start it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import pytest
from controller_fixtures import PASSWORD, SUBJECT, USERNAME, prepare_data_dir, wait_prechecks, wait_until

from control.calibration import install_sim_calibrations_if_missing
from control.controller import Controller
from control.supervisor import SystemState, Term
from devices.rig import RigConfig
from devices.sim.rig import SimRig
from storage import DataDir, create_engine, session_factory
from storage.repositories import UsersRepository
from tests.support import CHEAP, RIG_TEST, protocol_json

pytestmark = RIG_TEST

TOSCA = str(Path(sys.executable).with_name("tosca"))


@pytest.fixture
async def data(tmp_path: Path, migrated_template: Path) -> DataDir:
    data = await prepare_data_dir(
        tmp_path / "data", migrated_template, {"p": protocol_json((30.0, 1.0, 1.0, 2.0, "constant"))}
    )
    engine = create_engine(data.db_path)
    try:
        sessions = session_factory(engine)
        async with sessions() as db:
            user = await UsersRepository(db).get_by_username(USERNAME)
        assert user is not None
        await install_sim_calibrations_if_missing(sessions, user.tech_id)
    finally:
        await engine.dispose()
    return data


async def start_and_kill(data: DataDir, ports_file: Path, rig: SimRig) -> None:
    """``tosca controller --ports`` until it feeds the board's watchdog, then SIGKILL."""
    log = (data.root / "logs" / "first-controller.log").open("ab")
    try:
        child = await asyncio.create_subprocess_exec(
            TOSCA,
            "--data-dir",
            str(data.root),
            "controller",
            "--ports",
            str(ports_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 60.0)
            assert line.startswith(b"controller ready"), line
            await wait_until(lambda: rig.safety.watchdog_state() == "FED", 5.0, "the heartbeat")
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
    finally:
        log.close()


@pytest.mark.timeout(120)
async def test_a_controller_restarted_after_a_kill_clears_the_expired_watchdog_logs_it_and_arms(
    data: DataDir, tmp_path: Path
) -> None:
    async with SimRig() as rig:
        ports = {**rig.ports(), "camera": None}
        ports_file = tmp_path / "ports.json"
        ports_file.write_text(json.dumps(ports), encoding="utf-8")
        await start_and_kill(data, ports_file, rig)
        # Nobody feeds the board any more: its watchdog expires and stays expired.
        await wait_until(lambda: rig.safety.watchdog_state() == "EXPIRED", 3.0, "the watchdog to expire")
        assert rig.safety.handle_line("ARM") == ["ERROR:NOT_READY:WDT"]

        config = RigConfig.from_ports({k: v for k, v in ports.items() if v is not None}, with_camera=False)
        controller = Controller(data.root, rig_config=config, hashing=CHEAP, serve=False)
        await controller.start()
        try:
            sup = controller.supervisor
            assert rig.safety.watchdog_state() == "FED"
            assert sup.state is SystemState.IDLE and sup.fault is None
            watchdog = sup.terms()[Term.WATCHDOG]
            assert watchdog.ok and watchdog.value.startswith("fed"), watchdog
            await sup.drain_log()
            await controller.open_session(
                subject_code=SUBJECT, username=USERNAME, protocol_name="p", create_subject=True
            )
            checks = await wait_prechecks(controller)
            assert {c.name: c.ok for c in checks}["watchdog"] is True
            await controller.arm(PASSWORD)
            assert sup.state is SystemState.ARMED
            assert rig.safety.armed
            await controller.abort("restart test over")
        finally:
            await controller.close()

    with sqlite3.connect(data.db_path) as db:
        rows = db.execute(
            "SELECT event_type, severity, description, action_taken FROM safety_log "
            "WHERE description LIKE '%at start-up%' ORDER BY log_id"
        ).fetchall()
    assert len(rows) == 1, rows
    event_type, severity, description, action = rows[0]
    assert event_type == "system_watchdog_timeout" and severity == "warning"
    assert "watchdog expired at start-up" in description and "without disarming" in description
    assert "WDT_CLEAR" in action


@pytest.mark.timeout(120)
async def test_a_watchdog_that_cannot_be_cleared_at_start_up_is_a_fault_shown_as_expired(
    data: DataDir, tmp_path: Path
) -> None:
    """The interlock shows the board's real state: a board whose watchdog stays expired (here its WDT_CLEAR
    is lost) is a latched fault with the watchdog term "expired", not "fed"."""
    async with SimRig() as rig:
        config = RigConfig.from_ports(rig.ports(), with_camera=False)
        rig.safety.handle_line("WDT_RESET")
        rig.safety.wdt_timeout_ms = 100
        await wait_until(lambda: rig.safety.watchdog_state() == "EXPIRED", 3.0, "the watchdog to expire")
        clear = rig.safety._cmd_wdt_clear
        rig.safety._cmd_wdt_clear = lambda: ["OK:WDT_CLEAR"]  # type: ignore[method-assign]
        controller = Controller(data.root, rig_config=config, hashing=CHEAP, serve=False)
        await controller.start()
        try:
            sup = controller.supervisor
            await wait_until(lambda: sup.state is SystemState.FAULT, 2.0, "the fault")
            assert sup.terms()[Term.WATCHDOG].value == "expired"
            checks = {c.name: c for c in await controller.prechecks()}
            assert not checks["watchdog"].ok and not checks["state"].ok
            rig.safety._cmd_wdt_clear = clear  # type: ignore[method-assign]
            await controller.reset_fault(USERNAME, PASSWORD)
            assert sup.state is SystemState.IDLE
            assert rig.safety.watchdog_state() == "FED"
        finally:
            await controller.close()
