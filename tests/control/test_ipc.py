"""The controller's socket protocol: message models, the server and the client, over real Unix sockets."""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.ipc import EVENT_QUEUE_LIMIT
from control.ipc.client import ControllerClient
from control.ipc.server import CommandRefused, ControllerRunning, ControllerServer, Peer
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import (
    MAX_LINE_BYTES,
    Abort,
    Arm,
    CalibrationMove,
    CalibrationSaveRing,
    Command,
    ControlCommand,
    Devices,
    Disarm,
    EndSession,
    Event,
    FaultView,
    Health,
    LaserView,
    MessageError,
    ObserveCommand,
    OpenSession,
    OverridePower,
    Pause,
    Ping,
    Prechecks,
    RemoteAuditExport,
    RemoteBackup,
    RemoteExport,
    RemoteLogin,
    RemoteLogout,
    RemoteScreenLock,
    RemoteVerifyBackup,
    Reply,
    ResetFault,
    Resume,
    RingView,
    Sim,
    Snapshot,
    Status,
    Stop,
    decode_control,
    decode_observe,
    decode_server,
    encode,
)

# ---------------------------------------------------------------------------------------------------------
# Test doubles and utilities
# ---------------------------------------------------------------------------------------------------------


class FakeHandler:
    """Records every command, answers with an echo, and refuses, fails or holds commands on demand."""

    def __init__(self) -> None:
        self.commands: list[tuple[ControlCommand | ObserveCommand, Peer]] = []
        self.refuse: dict[str, str] = {}
        self.fail: dict[str, Exception] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.data: dict[str, dict[str, Any]] = {}
        self.then: dict[str, Callable[[], Awaitable[None]]] = {}
        self._changed = asyncio.Event()

    async def handle(self, command: ControlCommand | ObserveCommand, peer: Peer) -> dict[str, Any] | None:
        self.commands.append((command, peer))
        self._changed.set()
        gate = self.hold.get(command.type)
        if gate is not None:
            await gate.wait()
        if command.type in self.refuse:
            raise CommandRefused(self.refuse[command.type])
        if command.type in self.fail:
            raise self.fail[command.type]
        if command.type in self.then:
            await self.then[command.type]()
        if command.type in self.data:
            return self.data[command.type]
        echo: dict[str, Any] = {"type": command.type, "id": command.id, "socket": peer.socket}
        if isinstance(command, OverridePower):
            echo["watts"] = command.watts
        return echo

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class DisconnectRecorder:
    """The operator-disconnect callback: records peers and lets a test wait for one."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self._changed = asyncio.Event()

    async def __call__(self, peer: Peer) -> None:
        self.peers.append(peer)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[Peer]], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate(self.peers):
                self._changed.clear()
                await self._changed.wait()


def make_snapshot(seq: int, state: str = "idle") -> Snapshot:
    return Snapshot(
        seq=seq,
        time_s=seq * 0.01,
        state=state,  # type: ignore[arg-type]
        emitting=False,
        sim=True,
        laser=LaserView(commanded_w=0.0, measured_w=0.0, photodiode_v=0.01, output_on=False, current_ma=0.0),
        ring=RingView(commanded_mm=3.0, measured_mm=3.0, position_um=800.0),
    )


def make_event(seq: int) -> Event:
    return Event(seq=seq, time_s=seq * 0.001, kind="test", severity="info", message=f"event {seq}")


class RawConnection:
    """A bare socket connection that writes and reads lines exactly as given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: Path) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=4 * MAX_LINE_BYTES)
        return cls(reader, writer)

    async def send(self, line: bytes) -> None:
        self.writer.write(line)
        await self.writer.drain()

    async def read_message(self, timeout_s: float = 5.0) -> Reply | Snapshot | Event:
        async with asyncio.timeout(timeout_s):
            line = await self.reader.readline()
        assert line, "connection closed before a message arrived"
        return decode_server(line)

    async def read_reply(self, timeout_s: float = 5.0) -> Reply:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await self.read_message()
                if isinstance(message, Reply):
                    return message

    async def exchange(self, line: bytes) -> Reply:
        await self.send(line)
        return await self.read_reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            return


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # pytest's tmp_path can be longer than a Unix socket path allows.
    path = Path(tempfile.mkdtemp(prefix="ipc", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Fails the test if anything reached the event loop's exception handler (an exception in a callback,
    a task or future whose exception nobody retrieved)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)
    assert errors == [], [e.get("message") for e in errors]


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
def disconnects() -> DisconnectRecorder:
    return DisconnectRecorder()


