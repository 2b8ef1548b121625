"""The console's link to the controller process.

The console never opens a serial port: everything it shows comes from the controller's snapshots, events and
camera previews on ``control.sock``, and everything it asks for goes there as a command. :class:`ConsoleLink`

* connects to the controller serving the data directory; when none is running and the link may start one
  (a desktop console), it starts ``tosca controller`` as a process of its own, writing to
  ``logs/controller.log``, and waits until its socket answers;
* refuses a controller whose rig does not match the console (a ``--sim`` console on a real rig, or the other
  way round), so the header never lies about what the keys drive;
* hands every pushed message to one callback (the app turns them into Textual messages);
* reconnects after the connection drops (a controller restarted by systemd, or one it starts again), and
  reports the loss and the recovery through ``on_state``;
* authenticates its connection for the person logged in at the console (:meth:`ConsoleLink.sign_in`, with
  the password typed at the login, which the link does not keep): the controller answers with a token, and
  after a reconnection the link authenticates the new connection with that token before reporting it up.
  A token the controller no longer knows (it restarted, or the token expired) is reported through
  ``on_auth_lost``: the console then asks for the password again (its lock screen).

On the kiosk, systemd keeps the controller running and the console only connects (``start_controller`` off).

The remote console (``tosca remote``, over SSH) makes its link with ``observe`` on: it connects to
``observe.sock`` only (its Unix user cannot open ``control.sock``: the kernel refuses it), starts no
controller, accepts the rig the controller drives, and refuses every command that socket does not have
(arming, the session's commands, the stop key, the simulator) before sending it, with
:data:`OBSERVE_REFUSAL`; the ring size wizard's actuator moves and save are sent (:data:`OBSERVE_COMMANDS`).
It never authenticates: the remote console's login is an audited record the controller writes
(:mod:`tui.remote`), not a person acting on the rig.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

# The socket protocol (control.ipc.client, control.messages and pydantic) is loaded when the link starts, not
# when this module is imported: the console draws its first screen before it needs the controller.
from control.ipc_errors import CommandFailed, ControllerUnavailable

if TYPE_CHECKING:
    from pydantic import BaseModel

    from control.ipc.client import ControllerClient
    from control.messages import Command, Event, Preview, SessionStateReply, SignedIn, Snapshot

#: How long a sign-in waits for the controller's connection, s (a controller the console starts takes a few).
SIGN_IN_WAIT_S = 60.0

_LOG = logging.getLogger(__name__)

#: The socket file, relative to the data directory.
CONTROL_SOCKET = "control.sock"
#: The observation socket (the remote console's only way to the controller), relative to the data directory.
OBSERVE_SOCKET = "observe.sock"
#: The commands a link in observe mode sends (what ``observe.sock`` answers). ``calibration_move`` and
#: ``calibration_save_ring`` (the ring size wizard) cannot emit and carry the engineer's own password; the
#: controller refuses them while a session is open (the move also while the laser is armed). The backups and
#: exports are made by the controller for the person signed in on the connection (:mod:`tui.remote`).
OBSERVE_COMMANDS = frozenset(
    {
        "ping",
        "status",
        "health",
        "devices",
        "calibration_move",
        "calibration_save_ring",
        "remote_login",
        "remote_logout",
        "remote_screen_lock",
        "remote_backup",
        "remote_verify_backup",
        "remote_export",
        "remote_audit_export",
    }
)
#: Why a remote console refuses a command (followed by the command's name).
OBSERVE_REFUSAL = (
    "not on the remote console: it reaches the controller only through observe.sock, which has no command "
    "that arms, emits or touches a session; treat and stop the laser at the kiosk"
)
#: How long a started controller may take to open its rig and its sockets, s.
START_TIMEOUT_S = 30.0
#: Pause between reconnection attempts, s.
RECONNECT_INTERVAL_S = 1.0
#: How long a command may wait for its reply, s (hashing a password for key control takes a moment).
COMMAND_TIMEOUT_S = 10.0


_M = TypeVar("_M", bound="BaseModel")


def read_reply(model: type[_M], data: dict[str, Any] | None) -> _M:
    """A reply's data read as the typed message ``model``; an answer that does not fit it means the controller
    speaks another version of the protocol, reported as :class:`ControllerUnavailable`."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ControllerUnavailable(f"the controller's answer is not a {model.__name__}: {exc}") from None


