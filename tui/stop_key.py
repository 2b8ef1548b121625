"""The stop key on a real terminal: F12 goes to the controller from the terminal's input thread.

Textual reads the terminal in a thread of its own and hands each key to the app's event loop, where it waits
behind whatever that loop is doing (drawing a frame, a layout pass after a change of state). A stop must not
wait for the screen. So the console's driver looks at every key as it is read: F12 is not passed on, it
starts a short-lived thread that opens its own connection to ``control.sock``, sends ``stop`` and waits for
the reply. The answer is then shown by the app, on its loop, when the loop gets to it. The controller accepts
``stop`` from any connection without authentication (it only ever makes things safer), so this connection
needs no login; being another connection than the console's, the pause it causes is not the operator's own,
and resuming afterwards is arming again with the password.

Under Textual's headless driver (the tests' Pilot) no such driver is used; F12 is the app's priority
binding there, which sends the same command through the console's connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events
from textual.driver import Driver
from textual.message import Message

if TYPE_CHECKING:
    from control.messages import Reply

# The messages module is imported by the functions below, not here: the console loads it (in a thread) just
# before its link to the controller starts, after the first screen. A stop sent earlier loads it first.

#: The key, as Textual names it.
STOP_KEY = "f12"
#: How long a stop waits for the controller's reply, s.
STOP_TIMEOUT_S = 2.0
#: The request id of a stop sent on its own connection.
_STOP_ID = 1
#: The console's interpreter switch interval, s (Python's default is 0.005). While the loop draws, the input
#: thread that reads F12 waits for the interpreter lock up to one interval at each hand-over, and sending a
#: stop takes several. From F12 to output off (tests/bench/bench_console.py): at 5 ms, 8 to 13 ms median and
#: 37 to 40 ms p99; at 1 ms, 5 to 6 ms and 14 to 17 ms, with no measurable change in the console's CPU.
SWITCH_INTERVAL_S = 0.001


def open_stop(socket_path: Path, timeout_s: float = STOP_TIMEOUT_S) -> socket.socket:
    """Connect to ``socket_path`` and send ``stop`` (blocking, but a local socket: well under a millisecond).
    Returns the connection, on which the reply is to be read (:func:`read_reply`).

    Raises:
        OSError: no controller answers there.
    """
    from control.messages import Stop, encode

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(str(socket_path))
        sock.sendall(encode(Stop(id=_STOP_ID)))
    except BaseException:
        sock.close()
        raise
    return sock


def read_reply(sock: socket.socket, timeout_s: float = STOP_TIMEOUT_S) -> Reply:
    """Read the reply to the stop sent on ``sock``, then close it. What the controller pushes to every
    connection (snapshots, events, previews) before the reply is read and ignored.

    Raises:
        OSError: the connection failed (TimeoutError: no reply within ``timeout_s``).
        MessageError: the controller's answer could not be read.
    """
    from control.messages import MAX_LINE_BYTES, MessageError, Reply, decode_server

    deadline = time.monotonic() + timeout_s
    with sock:
        pending = b""
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the controller closed the connection before replying")
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                message = decode_server(line)
                if isinstance(message, Reply) and message.id == _STOP_ID:
                    return message
            if len(pending) > MAX_LINE_BYTES:
                raise MessageError(f"a line from the controller is longer than {MAX_LINE_BYTES} bytes")


def send_stop(socket_path: Path, timeout_s: float = STOP_TIMEOUT_S) -> Reply:
    """Send ``stop`` on a new connection to ``socket_path`` and return the controller's reply (blocking).

    Raises:
        OSError, MessageError: as for :func:`open_stop` and :func:`read_reply`.
    """
    return read_reply(open_stop(socket_path, timeout_s), timeout_s)


class StopKeyAnswered(Message):
    """The controller's answer to the stop key (``error`` is empty when it stopped; ``state`` is then the
    state it stopped in)."""

    def __init__(self, state: str, error: str) -> None:
        super().__init__()
        self.state = state
        self.error = error


def stop_now(socket_path: Path, answer: Callable[[StopKeyAnswered], Any]) -> None:
    """Send ``stop`` from this thread (the terminal's input thread) at once; the reply is awaited in a new
    thread, which calls ``answer`` with the outcome."""

    def failed(exc: BaseException) -> None:
        reason = "no reply in time" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        answer(StopKeyAnswered("", f"no controller answered: {reason}"))

    try:
        sock = open_stop(socket_path)
    except OSError as exc:
        failed(exc)
        return

    def wait_for_reply() -> None:
        from control.messages import MessageError

        try:
            reply = read_reply(sock)
        except (OSError, MessageError) as exc:
            failed(exc)
            return
        if reply.ok:
            answer(StopKeyAnswered(str((reply.data or {}).get("state", "?")), ""))
        else:
            answer(StopKeyAnswered("", reply.error or "refused"))

    threading.Thread(target=wait_for_reply, name="stop key reply", daemon=True).start()


def with_stop_key(base: type[Driver], on_stop_key: Callable[[], bool]) -> type[Driver]:
    """A driver class like ``base`` that calls ``on_stop_key()`` (in the input thread) for F12; the key is
    passed on to the app only if it returns False. ``on_stop_key`` must not block."""

    class StopKeyDriver(base):  # type: ignore[valid-type, misc]
        def process_message(self, message: Message) -> None:
            if isinstance(message, events.Key) and message.key == STOP_KEY and on_stop_key():
                return
            super().process_message(message)

    StopKeyDriver.__name__ = f"StopKey{base.__name__}"
    StopKeyDriver.__qualname__ = StopKeyDriver.__name__
    return StopKeyDriver