@pytest.fixture
async def server(
    socket_dir: Path, handler: FakeHandler, disconnects: DisconnectRecorder, loop_errors: list[dict[str, Any]]
) -> AsyncIterator[ControllerServer]:
    srv = ControllerServer(
        socket_dir / "control.sock",
        socket_dir / "observe.sock",
        handler,
        on_operator_disconnect=disconnects,
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def client(server: ControllerServer) -> AsyncIterator[ControllerClient]:
    c = await ControllerClient.connect(server.control_path)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def raw(server: ControllerServer) -> AsyncIterator[RawConnection]:
    conn = await RawConnection.open(server.control_path)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def raw_observe(server: ControllerServer) -> AsyncIterator[RawConnection]:
    conn = await RawConnection.open(server.observe_path)
    try:
        yield conn
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------

ALL_COMMANDS: list[Command] = [
    Ping(id=1),
    Status(id=2),
    Health(id=3),
    OpenSession(
        id=4,
        subject_code="P-2026-0001",
        username="tech",
        protocol_name="Standard",
        treatment_site="left",
        treatment_notes=None,
        create_subject=True,
    ),
    Prechecks(id=5),
    Arm(id=6, password="secret words"),
    Disarm(id=7),
    Pause(id=8),
    Resume(id=9),
    Stop(id=10),
    Abort(id=11, reason="subject moved"),
    OverridePower(id=12, watts=1.25, reason="tissue response", step=1),
    ResetFault(id=13, username="tech", password="pw"),
    EndSession(id=14, notes="fine"),
    Sim(id=15, command="pedal down"),
]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: c.type)
def test_every_command_round_trips_through_one_json_line(command: Command) -> None:
    line = encode(command)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["type"] == command.type
    assert decode_control(line) == command


@settings(max_examples=60, deadline=None)
@given(
    request_id=st.integers(min_value=0, max_value=2**53),
    reason=st.text(min_size=1).filter(lambda t: t.strip() == t and t != ""),
    watts=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    notes=st.none() | st.text(),
)
def test_any_text_and_power_survive_as_exactly_one_line(
    request_id: int, reason: str, watts: float, notes: str | None
) -> None:
    for command in (
        OverridePower(id=request_id, watts=watts, reason=reason, step=1),
        EndSession(id=request_id, notes=notes),
        Sim(id=request_id, command=reason),
    ):
        line = encode(command)
        assert line.index(b"\n") == len(line) - 1
        assert decode_control(line) == command


def test_observe_union_holds_only_queries_the_remote_consoles_records_and_the_calibration_move() -> None:
    union, *_ = typing.get_args(ObserveCommand)
    assert set(typing.get_args(union)) == {
        Ping,
        Status,
        Health,
        Devices,
        RemoteLogin,
        RemoteLogout,
        RemoteScreenLock,
        CalibrationMove,
        CalibrationSaveRing,
        RemoteBackup,
        RemoteVerifyBackup,
        RemoteExport,
        RemoteAuditExport,
    }
    with pytest.raises(MessageError, match="unknown command type 'arm'") as info:
        decode_observe(encode(Arm(id=4, password="x")))
    assert info.value.request_id == 4
    for command in ALL_COMMANDS:
        if command.type not in {"ping", "status", "health", "calibration_move"}:
            with pytest.raises(MessageError, match="unknown command type"):
                decode_observe(encode(command))
    # The remote console's login is observe.sock's alone; the devices query is on both sockets.
    remote_login = RemoteLogin(id=5, username="eng", password="pw", ssh_client="192.0.2.1")
    assert decode_observe(encode(remote_login)) == remote_login
    with pytest.raises(MessageError, match="unknown command type 'remote_login'"):
        decode_control(encode(remote_login))
    assert decode_control(encode(Devices(id=6))) == Devices(id=6)