class LinkError(RuntimeError):
    """The console cannot reach a usable controller; ``str(error)`` says why in one line."""


class ConsoleLink:
    """A connection to the controller for one console.

    Args:
        data_dir: the data directory whose ``control.sock`` the controller serves.
        sim: whether the console runs on the simulated rig (the controller must match).
        on_message: called on the console's loop with every snapshot, event and preview.
        on_state: called with ``(connected, reason)`` whenever the connection comes up or goes down.
        start_controller: start ``tosca controller`` when none answers (else only connect and retry).
        on_auth_lost: called with the reason when a reconnected connection could not be authenticated with
            the token (the console must ask for the password again).
        observe: connect to ``observe.sock`` only (the remote console; see the module's docstring).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        sim: bool,
        on_message: Callable[[Snapshot | Event | Preview], None],
        on_state: Callable[[bool, str], None],
        start_controller: bool = True,
        on_auth_lost: Callable[[str], None] | None = None,
        observe: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.sim = sim
        #: Observe mode: ``observe.sock`` only, no controller started, no arming (see the module's docstring).
        self.observe = observe
        self.start_controller = start_controller and not observe
        self._on_message = on_message
        self._on_state = on_state
        self._client: ControllerClient | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._connected = asyncio.Event()
        self._on_auth_lost = on_auth_lost
        #: The token the controller gave this console's person (``None``: nobody is signed in).
        self._token: str | None = None
        #: Clear while a sign-in or a re-authentication is under way: commands wait for it (else a command
        #: sent right after the login would reach the controller before the person).
        self._auth_settled = asyncio.Event()
        self._auth_settled.set()
        #: Who the connection acts for, and the connection's number at the controller (``None``: nobody).
        self.username: str | None = None
        self.connection: int | None = None
        #: Why the link is not connected ("" while connected).
        self.problem = "connecting to the controller"

    # -- what screens use ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a matching controller is connected."""
        return self._client is not None and self._client.connected

    @property
    def snapshot(self) -> Snapshot | None:
        """The newest snapshot, ``None`` before the first or while disconnected."""
        client = self._client
        return client.latest_snapshot if client is not None and client.connected else None

    @property
    def preview(self) -> Preview | None:
        """The newest camera preview, ``None`` before the first or while disconnected."""
        client = self._client
        return client.latest_preview if client is not None and client.connected else None

    @property
    def started_controller(self) -> bool:
        """True when this console started the controller it uses (and stops it when it closes)."""
        return self._process is not None and self._process.poll() is None

    async def call(self, command: Command, timeout_s: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send ``command`` and return its reply's data.

        Raises:
            CommandFailed: the controller refused it (``str(exc)`` is its reason).
            ControllerUnavailable: no controller is connected, or the connection dropped before the reply.
        """
        if self.observe:
            from control.messages import command_name

            name = command_name(command)
            if name not in OBSERVE_COMMANDS:
                raise CommandFailed(f"{name}: {OBSERVE_REFUSAL}")
        if not self._auth_settled.is_set() and command_needs_person(command):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._auth_settled.wait()
        client = self._client
        if client is None or not client.connected:
            raise ControllerUnavailable(self.problem or "not connected to the controller")
        try:
            return await client.call(command, timeout_s)
        except TimeoutError:
            from control.messages import command_name

            raise ControllerUnavailable(
                f"the controller did not answer {command_name(command)} within {timeout_s:g} s"
            ) from None

    @property
    def holds_session(self) -> bool:
        """True when the controller's open session is held by this console's connection."""
        snapshot = self.snapshot
        return (
            snapshot is not None
            and snapshot.session is not None
            and self.connection is not None
            and snapshot.session.held_by_connection == self.connection
        )

    async def sign_in(self, username: str, password: str, timeout_s: float = SIGN_IN_WAIT_S) -> SignedIn:
        """Authenticate the connection for ``username`` (waiting up to ``timeout_s`` for the controller); the
        password is sent once and not kept. Returns the controller's answer.

        Raises:
            CommandFailed: the controller refused the password (wrong, locked or deactivated account).
            ControllerUnavailable: no controller in time, or the connection dropped.
        """
        from control.messages import Authenticate, SignedIn

        if self.observe:
            raise CommandFailed(f"authenticate: {OBSERVE_REFUSAL}")
        self._auth_settled.clear()
        try:
            try:
                await self.wait_connected(timeout_s)
            except LinkError as exc:
                raise ControllerUnavailable(str(exc)) from None
            signed_in = read_reply(
                SignedIn, await self.call(Authenticate(username=username, password=password))
            )
            self._signed_in(signed_in)
        finally:
            self._auth_settled.set()
        return signed_in

    async def sign_out(self) -> None:
        """The person logged out: the controller forgets the token, the connection acts for nobody."""
        from control.messages import Logout

        had = self._token is not None
        self._token = None
        self.username = None
        self.connection = None
        if had and self.connected:
            with contextlib.suppress(CommandFailed, ControllerUnavailable):
                await self.call(Logout())

    async def take_over(self, password: str) -> SessionStateReply:
        """Take the controller's open session over on this connection, with the person's password.

        Raises:
            CommandFailed, ControllerUnavailable: as for :meth:`call`.
        """
        from control.messages import SessionStateReply, Takeover

        return read_reply(SessionStateReply, await self.call(Takeover(password=password)))

    def _signed_in(self, signed_in: SignedIn) -> None:
        self._token = signed_in.token
        self.username = signed_in.username
        self.connection = signed_in.connection

    async def _reauthenticate(self, client: ControllerClient) -> None:
        """After a reconnection: authenticate the new connection with the token, if someone is signed in."""
        from control.messages import Authenticate, SignedIn

        token = self._token
        if token is None:
            return
        try:
            signed_in = read_reply(SignedIn, await client.call(Authenticate(token=token), COMMAND_TIMEOUT_S))
        except CommandFailed as exc:
            self._token = None
            self.username = None
            self.connection = None
            if self._on_auth_lost is not None:
                self._on_auth_lost(str(exc))
            return
        except (ControllerUnavailable, TimeoutError):
            return  # the connection is going again; the next one tries again
        if self._token == token:
            self._signed_in(signed_in)

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once connected. Raises :class:`LinkError` with the latest problem after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            raise LinkError(self.problem) from None

    # -- life cycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (and keep the connection up) in a task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="console link")

    async def close(self, *, stop_controller: bool = True) -> None:
        """Close the connection; stop the controller this console started (SIGTERM: laser off, any open
        session closed as aborted, then it exits)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        process, self._process = self._process, None
        if process is not None and stop_controller:
            await asyncio.to_thread(_stop_process, process)

    async def _run(self) -> None:
        announced_down = False
        while not self._closing:
            try:
                client = await self._connect()
            except LinkError as exc:
                self.problem = str(exc)
                if not announced_down:
                    announced_down = True
                    self._on_state(False, self.problem)
                await asyncio.sleep(RECONNECT_INTERVAL_S)
                continue
            await self._reauthenticate(client)
            self._client = client
            self.problem = ""
            announced_down = False
            self._connected.set()
            client.add_listener(self._on_message)
            snapshot = client.latest_snapshot
            if snapshot is not None:
                self._on_message(snapshot)
            self._on_state(True, "")
            reason = await client.wait_closed()
            self._connected.clear()
            client.remove_listener(self._on_message)
            if self._closing:
                return
            self._client = None
            await client.close()
            self.problem = f"lost the controller: {reason}"
            announced_down = True
            self._on_state(False, self.problem)
            await asyncio.sleep(RECONNECT_INTERVAL_S)

    async def _connect(self) -> ControllerClient:
        from control.ipc.client import ControllerClient

        path = self.data_dir / (OBSERVE_SOCKET if self.observe else CONTROL_SOCKET)
        try:
            client = await ControllerClient.connect(path, timeout_s=2.0)
        except ControllerUnavailable as exc:
            if not self.start_controller:
                raise LinkError(f"no controller is running for {self.data_dir} ({exc})") from None
            client = await self._start_and_connect(path)
        try:
            await self._check_rig(client)
        except BaseException:
            await client.close()
            raise
        return client

    async def _check_rig(self, client: ControllerClient) -> None:
        try:
            snapshot = await client.wait_snapshot(lambda _s: True, timeout_s=5.0)
        except (TimeoutError, ControllerUnavailable) as exc:
            raise LinkError(f"the controller sent no state ({exc or 'timed out'})") from None
        if self.observe:
            self.sim = snapshot.sim  # the remote console shows whichever rig the controller drives
            return
        if snapshot.sim != self.sim:
            wanted, found = ("simulated", "real") if self.sim else ("real", "simulated")
            raise LinkError(
                f"the controller for {self.data_dir} drives the {found} rig, but this console was started "
                f"for the {wanted} rig; restart the console {'with' if snapshot.sim else 'without'} --sim"
            )

    async def _start_and_connect(self, path: Path) -> ControllerClient:
        from control.ipc.client import ControllerClient

        process = self._process
        if process is None or process.poll() is not None:
            process = await asyncio.to_thread(self._spawn)
            self._process = process
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            code = process.poll()
            if code is not None:
                self._process = None
                raise LinkError(
                    f"the controller stopped at start (exit {code}): {_last_line(self._log_path())}"
                )
            try:
                return await ControllerClient.connect(path, timeout_s=1.0)
            except ControllerUnavailable:
                if time.monotonic() > deadline:
                    raise LinkError(
                        f"the controller did not open {path} within {START_TIMEOUT_S:g} s "
                        f"(see {self._log_path()})"
                    ) from None
                await asyncio.sleep(0.1)

    def _log_path(self) -> Path:
        return self.data_dir / "logs" / "controller.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start ``tosca controller`` for this data directory, its output going to ``logs/controller.log``.

        It runs in a session of its own, so a terminal closing on the console does not stop it (without its
        operator it stops emission and pauses; see :mod:`control.controller`).
        """
        log = self._log_path()
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tui.cli", "--data-dir", str(self.data_dir), "controller"]
        if self.sim:
            argv.append("--sim")
        else:
            raise LinkError(
                "no controller is running for the real rig: start it with `tosca controller --ports FILE` "
                "(on the kiosk, systemd runs it)"
            )
        with log.open("ab") as out:
            out.write(f"--- started by the console (pid {os.getpid()}) at {time.ctime()}\n".encode())
            out.flush()
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )


def command_needs_person(command: Command) -> bool:
    """Whether the controller takes ``command`` only from an authenticated connection."""
    from control.messages import command_name

    return command_name(command) not in {
        "ping",
        "status",
        "health",
        "devices",
        "prechecks",
        "stop",
        "authenticate",
        "logout",
    }


def _stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM, then wait; SIGKILL only if it does not stop in time (the board's watchdog then drops
    LASER_ENABLE)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        _LOG.error("the controller did not stop within %s s of SIGTERM; killing it", timeout_s)
        process.kill()
        process.wait()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError as exc:
        return f"no log ({exc})"
    return lines[-1] if lines else "no output"


__all__ = [
    "COMMAND_TIMEOUT_S",
    "OBSERVE_REFUSAL",
    "CommandFailed",
    "ConsoleLink",
    "ControllerUnavailable",
    "LinkError",
]
