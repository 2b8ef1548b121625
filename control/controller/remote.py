"""The remote console's login, logout and screen lock, as the controller records them for ``observe.sock``.

A remote console (``tosca remote``, started by sshd for an engineer) runs as the engineer's own Unix user: it
may read the records database (group permission) but not write it, and the kernel keeps it off
``control.sock``. Its login therefore goes to the controller, which checks the password like any login (the
same failure count and lockout) and writes the audit row. The row says where the person came from: the SSH
client address the console read from its environment, and the Unix user and pid the kernel reports for the
socket's peer (``SO_PEERCRED``: not the console's word). Its ``terminal`` is ``ssh:<address>`` (or
``observe:<unix user>`` without an address), as a console at that terminal would record it.

A successful login makes the connection act for that person, for its logout and screen lock rows, and for
the backups and research exports the controller makes for a remote console
(:meth:`RemoteConsoles.records_work`): nothing on ``observe.sock`` arms, emits or touches a session, whoever
is signed in.

**Backups and exports.** The remote console cannot write the data directory, so the controller makes them for
the person signed in on the connection, when that person's role may at the kiosk (an engineer or an admin,
checked against the account as it is now: a deactivated or re-roled account is refused, and the refusal
audited; the audit trail's CSV export is an admin's, as its kiosk screen is). The work runs in a process of
its own (:mod:`storage.records_job`: SCHED_OTHER, nice 10, on the CPUs the controller is not pinned to, its
own SQLite connections), never on the controller's event loop nor on a thread of it: writing an export holds
the interpreter lock in long stretches, which measured 49 to 56 ms of lag on a loop sharing it. One such job
at a time. The database is in WAL mode: the backup's online copy and the export's reads are snapshots that
never block the treatment's writes, and each audit row is one short write transaction. As at the kiosk, a
backup and an export are allowed while a session is open (they only read; an open session itself is not
exported). Each audit row (``db_backup``, ``db_backup_verify``, ``research_export``, ``audit_export``) names
the person, the terminal ``ssh:<address>`` and, in its details, the origin (:func:`origin_details`). An
export's files are made readable by the records database's group (``tosca-records``) and by nobody else, so
the engineer's own Unix user can read them (and fetch them: ``tosca export fetch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pwd
import sys
from typing import Any

from control import messages as msg
from control.account_rules import UserInfo
from control.accounts import AccountService
from control.ipc.server import CommandRefused, Peer
from storage.audit_query import record_action
from storage.errors import StorageError, one_line
from storage.paths import DataDir

_LOG = logging.getLogger(__name__)

#: Audit services kept per terminal (one per SSH client address, at most this many).
TERMINALS_KEPT = 32
#: Who may make and verify backups and write research exports (as at the kiosk's screens).
RECORDS_ROLES = frozenset({"engineer", "admin"})
#: Who may export the audit trail (the kiosk's audit trail screen is an admin's).
AUDIT_ROLES = frozenset({"admin"})
#: Per records command: its audit action (for a refusal's row), who may, and what it is for the refusal.
_RULES: dict[str, tuple[str, frozenset[str], str]] = {
    "remote_backup": ("db_backup", RECORDS_ROLES, "an engineer or an admin makes backups"),
    "remote_verify_backup": ("db_backup_verify", RECORDS_ROLES, "an engineer or an admin makes backups"),
    "remote_export": ("research_export", RECORDS_ROLES, "an engineer or an admin writes research exports"),
    "remote_audit_export": ("audit_export", AUDIT_ROLES, "an admin exports the audit trail"),
}

RecordsCommand = msg.RemoteBackup | msg.RemoteVerifyBackup | msg.RemoteExport | msg.RemoteAuditExport


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
        #: Whether a backup or an export is being made for a remote console (one at a time).
        self._records_busy = False

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

    # -- backups and research exports ------------------------------------------------------------------------

    async def records_work(self, command: RecordsCommand, peer: Peer, data: DataDir) -> dict[str, Any]:
        """Make a backup, verify one or write an export in ``data`` for the person signed in on ``peer``'s
        connection (see the module's docstring); the typed reply as JSON."""
        if peer.socket != "observe":
            raise CommandRefused(f"{command.type} is for the remote console on observe.sock")
        signed = self._signed_in.get(peer.connection)
        if signed is None:
            raise CommandRefused("nobody is signed in on this connection: log in at the remote console first")
        signed_user, ssh_client = signed
        terminal = terminal_of(peer, ssh_client)
        origin = {**origin_details(peer, ssh_client), "console": "remote"}
        action, roles, who = _RULES[command.type]
        current = await self._accounts.get_user(signed_user.username)
        refusal = None
        if current is None or not current.is_active or current.tech_id != signed_user.tech_id:
            refusal = f"the account {signed_user.username!r} is deactivated"
        elif current.role not in roles:
            refusal = f"{current.username} is {current.role}: only {who}"
        elif self._records_busy:
            refusal = "a backup or an export for a remote console is being made already: wait for it"
        if refusal is not None:
            details = {**origin, "reason": refusal}
            try:
                await asyncio.to_thread(
                    record_action,
                    data.db_path,
                    action,
                    "failure",
                    user=signed_user.username,
                    terminal=terminal,
                    details=details,
                )
            except StorageError as exc:
                refusal = f"{refusal} (not recorded: {one_line(exc)})"
            raise CommandRefused(refusal)
        request: dict[str, Any] = {
            "data_dir": str(data.root),
            "user": signed_user.username,
            "terminal": terminal,
            "origin": origin,
        }
        match command:
            case msg.RemoteBackup():
                request["job"] = "backup"
            case msg.RemoteVerifyBackup():
                request.update(job="verify", name=command.name)
            case msg.RemoteExport():
                request.update(
                    job="export",
                    session_id=command.session_id,
                    since=command.since.isoformat() if command.since is not None else None,
                    until=command.until.isoformat() if command.until is not None else None,
                    formats=list(command.formats),
                    folder=command.folder,
                    identified=command.identified,
                )
            case msg.RemoteAuditExport():
                request.update(
                    job="audit_export",
                    user_filter=command.user,
                    action=command.action,
                    outcome=command.outcome,
                    since=command.since.isoformat() if command.since is not None else None,
                    until=command.until.isoformat() if command.until is not None else None,
                    text=command.text,
                )
        self._records_busy = True
        try:
            answer = await run_records_job(request)
        finally:
            self._records_busy = False
        match command:
            case msg.RemoteBackup():
                return msg.RemoteBackupMade.model_validate(answer).model_dump(mode="json")
            case msg.RemoteVerifyBackup():
                return msg.RemoteBackupVerified.model_validate(answer).model_dump(mode="json")
            case msg.RemoteExport():
                return msg.RemoteExportWritten.model_validate(answer).model_dump(mode="json")
            case msg.RemoteAuditExport():
                return msg.RemoteAuditExported.model_validate(answer).model_dump(mode="json")
        raise CommandRefused(f"unknown command {command.type!r}")  # pragma: no cover - the match is complete


async def run_records_job(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``request`` in a process of its own (:mod:`storage.records_job`) and return its result; a refusal
    or a failure is :class:`CommandRefused` with its one line."""
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "storage.records_job",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise CommandRefused(f"the {request.get('job')} could not be started: {one_line(exc)}") from None
    try:
        out, err = await process.communicate(json.dumps(request).encode())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    try:
        answer = json.loads(out)
    except ValueError:
        said = err.decode(errors="replace").strip().splitlines()
        why = said[-1] if said else f"exit status {process.returncode}"
        _LOG.error("records job %s failed: %s", request.get("job"), err.decode(errors="replace"))
        raise CommandRefused(f"the {request.get('job')} failed: {why}") from None
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, dict):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise CommandRefused(str(error or f"the {request.get('job')} failed"))
    return result