@pytest.mark.parametrize(
    ("line", "error", "request_id"),
    [
        (b'{"type": "fire", "id": 7}', "unknown command type 'fire'", 7),
        (b'{"type": "arm", "id": 3}', "arm.password: field required", 3),
        (b'{"type": "ping"}', "ping.id: field required", None),
        (b'{"type": "ping", "id": 2, "x": 1}', "ping.x: unexpected field", 2),
        (b'{"type": "ping", "id": true}', "ping.id: input should be a valid integer", None),
        (b'{"type": "ping", "id": -1}', "ping.id: input should be greater than or equal to 0", None),
        (b'{"type": "abort", "id": 5, "reason": "   "}', "abort.reason: string should have at least 1", 5),
        (
            b'{"type": "override_power", "id": 6, "watts": NaN, "reason": "r"}',
            "not JSON: NaN is not allowed",
            None,
        ),
        (
            b'{"type": "override_power", "id": 6, "watts": Infinity, "reason": "r"}',
            "not JSON: Infinity",
            None,
        ),
        (
            b'{"type": "override_power", "id": 6, "watts": "1", "reason": "r", "step": 1}',
            "override_power.watts: input",
            6,
        ),
        (b'{"type": "ping", "id": 1, "id": 2}', "not JSON: duplicate key 'id'", None),
        (b"{not json", "not JSON: ", None),
        (b"[1, 2]", "expected a JSON object, got list", None),
        (b'{"id": 9}', "command has no 'type'", 9),
        (b"\xff\xfe", "not UTF-8", None),
        (b"   ", "empty line", None),
    ],
)
def test_bad_command_lines_are_refused_with_a_specific_reason(
    line: bytes, error: str, request_id: int | None
) -> None:
    with pytest.raises(MessageError) as info:
        decode_control(line + b"\n")
    assert str(info.value).startswith(error), str(info.value)
    assert info.value.request_id == request_id


def test_line_length_limit_is_exactly_one_mebibyte() -> None:
    body = b'{"type": "ping", "id": 1}'
    assert decode_control(body.ljust(MAX_LINE_BYTES) + b"\n") == Ping(id=1)
    with pytest.raises(MessageError, match=f"line longer than {MAX_LINE_BYTES} bytes"):
        decode_control(body.ljust(MAX_LINE_BYTES + 1) + b"\n")


def test_encode_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(ValueError, match="finite"):
        Reply(id=1, ok=True, data={"power": [1.0, float("nan")]})
    with pytest.raises(ValueError, match="finite number"):
        OverridePower(watts=float("inf"), reason="r", step=1)
    with pytest.raises(MessageError, match="cannot encode reply"):
        encode(Reply(id=1, ok=True, data={"thing": object()}))
    with pytest.raises(MessageError, match="longer than"):
        encode(Reply(id=1, ok=True, data={"blob": "x" * MAX_LINE_BYTES}))


def test_reply_carries_an_error_exactly_when_refused() -> None:
    with pytest.raises(ValueError, match="needs an error"):
        Reply(id=1, ok=False)
    with pytest.raises(ValueError, match="carries no error"):
        Reply(id=1, ok=True, error="no")
    assert Reply(id=None, ok=False, error="bad").id is None


def test_server_messages_decode_and_refuse_unknown_types() -> None:
    snap = make_snapshot(4, state="armed")
    assert decode_server(encode(snap)) == snap
    assert decode_server(encode(make_event(2))) == make_event(2)
    with pytest.raises(MessageError, match="unknown message type 'bogus'"):
        decode_server(b'{"type": "bogus"}\n')
    with pytest.raises(MessageError, match="state: input should be"):
        decode_server(encode(snap).replace(b'"armed"', b'"lasing"'))


