"""The messages the console and the controller exchange over their Unix sockets.

Every message is defined here once, as a frozen pydantic model, and travels as newline-delimited JSON: one
UTF-8 JSON object per line, at most :data:`MAX_LINE_BYTES` bytes per line (not counting the newline). Each
object carries a ``"type"`` discriminator; unknown keys, NaN and infinities are refused, and values are
checked strictly (``true`` is not an integer, ``"1"`` is not a number).

Commands go from a client to the controller and carry a request id (``id``, an integer >= 0); the controller
answers each with exactly one :class:`Reply` carrying the same id. :class:`Snapshot` and :class:`Event` are
pushed by the controller without being asked.

Two command sets exist, and they are different types, not one type with a runtime check:

* :data:`ControlCommand`, accepted on ``control.sock`` (the operator's console): every command, including
  arming and the session commands.
* :data:`ObserveCommand`, accepted on ``observe.sock`` (engineers over SSH): ``ping``, ``status``,
  ``health``, ``devices``, the remote console's audited login, logout and screen lock, and the backups and
  research exports the controller makes for the person signed in there. There is no arm, emission or
  session command in it, so a line such as ``{"type": "arm", ...}`` read from that socket is an
  unknown command type.

A command model may be built without an id (``Ping()``); :class:`~control.ipc.client.ControllerClient` then
assigns one. On the wire the id is required.

Who may command (``control.sock``): ``ping``, ``status``, ``health``, ``prechecks`` and ``stop`` are answered
on any connection; ``stop`` only ever makes things safer, so the stop key sends it on a fresh connection of
its own, unauthenticated. Every other command acts for a person, who proves who they are on that connection
with :class:`Authenticate` (username and password, checked like a login: refused for a wrong password, a
locked or a deactivated account). The reply carries a token: a later connection of the same console may
authenticate with it instead of the password (after the link dropped), until :class:`Logout`, or
:data:`~control.authority.TOKEN_IDLE_S` seconds after the last connection using it closed; a restarted
controller knows no token. The open session belongs to one connection: the one that opened it, or that took it
over (:class:`Takeover`, with the password); only that connection may arm, pause, resume, override or abort
it. See :mod:`control.authority` for the rules.

Units: times in seconds (``_s``), power in watts (``_w``), energy in joules (``_j``), lengths in
millimetres (``_mm``) or micrometres (``_um``), photodiode in volts (``_v``), laser diode current in
milliamperes (``_ma``).
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from control.vocabulary import OperatorAction, SessionStatus, Severity, SystemState

#: The longest line either side accepts, in bytes, not counting the terminating newline (1 MiB).
MAX_LINE_BYTES = 1_048_576

# The vocabularies (states, severities, session statuses, operator actions) are the enums of
# control.vocabulary; on the wire they travel as their values, which are read back into the enums.
#: The supervisor states a snapshot can report.
SafetyState: TypeAlias = Annotated[SystemState, Field(strict=False)]

#: How serious an event is.
EventSeverity: TypeAlias = Annotated[Severity, Field(strict=False)]

_Status: TypeAlias = Annotated[SessionStatus, Field(strict=False)]
_Action: TypeAlias = Annotated[OperatorAction, Field(strict=False)]

#: A string that is not empty once surrounding whitespace is removed (the whitespace is removed).
NonBlank: TypeAlias = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

#: A request id: an integer >= 0.
RequestId: TypeAlias = Annotated[int, Field(ge=0)]

_FiniteFloat: TypeAlias = Annotated[float, Field(allow_inf_nan=False)]
_NonNegative: TypeAlias = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class MessageError(ValueError):
    """A line that is not a valid message, or a message that cannot be encoded.

    ``str(error)`` is a short, specific reason (``"unknown command type 'fire'"``,
    ``"arm.password: field required"``); ``request_id`` is the request id when it could be read from the
    line, else ``None``.
    """

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class _Message(BaseModel):
    """Base of every message: frozen, strict, no unknown keys, no NaN or infinity."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid", allow_inf_nan=False)


class Command(_Message):
    """Base of every command. ``id`` is the request id the reply will carry.

    When a command is built without an id, ``id`` reads 0 and ``"id"`` is absent from ``model_fields_set``;
    the client assigns the next free id before sending it.
    """

    id: RequestId = 0


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------


class Ping(Command):
    """Is the controller there and answering?"""

    type: Literal["ping"] = "ping"


class Status(Command):
    """Ask for the controller's current state."""

    type: Literal["status"] = "status"


class Health(Command):
    """Ask for the health of each device (connection state, identity, last error)."""

    type: Literal["health"] = "health"


class Authenticate(Command):
    """Prove who acts on this connection: ``username`` and ``password`` (checked like a login, counted towards
    the account's lockout), or a ``token`` an earlier :class:`Authenticate` of this console returned.

    The reply's data: ``username``, ``full_name``, ``role``, ``token`` and ``connection`` (this connection's
    number, as snapshots name the connection holding the session).
    """

    type: Literal["authenticate"] = "authenticate"
    username: NonBlank | None = None
    password: Annotated[str | None, Field(min_length=1, repr=False)] = None
    token: Annotated[str | None, Field(min_length=1, max_length=200, repr=False)] = None

    @model_validator(mode="after")
    def _password_or_token(self) -> Authenticate:
        if self.token is not None:
            if self.password is not None or self.username is not None:
                raise ValueError("give a token, or a username and password, not both")
        elif self.username is None or self.password is None:
            raise ValueError("a username and password (or a token) are required")
        return self


