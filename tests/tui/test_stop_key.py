"""The stop key's own path: F12 taken out of the terminal's input, sent on a connection of its own.

The whole path, through a real terminal and the real controller, is in the tmux end-to-end test.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual import events
from textual.driver import Driver
from textual.message import Message

from control.messages import Event, Reply, Stop, decode_control, encode
from tui.stop_key import StopKeyAnswered, send_stop, stop_now, with_stop_key


class FakeController:
    """A Unix socket that answers one command line the way ``script`` says, recording what it read."""

    def __init__(self, path: Path, script: list[bytes]) -> None:
        self.path = path
        self.script = script
        self.received: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._server.accept()
        with connection:
            data = b""
            while not data.endswith(b"\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
            self.received.append(data)
            for line in self.script:
                connection.sendall(line)

    def close(self) -> None:
        self._thread.join(5)
        self._server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "control.sock"


def _event(seq: int) -> bytes:
    return encode(
        Event(seq=seq, time_s=1.0, kind="state_change", severity="info", message="armed -> treating")
    )


def test_stop_is_sent_and_pushed_lines_before_the_reply_are_skipped(sock_path: Path) -> None:
    other = encode(Reply(id=7, ok=False, error="not ours"))
    ours = encode(Reply(id=1, ok=True, data={"state": "paused"}))
    fake = FakeController(sock_path, [_event(1), other, _event(2) + ours])
    try:
        reply = send_stop(sock_path)
    finally:
        fake.close()
    assert reply.ok and reply.data == {"state": "paused"}
    assert len(fake.received) == 1
    assert isinstance(decode_control(fake.received[0]), Stop)


def test_a_controller_that_hangs_up_without_replying_is_an_error(sock_path: Path) -> None:
    fake = FakeController(sock_path, [_event(1)])
    try:
        with pytest.raises(ConnectionResetError, match="before replying"):
            send_stop(sock_path)
    finally:
        fake.close()


def test_no_controller_is_reported_to_the_app(sock_path: Path) -> None:
    answers: list[StopKeyAnswered] = []
    stop_now(sock_path, answers.append)  # nothing listens there
    assert len(answers) == 1 and answers[0].error.startswith("no controller answered")


def test_a_refusal_is_reported_with_its_reason(sock_path: Path) -> None:
    fake = FakeController(sock_path, [encode(Reply(id=1, ok=False, error="board not answering"))])
    answered = threading.Event()
    answers: list[StopKeyAnswered] = []

    def answer(message: StopKeyAnswered) -> None:
        answers.append(message)
        answered.set()

    try:
        stop_now(sock_path, answer)
        assert answered.wait(5)
    finally:
        fake.close()
    assert answers[0].error == "board not answering"


class RecordingDriver(Driver):
    """A driver that only records what it would hand to the app."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send_message(self, message: Message) -> None:
        self.sent.append(message)

    def process_message(self, message: Message) -> None:
        self.send_message(message)

    def write(self, data: str) -> None:
        raise AssertionError("not used")

    def start_application_mode(self) -> None:
        raise AssertionError("not used")

    def disable_input(self) -> None:
        raise AssertionError("not used")

    def stop_application_mode(self) -> None:
        raise AssertionError("not used")


def test_the_driver_takes_f12_out_of_the_input_and_passes_every_other_key() -> None:
    pressed: list[str] = []

    def stop() -> bool:
        pressed.append("stop")
        return True

    driver = with_stop_key(RecordingDriver, stop)()
    driver.process_message(events.Key("f11", None))
    driver.process_message(events.Key("f12", None))
    driver.process_message(events.Key("space", " "))
    assert pressed == ["stop"]
    assert [event.key for event in driver.sent if isinstance(event, events.Key)] == ["f11", "space"]


def test_f12_goes_on_to_the_app_when_the_stop_cannot_be_sent_from_the_input_thread() -> None:
    driver = with_stop_key(RecordingDriver, lambda: False)()
    driver.process_message(events.Key("f12", None))
    assert [event.key for event in driver.sent if isinstance(event, events.Key)] == ["f12"]