def test_fault_time_must_be_iso() -> None:
    fault = FaultView(
        what="E-stop",
        action="laser off",
        how_to_reset="release",
        cause_cleared=False,
        at="2026-03-14T09:30:00",
    )
    assert fault.at == "2026-03-14T09:30:00"
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        FaultView(what="E-stop", action="off", how_to_reset="x", cause_cleared=False, at="yesterday")


# ---------------------------------------------------------------------------------------------------------
# Requests and replies
# ---------------------------------------------------------------------------------------------------------


async def test_concurrent_requests_get_their_own_replies_in_order(
    client: ControllerClient, handler: FakeHandler
) -> None:
    commands = [OverridePower(watts=float(i), reason=f"r{i}", step=1) for i in range(40)]
    replies = await asyncio.gather(*(client.request(c) for c in commands))
    ids = [r.id for r in replies]
    assert len(set(ids)) == 40 and all(i is not None for i in ids)
    for command, reply in zip(commands, replies, strict=True):
        assert reply.ok and reply.data is not None
        assert reply.data["id"] == reply.id
        assert reply.data["watts"] == command.watts
    handled_ids = [c.id for c, _ in handler.commands]
    assert handled_ids == sorted(handled_ids), "one connection's commands are handled in the order sent"


async def test_explicit_request_id_is_kept(client: ControllerClient) -> None:
    reply = await client.request(Ping(id=500))
    assert reply.id == 500 and reply.ok
    following = await client.request(Ping())
    assert following.id is not None and following.id > 500


async def test_peer_identifies_the_connecting_process(client: ControllerClient, handler: FakeHandler) -> None:
    await client.call(Ping())
    (_, peer), *_ = handler.commands
    assert peer.socket == "control"
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())


async def test_refusal_and_internal_error_are_replies_and_the_server_keeps_running(
    client: ControllerClient, handler: FakeHandler, caplog: pytest.LogCaptureFixture
) -> None:
    handler.refuse["arm"] = "wrong password"
    handler.fail["health"] = RuntimeError("boom")
    handler.data["status"] = {"bad": object()}
    with pytest.raises(CommandFailed, match="wrong password") as info:
        await client.call(Arm(password="nope"))
    assert info.value.error == "wrong password"
    with caplog.at_level(logging.ERROR, logger="control.ipc"):
        reply = await client.request(Health())
    assert not reply.ok and reply.error == "internal error: RuntimeError: boom"
    assert any("health failed" in r.getMessage() for r in caplog.records)
    status = await client.request(Status())
    assert not status.ok and status.error is not None and status.error.startswith("internal error:")
    assert (await client.call(Ping()))["type"] == "ping"


async def test_request_times_out_and_connection_survives(
    client: ControllerClient, handler: FakeHandler
) -> None:
    gate = asyncio.Event()
    handler.hold["prechecks"] = gate
    with pytest.raises(TimeoutError):
        await client.request(Prechecks(), timeout_s=0.1)
    gate.set()
    assert (await client.call(Ping()))["type"] == "ping"


async def test_pending_request_fails_when_the_controller_goes_away(
    server: ControllerServer, client: ControllerClient, handler: FakeHandler
) -> None:
    handler.hold["prechecks"] = asyncio.Event()
    pending = asyncio.ensure_future(client.request(Prechecks()))
    await handler.wait_for(lambda: any(c.type == "prechecks" for c, _ in handler.commands))
    await server.close()
    with pytest.raises(ControllerUnavailable):
        await pending
    assert not client.connected
    with pytest.raises(ControllerUnavailable):
        await client.request(Ping())


async def test_connect_to_nothing_is_unavailable(socket_dir: Path, loop_errors: list[dict[str, Any]]) -> None:
    with pytest.raises(ControllerUnavailable, match="no controller at"):
        await ControllerClient.connect(socket_dir / "control.sock", timeout_s=0.5)


