"""The remote console: what differs from the kiosk's when ``tosca remote`` runs it for an engineer over SSH.

It runs as the engineer's own Unix user, which may read the records database (group permission) but not write
it, and cannot open ``control.sock`` (mode 0600, owned by the kiosk's user: the kernel refuses it). So:

- its link uses ``observe.sock`` only (:class:`tui.link.ConsoleLink` with ``observe``): every command that
  arms, emits, touches a session, stops or drives the simulator is refused before it is sent;
- its database reads are its own (one short transaction each, never held while someone types);
- what it must record goes to the controller, which writes it: :class:`RemoteAccountService` checks the
  TOSCA login there (counted towards the lockout like any login) and has the logout and the screen lock
  audited there, with the SSH client address (:class:`RemoteOrigin`, from ``$SSH_CONNECTION`` or
  ``$SSH_CLIENT``) and the Unix user and pid the kernel reports for the socket's peer. A password change is
  refused: it is made at the kiosk;
- backups (make, verify), research exports and the audit trail's CSV export are made by the controller for
  the person signed in there (``remote_backup``, ``remote_verify_backup``, ``remote_export``,
  ``remote_audit_export``); an export is then fetched over SSH with
  :func:`fetch_command`'s command (``ssh -T <user>@<kiosk> fetch-export NAME > NAME.tar``).

What the remote console may do is decided in one place, :func:`remote_refusal`: the home menu marks the
screens it cannot open (:data:`KIOSK_ONLY_SCREENS`) and the screens it opens refuse the actions that would
write the records or act for a person at the rig (:data:`KIOSK_ONLY_ACTIONS`), with the reason, before
anything is tried (never SQLite's own "read-only database" error).
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from control.account_rules import AccountError, Actor, LoginOutcome, LoginResult, UserInfo
from control.accounts import AccountService
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.terminal import ssh_client_address

if TYPE_CHECKING:
    from tui.link import ConsoleLink
    from tui.screens._base import ScreenContext

#: Why the remote console does not write the records (the end of every refusal of a write).
RECORDS_READ_ONLY = "not from the remote console: the records are read-only here; do it at the kiosk"
#: The home menu's screens the remote console does not open, and why.
KIOSK_ONLY_SCREENS: dict[str, str] = {
    "subjects": (
        "not from the remote console: a treatment is given at the kiosk (this console reaches the "
        "controller through observe.sock, which opens no session)"
    ),
    "users": f"accounts change the records: {RECORDS_READ_ONLY}",
    "configuration": f"settings change the records: {RECORDS_READ_ONLY}",
    "protocol_library": f"the protocol library changes the records: {RECORDS_READ_ONLY}",
}
#: Actions inside screens the remote console opens but does not do, and why.
KIOSK_ONLY_ACTIONS: dict[str, str] = {
    "backups.restore": f"a restore replaces the records: {RECORDS_READ_ONLY}",
    "calibration.laser": (
        "the laser power wizard emits (key control, footpedal, every interlock): it runs at the kiosk only, "
        "not over SSH"
    ),
    "camera_focus.stack": (
        "not from the remote console: a focus stack is recorded for the person at the rig (it may become "
        "the focus reference or a recording of the session), so it is taken at the kiosk; the live focus "
        "score works here"
    ),
}


#: How long the remote console waits for the controller's backup, verification or export, s.
RECORDS_WORK_TIMEOUT_S = 600.0


def fetch_command(folder: str, environ: Mapping[str, str] | None = None) -> str:
    """The command an engineer runs on their own machine to fetch the export ``folder`` as a tar file: to
    the kiosk's address this SSH session came in on (``$SSH_CONNECTION``), else its host name."""
    env = os.environ if environ is None else environ
    words = env.get("SSH_CONNECTION", "").split()
    host = words[2] if len(words) >= 4 else socket.gethostname()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"ssh -T {user}@{host} fetch-export {folder} > {folder}.tar"


def is_remote(context: ScreenContext) -> bool:
    """Whether the console of ``context`` is the remote console (its link on ``observe.sock``)."""
    # A link without the attribute (a stand-in) is not an observing one.
    return getattr(context.link, "observe", False) is True


def remote_refusal(context: ScreenContext, what: str) -> str | None:
    """Why the console of ``context`` does not do ``what`` (a home menu entry's name, or one of
    :data:`KIOSK_ONLY_ACTIONS`), or ``None`` when it may (always at the kiosk). The laser power wizard is
    refused to any console run over SSH, whatever its socket."""
    if what == "calibration.laser" and context.settings.remote:
        return KIOSK_ONLY_ACTIONS[what]
    if not is_remote(context):
        return None
    return KIOSK_ONLY_SCREENS.get(what) or KIOSK_ONLY_ACTIONS.get(what)


