"""The console's end of the controller's sockets: :class:`ControllerClient` (the controller's end is
:mod:`control.ipc.server`).

A client connects to ``control.sock`` (the operator's console) or ``observe.sock`` (engineers), sends commands
and waits for their replies (matched by request id, so several may be in flight), and receives what the
controller pushes: snapshots (the newest kept), events (queued in order, at most
:data:`~control.ipc.EVENT_QUEUE_LIMIT` waiting) and camera previews (the newest kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from control.ipc import EVENT_QUEUE_LIMIT, close_writer
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import (
    MAX_LINE_BYTES,
    Command,
    Event,
    MessageError,
    Preview,
    Reply,
    Snapshot,
    decode_server,
    encode,
)

logger = logging.getLogger(__name__)


class _EventStream:
    """Async iterator over a client's events; ends when the connection ends."""

    def __init__(self, client: ControllerClient) -> None:
        self._client = client

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> Event:
        event = await self._client._next_event()
        if event is None:
            raise StopAsyncIteration
        return event


class ControllerClient:
    """A connection to one of the controller's sockets. Build it with :meth:`connect`.

    Replies are matched to requests by id, so several requests may be in flight at once. Snapshots update
    :attr:`latest_snapshot`; events queue for :meth:`events` (at most :data:`EVENT_QUEUE_LIMIT` waiting, the
    oldest dropped beyond that).
    """

    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._path = path
        self._reader = reader
        self._writer = writer
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._waiters: list[tuple[Callable[[Snapshot], bool], asyncio.Future[Snapshot]]] = []
        self._snapshot: Snapshot | None = None
        self._events: deque[Event] = deque()
        self._events_changed = asyncio.Event()
        self._dropped_events = 0
        self._dead_reason: str | None = None
        self._closed = False
        self._listeners: list[Callable[[Snapshot | Event | Preview], None]] = []
        self._preview: Preview | None = None
        self._reader_task = asyncio.get_running_loop().create_task(self._read(), name=f"ipc client {path}")

    @classmethod
    async def connect(cls, path: Path, timeout_s: float = 2.0) -> ControllerClient:
        """Connect to the socket at ``path`` within ``timeout_s`` seconds.

        Raises:
            ControllerUnavailable: nothing answers there in time.
        """
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE_BYTES)
        except OSError as exc:  # TimeoutError included
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise ControllerUnavailable(f"no controller at {path}: {reason}") from exc
        return cls(Path(path), reader, writer)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True until the connection ends (either side closing it, or an error)."""
        return self._dead_reason is None

    @property
    def latest_snapshot(self) -> Snapshot | None:
        """The newest snapshot received, ``None`` before the first."""
        return self._snapshot

    @property
    def latest_preview(self) -> Preview | None:
        """The newest camera preview received, ``None`` before the first."""
        return self._preview

    @property
    def dead_reason(self) -> str | None:
        """Why the connection ended, ``None`` while it is up."""
        return self._dead_reason

    def add_listener(self, listener: Callable[[Snapshot | Event | Preview], None]) -> None:
        """Call ``listener`` with every snapshot, event and preview as it arrives (on the client's loop).

        A listener must not block; one that raises is logged and kept.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Snapshot | Event | Preview], None]) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def dropped_events(self) -> int:
        """How many events were dropped because nobody consumed them in time."""
        return self._dropped_events

    async def request(self, command: Command, timeout_s: float = 5.0) -> Reply:
        """Send ``command`` and return its reply within ``timeout_s`` seconds.

        A command built without an id gets the next free one; one with an explicit id keeps it.

        Raises:
            ControllerUnavailable: the connection is closed or dies before the reply.
            TimeoutError: no reply in time.
            ValueError: the explicit id is already waiting for a reply.
            MessageError: the command cannot be encoded.
        """
        if self._dead_reason is not None:
            raise ControllerUnavailable(self._dead_reason)
        if "id" in command.model_fields_set:
            request_id = command.id
            if request_id in self._pending:
                raise ValueError(f"request id {request_id} is already waiting for a reply")
            self._next_id = max(self._next_id, request_id + 1)
        else:
            request_id = self._next_id
            self._next_id += 1
            command = command.model_copy(update={"id": request_id})
        line = encode(command)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(timeout_s):
                self._writer.write(line)
                await self._writer.drain()
                return await future
        except (ConnectionError, RuntimeError) as exc:
            if isinstance(exc, ControllerUnavailable):
                raise
            raise ControllerUnavailable(f"connection to {self._path} lost: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    async def call(self, command: Command, timeout_s: float = 5.0) -> dict[str, Any]:
        """Send ``command`` and return its reply's data (empty when it has none).

        Raises:
            CommandFailed: the controller refused the command or failed carrying it out.
            ControllerUnavailable, TimeoutError: as for :meth:`request`.
        """
        reply = await self.request(command, timeout_s)
        if not reply.ok:
            raise CommandFailed(reply.error or "command failed")
        return dict(reply.data or {})

    async def wait_snapshot(self, predicate: Callable[[Snapshot], bool], timeout_s: float = 5.0) -> Snapshot:
        """The latest snapshot if it satisfies ``predicate``, else the first one received that does.

        Raises:
            TimeoutError: none did within ``timeout_s`` seconds.
            ControllerUnavailable: the connection ended first.
        """
        if self._snapshot is not None and predicate(self._snapshot):
            return self._snapshot
        if self._dead_reason is not None:
            raise ControllerUnavailable(self._dead_reason)
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def wait_closed(self) -> str:
        """Wait until the connection ends (either side closing it, or an error); return why."""
        await asyncio.gather(self._reader_task, return_exceptions=True)
        return self._dead_reason or "connection closed"

    def events(self) -> _EventStream:
        """An async iterator over pushed events, in order; it ends when the connection ends."""
        return _EventStream(self)

    async def close(self) -> None:
        """Close the connection; pending requests fail with :class:`ControllerUnavailable`."""
        if self._closed:
            return
        self._closed = True
        self._mark_dead("connection closed by the client")
        self._reader_task.cancel()
        await asyncio.gather(self._reader_task, return_exceptions=True)
        await close_writer(self._writer)

    async def _next_event(self) -> Event | None:
        while not self._events:
            if self._dead_reason is not None:
                return None
            self._events_changed.clear()
            await self._events_changed.wait()
        return self._events.popleft()

    async def _read(self) -> None:
        reason = f"controller at {self._path} closed the connection"
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except ValueError:
                    reason = f"controller sent a line longer than {MAX_LINE_BYTES} bytes"
                    return
                except OSError as exc:
                    reason = f"connection to {self._path} lost: {exc}"
                    return
                if not line.endswith(b"\n"):
                    return
                try:
                    message = decode_server(line)
                except MessageError as exc:
                    logger.warning("unreadable message from the controller: %s", exc)
                    continue
                self._dispatch(message)
        finally:
            self._mark_dead(reason)

    def _dispatch(self, message: Reply | Snapshot | Event | Preview) -> None:
        if isinstance(message, Reply):
            pending = self._pending.get(message.id) if message.id is not None else None
            if pending is None or pending.done():
                logger.warning("reply to no waiting request (id %s): %s", message.id, message.error)
            else:
                pending.set_result(message)
            return
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:
                logger.exception("a listener failed on a %s", message.type)
        if isinstance(message, Preview):
            self._preview = message
        elif isinstance(message, Snapshot):
            self._snapshot = message
            for predicate, future in list(self._waiters):
                if future.done():
                    continue
                try:
                    matched = predicate(message)
                except Exception as exc:
                    future.set_exception(exc)
                    continue
                if matched:
                    future.set_result(message)
        else:
            if len(self._events) >= EVENT_QUEUE_LIMIT:
                self._events.popleft()
                self._dropped_events += 1
            self._events.append(message)
            self._events_changed.set()

    def _mark_dead(self, reason: str) -> None:
        if self._dead_reason is not None:
            return
        self._dead_reason = reason
        for pending in self._pending.values():
            if not pending.done():
                pending.set_exception(ControllerUnavailable(reason))
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ControllerUnavailable(reason))
        self._events_changed.set()
