"""Who may command the controller over ``control.sock``, and which connection owns the session's emission.

The rules, in one place (the controller asks this module; it holds no hardware and no database):

* **A person per connection.** A connection acts for a person once it has authenticated
  (``authenticate``: username and password, checked like a login; or a token an earlier authentication
  returned). ``ping``, ``status``, ``health``, ``prechecks`` and ``stop`` need nobody: ``stop`` only ever
  makes things safer, and the stop key sends it on a fresh connection. Every other command is refused on a
  connection without a person. A token is random (256 bits), known only to this controller process, bound to
  one person; it is revoked by ``logout`` and expires :data:`TOKEN_IDLE_S` seconds after the last connection
  authenticated with it closed.
* **One connection owns the session.** The connection that opened the session holds it; another connection
  takes it over with ``takeover`` and the person's password (the session's technician or an admin). Only the
  holder may arm, disarm, pause, resume, override the power or abort. The connection that armed is therefore
  always the holder: when the holder closes (or logs out, or authenticates as someone else) emission stops at
  once and an armed session pauses, whoever it was; a takeover also stops emission before the new holder has
  it. So the laser can be on only while exactly one live connection holds the armed session (a session the
  controller's own process drives, as ``tosca sim run`` does, has no connection and is held in-process).
* **Resuming needs the key unless the pause was the operator's own.** A plain ``resume`` (no password) is
  accepted only after a pause the same person made on the same connection (``pause``, or ``stop`` sent on the
  holding connection). After a pause caused by a disconnect, a takeover, a stop from another connection (the
  stop key's own connection included) or a fault and its reset, arming again with the password resumes.
* **Key-control failures are counted per session.** A wrong password when arming or taking over is a
  key-control failure (audited as such, never counted towards the account's lockout). After
  :data:`MAX_KEY_FAILURES` of them in one session, arming and taking over by anyone but an admin are refused
  until an admin gives their username and password when arming (which resets the count), or the session is
  aborted and a new one opened.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from control.supervisor import Refused

#: Seconds a token stays usable after the last connection authenticated with it closed.
TOKEN_IDLE_S: Final = 600.0
#: Wrong key-control passwords allowed in one session before arming needs an admin.
MAX_KEY_FAILURES: Final = 5
#: Commands answered on any connection, authenticated or not.
OPEN_COMMANDS: Final = frozenset({"ping", "status", "health", "prechecks", "stop", "authenticate", "logout"})
#: Commands only the connection holding the session may give.
HOLDER_COMMANDS: Final = frozenset({"arm", "disarm", "pause", "resume", "abort", "override_power"})
#: Roles that may open, hold and take over a treatment session.
SESSION_ROLES: Final = frozenset({"technician", "admin"})


@dataclass(frozen=True)
class Person:
    """Someone who proved who they are on a connection."""

    tech_id: int
    username: str
    full_name: str
    role: str


@dataclass
class _Token:
    person: Person
    #: Monotonic time after which the token is refused (infinite while a connection uses it).
    valid_until: float
    connections: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class PauseMark:
    """Who made the pause the session is in: the connection and the person (``None`` for a pause nobody on a
    connection made, with ``cause`` saying what it was)."""

    connection: int | None
    tech_id: int | None
    cause: str


class Authority:
    """The connections' people, the tokens, the session's holder, the pause's origin and the key failures.

    Connections are named by their number (:attr:`control.ipc.server.Peer.connection`); ``None`` stands for
    the controller's own process (in-process callers, which hold no connection).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._people: dict[int, tuple[Person, str]] = {}
        self._tokens: dict[str, _Token] = {}
        #: The connection holding the open session; ``None`` with :attr:`in_process` false: nobody holds it.
        self.holder: int | None = None
        #: True when the controller's own process holds the session (no connection).
        self.in_process = False
        #: The person holding the session (key control is theirs).
        self.operator: Person | None = None
        #: Who made the current pause (``None``: no pause is known).
        self.pause: PauseMark | None = None
        #: Wrong key-control passwords in the open session.
        self.key_failures = 0

    # -- people on connections ----------------------------------------------------------------------------

    def person(self, connection: int) -> Person | None:
        """The person authenticated on ``connection``, if any."""
        entry = self._people.get(connection)
        return entry[0] if entry is not None else None

    def require_person(self, connection: int, command: str) -> Person:
        """The person on ``connection``; Refused when nobody authenticated there."""
        person = self.person(connection)
        if person is None:
            raise Refused(
                f"{command} needs a person: authenticate this connection first (username and password)"
            )
        return person

    def sign_in(self, connection: int, person: Person) -> tuple[str, bool]:
        """``person`` proved who they are on ``connection``: returns a new token, and whether the connection
        stopped acting for someone else (it then no longer holds the session: see :meth:`release`)."""
        changed = self._drop_person(connection, revoke=False, other_than=person.tech_id)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Token(person, math.inf, {connection})
        self._people[connection] = (person, token)
        return token, changed

    def sign_in_with_token(self, connection: int, token: str) -> tuple[Person, bool]:
        """Authenticate ``connection`` with a token; Refused when it is unknown or expired. Returns the person
        and whether the connection stopped acting for someone else."""
        self._expire_tokens()
        entry = self._tokens.get(token)
        if entry is None:
            raise Refused("the token is not valid (expired, logged out, or the controller restarted): log in")
        changed = self._drop_person(connection, revoke=False, other_than=entry.person.tech_id)
        entry.connections.add(connection)
        entry.valid_until = math.inf
        self._people[connection] = (entry.person, token)
        return entry.person, changed

    def sign_out(self, connection: int) -> Person | None:
        """The person on ``connection`` logs out: their token is revoked. Returns who it was."""
        person = self.person(connection)
        self._drop_person(connection, revoke=True)
        return person

    def forget_person(self, tech_id: int) -> None:
        """An account can no longer act (deactivated): its connections and tokens stop acting for it."""
        for connection, (person, _token) in list(self._people.items()):
            if person.tech_id == tech_id:
                self._drop_person(connection, revoke=True)

    def connection_closed(self, connection: int) -> bool:
        """``connection`` ended; returns whether it held the session (the caller then stops emission)."""
        self._drop_person(connection, revoke=False)
        return self.holder == connection and not self.in_process

    def _drop_person(self, connection: int, *, revoke: bool, other_than: int | None = None) -> bool:
        entry = self._people.get(connection)
        if entry is None or (other_than is not None and entry[0].tech_id == other_than):
            return False
        del self._people[connection]
        _person, token = entry
        held = self._tokens.get(token)
        if held is not None:
            held.connections.discard(connection)
            if revoke:
                del self._tokens[token]
            elif not held.connections:
                held.valid_until = self._clock() + TOKEN_IDLE_S
        return True

    def _expire_tokens(self) -> None:
        now = self._clock()
        for token in [t for t, entry in self._tokens.items() if entry.valid_until <= now]:
            del self._tokens[token]

    # -- the session ----------------------------------------------------------------------------------------

    def session_opened(self, connection: int | None, person: Person | None) -> None:
        """A session was opened by ``connection`` (``None``: in-process) for ``person``."""
        self.holder = connection
        self.in_process = connection is None
        self.operator = person
        self.pause = None
        self.key_failures = 0

    def session_closed(self) -> None:
        """No session is open any more."""
        self.holder = None
        self.in_process = False
        self.operator = None
        self.pause = None
        self.key_failures = 0

    def release(self, cause: str) -> None:
        """The holding connection is gone (closed, logged out, someone else on it): nobody holds the session,
        and whatever pause follows is not the operator's own."""
        self.holder = None
        self.in_process = False
        self.pause = PauseMark(None, None, cause)

    def holds(self, connection: int | None) -> bool:
        """Whether ``connection`` (``None``: in-process) holds the open session."""
        if connection is None:
            return self.in_process
        return not self.in_process and self.holder == connection

    def require_holder(self, connection: int, command: str) -> None:
        """Refused unless ``connection`` holds the open session."""
        if self.holds(connection):
            return
        if self.in_process:
            raise Refused(f"{command} refused: the session is run by the controller's own process")
        whose = f" ({self.operator.username}'s)" if self.operator is not None else ""
        where = (
            "another connection holds it"
            if self.holder is not None
            else "no connection holds it since its console went away"
        )
        raise Refused(
            f"{command} refused: this connection does not hold the open session{whose}; {where}: "
            "take it over with your password first"
        )

    def taken_over(self, connection: int, person: Person) -> None:
        """``connection`` now holds the session for ``person``; the pause that follows is not theirs."""
        self.holder = connection
        self.in_process = False
        self.operator = person
        self.pause = PauseMark(None, None, "a takeover")
        if person.role == "admin":
            self.key_failures = 0

    # -- pauses and key control ------------------------------------------------------------------------------

    def paused_by(self, connection: int | None, person: Person | None) -> None:
        """The session was paused by ``person`` on ``connection`` (their own pause when they hold it)."""
        if connection is not None and person is not None and self.holds(connection):
            self.pause = PauseMark(connection, person.tech_id, "the operator's own pause")
        else:
            self.pause = PauseMark(None, None, "a stop from another connection")

    def paused_otherwise(self, cause: str) -> None:
        """The session paused (or left a fault) for ``cause``: resuming needs the key."""
        self.pause = PauseMark(None, None, cause)

    def resume_refusal(self, connection: int | None, person: Person | None) -> str | None:
        """Why a plain resume (no password) is refused for ``person`` on ``connection``; None: allowed."""
        mark = self.pause
        if connection is None:
            return None if self.in_process else "the session is held by a connection"
        if (
            mark is not None
            and mark.connection == connection
            and person is not None
            and mark.tech_id == person.tech_id
        ):
            return None
        cause = mark.cause if mark is not None else "a pause this connection did not make"
        return f"resuming after {cause} needs key control: arm again with your password"

    @property
    def resume_needs_key(self) -> bool:
        """Whether even the holder needs the password to leave the current pause."""
        mark = self.pause
        return not (self.in_process or (mark is not None and mark.connection is not None))

    @property
    def key_blocked(self) -> bool:
        """True once :data:`MAX_KEY_FAILURES` wrong key-control passwords were given in this session."""
        return self.key_failures >= MAX_KEY_FAILURES

    def key_failed(self) -> int:
        """Count one wrong key-control password; returns how many remain before arming needs an admin."""
        self.key_failures += 1
        return max(0, MAX_KEY_FAILURES - self.key_failures)

    def key_unblocked(self) -> None:
        """An admin gave their password: key control is open again for this session."""
        self.key_failures = 0

    def blocked_message(self) -> str:
        """What a person is told once key control is blocked in this session."""
        return (
            f"key control blocked after {MAX_KEY_FAILURES} wrong passwords in this session: an admin's "
            "username and password unblock it (arm), or abort the session and open a new one"
        )