# ---------------------------------------------------------------------------------------------------------
# Bad input over the socket
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error", "request_id"),
    [
        (b"{nope", "not JSON", None),
        (b'{"type": "fire", "id": 12}', "unknown command type 'fire'", 12),
        (b'{"type": "arm", "id": 13}', "arm.password: field required", 13),
        (b'{"type": "ping", "id": 14, "extra": 1}', "ping.extra: unexpected field", 14),
        (b'{"type": "override_power", "id": 15, "watts": NaN, "reason": "r"}', "not JSON: NaN", None),
    ],
)
async def test_malformed_messages_get_an_error_reply_and_change_nothing(
    raw: RawConnection, handler: FakeHandler, line: bytes, error: str, request_id: int | None
) -> None:
    reply = await raw.exchange(line + b"\n")
    assert not reply.ok and reply.error is not None and reply.error.startswith(error)
    assert reply.id == request_id
    assert handler.commands == []
    follow = await raw.exchange(encode(Ping(id=99)))
    assert follow.ok and follow.id == 99, "the connection stays open after a bad line"
    assert [c.type for c, _ in handler.commands] == ["ping"]


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type": "ping", "id": 7, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=["array", "inside-a-command", "objects"],
)
async def test_deeply_nested_json_gets_one_refusal_and_the_connection_stays(
    raw: RawConnection, handler: FakeHandler, disconnects: DisconnectRecorder, line: bytes
) -> None:
    # Observed: a JSON line nested 100,000 deep closed the connection with no reply.
    reply = await raw.exchange(line + b"\n")
    assert not reply.ok and reply.error == "JSON nested too deeply to be a message"
    assert reply.id is None
    assert handler.commands == []
    follow = await raw.exchange(encode(Ping(id=99)))
    assert follow.ok and follow.id == 99, "the connection stays open after the refusal"
    assert disconnects.peers == []


async def test_arm_on_observe_socket_is_an_unknown_command(
    raw_observe: RawConnection, handler: FakeHandler
) -> None:
    for command in (
        Arm(id=1, password="pw"),
        OpenSession(id=2, subject_code="P", username="u", protocol_name="p"),
    ):
        reply = await raw_observe.exchange(encode(command))
        assert not reply.ok and reply.error == f"unknown command type '{command.type}'"
        assert reply.id == command.id
    assert handler.commands == []
    reply = await raw_observe.exchange(encode(Status(id=3)))
    assert reply.ok and reply.data == {"type": "status", "id": 3, "socket": "observe"}


async def test_over_long_line_gets_an_error_then_the_connection_closes(
    raw: RawConnection, handler: FakeHandler, disconnects: DisconnectRecorder
) -> None:
    payload = b'{"type": "ping", "id": 1, "pad": "' + b"x" * MAX_LINE_BYTES + b'"}\n'

    async def send_all() -> None:
        try:
            await raw.send(payload)
        except OSError:
            return  # the server may close before taking the last bytes

    sender = asyncio.ensure_future(send_all())
    reply = await raw.read_reply()
    await sender
    assert reply == Reply(id=None, ok=False, error=f"line longer than {MAX_LINE_BYTES} bytes")
    async with asyncio.timeout(5):
        try:
            rest = await raw.reader.read()
        except ConnectionResetError:
            rest = b""
    assert rest == b""
    assert handler.commands == []
    await disconnects.wait_for(lambda peers: len(peers) == 1)


# ---------------------------------------------------------------------------------------------------------
# Socket files
# ---------------------------------------------------------------------------------------------------------


async def test_socket_modes(server: ControllerServer) -> None:
    assert stat.S_ISSOCK(os.stat(server.control_path).st_mode)
    assert stat.S_IMODE(os.stat(server.control_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.observe_path).st_mode) == 0o660
    leftovers = [p.name for p in server.control_path.parent.iterdir()]
    assert sorted(leftovers) == ["control.sock", "observe.sock"]