class Logout(Command):
    """The person on this connection logs out: the connection (and its token) no longer acts for them, and
    a session this connection held is paused if it was armed, and no longer held."""

    type: Literal["logout"] = "logout"


class Takeover(Command):
    """Take the open session over on this connection (a console re-attaching to it): the person
    authenticated here re-enters their password; they must be the session's technician or an admin.

    Emission stops first if it was possible; the session is then paused or ready, and arming again needs the
    password."""

    type: Literal["takeover"] = "takeover"
    password: Annotated[str, Field(min_length=1, repr=False)]


class OpenSession(Command):
    """Open a treatment session for a subject with a protocol, for the person authenticated on this
    connection (a technician or an admin); ``username``, when given, must be that person.

    ``create_subject`` asks the controller to create the subject when ``subject_code`` is not on record.
    ``draft`` tries the protocol's newest version not yet approved: refused unless the rig is simulated.
    """

    type: Literal["open_session"] = "open_session"
    subject_code: NonBlank
    username: NonBlank | None = None
    protocol_name: NonBlank
    treatment_site: str | None = None
    treatment_notes: str | None = None
    create_subject: bool = False
    draft: bool = False


class Prechecks(Command):
    """Run the pre-treatment checks; READY when they all pass."""

    type: Literal["prechecks"] = "prechecks"


class Arm(Command):
    """Arm the laser (key control): the operator re-enters their password. From READY it arms; from PAUSED it
    resumes (the way to resume after a pause the operator did not make on this connection).

    A wrong password is a key-control failure, not a failed login: it never locks the account, and after
    :data:`~control.authority.MAX_KEY_FAILURES` of them in one session arming is refused until an admin's
    ``username`` and ``password`` are given here (or the session is aborted and a new one opened).
    """

    type: Literal["arm"] = "arm"
    password: Annotated[str, Field(min_length=1, repr=False)]
    username: NonBlank | None = None


class Disarm(Command):
    """Disarm the laser (ARMED to READY)."""

    type: Literal["disarm"] = "disarm"


class Pause(Command):
    """Operator pause: laser off and disarmed, step clock held."""

    type: Literal["pause"] = "pause"


class Resume(Command):
    """Leave a pause without the password: only a pause the same operator made on this same connection
    (``pause``, or ``stop`` sent here). After any other pause (a disconnect, a takeover, a stop from another
    connection) :class:`Arm` with the password resumes."""

    type: Literal["resume"] = "resume"


class Stop(Command):
    """Stop emission at once (the stop key); the session stays open."""

    type: Literal["stop"] = "stop"


class Abort(Command):
    """Abort the session, laser off, with the operator's reason (not blank)."""

    type: Literal["abort"] = "abort"
    reason: NonBlank


class OverridePower(Command):
    """Override the running step's power, in watts (finite, >= 0), with the operator's reason (not blank).

    ``step`` is the number (from 1) of the protocol step the override was typed for: the controller refuses
    it when that step is no longer the one running. The controller checks the value against the protocol's
    and the system's limits.
    """

    type: Literal["override_power"] = "override_power"
    watts: _NonNegative
    reason: NonBlank
    step: Annotated[int, Field(ge=1)]


class ResetFault(Command):
    """Acknowledge and reset a latched fault; needs the operator's credentials and a cleared cause."""

    type: Literal["reset_fault"] = "reset_fault"
    username: NonBlank
    password: Annotated[str, Field(min_length=1, repr=False)]


class EndSession(Command):
    """End the open session (laser off), with optional closing notes."""

    type: Literal["end_session"] = "end_session"
    notes: str | None = None


class Sim(Command):
    """A simulator command line (docs/devices.md); refused unless the controller runs ``--sim``."""

    type: Literal["sim"] = "sim"
    command: NonBlank


class TakeSnapshot(Command):
    """Save the camera's newest frame in the open session's folder: the raw picture and one with the ring
    drawn (the connection holding the session). Answered at once; how it ended comes as an :class:`Event` of
    kind ``snapshot``."""

    type: Literal["take_snapshot"] = "take_snapshot"


class AimingBeam(Command):
    """Switch the aiming beam (the visible pilot light, never the treatment laser) on or off while a session
    is open (the connection holding the session)."""

    type: Literal["aiming_beam"] = "aiming_beam"
    on: bool


class CalibrationMove(Command):
    """Move the actuator to ``position_um`` for the ring size calibration, for the engineer ``username``
    (checked with ``password`` as a login). Accepted on both sockets (it cannot emit); refused while a
    session is open or the laser is armed."""

    type: Literal["calibration_move"] = "calibration_move"
    position_um: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
    username: NonBlank
    password: Annotated[str, Field(min_length=1, repr=False)]


