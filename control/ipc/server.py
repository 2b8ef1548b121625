"""The controller's sockets, the server end: it runs in the controller process (the console's end is
:mod:`control.ipc.client`).

Two Unix stream sockets live in the data directory:

* ``control.sock``, mode 0600: the operator's console. It accepts every
  :data:`~control.messages.ControlCommand`.
* ``observe.sock``, mode 0660, group ``tosca-engineers`` when that group exists: it accepts only
  :data:`~control.messages.ObserveCommand` (ping, status, health, the device diagnostics, and the remote
  console's audited login, logout and lock). Lines are decoded with a parser that does not know any other
  command, so an ``arm`` sent there is an unknown command type and the handler never sees it. The remote
  console (``tosca remote``, run by sshd as an engineer's own Unix user) uses this socket only: the kernel
  refuses that user ``control.sock``.

Each socket file is bound inside a private (0700) directory, given its mode and group there, and only then
hard-linked into place, so the public path never exists with looser permissions, and two controllers starting
at once cannot both take it.

Commands from one connection are handled one after another, in order; each gets exactly one reply with its
request id. Snapshots and events are pushed to every connection of both sockets: snapshots coalesced (a
newer one replaces one not yet sent, at most ``max_push_hz`` a second per client, the first at once, and a new
client gets the latest one on connecting), events queued in order and never coalesced (at most
:data:`EVENT_QUEUE_LIMIT` waiting per client; beyond that the oldest are dropped and the count logged).
Writing to one client never waits on another: a client that does not read only stalls its own queue, and a
client whose socket fails is dropped.

Every end of a ``control.sock`` connection (the console closing, crashing or being killed, an I/O error, the
server closing it after an over-long line, or the server shutting down) calls ``on_operator_disconnect`` with
that connection's :class:`Peer`. The controller decides from the peer whether that connection was its operator
(a connection that never opened a session, such as another controller checking whether this one is alive,
is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import logging
import math
import os
import shutil
import socket
import stat
import struct
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from control.ipc import EVENT_QUEUE_LIMIT, close_writer
from control.messages import (
    MAX_LINE_BYTES,
    ControlCommand,
    Event,
    MessageError,
    ObserveCommand,
    Preview,
    Reply,
    ReplyData,
    Snapshot,
    decode_control,
    decode_observe,
    encode,
    reply_data,
)

logger = logging.getLogger(__name__)

#: The group whose members may use ``observe.sock``.
OBSERVE_GROUP = "tosca-engineers"

#: Seconds a start-up waits for a live server to answer on an existing socket path.
PROBE_TIMEOUT_S = 1.0

# sun_path holds 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107
# A bind directory made by mkdtemp(prefix=".") beside the socket ("/." and 8 random characters), plus "/s".
_BIND_NAME_OVERHEAD = len("/.") + 8 + len("/s")

SocketKind = Literal["control", "observe"]


class CommandRefused(Exception):
    """Raised by a command handler to refuse a command; the message becomes the reply's ``error``."""