async def test_observe_socket_gets_the_engineers_group(
    socket_dir: Path, handler: FakeHandler, loop_errors: list[dict[str, Any]]
) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    srv = ControllerServer(socket_dir / "c.sock", socket_dir / "o.sock", handler, observe_group=group)
    async with srv:
        assert os.stat(srv.observe_path).st_gid == os.getgid()
        assert stat.S_IMODE(os.stat(srv.observe_path).st_mode) == 0o660
    missing = ControllerServer(
        socket_dir / "c.sock", socket_dir / "o.sock", handler, observe_group="no-such-grp"
    )
    async with missing:
        assert stat.S_ISSOCK(os.stat(missing.observe_path).st_mode)


async def test_stale_socket_is_removed_and_close_removes_ours(
    socket_dir: Path, handler: FakeHandler, loop_errors: list[dict[str, Any]]
) -> None:
    control = socket_dir / "control.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(control))
    leftover.close()  # the file stays, nothing listens: what a crashed controller leaves
    old_inode = os.stat(control).st_ino
    srv = ControllerServer(control, socket_dir / "observe.sock", handler)
    await srv.start()
    try:
        assert os.stat(control).st_ino != old_inode
        async with await ControllerClient.connect(control) as c:
            assert (await c.call(Ping()))["type"] == "ping"
    finally:
        await srv.close()
    assert not control.exists() and not (socket_dir / "observe.sock").exists()


async def test_second_server_is_refused_and_the_first_keeps_serving(
    server: ControllerServer, client: ControllerClient, handler: FakeHandler
) -> None:
    second = ControllerServer(server.control_path, server.observe_path, handler)
    with pytest.raises(ControllerRunning, match=r"controller already running \(socket .*control.sock\)"):
        await second.start()
    await second.close()
    assert server.control_path.exists() and server.observe_path.exists()
    assert (await client.call(Ping()))["type"] == "ping"


async def test_a_file_that_is_not_a_socket_is_left_alone(
    socket_dir: Path, handler: FakeHandler, loop_errors: list[dict[str, Any]]
) -> None:
    control = socket_dir / "control.sock"
    control.write_text("keep me")
    srv = ControllerServer(control, socket_dir / "observe.sock", handler)
    with pytest.raises(FileExistsError, match="not a socket"):
        await srv.start()
    assert control.read_text() == "keep me"


def test_bad_server_arguments_are_refused(socket_dir: Path, handler: FakeHandler) -> None:
    with pytest.raises(ValueError, match="max_push_hz"):
        ControllerServer(socket_dir / "c", socket_dir / "o", handler, max_push_hz=0)
    with pytest.raises(ValueError, match="different paths"):
        ControllerServer(socket_dir / "c", socket_dir / "c", handler)
    with pytest.raises(ValueError, match="too long"):
        ControllerServer(socket_dir / ("c" * 120), socket_dir / "o", handler)


# ---------------------------------------------------------------------------------------------------------
# Pushes
# ---------------------------------------------------------------------------------------------------------


async def read_snapshots_until(raw: RawConnection, last_seq: int) -> list[tuple[float, Snapshot]]:
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, Snapshot]] = []
    while not seen or seen[-1][1].seq != last_seq:
        message = await raw.read_message()
        if isinstance(message, Snapshot):
            seen.append((loop.time(), message))
    return seen


async def test_snapshots_are_coalesced_to_the_latest(server: ControllerServer, raw: RawConnection) -> None:
    await raw.exchange(encode(Ping(id=1)))  # the server has registered the connection
    started = asyncio.get_running_loop().time()
    for seq in range(1000):
        server.publish(make_snapshot(seq))
        await asyncio.sleep(0)
    seen = await read_snapshots_until(raw, 999)
    seqs = [s.seq for _, s in seen]
    assert seqs[0] == 0, "the first snapshot goes at once"
    assert seqs[-1] == 999
    assert seqs == sorted(seqs)
    # Sends are at least 1/30 s apart and the first went no earlier than publishing started.
    elapsed = seen[-1][0] - started
    assert len(seen) <= 30 * elapsed + 1, f"{len(seen)} snapshots in {elapsed:.3f} s"
    assert len(seen) < 1000, "waiting snapshots were replaced, not queued"