class CalibrationSaveRing(Command):
    """Store the ring size calibration measured with the wizard, ``points`` as ``(position um, ring mm)``, as
    the active one, for the engineer ``username`` (checked with ``password`` as a login). Each point is a
    ``[position, ring]`` pair. Accepted on both
    sockets (the remote console cannot write the records; storing a calibration moves nothing and cannot
    emit); refused while a session is open, and for points the calibration rules refuse."""

    type: Literal["calibration_save_ring"] = "calibration_save_ring"
    points: Annotated[
        list[Annotated[list[_FiniteFloat], Field(min_length=2, max_length=2)]],
        Field(min_length=1, max_length=200),
    ]
    username: NonBlank
    password: Annotated[str, Field(min_length=1, repr=False)]
    # Where each point's ring size came from ("typed" or "camera", in the order of ``points``; absent: all
    # typed) and the camera scale calibration the camera's points were measured through; both go into the
    # stored calibration's notes.
    point_sources: Annotated[list[Literal["typed", "camera"]], Field(max_length=200)] | None = None
    camera_scale_id: int | None = None


class CalibrationBegin(Command):
    """Start (or, after a pause, resume) the laser power calibration run for the engineer authenticated on
    this connection: key control (the password), laser off and verified, then armed as for a treatment."""

    type: Literal["calibration_begin"] = "calibration_begin"
    password: Annotated[str, Field(min_length=1, repr=False)]


class CalibrationCurrent(Command):
    """Set the drive current of the next calibration point, mA (the footpedal then emits)."""

    type: Literal["calibration_current"] = "calibration_current"
    current_ma: Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]


class CalibrationMeasure(Command):
    """Read the photodiode while the point emits (averaged); the point then ends (laser off)."""

    type: Literal["calibration_measure"] = "calibration_measure"


class CalibrationEnd(Command):
    """End the calibration run: laser off, disarmed, the calibrations read again."""

    type: Literal["calibration_end"] = "calibration_end"


class Devices(Command):
    """Ask for each device's diagnostics (identity, link, reply and error counts, live readings) and the
    controller's own loop figures (:class:`DevicesReply`). Answered on both sockets."""

    type: Literal["devices"] = "devices"


class RemoteLogin(Command):
    """``observe.sock`` only: a remote console's TOSCA login, checked by the controller like any login
    (counted towards the account's lockout) and audited with where it came from: ``ssh_client`` as the
    console read it from its SSH environment, and the Unix user and pid the kernel reports for the socket's
    peer. ``context`` is ``"login"`` or ``"lock_screen"`` (reopening a locked console). The connection then
    acts for that person for :class:`RemoteLogout` and :class:`RemoteScreenLock`, and for nothing else:
    ``observe.sock`` has no command that arms, emits or touches a session."""

    type: Literal["remote_login"] = "remote_login"
    username: NonBlank
    password: Annotated[str, Field(min_length=1, repr=False)]
    context: Literal["login", "lock_screen"] = "login"
    ssh_client: Annotated[str | None, Field(max_length=100)] = None


class RemoteLogout(Command):
    """``observe.sock`` only: the person signed in on this connection (:class:`RemoteLogin`) logs out
    (``reason``: ``user``, ``lock_screen``, ``quit``, ``hangup``); audited."""

    type: Literal["remote_logout"] = "remote_logout"
    reason: Literal["user", "lock_screen", "quit", "hangup"] = "user"


class RemoteScreenLock(Command):
    """``observe.sock`` only: the remote console of the person signed in on this connection locked itself
    after ``idle_minutes`` without input; audited."""

    type: Literal["remote_screen_lock"] = "remote_screen_lock"
    idle_minutes: _NonNegative


# -- The remote console's backups and research exports, done by the controller ----------------------------

#: A backup's file name as listed (``tosca_YYYYMMDD_HHMMSS[_N].db``).
_BackupName: TypeAlias = Annotated[str, StringConstraints(pattern=r"^tosca_[0-9]{8}_[0-9]{6}(_[0-9]+)?\.db$")]
#: A plain folder name under the data directory's ``exports/`` (no slash, no dot first, no option).
ExportFolderName: TypeAlias = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,119}$", max_length=120)
]
_ExportTime: TypeAlias = Annotated[datetime, Field(strict=False)]


class RemoteBackup(Command):
    """``observe.sock`` only: the controller takes a verified backup of the records for the person signed in
    on this connection (:class:`RemoteLogin`; an engineer or an admin) and audits it with the connection's
    origin. Answered with :class:`RemoteBackupMade` once the backup is on disk."""

    type: Literal["remote_backup"] = "remote_backup"


class RemoteVerifyBackup(Command):
    """``observe.sock`` only: the controller checks the backup ``name`` (as listed) for the person signed
    in on this connection and audits the verdict. Answered with :class:`RemoteBackupVerified`."""

    type: Literal["remote_verify_backup"] = "remote_verify_backup"
    name: _BackupName