class ControllerRunning(RuntimeError):
    """A live controller already answers on one of the socket paths."""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection.

    ``socket`` is the socket it came in on; ``connection`` numbers connections from 1 in the order the server
    accepted them (both sockets share the count); ``pid``, ``uid`` and ``gid`` come from the kernel
    (``SO_PEERCRED``) as of connecting, ``None`` where the kernel could not say.
    """

    socket: SocketKind
    connection: int
    pid: int | None
    uid: int | None
    gid: int | None

    def __str__(self) -> str:
        return f"{self.socket}#{self.connection} (pid {self.pid}, uid {self.uid})"


class CommandHandler(Protocol):
    """What the server hands decoded commands to (the controller)."""

    async def handle(self, command: ControlCommand | ObserveCommand, peer: Peer) -> ReplyData:
        """Carry out ``command`` from ``peer`` and return the reply's data (``None`` for none).

        Raise :class:`CommandRefused` to refuse it; any other exception is reported to the client as an
        internal error and logged.
        """
        ...


OperatorDisconnect = Callable[[Peer], Awaitable[None]]


def _peer_credentials(writer: asyncio.StreamWriter) -> tuple[int | None, int | None, int | None]:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None, None, None
    size = struct.calcsize("3i")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
    except (OSError, AttributeError):
        return None, None, None
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class _Connection:
    """One accepted connection: its reader, writer, identity and outgoing push queues."""

    def __init__(
        self,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        snapshot_interval_s: float,
    ) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        #: Set once the connection is ending; from then on nothing may interrupt its clean-up.
        self.ending = False
        self._interval_s = snapshot_interval_s
        self._events: deque[bytes] = deque()
        self._dropped = 0
        self._snapshot: bytes | None = None
        self._preview: bytes | None = None
        self._next_snapshot_at = 0.0
        self._wake = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None

    def start_pushing(self) -> None:
        self._pusher = asyncio.get_running_loop().create_task(self._push(), name=f"ipc push {self.peer}")

    def offer_snapshot(self, line: bytes) -> None:
        """Queue a snapshot line, replacing one not yet sent."""
        self._snapshot = line
        self._wake.set()

    def offer_preview(self, line: bytes) -> None:
        """Queue a camera preview line, replacing one not yet sent."""
        self._preview = line
        self._wake.set()

    def offer_event(self, line: bytes) -> None:
        """Queue an event line after those already waiting; drop the oldest beyond the limit."""
        if len(self._events) >= EVENT_QUEUE_LIMIT:
            self._events.popleft()
            self._dropped += 1
        self._events.append(line)
        self._wake.set()

    async def send_reply(self, line: bytes) -> bool:
        """Write one reply line and wait for the socket to take it; False when the connection is gone."""
        try:
            self.writer.write(line)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            logger.info("%s: reply not delivered: %s", self.peer, exc)
            return False
        return True

    async def shutdown(self) -> None:
        """Stop pushing, close the socket and report any events that were dropped."""
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        self._report_dropped()
        await close_writer(self.writer)

    def _report_dropped(self) -> None:
        if self._dropped:
            logger.warning("%s: %d events dropped (client not reading fast enough)", self.peer, self._dropped)
            self._dropped = 0

    async def _push(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                snapshot_due = self._snapshot is not None and now >= self._next_snapshot_at
                if not self._events and not snapshot_due and self._preview is None:
                    self._wake.clear()
                    wait_s = None if self._snapshot is None else self._next_snapshot_at - now
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await self._wake.wait()
                    continue
                self._report_dropped()
                while self._events:
                    self.writer.write(self._events.popleft())
                if snapshot_due and self._snapshot is not None:
                    self.writer.write(self._snapshot)
                    self._snapshot = None
                    self._next_snapshot_at = loop.time() + self._interval_s
                if self._preview is not None:
                    self.writer.write(self._preview)
                    self._preview = None
                await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            logger.info("%s: dropped, its socket failed: %s", self.peer, exc)
            self.writer.close()


class ControllerServer:
    """Serves ``control.sock`` and ``observe.sock`` for one controller.

    Args:
        control_path: path of the operator's socket (created with mode 0600).
        observe_path: path of the observation socket (created with mode 0660, group ``observe_group``).
        handler: carries out decoded commands.
        on_operator_disconnect: awaited with the peer whenever a ``control.sock`` connection ends.
        max_push_hz: most snapshots per second sent to one client (finite, > 0).
        observe_group: the group given ``observe.sock`` when it exists on this machine.

    Raises:
        ValueError: for a non-positive or non-finite ``max_push_hz``, equal paths, or a path too long for a
            Unix socket.
    """

    def __init__(
        self,
        control_path: Path,
        observe_path: Path,
        handler: CommandHandler,
        *,
        on_operator_disconnect: OperatorDisconnect | None = None,
        max_push_hz: float = 30.0,
        observe_group: str | None = OBSERVE_GROUP,
    ) -> None:
        if not (math.isfinite(max_push_hz) and max_push_hz > 0):
            raise ValueError(f"max_push_hz must be a finite number above 0, got {max_push_hz!r}")
        control_path = Path(control_path).absolute()
        observe_path = Path(observe_path).absolute()
        if control_path == observe_path:
            raise ValueError(f"control and observe sockets need different paths, both are {control_path}")
        for path in (control_path, observe_path):
            longest = max(len(os.fsencode(path)), len(os.fsencode(path.parent)) + _BIND_NAME_OVERHEAD)
            if longest > _SUN_PATH_MAX:
                raise ValueError(
                    f"socket path too long for a Unix socket ({longest} > {_SUN_PATH_MAX} bytes): {path}"
                )
        self._paths: dict[SocketKind, Path] = {"control": control_path, "observe": observe_path}
        self._handler = handler
        self._on_operator_disconnect = on_operator_disconnect
        self._interval_s = 1.0 / max_push_hz
        self._observe_group = observe_group
        self._servers: list[asyncio.Server] = []
        self._owned: dict[Path, tuple[int, int]] = {}
        self._connections: dict[int, _Connection] = {}
        self._numbers = itertools.count(1)
        self._last_snapshot: bytes | None = None
        self._started = False
        self._closing = False

    @property
    def control_path(self) -> Path:
        """Where the operator's socket is."""
        return self._paths["control"]

    @property
    def observe_path(self) -> Path:
        """Where the observation socket is."""
        return self._paths["observe"]

    @property
    def peers(self) -> list[Peer]:
        """The peers connected now, in the order they connected."""
        return [conn.peer for conn in self._connections.values()]

    async def start(self) -> None:
        """Create both sockets and start accepting connections.

        Raises:
            ControllerRunning: a live server answers on one of the paths (nothing is changed).
            FileExistsError: a path exists and is not a socket (it is left alone).
            RuntimeError: the server was already started.
        """
        if self._started:
            raise RuntimeError("the controller server was already started")
        for path in self._paths.values():
            await _clear_stale(path)
        self._started = True
        try:
            for kind, path in self._paths.items():
                if kind == "control":
                    sock = self._bind(path, 0o600, None)
                    callback = self._serve_control
                else:
                    sock = self._bind(path, 0o660, self._observe_group)
                    callback = self._serve_observe
                server = await asyncio.start_unix_server(callback, sock=sock, limit=MAX_LINE_BYTES)
                self._servers.append(server)
        except BaseException:
            await self.close()
            raise
        logger.info("controller listening on %s and %s", self.control_path, self.observe_path)

    async def close(self) -> None:
        """Stop accepting, close every connection (awaiting their handling), and remove the socket files."""
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()
        # Let connections accepted just before the close start, see the flag and finish.
        await asyncio.sleep(0)
        # A command handler may itself close the server; its own connection then ends after it returns.
        current = asyncio.current_task()
        tasks = [c.task for c in self._connections.values() if c.task is not None and c.task is not current]
        for conn in self._connections.values():
            if conn.task is not None and conn.task is not current and not conn.ending:
                conn.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        for path, identity in self._owned.items():
            with contextlib.suppress(OSError):
                info = os.stat(path)
                if (info.st_dev, info.st_ino) == identity:
                    path.unlink()
        self._owned.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def publish(self, snapshot: Snapshot) -> None:
        """Push a snapshot to every client, replacing any snapshot still waiting for that client."""
        line = encode(snapshot)
        self._last_snapshot = line
        for conn in self._connections.values():
            conn.offer_snapshot(line)

    def publish_preview(self, preview: Preview) -> None:
        """Push a camera preview to every client, replacing any preview still waiting for that client."""
        line = encode(preview)
        for conn in self._connections.values():
            conn.offer_preview(line)

    def publish_event(self, event: Event) -> None:
        """Queue an event for every client, after the events already waiting."""
        line = encode(event)
        for conn in self._connections.values():
            conn.offer_event(line)

    # -- sockets ------------------------------------------------------------------------------------------

    def _bind(self, path: Path, mode: int, group: str | None) -> socket.socket:
        private_dir = tempfile.mkdtemp(prefix=".", dir=path.parent)
        private_path = os.path.join(private_dir, "s")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(private_path)
            os.chmod(private_path, mode)
            if group is not None:
                _give_group(private_path, group)
            try:
                os.link(private_path, path)
            except FileExistsError:
                raise ControllerRunning(f"controller already running (socket {path})") from None
            info = os.stat(path)
            self._owned[path] = (info.st_dev, info.st_ino)
        except BaseException:
            sock.close()
            raise
        finally:
            shutil.rmtree(private_dir, ignore_errors=True)
        return sock

    # -- connections --------------------------------------------------------------------------------------

    async def _serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept("control", reader, writer)

    async def _serve_observe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept("observe", reader, writer)

    async def _accept(
        self, kind: SocketKind, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The connection is served in a task of its own, which close() may cancel; the task asyncio created
        # for this callback only waits for it, so it always ends normally (Python 3.11's stream callback
        # reports a cancelled callback task as an error).
        task = asyncio.get_running_loop().create_task(self._serve(kind, reader, writer), name=f"ipc {kind}")
        await asyncio.wait([task])

    async def _serve(
        self, kind: SocketKind, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.close()
            return
        pid, uid, gid = _peer_credentials(writer)
        peer = Peer(socket=kind, connection=next(self._numbers), pid=pid, uid=uid, gid=gid)
        conn = _Connection(peer, reader, writer, self._interval_s)
        conn.task = asyncio.current_task()
        self._connections[peer.connection] = conn
        logger.info("%s connected", peer)
        try:
            conn.start_pushing()
            if self._last_snapshot is not None:
                conn.offer_snapshot(self._last_snapshot)
            await self._read_commands(conn)
        except Exception:
            logger.exception("%s: connection failed", peer)
        finally:
            conn.ending = True
            try:
                await conn.shutdown()
            finally:
                self._connections.pop(peer.connection, None)
                if not self._connections:
                    # Nothing is published while nobody listens: what was last sent goes stale, and the
                    # next console to connect waits for a fresh snapshot instead of being shown it.
                    self._last_snapshot = None
                logger.info("%s disconnected", peer)
                if kind == "control" and self._on_operator_disconnect is not None:
                    try:
                        await self._on_operator_disconnect(peer)
                    except Exception:
                        logger.exception("%s: operator-disconnect handling failed", peer)

    async def _read_commands(self, conn: _Connection) -> None:
        decode: Callable[[bytes], ControlCommand | ObserveCommand]
        decode = decode_control if conn.peer.socket == "control" else decode_observe
        while True:
            try:
                line = await conn.reader.readline()
            except ValueError:
                logger.warning("%s: line longer than %d bytes, closing", conn.peer, MAX_LINE_BYTES)
                error = f"line longer than {MAX_LINE_BYTES} bytes"
                await conn.send_reply(encode(Reply(id=None, ok=False, error=error)))
                return
            except OSError as exc:
                logger.info("%s: read failed: %s", conn.peer, exc)
                return
            if not line:
                return
            if not line.endswith(b"\n"):
                logger.warning("%s: connection ended in the middle of a line", conn.peer)
                return
            if not await conn.send_reply(await self._answer(conn.peer, line, decode)):
                return
            if self._closing:
                return

    async def _answer(
        self, peer: Peer, line: bytes, decode: Callable[[bytes], ControlCommand | ObserveCommand]
    ) -> bytes:
        try:
            command = decode(line)
        except MessageError as exc:
            logger.info("%s: refused a malformed message: %s", peer, exc)
            return encode(Reply(id=exc.request_id, ok=False, error=str(exc)))
        except Exception as exc:
            # Whatever the parser raises (a line it cannot handle at all), the client gets its one reply.
            logger.warning("%s: refused an unreadable message: %s: %s", peer, type(exc).__name__, exc)
            return encode(Reply(id=None, ok=False, error=f"unreadable message ({type(exc).__name__})"))
        try:
            data = await self._handler.handle(command, peer)
            return encode(Reply(id=command.id, ok=True, data=reply_data(data)))
        except CommandRefused as exc:
            return encode(Reply(id=command.id, ok=False, error=str(exc) or f"{command.type} refused"))
        except Exception as exc:
            logger.exception("%s: %s failed", peer, command.type)
            error = f"internal error: {type(exc).__name__}: {exc}"
            return encode(Reply(id=command.id, ok=False, error=error))


def _give_group(path: str, group: str) -> None:
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    try:
        os.chown(path, -1, gid)
    except PermissionError as exc:
        logger.error("cannot give %s to group %s (%s); members of %s cannot use it", path, group, exc, group)


async def _clear_stale(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(str(path))
    except ConnectionRefusedError:
        logger.warning("removing stale socket %s (nothing answers on it)", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        raise ControllerRunning(f"controller already running (socket {path} accepts but is slow)") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise ControllerRunning(f"controller already running (socket {path})")