async def test_snapshot_rate_is_limited_per_client(
    socket_dir: Path, handler: FakeHandler, loop_errors: list[dict[str, Any]]
) -> None:
    srv = ControllerServer(socket_dir / "c.sock", socket_dir / "o.sock", handler, max_push_hz=50.0)
    async with srv:
        conn = await RawConnection.open(srv.control_path)
        try:
            await conn.exchange(encode(Ping(id=1)))
            stop = asyncio.Event()

            async def publisher() -> None:
                seq = 0
                while not stop.is_set():
                    srv.publish(make_snapshot(seq))
                    seq += 1
                    await asyncio.sleep(0)

            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.ensure_future(publisher())
            seqs: list[int] = []
            try:
                while len(seqs) < 11:
                    message = await conn.read_message()
                    if isinstance(message, Snapshot):
                        seqs.append(message.seq)
                elapsed = loop.time() - started
            finally:
                stop.set()
                await task
            # Sends are at least 1/50 s apart, the first no earlier than publishing started; however late the
            # reader runs, 11 snapshots cannot have arrived sooner than 10/50 s after the start.
            assert len(seqs) <= 50 * elapsed + 1, f"{len(seqs)} snapshots in {elapsed:.3f} s"
            assert seqs == sorted(seqs) and seqs[-1] > 20, f"newer snapshots replace waiting ones: {seqs}"
        finally:
            await conn.close()


async def test_new_client_gets_the_latest_snapshot_on_connecting(server: ControllerServer) -> None:
    server.publish(make_snapshot(1))
    server.publish(make_snapshot(2, state="ready"))
    async with await ControllerClient.connect(server.observe_path) as c:
        snap = await c.wait_snapshot(lambda s: s.seq == 2, timeout_s=5)
        assert snap.state == "ready"
        assert c.latest_snapshot == snap


async def test_wait_snapshot_waits_for_a_matching_one(
    server: ControllerServer, client: ControllerClient
) -> None:
    await client.call(Ping())
    waiting = asyncio.ensure_future(client.wait_snapshot(lambda s: s.state == "armed", timeout_s=5))
    server.publish(make_snapshot(1, state="ready"))
    await client.wait_snapshot(lambda s: s.seq == 1)
    assert not waiting.done()
    server.publish(make_snapshot(2, state="armed"))
    assert (await waiting).seq == 2
    with pytest.raises(TimeoutError):
        await client.wait_snapshot(lambda s: s.state == "fault", timeout_s=0.05)


async def test_events_are_never_coalesced(server: ControllerServer, client: ControllerClient) -> None:
    await client.call(Ping())
    for seq in range(300):
        server.publish_event(make_event(seq))
        server.publish(make_snapshot(seq))
    received: list[int] = []
    async with asyncio.timeout(5):
        async for event in client.events():
            received.append(event.seq)
            if event.seq == 299:
                break
    assert received == list(range(300))


async def test_event_backlog_drops_the_oldest_and_logs_the_count(
    server: ControllerServer, raw_observe: RawConnection, caplog: pytest.LogCaptureFixture
) -> None:
    await raw_observe.exchange(encode(Ping(id=1)))
    extra = 250
    with caplog.at_level(logging.WARNING, logger="control.ipc"):
        for seq in range(EVENT_QUEUE_LIMIT + extra):  # no yield: the client cannot be sent anything meanwhile
            server.publish_event(make_event(seq))
        seqs: list[int] = []
        while not seqs or seqs[-1] != EVENT_QUEUE_LIMIT + extra - 1:
            message = await raw_observe.read_message()
            if isinstance(message, Event):
                seqs.append(message.seq)
    assert seqs == list(range(extra, EVENT_QUEUE_LIMIT + extra))
    assert any(f"{extra} events dropped" in r.getMessage() for r in caplog.records)


