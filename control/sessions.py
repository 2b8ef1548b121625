"""Treatment session records: opening and closing sessions, the end-of-session summary, the start-up close.

A session's life, as stored in ``sessions.status``::

    (open) -> in_progress <-> paused -> completed | aborted

* :meth:`SessionService.open` checks the user, the subject, the protocol, that no other session is open and
  that the data directory's file system has at least ``min_free_disk_mb`` free, takes an automatic backup of
  the database, then in one transaction inserts the session row (status ``in_progress``, the protocol's latest
  saved version as ``protocol_data_snapshot``, a new unique ``session_uid``), creates the session's folder
  ``sessions/<subject_code>/<session_uid>/`` and counts one more use of the protocol. The folder is named by
  the unique identifier, not the session id, so a database restored from an older backup (which hands out
  session ids again), a renumbering or two consoles never meet a folder that is already there; where
  ``sessions/<subject_code>`` is unusable (a file, a broken link) the folder is
  ``sessions/<subject_code>-<session_uid>/`` instead, so a damaged folder never blocks the next session.
  A subject created with the session takes a code of the clinic's pattern that was never issued before
  (:mod:`control.subject_codes`), and the code is recorded as issued.
* :meth:`SessionService.set_status` moves only between ``in_progress`` and ``paused``.
* :meth:`SessionService.finish` closes an open session as ``completed`` or ``aborted`` (with a reason) and
  writes its summary (:class:`SessionSummary`, computed by :class:`SummaryAccumulator`), the telemetry file's
  path, line count and SHA-256, and the video path. A finished session is never finished again.
* :meth:`SessionService.add_notes` adds the post-treatment notes to a finished session once; they are part of
  the record and are never rewritten.
* :meth:`SessionService.close_interrupted` runs at controller start: a session left ``in_progress`` or
  ``paused`` by a crash is closed as ``aborted`` with the reason, and a ``safety_log`` warning is written for
  each.

Only one session may be open at a time on a console (one rig, one treatment). Every refusal raises
:class:`SessionRefused` with a one-line message a person can act on, and changes nothing.

Times are naive UTC. Powers are in watts, energies in joules, durations in seconds. All database work goes
through the :mod:`storage` repositories; this module contains no SQL.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from control.protocol_approval import usable_version
from control.settings import read_min_free_disk_mb
from control.vocabulary import SessionStatus
from storage import (
    AuditRepository,
    DataDir,
    ProtocolsRepository,
    SafetyLogRepository,
    SessionsRepository,
    StorageError,
    Subject,
    SubjectsRepository,
    TechUser,
    TreatmentEventsRepository,
    TreatmentSession,
    UsersRepository,
    utc_now,
)
from storage.chain import Executor, checkpoint_async, on_session
from storage.maintenance import backup as backup_database
from storage.safety_records import SafetyRecord
from storage.signatures import append_final, is_signed
from storage.telemetry import TelemetrySummary

if TYPE_CHECKING:
    from storage import Protocol

#: Statuses of a session that is still open.
OPEN_STATUSES: Final = ("in_progress", "paused")
#: Statuses a session may be finished with.
FINISHED_STATUSES: Final = ("completed", "aborted")
#: The only status changes :meth:`SessionService.set_status` makes: (from, to).
STATUS_TRANSITIONS: Final = frozenset({("in_progress", "paused"), ("paused", "in_progress")})
#: Characters kept in a folder name made from a subject code (anything else becomes ``_``).
_UNSAFE_IN_NAME: Final = re.compile(r"[^A-Za-z0-9_.-]")
#: Longest post-treatment note accepted, in characters.
MAX_NOTES_LENGTH: Final = 10_000
#: Longest abort reason accepted, in characters.
MAX_REASON_LENGTH: Final = 500
#: The reason recorded for a session found open at start-up.
DEFAULT_INTERRUPTED_REASON: Final = "the controller stopped while the session was open"

#: ``safety_log`` row written for each session closed at start-up.
EVENT_ABORTED_AT_STARTUP: Final = "session_aborted_at_startup"
ACTION_CLOSED_AS_ABORTED: Final = "closed as aborted"
#: ``audit_log.action`` values written by this module.
ACTION_SESSION_OPEN: Final = "session_open"
ACTION_SESSION_FINISH: Final = "session_finish"
ACTION_SESSION_NOTES: Final = "session_notes"
ACTION_SUBJECT_CREATE: Final = "subject_create"
#: ``audit_log.entity_type`` values written by this module.
ENTITY_SESSION: Final = "session"
ENTITY_SUBJECT: Final = "subject"

FinishStatus = Literal["completed", "aborted"]

_SHA256_PATTERN: Final = re.compile(r"[0-9a-f]{64}")


class SessionError(Exception):
    """Base class of session errors; the message is one line a person can act on."""


class SessionRefused(SessionError):
    """An operation on a session was refused; nothing was changed."""


# ---- the summary maths


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """The summary written to a session row at its end.

    Attributes:
        laser_on_time_s: seconds with the laser on.
        avg_power_w: time-weighted average measured power while on, in watts (None if never on).
        max_power_w: highest measured power while on, in watts (None if never on).
        energy_j: delivered energy in joules (integral of measured power while on).
    """

    laser_on_time_s: float
    avg_power_w: float | None
    max_power_w: float | None
    energy_j: float

    def __post_init__(self) -> None:
        for name in ("laser_on_time_s", "avg_power_w", "max_power_w", "energy_j"):
            value = getattr(self, name)
            if value is None and name in ("avg_power_w", "max_power_w"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number; got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")

    @classmethod
    def empty(cls) -> SessionSummary:
        """The summary of a session in which the laser never emitted."""
        return cls(laser_on_time_s=0.0, avg_power_w=None, max_power_w=None, energy_j=0.0)


class SummaryAccumulator:
    """Laser-on time, delivered energy, average and maximum measured power from samples in time order.

    Feed it every sample of the treatment (about 100 per second) with :meth:`add`. Between two consecutive
    samples the laser counts as on when the earlier sample says so; such an interval adds its length to the
    laser-on time and the trapezoid of the two measured powers to the energy. The average is energy divided by
    laser-on time (so it is weighted by time, however unevenly the samples arrive). The maximum is taken over
    the samples measured with the laser on and the samples that close a laser-on interval, so the average
    never exceeds it. Negative measured powers (photodiode noise around zero) count as 0 W.

    Pure arithmetic: no I/O, no clock. A rejected sample leaves the accumulator as it was.
    """

    __slots__ = ("_energy_j", "_last_on", "_last_t", "_last_w", "_max_w", "_on_time_s", "_samples")

    def __init__(self) -> None:
        self._samples = 0
        self._last_t = 0.0
        self._last_w = 0.0
        self._last_on = False
        self._on_time_s = 0.0
        self._energy_j = 0.0
        self._max_w: float | None = None

    def add(self, t_s: float, measured_w: float, laser_on: bool) -> None:
        """Add one sample: time in seconds (any origin, never decreasing), measured power in watts.

        Raises:
            ValueError: for a time or power that is not a finite number, a time earlier than the previous
                sample's, or a ``laser_on`` that is not a bool. Nothing is changed then.
        """
        if isinstance(t_s, bool) or not isinstance(t_s, (int, float)) or not math.isfinite(t_s):
            raise ValueError(f"sample time must be a finite number of seconds; got {t_s!r}")
        if (
            isinstance(measured_w, bool)
            or not isinstance(measured_w, (int, float))
            or not math.isfinite(measured_w)
        ):
            raise ValueError(f"measured power must be a finite number of watts; got {measured_w!r}")
        if not isinstance(laser_on, bool):
            raise ValueError(f"laser_on must be True or False; got {laser_on!r}")
        if self._samples and t_s < self._last_t:
            raise ValueError(f"sample at {t_s} s is earlier than the previous one at {self._last_t} s")
        power = max(0.0, float(measured_w))
        if self._samples and self._last_on:
            dt = float(t_s) - self._last_t
            self._on_time_s += dt
            self._energy_j += 0.5 * (self._last_w + power) * dt
            self._note_max(power)
        if laser_on:
            self._note_max(power)
        self._samples += 1
        self._last_t = float(t_s)
        self._last_w = power
        self._last_on = laser_on

    def _note_max(self, power: float) -> None:
        if self._max_w is None or power > self._max_w:
            self._max_w = power

    @property
    def sample_count(self) -> int:
        """How many samples were added."""
        return self._samples

    @property
    def laser_on_time_s(self) -> float:
        """Seconds with the laser on."""
        return self._on_time_s

    @property
    def energy_j(self) -> float:
        """Delivered energy in joules."""
        return self._energy_j

    @property
    def avg_power_w(self) -> float | None:
        """Time-weighted average measured power while on, in watts; None while no laser-on time has passed."""
        if self._on_time_s <= 0.0:
            return None
        return self._energy_j / self._on_time_s

    @property
    def max_power_w(self) -> float | None:
        """Highest measured power while on, in watts; None if the laser was never on."""
        return self._max_w

    def summary(self) -> SessionSummary:
        """The values to write to the session row."""
        return SessionSummary(
            laser_on_time_s=self._on_time_s,
            avg_power_w=self.avg_power_w,
            max_power_w=self._max_w,
            energy_j=self._energy_j,
        )


# ---- the session records


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """A session just opened: who, for whom, with which protocol version, and where its files go.

    ``started_at`` is naive UTC; ``protocol_data`` is the JSON snapshot stored with the session;
    ``backup_path`` is the automatic backup taken first (None when none was asked for).
    """

    session_id: int
    subject_id: int
    subject_code: str
    tech_id: int
    username: str
    technician: str
    protocol_id: int
    protocol_name: str
    protocol_version: int
    protocol_data: str
    folder: Path
    backup_path: Path | None
    started_at: datetime
    session_uid: str = ""
    protocol_status: str = "approved"


@dataclass(frozen=True, slots=True)
class _Checked:
    """What the checks before opening a session found."""

    user: TechUser
    subject: Subject | None
    protocol: Protocol
    protocol_version: int
    protocol_data: str
    protocol_status: str = "approved"


def _require_text(name: str, value: object, *, limit: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SessionRefused(f"{name} must not be empty")
    if limit is not None and len(value) > limit:
        raise SessionRefused(f"{name} must have at most {limit} characters (it has {len(value)})")
    return value


def _optional_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SessionRefused(f"{name} must be text; got {type(value).__name__}")
    return value if value.strip() else None


@dataclass(frozen=True, slots=True)
class FreeSpace:
    """Free space of the data directory's file system against the floor ``min_free_disk_mb``, in megabytes
    (10^6 bytes). ``problem`` says what is wrong (empty when ``ok``)."""

    free_mb: float
    floor_mb: int
    problem: str

    @property
    def ok(self) -> bool:
        """True when a session may open."""
        return not self.problem

    def describe(self) -> str:
        """One line, e.g. ``41250 MB free (at least 1024 MB)``."""
        return f"{self.free_mb:.0f} MB free (at least {self.floor_mb} MB)"


async def _recoverable_mb(session: AsyncSession, data_dir: DataDir) -> float:
    """Megabytes of session files the retention policy allows to go now (the same accounting as a retention
    run); 0 when the policy cannot be read."""
    from control.system_config import SettingError, read_system_settings, retention_policy
    from storage.retention import reclaimable_bytes

    try:
        policy = retention_policy(await read_system_settings(session))
    except SettingError:
        return 0.0
    found = await asyncio.to_thread(reclaimable_bytes, data_dir.db_path, data_dir.root, policy, utc_now())
    return found / 1e6


async def free_space(session: AsyncSession, data_dir: DataDir) -> FreeSpace:
    """Read ``min_free_disk_mb`` (through ``session``) and the free space of ``data_dir``'s file system."""
    floor_mb, setting_problem = await read_min_free_disk_mb(session)
    try:
        usage = await asyncio.to_thread(shutil.disk_usage, data_dir.root)
    except OSError as exc:
        return FreeSpace(0.0, floor_mb, f"cannot read the free space of {data_dir.root}: {exc}")
    free_mb = usage.free / 1e6
    if free_mb < floor_mb:
        recoverable = await _recoverable_mb(session, data_dir)
        return FreeSpace(
            free_mb,
            floor_mb,
            f"only {free_mb:.0f} MB free in the data directory {data_dir.root}; a session needs at least "
            f"{floor_mb} MB (setting min_free_disk_mb): free some space first"
            + (
                f"; the retention policy allows {recoverable:.0f} MB to go now (tosca retention run)"
                if recoverable >= 1
                else ""
            )
            + (f" ({setting_problem})" if setting_problem else ""),
        )
    return FreeSpace(free_mb, floor_mb, "")


