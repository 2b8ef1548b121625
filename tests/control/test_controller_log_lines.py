"""The controller's log names each fault latched and each reset, with ISO times and levels (the supervisor's
lines read back through the log file's own parser), and each session opened and ended."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from account_fixtures import CHEAP
from controller_fixtures import SUBJECT, USERNAME, prepare_data_dir
from supervisor_fakes import World

from control.controller import Controller
from control.supervisor import SystemState as S
from storage.logfile import IsoFormatter, parse_line
from tests.support import RIG_TEST, protocol_json

SHORT = protocol_json((1.5, 2.0, 2.0, 2.0, "constant"))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    rig = World()
    try:
        yield rig
    finally:
        await rig.sup.close()


async def test_a_fault_and_its_reset_are_log_lines_with_time_and_level(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    formatter = IsoFormatter()
    with caplog.at_level(logging.INFO, logger="control.supervisor"):
        await world.to_treating()
        world.set_storage(False)
        await world.settle()
        assert world.sup.state is S.FAULT
        world.set_storage(True)
        await world.sup.reset(3, "bob", session_open=False)
        await world.settle()
    lines = [parse_line(formatter.format(r)) for r in caplog.records if r.name == "control.supervisor"]
    latched = [line for line in lines if line.message.startswith("fault latched")]
    reset = [line for line in lines if line.message.startswith("fault reset by bob")]
    assert len(latched) == 1 and latched[0].level == "ERROR" and "storage" in latched[0].message
    assert len(reset) == 1 and reset[0].level == "INFO"
    assert latched[0].at is not None and latched[0].at.utcoffset() is not None
    assert lines.index(latched[0]) < lines.index(reset[0])


@RIG_TEST
async def test_a_session_opened_and_aborted_are_log_lines(
    tmp_path: Path, migrated_template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = await prepare_data_dir(tmp_path / "data", migrated_template, {"short": SHORT})
    controller = Controller(data.root, sim=True, hashing=CHEAP, terminal="test", serve=False)
    with caplog.at_level(logging.INFO, logger="control.controller.treatment"):
        await controller.start()
        try:
            opened = await controller.open_session(
                subject_code=SUBJECT, username=USERNAME, protocol_name="short", create_subject=True
            )
            await controller.abort("subject moved", by=USERNAME)
        finally:
            await controller.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "control.controller.treatment"]
    number = opened.session_id
    assert f"session {number} opened for {SUBJECT} by {USERNAME}" in messages
    assert f"session {number} aborted: subject moved" in messages
