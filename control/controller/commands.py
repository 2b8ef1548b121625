"""The commands of the controller's sockets, as the controller process carries them out.

Commands on ``control.sock`` act for the person authenticated on their connection, and the session belongs to
one connection (the one that opened or took it over, and so the one that armed): :mod:`control.authority`
holds those rules and :meth:`ControllerCommands._dispatch` applies them, matching each command by its class
(:data:`control.messages.ControlCommand`). Every command given for a person is audited with that person and
the connection's peer (its uid and pid from the socket's credentials). ``arm`` needs the technician's password
(key control) and every pre-check passing. Each command answers with its typed reply data
(:data:`control.messages.ReplyData`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from control import messages as msg
from control.account_rules import LoginOutcome, UserInfo, locked_message
from control.authority import HOLDER_COMMANDS, MAX_KEY_FAILURES, SESSION_ROLES, Person
from control.controller.calibration_run import CalibrationService
from control.controller.diagnostics import ControllerDiagnostics
from control.controller.imaging import FOCUS_ROLES
from control.controller.remote import RemoteConsoles
from control.ipc.server import CommandRefused, Peer
from control.recorder import storage_failure
from control.sessions import SessionRefused
from control.supervisor import ARMED_STATES, Refused, SystemState
from control.vocabulary import Severity
from storage.repositories import SessionsRepository, UsersRepository

_LOG = logging.getLogger(__name__)

AnyCommand = msg.ControlCommand | msg.ObserveCommand


class ControllerCommands(CalibrationService):
    """The socket commands and the operator's actions, on the treatment lifecycle."""

    #: The ``devices`` answer (:mod:`control.controller.diagnostics`).
    diagnostics: ControllerDiagnostics
    #: The remote consoles' audited login, logout and lock on ``observe.sock``
    #: (:mod:`control.controller.remote`); set once the database is open.
    remote_consoles: RemoteConsoles | None = None

    async def handle(self, command: AnyCommand, peer: Peer) -> msg.ReplyData:
        """Answer one command from a client (the socket server's handler)."""
        try:
            return await self._dispatch(command, peer)
        except (Refused, SessionRefused) as exc:
            raise CommandRefused(str(exc)) from None
        except Exception as exc:
            words = storage_failure(exc)  # a full disk or a locked database, said in words
            if words is None:
                raise
            _LOG.error("%s refused: %s", command.type, exc)
            raise CommandRefused(words) from None

    async def _dispatch(self, command: AnyCommand, peer: Peer) -> msg.ReplyData:
        """One command from ``peer``: the open commands for anyone, the others for the person authenticated
        on that connection, and those acting on the session only from the connection holding it (see
        :mod:`control.authority`). Each command given for a person is audited with the peer."""
        kind = command.type
        sup = self.supervisor
        auth = self.authority
        match command:
            case msg.Ping():
                return msg.Pong()
            case msg.Status():
                return self.snapshot()
            case msg.Health():
                return {
                    name: msg.DeviceStatus(
                        state=h.state, identity=h.identity, error=h.last_error, detail=h.detail
                    )
                    for name, h in self.rig.health().items()
                }
            case msg.Prechecks():
                return msg.PrechecksReply(checks=await self.prechecks())
            case msg.Devices():
                return self.diagnostics.reply(self._rig, sim=self.sim).model_dump(mode="json")
            case msg.RemoteLogin() | msg.RemoteLogout() | msg.RemoteScreenLock():
                if self.remote_consoles is None:
                    raise CommandRefused("the controller is still starting")
                if self.server is not None:
                    self.remote_consoles.forget_closed({p.connection for p in self.server.peers})
                return await self.remote_consoles.handle(command, peer)
            case msg.RemoteBackup() | msg.RemoteVerifyBackup() | msg.RemoteExport() | msg.RemoteAuditExport():
                # The remote console's backups and exports, for the person signed in on its connection.
                if self.remote_consoles is None:
                    raise CommandRefused("the controller is still starting")
                return await self.remote_consoles.records_work(command, peer, self.data)
            case msg.Stop():
                # Anyone, always: it only makes things safer (the stop key sends it on a connection of
                # its own).
                armed = sup.state in ARMED_STATES
                await sup.stop()
                if armed and self.session is not None:
                    auth.paused_by(peer.connection, auth.person(peer.connection))
                return msg.StateReply(state=sup.state)
            case msg.Authenticate():
                return await self._authenticate(command, peer)
            case msg.CalibrationMove() | msg.CalibrationSaveRing():
                # It carries the engineer's own password (observe.sock has no signed-in person).
                return await self._calibration_move_audited(command, peer)
            case msg.Logout():
                held = auth.holds(peer.connection)
                signed_out = auth.sign_out(peer.connection)
                if held:
                    await self._release_holder("the operator logging out")
                if signed_out is not None:
                    self._audit_command(kind, "success", signed_out, peer)
                return msg.SignedOut(username=signed_out.username if signed_out is not None else None)
        if auth.person(peer.connection) is None:
            claimed = (
                command.username if isinstance(command, msg.OpenSession | msg.Arm | msg.ResetFault) else None
            )
            self._audit_command(kind, "failure", None, peer, reason="not authenticated", username=claimed)
        person = auth.require_person(peer.connection, kind)
        try:
            result = await self._act(command, peer, person)
        except (Refused, SessionRefused) as exc:
            self._audit_command(kind, "failure", person, peer, reason=str(exc))
            raise
        self._audit_command(kind, "success", person, peer)
        return result

    async def _act(self, command: AnyCommand, peer: Peer, person: Person) -> msg.ReplyData:
        """Carry out a command for ``person`` (authenticated on ``peer``'s connection)."""
        kind = command.type
        sup = self.supervisor
        auth = self.authority
        connection = peer.connection
        if kind in HOLDER_COMMANDS:
            self._require_session()
            auth.require_holder(connection, kind)
        match command:
            case msg.OpenSession():
                if person.role not in SESSION_ROLES:
                    raise Refused(
                        f"{person.username} is {person.role}: only a technician or an admin opens a session"
                    )
                if command.username is not None and command.username != person.username:
                    raise Refused(
                        f"open_session for {command.username!r} refused: "
                        f"this connection acts for {person.username}"
                    )
                await self._active_account(person, refuse_locked=True)
                return await self.open_session(
                    subject_code=command.subject_code,
                    username=person.username,
                    protocol_name=command.protocol_name,
                    treatment_site=command.treatment_site,
                    treatment_notes=command.treatment_notes,
                    create_subject=command.create_subject,
                    by_connection=connection,
                    by_person=person,
                    draft=command.draft,
                )
            case msg.Takeover():
                return await self._take_over(command.password, peer, person)
            case msg.Arm():
                return await self.arm(command.password, peer=peer, username=command.username)
            case msg.Disarm():
                await sup.disarm(f"disarmed by {person.username}")
                return None
            case msg.Pause():
                await sup.pause(f"paused by {person.username}")
                auth.paused_by(connection, person)
                return None
            case msg.Resume():
                refusal = auth.resume_refusal(connection, person)
                if refusal is not None:
                    raise Refused(refusal)
                await self._active_account(person, refuse_locked=False)
                await sup.resume()
                auth.pause = None
                return None
            case msg.Abort():
                return await self.abort(command.reason, by=person.username)
            case msg.OverridePower():
                session = self._require_session()
                details = session.engine.override_power(
                    command.watts, command.reason, actor=person.username, step=command.step
                )
                return msg.OverrideApplied.model_validate(dict(details))
            case msg.ResetFault():
                result = await self.reset_fault(command.username, command.password)
                auth.paused_otherwise("a fault and its reset")
                return result
            case msg.EndSession():
                await self._active_account(person, refuse_locked=False)
                return await self.end_session(command.notes)
            case msg.TakeSnapshot():
                self._require_session()
                auth.require_holder(connection, kind)
                return self.start_snapshot(by=person.username)
            case msg.AimingBeam():
                self._require_session()
                auth.require_holder(connection, kind)
                return await self.set_aiming_beam(command.on, by=person.username)
            case msg.CalibrationBegin():
                return await self.calibration_begin(command.password, peer, person)
            case msg.CalibrationCurrent():
                return await self.calibration_current(command.current_ma, peer)
            case msg.CalibrationMeasure():
                return await self.calibration_measure(peer)
            case msg.CalibrationEnd():
                return await self.calibration_end(peer)
            case msg.TakeFocusStack():
                if self.session is not None:
                    auth.require_holder(connection, kind)
                elif person.role not in FOCUS_ROLES:
                    raise Refused(
                        f"{person.username} is {person.role}: only an engineer or an admin keeps the "
                        "camera's focus calibration"
                    )
                return await self.start_focus_stack(person=person)
            case msg.Sim():
                if self.sim_rig is None:
                    raise Refused("simulator commands exist only on the simulated rig")
                try:
                    return msg.SimReply(reply=self.sim_rig.command(command.command))
                except ValueError as exc:
                    raise Refused(str(exc)) from None
        raise Refused(f"unknown command {kind!r}")

    async def _calibration_move_audited(
        self, command: msg.CalibrationMove | msg.CalibrationSaveRing, peer: Peer
    ) -> msg.ReplyData:
        try:
            moved: msg.ReplyData
            if isinstance(command, msg.CalibrationSaveRing):
                moved = await self.calibration_save_ring(command, peer)
            else:
                moved = await self.calibration_move(command, peer)
        except Refused as exc:
            self._audit_command(
                command.type, "failure", None, peer, reason=str(exc), username=command.username
            )
            raise
        self._audit_command(command.type, "success", None, peer, username=command.username)
        return moved

    def _audit_command(
        self,
        kind: str,
        outcome: str,
        person: Person | None,
        peer: Peer,
        *,
        reason: str | None = None,
        username: str | None = None,
    ) -> None:
        """Audit one command from a connection (in the background: a command never waits on the audit)."""
        details: dict[str, Any] = {"command": kind, **self._peer_details(peer)}
        if reason is not None:
            details["reason"] = reason
        if self.session is not None:
            details["session_id"] = self.session.opened.session_id
        user = None
        if person is not None:
            user = UserInfo(
                tech_id=person.tech_id,
                username=person.username,
                full_name=person.full_name,
                role=person.role,
                is_active=True,
                has_password=True,
                must_change_password=False,
                failed_login_count=0,
                locked_until=None,
                last_login=None,
                created_date=None,
            )

        async def write() -> None:
            try:
                await self.accounts.record_command(
                    "control_command", outcome, user=user, details=details, username=username
                )
            except Exception as exc:
                _LOG.error("audit of %s from %s not written: %s", kind, peer, exc)

        self._background(write())

    async def _authenticate(self, command: msg.Authenticate, peer: Peer) -> msg.SignedIn:
        """Prove who acts on this connection (a password checked like a login, or this console's token)."""
        auth = self.authority
        held = auth.holds(peer.connection)
        if command.token is not None:
            person, changed = auth.sign_in_with_token(peer.connection, command.token)
            try:
                await self._active_account(person, refuse_locked=False)
            except Refused:
                auth.sign_out(peer.connection)
                changed = True
                raise
            finally:
                if changed and held:
                    await self._release_holder("the connection authenticating as someone else")
            token = command.token
            self._audit_command("authenticate", "success", person, peer)
        else:
            if command.username is None or command.password is None:  # the message's own rule, restated
                raise Refused("a username and password (or a token) are required")
            result = await self.accounts.login(
                command.username,
                command.password,
                context="control_connection",
                details=self._peer_details(peer),
            )
            if not result.ok or result.user is None:
                raise Refused(result.message)
            user = result.user
            person = Person(user.tech_id, user.username, user.full_name, user.role)
            token, changed = auth.sign_in(peer.connection, person)
            if changed and held:
                await self._release_holder("the connection authenticating as someone else")
        return msg.SignedIn(
            username=person.username,
            full_name=person.full_name,
            role=person.role,
            token=token,
            connection=peer.connection,
        )

    async def _active_account(self, person: Person, *, refuse_locked: bool) -> None:
        """Refused (and the person forgotten everywhere) when the account was deactivated or given another
        role meanwhile; with
        ``refuse_locked``, also while it is locked out (starting something new; a locked account still
        finishes its own open session)."""
        info = await self.accounts.get_user(person.username)
        if info is None or not info.is_active or info.tech_id != person.tech_id:
            self.authority.forget_person(person.tech_id)
            raise Refused(
                f"the account {person.username!r} is deactivated: it can no longer command the laser"
            )
        if info.role != person.role:
            # Signed in under another role (an admin demoted meanwhile): nothing more acts on the old one.
            self.authority.forget_person(person.tech_id)
            raise Refused(
                f"the account {person.username!r} is {info.role} now, not {person.role}: sign in again"
            )
        if refuse_locked and info.locked_at(self.accounts.clock()):
            assert info.locked_until is not None
            raise Refused(f"{person.username}: {locked_message(info.locked_until, self.accounts.zone)}")

    async def _take_over(self, password: str, peer: Peer, person: Person) -> msg.SessionStateReply:
        """This connection takes the open session over for ``person`` (its technician or an admin), with the
        password; emission stops first, and arming again needs the password."""
        session = self._require_session()
        auth = self.authority
        await self._active_account(person, refuse_locked=False)
        if person.role not in SESSION_ROLES or (
            person.username != session.opened.username and person.role != "admin"
        ):
            raise Refused(
                f"only the session's technician ({session.opened.username}) or an admin may take it over"
            )
        if auth.key_blocked and person.role != "admin":
            raise Refused(auth.blocked_message())
        await self._key_check(person.username, password, peer, "takeover")
        if auth.holds(peer.connection):
            return msg.SessionStateReply(state=self.supervisor.state, session_id=session.opened.session_id)
        auth.taken_over(peer.connection, person)
        self.supervisor.tech_id = person.tech_id
        sup = self.supervisor
        if sup.state in ARMED_STATES:
            sup.output_off_now()
            with contextlib.suppress(Refused):
                await sup.pause(f"session taken over by {person.username} (connection {peer.connection})")
        self._record(
            "user_action",
            details={"action": "takeover", "by": person.username, **self._peer_details(peer)},
        )
        self._event(Severity.INFO, f"session {session.opened.session_id} taken over by {person.username}")
        return msg.SessionStateReply(state=sup.state, session_id=session.opened.session_id)

    async def _key_check(self, username: str, password: str, peer: Peer | None, context: str) -> None:
        """Key control for ``username``: a wrong password is counted for this session (never a lockout)."""
        session = self.session
        details = {
            "context": context,
            "session_id": session.opened.session_id if session is not None else None,
            **self._peer_details(peer),
        }
        result = await self.accounts.check_key(username, password, details=details)
        if result.ok:
            return
        if result.outcome is LoginOutcome.INACTIVE:
            raise Refused(result.message)
        left = self.authority.key_failed()
        if left:
            raise Refused(
                f"wrong password (key control): {left} of {MAX_KEY_FAILURES} tries left in this session"
            )
        raise Refused("wrong password (key control); " + self.authority.blocked_message())

    async def _check_password(self, username: str, password: str, context: str) -> Any:
        result = await self.accounts.login(username, password, context=context)
        if not result.ok or result.user is None:
            raise Refused(result.message)
        return result.user

    async def arm(
        self, password: str, *, peer: Peer | None = None, username: str | None = None
    ) -> msg.StateReply:
        """Key control: the operator re-enters the password; every pre-check must pass. From READY this arms;
        from PAUSED it resumes. ``peer`` is the connection asking (``None``: this process), which must hold
        the session; its person is the operator. A wrong password counts towards the session's limit and
        never locks the account; once the limit is reached only an admin's ``username`` and password arm
        (and open key control again)."""
        session = self._require_session()
        auth = self.authority
        sup = self.supervisor
        operator = session.opened.username
        if peer is not None:
            auth.require_holder(peer.connection, "arm")
            person = auth.require_person(peer.connection, "arm")
            operator = person.username
        elif auth.operator is not None:
            operator = auth.operator.username
        if sup.state not in (SystemState.READY, SystemState.PAUSED):
            fault = sup.fault
            if sup.state is SystemState.FAULT and fault is not None:
                raise Refused(f"cannot arm in fault: {fault.what}; {fault.how_to_reset}")
            raise Refused(f"cannot arm in {sup.state.value}")
        by = operator
        if username is not None and username != operator:
            result = await self.accounts.login(
                username, password, context="key_unblock", details=self._peer_details(peer)
            )
            if not result.ok or result.user is None:
                raise Refused(result.message)
            if result.user.role != "admin":
                raise Refused(f"{username} is not an admin: arming is key control by {operator}")
            auth.key_unblocked()
            by = username
        else:
            if auth.key_blocked:
                raise Refused(auth.blocked_message())
            await self._key_check(operator, password, peer, "arm")
        failing = [c for c in await self.prechecks() if not c.ok]
        if failing:
            raise Refused("pre-checks failing: " + "; ".join(f"{c.name}: {c.detail}" for c in failing))
        resuming = sup.state is SystemState.PAUSED
        if resuming:
            await sup.resume()
        else:
            await sup.arm()
        auth.pause = None
        self._record("user_action", details={"action": "resume" if resuming else "arm", "by": by})
        return msg.StateReply(state=sup.state)

    async def abort(self, reason: str, *, by: str | None = None) -> msg.SessionStateReply:
        """Abort the open session with the operator's reason (laser off first); ``by`` is who (default: the
        session's technician)."""
        if not reason or not reason.strip():
            raise Refused("an abort needs a reason")
        session = self._require_session()
        self.supervisor.output_off_now()
        self._record(
            "user_action",
            details={"action": "abort", "reason": reason.strip(), "by": by or session.opened.username},
        )
        await self._close_session("aborted", reason.strip())
        return msg.SessionStateReply(state=self.supervisor.state, session_id=session.opened.session_id)

    async def reset_fault(self, username: str, password: str) -> msg.StateReply:
        """Acknowledge a latched fault (who, with the password); refused while its cause is present."""
        user = await self._check_password(username, password, "fault_reset")
        await self.supervisor.reset(user.tech_id, user.username, session_open=self.session is not None)
        return msg.StateReply(state=self.supervisor.state)

    async def end_session(self, notes: str | None) -> msg.SessionEnded:
        """Post-treatment notes on the last finished session (the open one must complete or be aborted); the
        session as recorded."""
        if self.session is not None:
            raise Refused("the session is still open: let it complete or abort it first")
        if self.last_session_id is None:
            raise Refused("no session to add notes to")
        if notes and notes.strip():
            username = await self._session_username(self.last_session_id)
            await self.sessions.add_notes(self.last_session_id, notes.strip(), username=username)
        return msg.SessionEnded.model_validate(await self.sessions.summary_of(self.last_session_id))

    async def _session_username(self, session_id: int) -> str:
        async with self.db() as db:
            row = await SessionsRepository(db).get_by_id(session_id)
            user = await UsersRepository(db).get_by_id(row.tech_id) if row is not None else None
        if user is None:
            raise Refused(f"session {session_id} has no technician")
        return user.username

    async def _operator_gone(self, peer: Peer) -> None:
        """A connection to ``control.sock`` ended. If it held the session (whoever it was), emission stops at
        once and an armed session pauses; nobody holds the session until a console takes it over."""
        await self.calibration_connection_closed(peer)
        if self.authority.connection_closed(peer.connection):
            await self._release_holder("the operator's connection closing")

    async def _release_holder(self, cause: str) -> None:
        """Nobody holds the session any more (``cause``): laser off now, an armed session paused."""
        self.authority.release(cause)
        sup = self.supervisor
        if sup.state in ARMED_STATES:
            sup.output_off_now()
            with contextlib.suppress(Refused):
                await sup.pause(cause)
        if self.session is not None:
            await self.aim_off(cause)

    def _authority_state(self, old: SystemState, new: SystemState, reason: str) -> None:
        """A fault ends whatever pause came before it: after its reset, arming needs the password."""
        if new is SystemState.FAULT:
            self.authority.paused_otherwise("a fault and its reset")