class RemoteExport(Command):
    """``observe.sock`` only: the controller writes a research export for the person signed in on this
    connection: one ended session (``session_id``) or every ended session started in ``[since, until)``
    (naive UTC), in ``formats`` (empty: both), into ``exports/<folder>`` (``None``: an automatic name),
    identified or not; audited with the connection's origin. Answered with :class:`RemoteExportWritten`."""

    type: Literal["remote_export"] = "remote_export"
    session_id: Annotated[int, Field(ge=1)] | None = None
    since: _ExportTime | None = None
    until: _ExportTime | None = None
    formats: Annotated[list[Literal["csv", "json"]], Field(max_length=2)] = Field(default_factory=list)
    folder: ExportFolderName | None = None
    identified: bool = False

    @model_validator(mode="after")
    def _one_session_or_a_range(self) -> RemoteExport:
        has_range = self.since is not None or self.until is not None
        if (self.session_id is None) == (not has_range):
            raise ValueError("give a session id or a time range, one of them")
        if has_range:
            if self.since is None or self.until is None:
                raise ValueError("a time range needs both since and until")
            if self.since.tzinfo is not None or self.until.tzinfo is not None:
                raise ValueError("since and until are naive UTC times")
            if self.since >= self.until:
                raise ValueError("the start of the time range must be before its end")
        if self.folder is not None and ".." in self.folder:
            raise ValueError("folder: a plain name under exports/")
        return self


class RemoteAuditExport(Command):
    """``observe.sock`` only: the controller writes the audit trail's rows matching the filters (each
    ``None``: no restriction; times naive UTC) to a CSV file under ``exports/`` for the admin signed in on
    this connection, and audits it with the connection's origin. Answered with
    :class:`RemoteAuditExported`."""

    type: Literal["remote_audit_export"] = "remote_audit_export"
    user: Annotated[str, Field(max_length=200)] | None = None
    action: Annotated[str, Field(max_length=200)] | None = None
    outcome: Annotated[str, Field(max_length=50)] | None = None
    since: _ExportTime | None = None
    until: _ExportTime | None = None
    text: Annotated[str, Field(max_length=200)] | None = None


class TakeFocusStack(Command):
    """Record a focus stack: fresh camera frames over a few seconds, each with its focus score, in one folder
    with an index. During a session, from the connection holding it (a ``focus_stack`` recording of the
    session); otherwise for an engineer or an admin (a ``camera_focus_calibration``). Answered at once; how it
    ended comes as an :class:`Event` of kind ``focus_stack``."""

    type: Literal["focus_stack"] = "focus_stack"


#: Every command the operator's socket (``control.sock``) accepts.
ControlCommand: TypeAlias = Annotated[
    Ping
    | Status
    | Health
    | Authenticate
    | Logout
    | Takeover
    | OpenSession
    | Prechecks
    | Arm
    | Disarm
    | Pause
    | Resume
    | Stop
    | Abort
    | OverridePower
    | ResetFault
    | EndSession
    | TakeSnapshot
    | AimingBeam
    | Sim
    | TakeFocusStack
    | CalibrationMove
    | CalibrationSaveRing
    | CalibrationBegin
    | CalibrationCurrent
    | CalibrationMeasure
    | CalibrationEnd
    | Devices,
    Field(discriminator="type"),
]

#: The only commands the observation socket (``observe.sock``) accepts: none of them can arm, emit or touch
#: a session (the actuator move of the ring size calibration is refused while a session is open; the
#: remote console's login and logout are audited records, not commands to the rig; its backups and exports
#: only read the records and write files beside them).
ObserveCommand: TypeAlias = Annotated[
    Ping
    | Status
    | Health
    | CalibrationMove
    | CalibrationSaveRing
    | Devices
    | RemoteLogin
    | RemoteLogout
    | RemoteScreenLock
    | RemoteBackup
    | RemoteVerifyBackup
    | RemoteExport
    | RemoteAuditExport,
    Field(discriminator="type"),
]


# ---------------------------------------------------------------------------------------------------------
# Server to client
# ---------------------------------------------------------------------------------------------------------


