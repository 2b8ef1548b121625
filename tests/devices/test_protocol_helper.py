"""The scripted-device helper itself must fail a test that strays from its script."""

from __future__ import annotations

import pytest

from devices.transport import LinkTimeout
from tests.devices.protocol import Raw, expected_protocol


async def test_unused_pair_fails() -> None:
    with pytest.raises(AssertionError, match="left unused"):
        async with expected_protocol([("A?", "1"), ("B?", "2")]) as link:
            assert await link.transport.query("A?") == "1"


async def test_wrong_command_fails_even_when_the_body_raised() -> None:
    with pytest.raises(AssertionError, match="expected 'A\\?', got 'C\\?'"):
        async with expected_protocol([("A?", "1")], timeout_s=0.05) as link:
            with pytest.raises(LinkTimeout):
                await link.transport.query("C?")


async def test_unscripted_extra_line_fails() -> None:
    with pytest.raises(AssertionError, match="unscripted"):
        async with expected_protocol([("A 1", None)]) as link:
            await link.transport.write("A 1")
            await link.transport.write("B 2")


async def test_several_lines_raw_bytes_and_unsolicited_lines() -> None:
    script = [("MULTI?", ["x", "y"]), ("RAW?", Raw(b"ra"))]
    async with expected_protocol(
        script, eol=b"\n", timeout_s=0.05, is_unsolicited=lambda line: line.startswith("EVT:")
    ) as link:
        queue = link.transport.subscribe()
        link.peer.emit("EVT:FOOTPEDAL:1")
        assert await link.transport.query("MULTI?", lines=2) == ["x", "y"]
        assert await queue.get() == "EVT:FOOTPEDAL:1"
        with pytest.raises(LinkTimeout):
            await link.transport.query("RAW?")