async def test_a_client_that_stops_reading_does_not_hold_up_others(
    server: ControllerServer, raw_observe: RawConnection, client: ControllerClient
) -> None:
    await raw_observe.exchange(encode(Ping(id=1)))
    await client.call(Ping())
    big = "x" * 200_000
    for seq in range(60):  # ~12 MB towards a client that reads nothing
        server.publish_event(Event(seq=seq, time_s=0.0, kind="bulk", severity="info", message=big))
    server.publish(make_snapshot(7))
    snap = await client.wait_snapshot(lambda s: s.seq == 7, timeout_s=5)
    assert snap.seq == 7
    assert (await client.call(Ping()))["type"] == "ping"


# ---------------------------------------------------------------------------------------------------------
# Operator disconnect
# ---------------------------------------------------------------------------------------------------------


async def test_operator_disconnect_fires_when_the_console_closes(
    server: ControllerServer, disconnects: DisconnectRecorder
) -> None:
    observer = await ControllerClient.connect(server.observe_path)
    await observer.call(Ping())
    await observer.close()
    console = await ControllerClient.connect(server.control_path)
    await console.call(Ping())
    (peer,) = [p for p in server.peers if p.socket == "control"]
    await console.close()
    await disconnects.wait_for(lambda peers: len(peers) >= 1)
    assert disconnects.peers == [peer], "only the control socket's connections count"


async def test_operator_disconnect_fires_when_the_console_process_is_killed(
    server: ControllerServer, handler: FakeHandler, disconnects: DisconnectRecorder
) -> None:
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(sys.argv[1])\n"
        's.sendall(b\'{"type": "ping", "id": 1}\\n\')\n'
        "sys.stdin.read()\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(server.control_path), stdin=asyncio.subprocess.PIPE
    )
    try:
        await handler.wait_for(lambda: any(p.pid == proc.pid for _, p in handler.commands))
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
    await disconnects.wait_for(lambda peers: any(p.pid == proc.pid for p in peers))
    (peer,) = disconnects.peers
    assert peer.socket == "control" and peer.pid == proc.pid
    assert server.peers == []


async def test_close_does_not_wait_forever_on_a_client_that_stopped_reading(
    socket_dir: Path, handler: FakeHandler, loop_errors: list[dict[str, Any]]
) -> None:
    srv = ControllerServer(socket_dir / "c.sock", socket_dir / "o.sock", handler)
    await srv.start()
    conn = await RawConnection.open(srv.observe_path)
    try:
        await conn.exchange(encode(Ping(id=1)))
        big = "x" * 200_000
        for seq in range(60):
            srv.publish_event(Event(seq=seq, time_s=0.0, kind="bulk", severity="info", message=big))
        async with asyncio.timeout(5):
            await srv.close()
        assert srv.peers == []
        assert not srv.control_path.exists() and not srv.observe_path.exists()
    finally:
        await srv.close()
        await conn.close()


async def test_a_command_may_close_the_server_and_still_gets_its_reply(
    server: ControllerServer, client: ControllerClient, handler: FakeHandler, disconnects: DisconnectRecorder
) -> None:
    handler.then["end_session"] = server.close
    reply = await client.request(EndSession(notes=None))
    assert reply.ok and reply.data is not None and reply.data["type"] == "end_session"
    await disconnects.wait_for(lambda peers: len(peers) == 1)
    assert server.peers == [] and not server.control_path.exists()
    with pytest.raises(ControllerUnavailable):
        await client.request(Ping())


async def test_events_end_when_the_connection_ends_and_empty_data_is_an_empty_dict(
    server: ControllerServer, client: ControllerClient, handler: FakeHandler
) -> None:
    handler.data["disarm"] = {}
    assert await client.call(Disarm()) == {}
    server.publish_event(make_event(1))
    stream = client.events()
    async with asyncio.timeout(5):
        first = await anext(stream)
        assert first.seq == 1
        await server.close()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert not client.connected