def _final(executor: Executor, *, session_id: int, now: datetime) -> int:
    """Chain the final record of a session just closed (see :func:`storage.signatures.append_final`)."""
    return append_final(executor, session_id, now)


def new_session_uid(now: datetime) -> str:
    """A new session identifier: the UTC start time and 48 random bits, e.g. ``20261206T142501Z-9f3a0c51d2e4``
    (sorts by time; never the same twice in practice, and the database's unique index guarantees it)."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def _session_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SessionRefused(f"a session id is a positive whole number; got {value!r}")
    return value


def _is_active(flag: bool | None) -> bool:
    """``is_active`` NULL counts as active (the column's default is 1)."""
    return True if flag is None else bool(flag)


def _check_telemetry(telemetry: TelemetrySummary | None) -> tuple[str | None, int | None, str | None]:
    """The telemetry columns (path, line count, SHA-256) for ``telemetry``; refused if malformed."""
    if telemetry is None:
        return None, None, None
    if not isinstance(telemetry, TelemetrySummary):
        raise SessionRefused(f"the telemetry must be a TelemetrySummary; got {type(telemetry).__name__}")
    path, line_count, sha256 = telemetry.path, telemetry.line_count, telemetry.sha256
    if not str(path).strip():
        raise SessionRefused("the telemetry path must not be empty")
    if isinstance(line_count, bool) or not isinstance(line_count, int) or line_count < 0:
        raise SessionRefused(f"the telemetry line count must be a whole number >= 0; got {line_count!r}")
    if not isinstance(sha256, str) or not _SHA256_PATTERN.fullmatch(sha256):
        raise SessionRefused(f"the telemetry checksum must be 64 lower-case hex digits; got {sha256!r}")
    return str(path), line_count, sha256


class SessionService:
    """Opens, pauses, resumes, finishes and annotates treatment session records.

    Args:
        sessions: the session maker of the records database (:func:`storage.session_factory`).
        data_dir: the data directory (session folders and backups go there).
        clock: returns naive UTC now; start and end times and log timestamps use it.
        terminal: the terminal recorded in audit rows (:func:`control.terminal.detect_terminal`).

    Operations that change records run one at a time (an :class:`asyncio.Lock`), so two requests cannot both
    find "no session open" and both open one.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        data_dir: DataDir,
        *,
        clock: Callable[[], datetime] = utc_now,
        terminal: str | None = None,
    ) -> None:
        self._sessions = sessions
        self._data_dir = data_dir
        self._clock = clock
        self._terminal = terminal
        self._lock = asyncio.Lock()

    @property
    def data_dir(self) -> DataDir:
        """The data directory this service writes session folders and backups to."""
        return self._data_dir

    # -- start-up -------------------------------------------------------------------------------------------

    async def close_interrupted(self, reason: str = DEFAULT_INTERRUPTED_REASON) -> list[int]:
        """Close every session left ``in_progress`` or ``paused`` as ``aborted`` with ``reason``.

        Each one also gets a ``safety_log`` warning (``session_aborted_at_startup``, action "closed as
        aborted") naming the status it was left in. All in one transaction. Returns the closed sessions' ids.
        """
        reason = _require_text("the reason", reason, limit=MAX_REASON_LENGTH).strip()
        async with self._lock:
            now = self._clock()
            async with self._sessions() as session, session.begin():
                repo = SessionsRepository(session)
                left_open = {row.session_id: row for row in await repo.active_sessions()}
                closed = await repo.abort_interrupted(reason, when=now)
                log = SafetyLogRepository(session)
                for session_id in closed:
                    found = left_open.get(session_id)
                    was = found.status if found is not None else "open"
                    await log.add(
                        SafetyRecord(
                            event_type=EVENT_ABORTED_AT_STARTUP,
                            severity="warning",
                            description=(
                                f"session {session_id} was left {was} and was closed as aborted: {reason}"
                            ),
                            session_id=session_id,
                            tech_id=found.tech_id if found is not None else None,
                            action_taken=ACTION_CLOSED_AS_ABORTED,
                            details={"previous_status": was, "reason": reason},
                            timestamp=now,
                        )
                    )
                for session_id in closed:
                    await on_session(session, functools.partial(_final, session_id=session_id, now=now))
            return closed

    # -- opening --------------------------------------------------------------------------------------------

    async def open(
        self,
        *,
        subject_code: str,
        username: str,
        protocol_name: str,
        treatment_site: str | None = None,
        treatment_notes: str | None = None,
        create_subject: bool = False,
        backup: bool = True,
        draft: bool = False,
    ) -> OpenedSession:
        """Open a session for ``subject_code`` run by ``username`` with the protocol ``protocol_name``.

        Refused (:class:`SessionRefused`) for an unknown or inactive user, an unknown subject (unless
        ``create_subject``, when a code of the clinic's pattern that was never issued is created), an inactive
        subject, an unknown or inactive protocol or one with no saved version, while another session is open,
        and when the data directory has less free space than ``min_free_disk_mb``. With ``backup`` the
        database is backed up first and the session is refused if that fails.

        The session uses the protocol's newest approved version, and is refused when it has none; with
        ``draft`` (the simulated rig only: the caller decides) it uses the newest draft or submitted version,
        recorded as such in the session's notes and its audit row.
        """
        subject_code = _require_text("the subject code", subject_code).strip()
        username = _require_text("the username", username).strip()
        protocol_name = _require_text("the protocol name", protocol_name).strip()
        site = _optional_text("the treatment site", treatment_site)
        notes = _optional_text("the treatment notes", treatment_notes)
        async with self._lock:
            # Check first, so a refused request costs no backup; check again inside the writing transaction.
            async with self._sessions() as session:
                await self._check_open(session, subject_code, username, protocol_name, create_subject, draft)
                await self._check_disk(session)
            backup_path: Path | None = None
            if backup:
                try:
                    backup_path = await asyncio.to_thread(
                        backup_database, self._data_dir, terminal=self._terminal
                    )
                except (StorageError, OSError) as exc:
                    raise SessionRefused(f"the automatic backup before the session failed: {exc}") from exc
            return await self._insert(
                subject_code, username, protocol_name, site, notes, create_subject, backup_path, draft
            )

    async def _insert(
        self,
        subject_code: str,
        username: str,
        protocol_name: str,
        site: str | None,
        notes: str | None,
        create_subject: bool,
        backup_path: Path | None,
        draft: bool = False,
    ) -> OpenedSession:
        now = self._clock()
        created_folders: list[Path] = []
        try:
            async with self._sessions() as session, session.begin():
                checked = await self._check_open(
                    session, subject_code, username, protocol_name, create_subject, draft
                )
                if checked.protocol_status != "approved":
                    trial = (
                        f"Trial of {checked.protocol_status} protocol version {checked.protocol_version} "
                        "on the simulated rig."
                    )
                    notes = trial if notes is None else f"{trial} {notes}"
                user, protocol = checked.user, checked.protocol
                subject = checked.subject
                audit = AuditRepository(session)
                if subject is None:
                    from control.subjects import SubjectError, insert_subject  # subjects imports this module

                    try:
                        subject_id, _code = await insert_subject(
                            session,
                            user=user,
                            now=now,
                            code=subject_code,
                            data_root=self._data_dir.root,
                            terminal=self._terminal,
                        )
                    except SubjectError as exc:
                        raise SessionRefused(f"a new subject code: {exc}") from None
                    subject = await SubjectsRepository(session).get_by_id(subject_id)
                    assert subject is not None
                repo = SessionsRepository(session)
                uid = new_session_uid(now)
                row = await repo.add(
                    TreatmentSession(
                        session_uid=uid,
                        subject_id=subject.subject_id,
                        tech_id=user.tech_id,
                        protocol_id=protocol.protocol_id,
                        start_time=now,
                        status="in_progress",
                        treatment_site=site,
                        treatment_notes=notes,
                        protocol_name=protocol.protocol_name,
                        protocol_data_snapshot=checked.protocol_data,
                    )
                )
                folder, created_folders = self._make_folder(subject.subject_code, uid)
                row.session_folder_path = str(folder)
                await repo.save(row)
                await ProtocolsRepository(session).record_use(protocol.protocol_id, when=now)
                await audit.add(
                    ACTION_SESSION_OPEN,
                    "success",
                    tech_id=user.tech_id,
                    username=user.username,
                    entity_type=ENTITY_SESSION,
                    entity_id=row.session_id,
                    terminal=self._terminal,
                    details={
                        "subject_code": subject.subject_code,
                        "protocol_name": protocol.protocol_name,
                        "protocol_version": checked.protocol_version,
                        "protocol_status": checked.protocol_status,
                        "backup": str(backup_path) if backup_path is not None else None,
                    },
                    timestamp=now,
                )
                opened = OpenedSession(
                    session_id=row.session_id,
                    subject_id=subject.subject_id,
                    subject_code=subject.subject_code,
                    tech_id=user.tech_id,
                    username=user.username,
                    technician=user.full_name,
                    protocol_id=protocol.protocol_id,
                    protocol_name=protocol.protocol_name,
                    protocol_version=checked.protocol_version,
                    protocol_data=checked.protocol_data,
                    folder=folder,
                    backup_path=backup_path,
                    started_at=now,
                    session_uid=uid,
                    protocol_status=checked.protocol_status,
                )
        except BaseException:
            self._remove_empty_folders(created_folders)
            raise
        return opened

    def _make_folder(self, subject_code: str, uid: str) -> tuple[Path, list[Path]]:
        """Create the session's folder; return it and the folders this call created, outermost first.

        ``sessions/<subject_code>/<uid>``, or ``sessions/<subject_code>-<uid>`` where the subject's folder
        cannot hold it (a file or a broken link in its place). A failed open removes what it created. A
        folder that exists already is never used: one session's files are never mixed with another's.
        """
        name = _UNSAFE_IN_NAME.sub("_", subject_code)
        if name in ("", ".", ".."):
            name = "_"
        problems: list[str] = []
        for folder in (self._data_dir.sessions / name / uid, self._data_dir.sessions / f"{name}-{uid}"):
            if folder.exists() or folder.is_symlink():
                problems.append(f"{folder} already exists")
                continue
            missing = [folder]
            while not missing[-1].parent.exists():
                missing.append(missing[-1].parent)
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                problems.append(f"cannot create {folder}: {exc.strerror or exc}")
                continue
            return folder, missing[::-1]
        raise SessionRefused("no session folder could be created: " + "; ".join(problems))

    async def _check_disk(self, session: AsyncSession) -> None:
        """Refuse when the data directory's file system has less free space than ``min_free_disk_mb``."""
        space = await free_space(session, self._data_dir)
        if not space.ok:
            raise SessionRefused(space.problem)

    async def free_space(self) -> FreeSpace:
        """The free space of the data directory against ``min_free_disk_mb`` (the pre-treatment check)."""
        async with self._sessions() as session:
            return await free_space(session, self._data_dir)

    async def _check_new_code(self, session: AsyncSession, subject_code: str) -> None:
        """SessionRefused unless ``subject_code`` may be given to a new subject (the clinic's pattern, never
        issued before)."""
        from control.subjects import SubjectError, check_new_code  # subjects imports this module

        try:
            year = self._clock().year
            await check_new_code(session, subject_code, year=year, data_root=self._data_dir.root)
        except SubjectError as exc:
            raise SessionRefused(f"a new subject code: {exc}") from None

    @staticmethod
    def _remove_empty_folders(created: list[Path]) -> None:
        """Remove the folders a failed open created, innermost first, as long as they are still empty."""
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (something was written into it) or already gone: keep what is there

    async def _check_open(
        self,
        session: AsyncSession,
        subject_code: str,
        username: str,
        protocol_name: str,
        create_subject: bool,
        draft: bool = False,
    ) -> _Checked:
        user = await UsersRepository(session).get_by_username(username)
        if user is None:
            raise SessionRefused(f"no user named {username!r}")
        if not _is_active(user.is_active):
            raise SessionRefused(f"user {username!r} is inactive")
        subject = await SubjectsRepository(session).find_subject_by_code(subject_code)
        if subject is None and not create_subject:
            raise SessionRefused(f"no subject with code {subject_code}")
        if subject is None:
            await self._check_new_code(session, subject_code)
        if subject is not None and not _is_active(subject.is_active):
            raise SessionRefused(f"subject {subject_code} is inactive")
        protocols = ProtocolsRepository(session)
        protocol = await protocols.get_by_name(protocol_name)
        if protocol is None:
            raise SessionRefused(f"no protocol named {protocol_name!r}")
        if not _is_active(protocol.is_active):
            raise SessionRefused(f"protocol {protocol_name!r} is inactive")
        versions = await protocols.versions(protocol.protocol_id)
        if not versions:
            raise SessionRefused(f"protocol {protocol_name!r} has no saved version; save it again first")
        latest = usable_version(versions, draft=draft)
        if latest is None:
            if draft:
                raise SessionRefused(f"protocol {protocol_name!r} has no draft version to try")
            raise SessionRefused(
                f"protocol {protocol_name!r} has no approved version; an admin must approve one first"
            )
        already = await SessionsRepository(session).active_sessions()
        if already:
            other = already[0]
            raise SessionRefused(
                f"session {other.session_id} for {other.subject_code} is still {other.status}; "
                "finish it before opening another"
            )
        return _Checked(
            user=user,
            subject=subject,
            protocol=protocol,
            protocol_version=latest.version,
            protocol_data=latest.protocol_data,
            protocol_status=latest.status,
        )

    # -- pause and resume -----------------------------------------------------------------------------------

    async def set_status(self, session_id: int, status: SessionStatus) -> None:
        """Pause (``in_progress`` -> ``paused``) or resume (``paused`` -> ``in_progress``) an open session.

        Any other change is refused; finishing goes through :meth:`finish`.
        """
        session_id = _session_id(session_id)
        async with self._lock, self._sessions() as session, session.begin():
            repo = SessionsRepository(session)
            row = await self._existing(repo, session_id)
            if (row.status, status) not in STATUS_TRANSITIONS:
                if status in FINISHED_STATUSES and row.status in OPEN_STATUSES:
                    raise SessionRefused(f"session {session_id} is finished with finish(), not set_status()")
                raise SessionRefused(f"session {session_id} cannot go from {row.status} to {status}")
            row.status = status
            await repo.save(row)

    # -- finishing ------------------------------------------------------------------------------------------

    async def finish(
        self,
        session_id: int,
        *,
        status: FinishStatus,
        reason: str | None,
        summary: SessionSummary,
        telemetry: TelemetrySummary | None,
        video_path: str | None,
    ) -> None:
        """Close an open session as ``completed`` or ``aborted`` and write its summary.

        Sets the end time (now), the duration in whole seconds, the status, the abort reason (required for
        ``aborted``, refused for ``completed``), the four summary columns, the telemetry file's path, line
        count and SHA-256, and the video path. Refused for a session that is already finished.
        """
        session_id = _session_id(session_id)
        if status not in FINISHED_STATUSES:
            raise SessionRefused(f"a session is finished as completed or aborted, not {status!r}")
        text = _optional_text("the abort reason", reason)
        if status == "aborted":
            text = _require_text("the abort reason", text, limit=MAX_REASON_LENGTH).strip()
        elif text is not None:
            raise SessionRefused("a completed session takes no abort reason")
        if not isinstance(summary, SessionSummary):
            raise SessionRefused(f"the summary must be a SessionSummary; got {type(summary).__name__}")
        telemetry_path, line_count, sha256 = _check_telemetry(telemetry)
        video = _optional_text("the video path", video_path)
        async with self._lock:
            now = self._clock()
            async with self._sessions() as session, session.begin():
                repo = SessionsRepository(session)
                row = await self._existing(repo, session_id)
                if row.status not in OPEN_STATUSES:
                    raise SessionRefused(f"session {session_id} is already {row.status}")
                row.status = status
                row.abort_reason = text
                row.end_time = now
                row.duration_seconds = max(0, int((now - row.start_time).total_seconds()))
                row.total_laser_on_time_seconds = summary.laser_on_time_s
                row.avg_power_watts = summary.avg_power_w
                row.max_power_watts = summary.max_power_w
                row.total_energy_joules = summary.energy_j
                row.telemetry_path = telemetry_path
                row.telemetry_line_count = line_count
                row.telemetry_sha256 = sha256
                row.video_path = video
                await repo.save(row)
                user = await UsersRepository(session).get_by_id(row.tech_id)
                await AuditRepository(session).add(
                    ACTION_SESSION_FINISH,
                    "success",
                    tech_id=row.tech_id,
                    username=user.username if user is not None else None,
                    entity_type=ENTITY_SESSION,
                    entity_id=session_id,
                    terminal=self._terminal,
                    details={"status": status, "reason": text, "energy_j": summary.energy_j},
                    timestamp=now,
                )
                # The final record (summary and events) chained, then each chain's head signed.
                await on_session(session, lambda executor: append_final(executor, session_id, now))
                await checkpoint_async(session, "session_end")

    # -- notes ----------------------------------------------------------------------------------------------

    async def add_notes(self, session_id: int, notes: str, *, username: str) -> None:
        """Write the post-treatment notes of a finished session, once, and audit who wrote them.

        Refused while the session is open, when notes already exist (they are part of the record and never
        rewritten), for empty notes, and for an unknown or inactive user.
        """
        session_id = _session_id(session_id)
        notes = _require_text("the notes", notes, limit=MAX_NOTES_LENGTH)
        username = _require_text("the username", username).strip()
        async with self._lock:
            now = self._clock()
            async with self._sessions() as session, session.begin():
                user = await UsersRepository(session).get_by_username(username)
                if user is None:
                    raise SessionRefused(f"no user named {username!r}")
                if not _is_active(user.is_active):
                    raise SessionRefused(f"user {username!r} is inactive")
                repo = SessionsRepository(session)
                row = await self._existing(repo, session_id)
                if row.status not in FINISHED_STATUSES:
                    raise SessionRefused(f"session {session_id} is still {row.status}; finish it first")
                if row.post_treatment_notes is not None:
                    raise SessionRefused(f"session {session_id} already has notes; they cannot be changed")
                if await on_session(session, lambda executor: is_signed(executor, session_id)):
                    raise SessionRefused(
                        f"session {session_id} is signed: later notes are added as a signed addendum"
                    )
                row.post_treatment_notes = notes
                await repo.save(row)
                await AuditRepository(session).add(
                    ACTION_SESSION_NOTES,
                    "success",
                    tech_id=user.tech_id,
                    username=user.username,
                    entity_type=ENTITY_SESSION,
                    entity_id=session_id,
                    terminal=self._terminal,
                    details={"characters": len(notes)},
                    timestamp=now,
                )

    # -- reading --------------------------------------------------------------------------------------------

    async def summary_of(self, session_id: int) -> dict[str, Any]:
        """What the console shows at the end of a session.

        Keys: ``session_id``, ``status``, ``subject_code``, ``technician``, ``protocol_name``, ``start_time``
        and ``end_time`` (naive UTC), ``duration_seconds``, ``abort_reason``, ``treatment_site``,
        ``laser_on_time_s``, ``avg_power_w``, ``max_power_w``, ``energy_j``, ``treatment_notes``,
        ``post_treatment_notes``, ``event_count`` (treatment events), ``safety_event_count`` (``safety_log``
        rows), ``folder``, ``session_uid`` (None for sessions recorded before it existed),
        ``telemetry_path``, ``telemetry_line_count``, ``telemetry_sha256`` and ``video_path``.
        """
        session_id = _session_id(session_id)
        async with self._sessions() as session:
            repo = SessionsRepository(session)
            row = await self._existing(repo, session_id)
            subject = await SubjectsRepository(session).get_by_id(row.subject_id)
            user = await UsersRepository(session).get_by_id(row.tech_id)
            events = await TreatmentEventsRepository(session).count_for_session(session_id)
            safety = await SafetyLogRepository(session).for_session(session_id)
            return {
                "session_id": row.session_id,
                "status": row.status,
                "subject_code": subject.subject_code if subject is not None else None,
                "technician": user.full_name if user is not None else None,
                "protocol_name": row.protocol_name,
                "start_time": row.start_time,
                "end_time": row.end_time,
                "duration_seconds": row.duration_seconds,
                "abort_reason": row.abort_reason,
                "treatment_site": row.treatment_site,
                "laser_on_time_s": row.total_laser_on_time_seconds,
                "avg_power_w": row.avg_power_watts,
                "max_power_w": row.max_power_watts,
                "energy_j": row.total_energy_joules,
                "treatment_notes": row.treatment_notes,
                "post_treatment_notes": row.post_treatment_notes,
                "event_count": events,
                "safety_event_count": len(safety),
                "folder": row.session_folder_path,
                "session_uid": row.session_uid,
                "telemetry_path": row.telemetry_path,
                "telemetry_line_count": row.telemetry_line_count,
                "telemetry_sha256": row.telemetry_sha256,
                "video_path": row.video_path,
            }

    @staticmethod
    async def _existing(repo: SessionsRepository, session_id: int) -> TreatmentSession:
        row = await repo.get_by_id(session_id)
        if row is None:
            raise SessionRefused(f"no session with id {session_id}")
        return row


__all__ = [
    "DEFAULT_INTERRUPTED_REASON",
    "EVENT_ABORTED_AT_STARTUP",
    "FINISHED_STATUSES",
    "OPEN_STATUSES",
    "STATUS_TRANSITIONS",
    "FinishStatus",
    "FreeSpace",
    "OpenedSession",
    "SessionError",
    "SessionRefused",
    "SessionService",
    "SessionStatus",
    "SessionSummary",
    "SummaryAccumulator",
    "free_space",
    "new_session_uid",
]