@dataclass(frozen=True)
class RemoteOrigin:
    """Where a remote console is used from: the SSH client's address (``None`` outside SSH) and this process's
    Unix user."""

    ssh_client: str | None
    unix_user: str

    @classmethod
    def detect(cls, environ: Mapping[str, str] | None = None) -> RemoteOrigin:
        """The origin of this process (its SSH environment and its Unix user)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        return cls(ssh_client=ssh_client_address(environ), unix_user=user)

    @property
    def terminal(self) -> str:
        """The terminal as the audit trail names it (``ssh:<address>``, else ``observe:<unix user>``)."""
        return f"ssh:{self.ssh_client}" if self.ssh_client else f"observe:{self.unix_user}"

    def describe(self) -> str:
        """One line for the screens: ``remote console, ssh from 192.0.2.7 as eng1``."""
        where = f"ssh from {self.ssh_client}" if self.ssh_client else "no SSH address"
        return f"remote console, {where} as {self.unix_user}"


def _unavailable(exc: Exception) -> AccountError:
    return AccountError(
        f"the controller does not answer ({exc}): the remote console cannot log in without it"
    )


@dataclass
class RemoteAccountService(AccountService):
    """The account service of a remote console: reads from its (read-only) database, login, logout and
    screen lock through the controller (see the module's docstring)."""

    link: ConsoleLink | None = None
    origin: RemoteOrigin | None = None

    def _link(self) -> ConsoleLink:
        if self.link is None:
            raise AccountError("the remote console has no link to the controller")
        return self.link

    async def login(
        self,
        username: str,
        password: str,
        *,
        context: str = "login",
        details: Mapping[str, Any] | None = None,
    ) -> LoginResult:
        """Have the controller check the password and audit the attempt with this console's origin; on
        success read the account from the database."""
        from control.messages import RemoteLogin, RemoteLoginReply
        from tui.link import LinkError, read_reply

        link = self._link()
        origin = self.origin
        try:
            await link.wait_connected(10.0)
            reply = read_reply(
                RemoteLoginReply,
                await link.call(
                    RemoteLogin(
                        username=username.strip() or "?",
                        password=password or "?",
                        context="lock_screen" if context == "lock_screen" else "login",
                        ssh_client=origin.ssh_client if origin is not None else None,
                    )
                ),
            )
        except (CommandFailed, ControllerUnavailable, LinkError) as exc:
            raise _unavailable(exc) from None
        outcome = LoginOutcome(reply.outcome)
        locked = datetime.fromisoformat(reply.locked_until) if reply.locked_until else None
        if outcome is not LoginOutcome.OK or reply.username is None:
            return LoginResult(outcome, reply.message, locked_until=locked)
        user = await self.get_user(reply.username)
        if user is None:  # the database this console reads is not the controller's
            raise AccountError(f"{reply.username} logged in, but this console's database has no such account")
        return LoginResult(outcome, reply.message, user=user)

    async def logout(self, user: UserInfo, *, reason: str) -> None:
        """The controller records the logout (of whoever logged in on this console's connection)."""
        from control.messages import RemoteLogout

        known: dict[str, Literal["user", "lock_screen", "quit", "hangup"]] = {
            "user": "user",
            "lock_screen": "lock_screen",
            "quit": "quit",
            "hangup": "hangup",
        }
        try:
            await self._link().call(RemoteLogout(reason=known.get(reason, "user")))
        except (CommandFailed, ControllerUnavailable) as exc:
            raise AccountError(f"the logout was not recorded: {exc}") from None

    async def screen_locked(self, user: UserInfo, *, idle_minutes: float) -> None:
        """The controller records that this console locked itself."""
        from control.messages import RemoteScreenLock

        try:
            await self._link().call(RemoteScreenLock(idle_minutes=max(0.0, idle_minutes)))
        except (CommandFailed, ControllerUnavailable) as exc:
            raise AccountError(f"the screen lock was not recorded: {exc}") from None

    async def set_password(
        self, username: str, password: str, actor: Actor, *, expected: UserInfo | None = None
    ) -> UserInfo:
        """Refused: the remote console writes no records; a password is changed at the kiosk."""
        raise AccountError("a password is changed at the kiosk: the remote console does not write records")


def remote_accounts(
    accounts: AccountService, link: ConsoleLink | None, origin: RemoteOrigin
) -> AccountService:
    """``accounts`` (the console's database) made a remote console's account service."""
    fields = {f.name: getattr(accounts, f.name) for f in dataclasses.fields(AccountService) if f.init}
    return RemoteAccountService(**fields, link=link, origin=origin)
