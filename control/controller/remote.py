"""The remote console's login, logout and screen lock, as the controller records them for ``observe.sock``.

A remote console (``tosca remote``, started by sshd for an engineer) runs as the engineer's own Unix user: it
may read the records database (group permission) but not write it, and the kernel keeps it off
``control.sock``. Its login therefore goes to the controller, which checks the password like any login (the
same failure count and lockout) and writes the audit row. The row says where the person came from: the SSH
client address the console read from its environment, and the Unix user and pid the kernel reports for the
socket's peer (``SO_PEERCRED``: not the console's word). Its ``terminal`` is ``ssh:<address>`` (or
``observe:<unix user>`` without an address), as a console at that terminal would record it.

A successful login makes the connection act for that person, for its logout and screen lock rows only: nothing
on ``observe.sock`` arms, emits or touches a session, whoever is signed in.
"""

from __future__ import annotations

import dataclasses
import pwd
from typing import Any

from control import messages as msg
from control.account_rules import UserInfo
from control.accounts import AccountService
from control.ipc.server import CommandRefused, Peer

#: Audit services kept per terminal (one per SSH client address, at most this many).
TERMINALS_KEPT = 32


def unix_user(uid: int | None) -> str | None:
    """The login name of ``uid`` (its number as text when it has none), ``None`` for an unknown peer."""
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def origin_details(peer: Peer, ssh_client: str | None) -> dict[str, Any]:
    """What an audit row of a remote console records about where it came from."""
    return {
        "via": "observe.sock",
        "ssh_client": ssh_client,
        "unix_user": unix_user(peer.uid),
        "peer_uid": peer.uid,
        "peer_pid": peer.pid,
        "connection": peer.connection,
    }


def terminal_of(peer: Peer, ssh_client: str | None) -> str:
    """The audit rows' terminal for a remote console."""
    if ssh_client:
        return f"ssh:{ssh_client}"
    return f"observe:{unix_user(peer.uid) or 'unknown'}"


class RemoteConsoles:
    """Who is signed in on which ``observe.sock`` connection, and the audited login, logout and lock."""

    def __init__(self, accounts: AccountService) -> None:
        self._accounts = accounts
        self._by_terminal: dict[str, AccountService] = {}
        self._signed_in: dict[int, tuple[UserInfo, str | None]] = {}

    def _service(self, terminal: str) -> AccountService:
        """An account service recording ``terminal`` in its rows (kept, so its lockout of unknown names and
        its timing stay the same from one attempt to the next)."""
        service = self._by_terminal.get(terminal)
        if service is None:
            if len(self._by_terminal) >= TERMINALS_KEPT:
                self._by_terminal.pop(next(iter(self._by_terminal)))
            service = dataclasses.replace(self._accounts, terminal=terminal)
            self._by_terminal[terminal] = service
        return service

    def forget_closed(self, live: set[int]) -> None:
        """Drop the sign-ins of connections that are no longer open."""
        for number in [n for n in self._signed_in if n not in live]:
            del self._signed_in[number]

    async def handle(
        self, command: msg.RemoteLogin | msg.RemoteLogout | msg.RemoteScreenLock, peer: Peer
    ) -> dict[str, Any] | None:
        """Carry out one of the remote console's commands from ``peer`` (an ``observe.sock`` connection)."""
        if peer.socket != "observe":
            raise CommandRefused(f"{command.type} is for the remote console on observe.sock")
        match command:
            case msg.RemoteLogin():
                return (await self.login(command, peer)).model_dump(mode="json")
            case msg.RemoteLogout():
                signed = self._signed_in.pop(peer.connection, None)
                if signed is None:
                    # A connection made after the controller restarted, or after a failed login: no row.
                    raise CommandRefused("nobody is signed in on this connection: no logout to record")
                user, ssh_client = signed
                service = self._service(terminal_of(peer, ssh_client))
                await service.logout(user, reason=command.reason)
                return None
            case msg.RemoteScreenLock():
                signed = self._signed_in.get(peer.connection)
                if signed is None:
                    raise CommandRefused("nobody is signed in on this connection")
                user, ssh_client = signed
                service = self._service(terminal_of(peer, ssh_client))
                await service.screen_locked(user, idle_minutes=command.idle_minutes)
                return None
        raise CommandRefused(f"unknown command {command.type!r}")  # pragma: no cover - the match is complete

    async def login(self, command: msg.RemoteLogin, peer: Peer) -> msg.RemoteLoginReply:
        """Check the password and audit the attempt with the console's origin; on success the connection
        acts for that person (for its logout and lock rows)."""
        service = self._service(terminal_of(peer, command.ssh_client))
        details = {**origin_details(peer, command.ssh_client), "console": "remote"}
        context = "remote_console" if command.context == "login" else "remote_lock_screen"
        result = await service.login(command.username, command.password, context=context, details=details)
        if result.ok and result.user is not None:
            self._signed_in[peer.connection] = (result.user, command.ssh_client)
        elif command.context == "login":
            self._signed_in.pop(peer.connection, None)
        return msg.RemoteLoginReply(
            outcome=result.outcome.value,
            message=result.message,
            username=result.user.username if result.user is not None else None,
            locked_until=result.locked_until.isoformat() if result.locked_until is not None else None,
        )