class Reply(_Message):
    """The one answer to a command. ``id`` is the command's request id, or ``None`` when the command's line
    could not be read far enough to find it. ``error`` is set exactly when ``ok`` is false."""

    type: Literal["reply"] = "reply"
    id: RequestId | None
    ok: bool
    error: str | None = None
    data: dict[str, Any] | None = None

    @field_validator("data")
    @classmethod
    def _finite_data(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_finite(value, "data")
        return value

    @model_validator(mode="after")
    def _error_iff_refused(self) -> Reply:
        if self.ok and self.error is not None:
            raise ValueError("a successful reply carries no error")
        if not self.ok and not (self.error and self.error.strip()):
            raise ValueError("a failed reply needs an error message")
        return self


def _check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere inside a free-form payload (JSON cannot carry them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}, not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


# ---------------------------------------------------------------------------------------------------------
# Reply data: what a successful reply's ``data`` holds, per command
# ---------------------------------------------------------------------------------------------------------


class Pong(_Message):
    """``ping``: the controller is there."""

    pong: bool = True


class DeviceStatus(_Message):
    """``health``, for one device (the reply's data maps each device's name to one of these)."""

    state: str
    identity: str | None = None
    error: str | None = None
    detail: str = ""


class PrecheckView(_Message):
    """One pre-treatment check: its live value and whether it passes (``detail`` says why not)."""

    name: str
    ok: bool
    value: str
    detail: str = ""


class PrechecksReply(_Message):
    """``prechecks``: every check, in the controller's order."""

    checks: list[PrecheckView]

    @property
    def failing(self) -> list[PrecheckView]:
        """The checks that do not pass."""
        return [check for check in self.checks if not check.ok]


class SignedIn(_Message):
    """``authenticate``: who acts on this connection now, the token a later connection of this console may
    authenticate with, and this connection's number."""

    username: str
    full_name: str
    role: str
    token: Annotated[str, Field(repr=False)]
    connection: int


class SignedOut(_Message):
    """``logout``: who was signed out (``None``: nobody was signed in)."""

    username: str | None


class StateReply(_Message):
    """``stop``, ``arm`` and ``reset_fault``: the supervisor's state afterwards."""

    state: SafetyState


class SessionStateReply(_Message):
    """``takeover`` and ``abort``: the session concerned and the supervisor's state afterwards."""

    state: SafetyState
    session_id: int


class SessionOpened(_Message):
    """``open_session``: the session opened, where it records, its backup, and what its protocol plans."""

    session_id: int
    subject_code: str
    protocol_name: str
    folder: str
    backup: str | None
    total_duration_s: _NonNegative
    expected_energy_j: _NonNegative


class OverrideApplied(_Message):
    """``override_power``: the override as recorded."""

    action: Literal["protocol_power_override"] = "protocol_power_override"
    old_value: _FiniteFloat
    new_value: _NonNegative
    reason: str
    by: str
    protocol_step: int


class SimReply(_Message):
    """``sim``: the simulator's answer."""

    reply: str


class SnapshotStarted(_Message):
    """``take_snapshot``: the snapshot is being saved into ``folder`` (the session's)."""

    folder: str


class SnapshotTaken(_Message):
    """A snapshot saved: the two pictures, where, their size, and what the ring measured.

    ``offset_s`` is the time since the session opened, s; ``ring_mm`` the detected ring's diameter (``None``:
    no ring found, ``no_ring_reason`` says why).
    """

    raw_path: str
    annotated_path: str
    raw_bytes: Annotated[int, Field(ge=0)]
    annotated_bytes: Annotated[int, Field(ge=0)]
    resolution: str
    offset_s: _FiniteFloat
    ring_mm: _FiniteFloat | None = None
    no_ring_reason: str = ""


class AimingBeamState(_Message):
    """``aiming_beam``: whether the aiming beam is on afterwards."""

    on: bool


class FocusStackStarted(_Message):
    """``focus_stack``: the stack is being taken, ``frames`` frames over about ``duration_s`` seconds, into a
    folder inside ``folder``."""

    folder: str
    frames: Annotated[int, Field(ge=1)]
    duration_s: _NonNegative


class StepView(_Message):
    """The protocol step in progress: ``number`` of ``of``, time in seconds, power in watts, ring in mm."""

    number: Annotated[int, Field(ge=1)]
    of: Annotated[int, Field(ge=1)]
    elapsed_s: _FiniteFloat
    duration_s: _NonNegative
    power_start_w: _NonNegative
    power_end_w: _NonNegative
    ramp: Literal["constant", "linear"]
    ring_size_mm: _FiniteFloat


class SessionView(_Message):
    """The open treatment session: clocks in seconds, delivered energy in joules.

    Measured and integrated values are only required to be finite: a photodiode offset can make a measured
    integral slightly negative, and a snapshot must still reach the operator.
    """

    session_id: int
    subject_code: str
    protocol_name: str
    technician: str
    status: _Status
    clock_s: _FiniteFloat
    treating_s: _FiniteFloat
    delivered_energy_j: _FiniteFloat
    step: StepView | None = None
    #: The highest power an override may ask for in this session, W (the protocol's, the system's and the
    #: laser calibration's limits, the lowest of them).
    max_override_w: _NonNegative | None = None
    #: The protocol's total time, s, and the energy it is expected to deliver, J.
    total_duration_s: _NonNegative | None = None
    expected_energy_j: _NonNegative | None = None
    #: The username of the person holding the session (key control is theirs), and the number of the
    #: connection holding it (``None``: no live connection does; a console must take it over).
    operator: str | None = None
    held_by_connection: int | None = None
    #: Whether leaving the pause needs the password (arm) rather than a plain resume.
    resume_needs_key: bool = False
    #: Wrong key-control passwords in this session, and how many are allowed before arming needs an admin.
    key_failures: Annotated[int, Field(ge=0)] = 0
    key_failures_allowed: Annotated[int, Field(ge=0)] = 5
    #: The protocol version the session runs and its approval status (not ``approved``: a draft tried on
    #: the simulated rig, which every screen of the session says).
    protocol_version: int | None = None
    protocol_status: str = "approved"


class LaserView(_Message):
    """The laser: commanded and measured power (W), photodiode (V), output state, diode current (mA).

    Measured values are ``None`` while no fresh reading exists.
    """

    commanded_w: _NonNegative
    measured_w: _FiniteFloat | None = None
    photodiode_v: _FiniteFloat | None = None
    output_on: bool
    current_ma: _FiniteFloat | None = None
    #: The photodiode deviation the supervisor judges, percent (signed; ``None`` while it judges none).
    deviation_percent: _FiniteFloat | None = None


class RingView(_Message):
    """The treatment ring: commanded and measured size (mm), actuator position (um); ``None`` if unknown."""

    commanded_mm: _FiniteFloat | None = None
    measured_mm: _FiniteFloat | None = None
    position_um: _FiniteFloat | None = None


class InterlockView(_Message):
    """One term of the permission to emit, with its live value as shown to the operator."""

    name: str
    ok: bool
    value: str
    detail: str


class DeviceView(_Message):
    """One device: connection state, identity string (``None`` until identified) and last error."""

    name: str
    state: str
    identity: str | None = None
    error: str | None = None


class FaultView(_Message):
    """The latched fault: what happened, what the controller did, how to reset, whether the cause has cleared,
    and when (``at``, an ISO 8601 time)."""

    what: str
    action: str
    how_to_reset: str
    cause_cleared: bool
    at: str

    @field_validator("at")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time: {value!r}") from None
        return value


class Snapshot(_Message):
    """The controller's whole visible state, pushed at most ``max_push_hz`` times a second per client.

    ``seq`` increases with every snapshot; ``time_s`` is the controller's monotonic clock in seconds.
    """

    type: Literal["snapshot"] = "snapshot"
    seq: Annotated[int, Field(ge=0)]
    time_s: _FiniteFloat
    state: SafetyState
    emitting: bool
    sim: bool
    session: SessionView | None = None
    laser: LaserView
    ring: RingView
    interlocks: list[InterlockView] = Field(default_factory=list)
    devices: list[DeviceView] = Field(default_factory=list)
    fault: FaultView | None = None
    warnings: list[str] = Field(default_factory=list)
    #: The operator actions the supervisor permits in this state (a command may still be refused).
    actions: list[_Action] = Field(default_factory=list)
    #: The session most recently opened since the controller started (``None`` before the first); once
    #: ``session`` is ``None`` again it is the one just closed, whose notes and summary come next.
    last_session_id: int | None = None
    #: Whether the safety board's aiming beam is on (as its last acknowledged command left it).
    aiming_beam: bool = False


class Event(_Message):
    """Something that happened (a transition, a warning, a fault), pushed to every client, never coalesced.

    ``seq`` increases with every event; ``time_s`` is the controller's monotonic clock in seconds.
    """

    type: Literal["event"] = "event"
    seq: Annotated[int, Field(ge=0)]
    time_s: _FiniteFloat
    kind: NonBlank
    severity: EventSeverity
    message: str


class Preview(_Message):
    """A small camera preview, pushed a few times a second, never queued (a newer one replaces an unsent one).

    ``camera`` is the camera's state (``"ok"``, ``"frozen"``, ``"no_frames"``, ``"not_opened"``, or
    ``"none"`` when the rig has no camera) and ``detail`` says why when it is not ok. ``jpeg_b64`` is a
    base64 JPEG of the downscaled frame with the detected ring drawn on it (``None`` with no frame).
    ``ring_diameter_px`` is the detected ring's diameter in pixels (``None`` when no ring was found) and
    ``ring_diameter_mm`` the same through the active camera scale calibration ``ring_scale_id``; without one
    (or outside its calibrated span) ``ring_diameter_mm`` is ``None`` and ``ring_scale_detail`` says why
    (the ring is uncalibrated).
    """

    type: Literal["preview"] = "preview"
    seq: Annotated[int, Field(ge=0)]
    time_s: _FiniteFloat
    camera: str
    detail: str = ""
    width: Annotated[int, Field(ge=0)] = 0
    height: Annotated[int, Field(ge=0)] = 0
    jpeg_b64: str | None = None
    ring_diameter_mm: _NonNegative | None = None
    ring_diameter_px: _NonNegative | None = None
    focus: _FiniteFloat | None = None
    # The camera scale calibration behind ring_diameter_mm, or why the ring is uncalibrated.
    ring_scale_id: int | None = None
    ring_scale_detail: str = ""


class CalibrationMoved(_Message):
    """``calibration_move``: the position reached, um, and the ring size the active actuator calibration
    gives there, mm (``None`` without one, or outside its span)."""

    position_um: _FiniteFloat
    ring_mm: _FiniteFloat | None


class CalibrationSaved(_Message):
    """``calibration_save_ring``: the id of the calibration stored (now the active one of its type)."""

    calibration_id: int


class CalibrationDrive(_Message):
    """``calibration_current``: the current set, mA, and the power the active laser calibration expects from
    it, W (what the photodiode judges the light against)."""

    current_ma: _NonNegative
    expected_w: _NonNegative


class CalibrationReading(_Message):
    """``calibration_measure``: the point's current, mA (set, and read back by the driver), and the
    photodiode voltage, V, averaged over ``samples`` readings."""

    current_ma: _NonNegative
    measured_current_ma: _FiniteFloat | None
    photodiode_v: _FiniteFloat
    samples: Annotated[int, Field(ge=1)]


#: A time carried as ISO 8601 text on the wire and read back as a naive UTC ``datetime``.
_WireTime: TypeAlias = Annotated[datetime, Field(strict=False)]


class SessionEnded(_Message):
    """``end_session``: the finished session as recorded, after the post-treatment notes were written (the
    fields of :meth:`control.sessions.SessionService.summary_of`; times naive UTC, powers W, energy J)."""

    session_id: int
    status: str
    subject_code: str | None
    technician: str | None
    protocol_name: str | None
    start_time: _WireTime
    end_time: _WireTime | None
    duration_seconds: int | None
    abort_reason: str | None
    treatment_site: str | None
    laser_on_time_s: _NonNegative | None
    avg_power_w: _NonNegative | None
    max_power_w: _NonNegative | None
    energy_j: _NonNegative | None
    treatment_notes: str | None
    post_treatment_notes: str | None
    event_count: Annotated[int, Field(ge=0)]
    safety_event_count: Annotated[int, Field(ge=0)]
    folder: str | None
    session_uid: str | None
    telemetry_path: str | None
    telemetry_line_count: int | None
    telemetry_sha256: str | None
    video_path: str | None


#: What a successful command answers with (``end_session`` with :class:`SessionEnded`; ``status`` with a
#: :class:`Snapshot`; ``health`` with a :class:`DeviceStatus` per device; ``disarm``, ``pause`` and
#: ``resume`` with nothing).
ReplyData: TypeAlias = (
    Pong
    | PrechecksReply
    | SignedIn
    | SignedOut
    | StateReply
    | SessionStateReply
    | SessionOpened
    | OverrideApplied
    | SimReply
    | SnapshotStarted
    | AimingBeamState
    | CalibrationMoved
    | CalibrationSaved
    | CalibrationDrive
    | CalibrationReading
    | FocusStackStarted
    | Snapshot
    | SessionEnded
    | dict[str, DeviceStatus]
    | dict[str, Any]
    | None
)


def reply_data(data: ReplyData) -> dict[str, Any] | None:
    """``data`` as a reply carries it (JSON-ready)."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if data is None:
        return None
    return {
        key: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for key, value in data.items()
    }


#: Whatever the controller sends.
ServerMessage: TypeAlias = Annotated[Reply | Snapshot | Event | Preview, Field(discriminator="type")]

#: Anything :func:`encode` writes.
Message: TypeAlias = Command | Reply | Snapshot | Event | Preview


# ---------------------------------------------------------------------------------------------------------
# Encoding and decoding
# ---------------------------------------------------------------------------------------------------------

_CONTROL: TypeAdapter[ControlCommand] = TypeAdapter(ControlCommand)
_OBSERVE: TypeAdapter[ObserveCommand] = TypeAdapter(ObserveCommand)
_SERVER: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def encode(message: Message) -> bytes:
    """One message as one line of compact UTF-8 JSON ending in ``b"\\n"``.

    Raises:
        MessageError: when the message holds a value JSON cannot carry (NaN, infinity, an object that does
            not serialise), or the line would exceed :data:`MAX_LINE_BYTES`.
    """
    request_id = message.id if isinstance(message, Command | Reply) else None
    kind = _type_of(message)
    try:
        payload = message.model_dump(mode="json")
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, TypeError) as exc:
        raise MessageError(f"cannot encode {kind}: {exc}", request_id) from exc
    line = text.encode("utf-8")
    if len(line) > MAX_LINE_BYTES:
        raise MessageError(f"{kind} is {len(line)} bytes, longer than {MAX_LINE_BYTES}", request_id)
    return line + b"\n"


def decode_control(line: bytes | str) -> ControlCommand:
    """Read one command line from ``control.sock``.

    Raises:
        MessageError: with a short reason and, when it could be read, the request id.
    """
    obj = _parse(line)
    command: ControlCommand = _validate(_CONTROL, obj, "command")
    _require_id(command)
    return command


def decode_observe(line: bytes | str) -> ObserveCommand:
    """Read one command line from ``observe.sock``: one of :data:`ObserveCommand` and nothing else.

    Raises:
        MessageError: with a short reason and, when it could be read, the request id.
    """
    obj = _parse(line)
    command: ObserveCommand = _validate(_OBSERVE, obj, "command")
    _require_id(command)
    return command


def decode_server(line: bytes | str) -> Reply | Snapshot | Event | Preview:
    """Read one line the controller sent.

    Raises:
        MessageError: with a short reason.
    """
    message: ServerMessage = _validate(_SERVER, _parse(line), "message")
    return message


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse(line: bytes | str) -> dict[str, Any]:
    raw = line.encode("utf-8") if isinstance(line, str) else bytes(line)
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if len(raw) > MAX_LINE_BYTES:
        raise MessageError(f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if not text.strip():
        raise MessageError("empty line")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("JSON nested too deeply to be a message") from None
    if not isinstance(obj, dict):
        raise MessageError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _recover_id(obj: dict[str, Any]) -> int | None:
    value = obj.get("id")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _require_id(command: Command) -> None:
    if "id" not in command.model_fields_set:
        raise MessageError(f"{_type_of(command)}.id: field required")


def command_name(command: Command) -> str:
    """A command's name on the wire (its ``type``), e.g. ``"override_power"``."""
    return _type_of(command)


def _type_of(message: BaseModel) -> str:
    value = getattr(message, "type", "")
    return str(value)


def _validate(adapter: TypeAdapter[Any], obj: dict[str, Any], noun: str) -> Any:
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise MessageError(_describe(exc, noun), _recover_id(obj)) from None
    except RecursionError:
        raise MessageError(f"{noun} nested too deeply", _recover_id(obj)) from None


def _describe(exc: ValidationError, noun: str) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == "union_tag_invalid":
            parts.append(f"unknown {noun} type {ctx.get('tag')!r}")
            continue
        if kind == "union_tag_not_found":
            parts.append(f"{noun} has no 'type'")
            continue
        where = ".".join(str(part) for part in error["loc"])
        if kind == "missing":
            what = "field required"
        elif kind == "extra_forbidden":
            what = "unexpected field"
        else:
            msg = str(error["msg"]).removeprefix("Value error, ")
            what = msg[:1].lower() + msg[1:]
        parts.append(f"{where}: {what}" if where else what)
    shown = parts[:3]
    if len(parts) > 3:
        shown.append(f"and {len(parts) - 3} more")
    return "; ".join(shown)


# ---------------------------------------------------------------------------------------------------------
# Device diagnostics and the remote console's login
# ---------------------------------------------------------------------------------------------------------


class ReadingView(_Message):
    """One live reading of a device, as shown: its name, its value in words (with its unit)."""

    name: str
    value: str


class DeviceDiagnostics(_Message):
    """One device as the controller sees it now (:class:`Devices`).

    ``model``, ``serial`` and ``firmware`` come from the device's own identity reply (``None``: the device
    does not report it); ``replies`` counts the lines received from it, ``bad_replies`` the malformed, late or
    missing ones, ``discarded`` the late lines dropped while resynchronising; ``last_reply_age_s`` is the time
    since its last line, s (``None``: none yet).
    """

    name: str
    state: str
    port: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    identity: str | None = None
    replies: Annotated[int, Field(ge=0)] | None = None
    bad_replies: Annotated[int, Field(ge=0)] | None = None
    discarded: Annotated[int, Field(ge=0)] | None = None
    last_error: str | None = None
    last_reply_age_s: _NonNegative | None = None
    readings: list[ReadingView] = Field(default_factory=list)


class FaultReaction(_Message):
    """A fault the controller latched: when (``at``, ISO 8601), what, and its reaction time, ms: from the
    arrival of the input that caused it to "output off" on the laser's line (``None``: the fault came from
    the periodic check, a reading that was late rather than one that arrived)."""

    at: str
    what: str
    reaction_ms: _NonNegative | None = None


class LoopFigures(_Message):
    """The controller's own loop: how late its timer wakes up (lag), ms, over the last ``window_s`` s, the
    controller process's CPU use over the last few seconds, percent of one core, and its uptime, s."""

    lag_p50_ms: _NonNegative | None = None
    lag_p99_ms: _NonNegative | None = None
    lag_max_ms: _NonNegative | None = None
    samples: Annotated[int, Field(ge=0)] = 0
    window_s: _NonNegative = 0.0
    cpu_percent: _NonNegative | None = None
    uptime_s: _NonNegative = 0.0


class DevicesReply(_Message):
    """``devices``: every device's diagnostics, the loop figures and the last faults (newest first)."""

    sim: bool
    state: SafetyState
    devices: list[DeviceDiagnostics]
    loop: LoopFigures
    faults: list[FaultReaction] = Field(default_factory=list)


class RemoteLoginReply(_Message):
    """``remote_login``: how the login went (``outcome`` is a :class:`~control.account_rules.LoginOutcome`
    value), what to show, and on success who logged in."""

    outcome: str
    message: str
    username: str | None = None
    locked_until: str | None = None


# ---------------------------------------------------------------------------------------------------------
# The remote console's backups and research exports: the replies
# ---------------------------------------------------------------------------------------------------------


class RemoteBackupMade(_Message):
    """``remote_backup``: the new backup's file name (under ``backups/``), its size and its verdict."""

    name: str
    size_bytes: Annotated[int, Field(ge=0)]
    verified: bool
    note: str


class RemoteBackupVerified(_Message):
    """``remote_verify_backup``: whether the backup verified, and the verdict's words."""

    name: str
    ok: bool
    note: str


class RemoteExportWritten(_Message):
    """``remote_export``: the new folder's name under ``exports/`` and its path, the sessions in it and
    those left out (still open), its files (relative paths), whether it is identified, and one line saying
    what was written where."""

    folder: str
    path: str
    sessions: list[int]
    skipped: list[int]
    files: list[str]
    identified: bool
    description: str


class RemoteAuditExported(_Message):
    """``remote_audit_export``: the CSV file's name under ``exports/``, its path and how many rows it
    holds."""

    file: str
    path: str
    rows: Annotated[int, Field(ge=0)]
