"""The protocol library: import, submit, approve, reject and retire protocol versions, each audited.

A protocol is a named series of versions (``protocol_versions``); a version's data is never rewritten and a
version moves through its approval only forwards:

* ``draft``: saved by :func:`import_protocol` (a file: a new protocol, or the next version of an existing one)
  or by :func:`save_edited_version` (the steps edited in the console's form, from an existing version or
  from nothing): a new version every time, so a version a session used is never changed;
* ``submitted``: offered for approval by an admin (:func:`change_version_status` to ``SUBMITTED``);
* ``approved`` or ``rejected`` (with a reason) by an admin who is not the version's author
  (:func:`change_version_status` to ``APPROVED`` or ``REJECTED``). A draft may be approved or rejected
  directly: the import is the author's offer, the approval the second admin's.

Only an approved version is ever used for treatment on a real rig (:func:`usable_version`); the newest
approved version is the one the technician's list shows and a session opens with. On the simulated rig a
draft (or submitted) version may be tried, and the session records it as such. Retiring a protocol
(:func:`retire_protocol`) hides it from the technician's list; its versions and sessions are kept.

Every action is done by an admin, by the role the database holds now (not the role they logged in with).
Each action and each refusal writes one ``audit_log`` row (actions ``protocol_import``, ``protocol_edit``,
``protocol_submit``, ``protocol_approve``, ``protocol_reject``, ``protocol_retire``; entity
``protocol_version`` or ``protocol``) with the protocol, the version and the old and new status; a refusal
changes nothing else. A refusal a screen decides before asking the database (the author approving their own
version, a version already decided, a name that cannot be one) is audited the same way through
:func:`record_refusal`, and so is a protocol file refused before its rules are checked (unreadable, too large,
not UTF-8: :func:`import_protocol_file`).

Two admins at once: each action names what the admin saw (``expected_latest``: the newest version number of
the protocol when importing; ``expected_status``: the version's status when approving, rejecting or
submitting). When the database holds something else, the action is refused with what changed, by whom and
when, never silently applied over the other admin's work.

A protocol file is checked exactly as ``tosca protocol validate`` checks it (:func:`control.protocols.
check_protocol` against the system's limits, every error named); a file larger than
:data:`MAX_PROTOCOL_FILE_BYTES` or not UTF-8 is refused unread. A refused file stores nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import select

from control.protocols import LimitsError, ProtocolError, check_protocol, load_limits, protocol_type
from storage.errors import StorageError
from storage.models import Protocol, ProtocolVersion, TechUser, utc_now
from storage.repositories import AuditRepository, ProtocolsRepository, UsersRepository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

ACTION_IMPORT: Final = "protocol_import"
ACTION_EDIT: Final = "protocol_edit"
ACTION_SUBMIT: Final = "protocol_submit"
ACTION_APPROVE: Final = "protocol_approve"
ACTION_REJECT: Final = "protocol_reject"
ACTION_RETIRE: Final = "protocol_retire"
#: ``audit_log.entity_type`` of a version's action (the entity id is the version's row id).
ENTITY_VERSION: Final = "protocol_version"
#: ``audit_log.entity_type`` of a protocol's action (the entity id is the protocol's id).
ENTITY_PROTOCOL: Final = "protocol"

DRAFT: Final = "draft"
SUBMITTED: Final = "submitted"
APPROVED: Final = "approved"
REJECTED: Final = "rejected"
#: Statuses a version may be tried from on the simulated rig.
TRIAL_STATUSES: Final = (DRAFT, SUBMITTED)

#: Largest protocol file read, bytes (a protocol is a few kilobytes; this bounds a mistaken file).
MAX_PROTOCOL_FILE_BYTES: Final = 1_000_000
#: Longest protocol name.
MAX_NAME_CHARS: Final = 120
#: Longest rejection reason kept.
MAX_REASON_CHARS: Final = 500
#: Who approved a version approved with no user: the shipped protocols.
SYSTEM: Final = "the system"


class ApprovalRefused(Exception):
    """An action on the library was refused; nothing was changed. ``errors`` lists every reason (the message
    joins them)."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: tuple[str, ...] = tuple(errors) or (message,)


class NotAnAdmin(ApprovalRefused):
    """The person asking is not an active admin."""


class ConcurrentProtocolChange(ApprovalRefused):
    """What the admin saw is no longer what the database holds: another admin changed it meanwhile."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version as the library lists it (times naive UTC; people by username, :data:`SYSTEM` for an
    approval with no user)."""

    version: int
    status: str
    created_by: str
    created_at: datetime | None
    change_summary: str
    submitted_by: str | None
    approved_by: str | None
    approved_at: datetime | None
    rejected_by: str | None
    rejected_at: datetime | None
    rejection_reason: str | None
    protocol_data: str


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """One protocol with every version, oldest first; ``active`` is False once retired."""

    protocol_id: int
    name: str
    active: bool
    versions: tuple[VersionInfo, ...]

    @property
    def approved(self) -> VersionInfo | None:
        """The newest approved version (the one used for treatment), or None."""
        found = [v for v in self.versions if v.status == APPROVED]
        return found[-1] if found else None

    @property
    def latest(self) -> VersionInfo | None:
        """The newest version, whatever its status."""
        return self.versions[-1] if self.versions else None

    def version(self, number: int) -> VersionInfo | None:
        """Version ``number``, or None."""
        return next((v for v in self.versions if v.version == number), None)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """A version stored by :func:`import_protocol`: the protocol, its new version and whether the protocol
    itself is new."""

    name: str
    version: int
    created_protocol: bool
    protocol_type: str


def usable_version(versions: Sequence[ProtocolVersion], *, draft: bool = False) -> ProtocolVersion | None:
    """The version a session opens with: the newest approved one, or with ``draft`` (simulated rig only)
    the newest draft or submitted one. None when there is no such version."""
    wanted = TRIAL_STATUSES if draft else (APPROVED,)
    found = [v for v in versions if v.status in wanted]
    return max(found, key=lambda v: v.version) if found else None


async def approve_as_system(session: AsyncSession, protocol_id: int, *, when: datetime | None = None) -> int:
    """Mark every draft or submitted version of the protocol ``protocol_id`` approved by the system (no
    approving user), in the caller's transaction; return how many. Used for the protocols that ship with the
    console, which count as approved at install; an admin's protocol goes through
    :func:`change_version_status`."""
    count = 0
    for row in await ProtocolsRepository(session).versions(protocol_id):
        if row.status in TRIAL_STATUSES:
            row.status, row.approved_at, row.approved_by_tech_id = APPROVED, when or utc_now(), None
            count += 1
    await session.flush()
    return count


def read_protocol_file(path: Path) -> str:
    """The text of the protocol file ``path``; ApprovalRefused with the reason when it is missing, a folder,
    larger than :data:`MAX_PROTOCOL_FILE_BYTES` or not UTF-8 (nothing more than that is read)."""
    try:
        if path.is_dir():
            raise ApprovalRefused(f"{path}: is a folder, not a protocol file")
        with path.open("rb") as handle:
            data = handle.read(MAX_PROTOCOL_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ApprovalRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise ApprovalRefused(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_PROTOCOL_FILE_BYTES:
        raise ApprovalRefused(
            f"{path}: larger than {MAX_PROTOCOL_FILE_BYTES} bytes; a protocol file is a few kilobytes"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApprovalRefused(f"{path}: not UTF-8 text (byte {exc.start})") from None


def check_name(name: str) -> str:
    """The protocol name stripped; ApprovalRefused when blank, too long or holding control characters."""
    text = name.strip()
    if not text:
        raise ApprovalRefused("a protocol needs a name")
    if len(text) > MAX_NAME_CHARS:
        raise ApprovalRefused(f"the protocol name has {len(text)} characters; at most {MAX_NAME_CHARS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ApprovalRefused("the protocol name must not hold control characters")
    return text


async def _names(session: AsyncSession, ids: set[int | None]) -> dict[int, str]:
    users = UsersRepository(session)
    found: dict[int, str] = {}
    for tech_id in ids:
        if tech_id is None:
            continue
        user = await users.get_by_id(tech_id)
        found[tech_id] = user.username if user is not None else f"user #{tech_id}"
    return found


def _info(row: ProtocolVersion, names: dict[int, str]) -> VersionInfo:
    def who(tech_id: int | None) -> str | None:
        return None if tech_id is None else names.get(tech_id, f"user #{tech_id}")

    approved_by = who(row.approved_by_tech_id)
    if approved_by is None and row.status == APPROVED:
        approved_by = SYSTEM
    return VersionInfo(
        version=row.version,
        status=row.status,
        created_by=who(row.created_by_tech_id) or SYSTEM,
        created_at=row.created_date,
        change_summary=row.change_summary or "",
        submitted_by=who(row.submitted_by_tech_id),
        approved_by=approved_by,
        approved_at=row.approved_at,
        rejected_by=who(row.rejected_by_tech_id),
        rejected_at=row.rejected_at,
        rejection_reason=row.rejection_reason,
        protocol_data=row.protocol_data,
    )


async def _entry(session: AsyncSession, protocol: Protocol) -> LibraryEntry:
    rows = await ProtocolsRepository(session).versions(protocol.protocol_id)
    ids: set[int | None] = set()
    for row in rows:
        ids |= {row.created_by_tech_id, row.submitted_by_tech_id, row.approved_by_tech_id}
        ids.add(row.rejected_by_tech_id)
    names = await _names(session, ids)
    return LibraryEntry(
        protocol_id=protocol.protocol_id,
        name=protocol.protocol_name,
        active=protocol.is_active is not False,
        versions=tuple(_info(row, names) for row in rows),
    )


async def list_library(sessions: async_sessionmaker[AsyncSession]) -> list[LibraryEntry]:
    """Every protocol, retired ones included, by name, each with all its versions."""
    async with sessions() as session:
        query = select(Protocol).order_by(Protocol.protocol_name)
        protocols = list((await session.execute(query)).scalars())
        return [await _entry(session, protocol) for protocol in protocols]


async def library_entry(sessions: async_sessionmaker[AsyncSession], name: str) -> LibraryEntry:
    """The protocol ``name`` with its versions; ApprovalRefused when there is none."""
    async with sessions() as session:
        protocol = await ProtocolsRepository(session).get_by_name(name)
        if protocol is None:
            raise ApprovalRefused(f"no protocol named {name!r}")
        return await _entry(session, protocol)


async def _require_admin(session: AsyncSession, admin: str) -> TechUser:
    user = await UsersRepository(session).get_by_username(admin)
    if user is None:
        raise NotAnAdmin(f"no user named {admin!r}")
    if user.is_active is False:
        raise NotAnAdmin(f"{admin!r} is deactivated")
    if user.role != "admin":
        raise NotAnAdmin(f"only an admin may change the protocol library ({admin!r} is {user.role})")
    return user


def _same_protocol(stored: str, text: str) -> bool:
    """Whether ``text`` holds the same protocol as ``stored`` (the same JSON values, however written)."""
    if stored == text:
        return True
    try:
        return bool(json.loads(stored) == json.loads(text))
    except ValueError:
        return False


def _when(moment: datetime | None) -> str:
    return "at an unknown time" if moment is None else f"at {moment:%Y-%m-%d %H:%M:%S} UTC"


async def _audit(
    sessions: async_sessionmaker[AsyncSession],
    action: str,
    admin: str,
    details: dict[str, Any],
    refusal: str,
    terminal: str | None,
    now: datetime,
) -> None:
    """One failure row for a refused action, in its own transaction (the refused one wrote nothing)."""
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).get_by_username(admin)
        entity_id: int | None = None
        protocol = (
            await ProtocolsRepository(session).get_by_name(str(details["protocol"]))
            if details.get("protocol")
            else None
        )
        if protocol is not None:
            entity_id = protocol.protocol_id
        await AuditRepository(session).add(
            action,
            "failure",
            tech_id=user.tech_id if user is not None else None,
            username=admin,
            entity_type=ENTITY_PROTOCOL,
            entity_id=entity_id,
            terminal=terminal,
            details={**details, "refused": refusal},
            timestamp=now,
        )


async def record_refusal(
    sessions: async_sessionmaker[AsyncSession],
    action: str,
    admin: str,
    reason: str,
    *,
    protocol: str | None = None,
    version: int | None = None,
    old_status: str | None = None,
    new_status: str | None = None,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Audit a refusal decided before the library was asked (by a screen that already knows the answer):
    one failure row ``action`` for ``admin`` with the protocol, version, statuses and ``reason``."""
    details: dict[str, Any] = {"protocol": protocol, "version": version}
    if old_status is not None or new_status is not None:
        details |= {"old_status": old_status, "new_status": new_status}
    await _audit(sessions, action, admin, details, reason, terminal, clock())


# ------------------------------------------------------------------------------------------------- import


async def import_protocol(
    sessions: async_sessionmaker[AsyncSession],
    text: str,
    *,
    name: str,
    admin: str,
    source: str,
    expected_latest: int | None = None,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ImportResult:
    """Store the protocol JSON ``text`` as a new draft: version 1 of a new protocol ``name``, or the next
    version of the existing one. ``source`` says where it came from (a file name). ``expected_latest`` is the
    newest version number the admin saw (0 for a new protocol; None: not checked). Raises ApprovalRefused
    with every error; then nothing is stored and the refusal is audited."""
    details: dict[str, Any] = {"protocol": name.strip(), "source": source, "old_status": None}
    try:
        return await _import(
            sessions,
            text,
            name,
            admin,
            _Origin(ACTION_IMPORT, source, f"imported from {source}", None),
            expected_latest,
            terminal,
            clock(),
        )
    except ApprovalRefused as exc:
        await _audit(sessions, ACTION_IMPORT, admin, details, "; ".join(exc.errors), terminal, clock())
        raise


async def import_protocol_file(
    sessions: async_sessionmaker[AsyncSession],
    path: Path,
    *,
    name: str,
    admin: str,
    expected_latest: int | None = None,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ImportResult:
    """Read the protocol file ``path`` (:func:`read_protocol_file`, in a worker thread) and store it as
    :func:`import_protocol` does. A file refused unread (missing, a folder, too large, not UTF-8) is audited
    as a refused import too; nothing is stored."""
    try:
        text = await asyncio.to_thread(lambda: read_protocol_file(path.expanduser()))
    except ApprovalRefused as exc:
        details: dict[str, Any] = {"protocol": name.strip(), "source": path.name, "old_status": None}
        await _audit(sessions, ACTION_IMPORT, admin, details, str(exc), terminal, clock())
        raise
    return await import_protocol(
        sessions,
        text,
        name=name,
        admin=admin,
        source=path.name,
        expected_latest=expected_latest,
        terminal=terminal,
        clock=clock,
    )


#: Where a version edited in the console comes from (the ``source`` of its audit row).
EDITOR_SOURCE: Final = "the console's protocol editor"
#: Longest note an admin gives to an edited version.
MAX_NOTE_CHARS: Final = 200


async def save_edited_version(
    sessions: async_sessionmaker[AsyncSession],
    text: str,
    *,
    name: str,
    admin: str,
    based_on: int | None,
    expected_latest: int,
    note: str = "",
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> ImportResult:
    """Store the protocol JSON ``text`` edited in the console as a new draft version of ``name`` (version 1
    of a new protocol when ``expected_latest`` is 0). ``based_on`` is the version the form started from (None:
    from nothing); ``expected_latest`` the newest version the admin saw: another admin's version saved
    meanwhile refuses the save with what changed. The version started from is never changed. Checked and
    audited exactly as an import is (action ``protocol_edit``)."""
    origin = "a new protocol" if based_on is None else f"edited from v{based_on}"
    details: dict[str, Any] = {
        "protocol": name.strip(),
        "source": EDITOR_SOURCE,
        "based_on": based_on,
        "old_status": None,
    }
    try:
        why = note.strip()
        if len(why) > MAX_NOTE_CHARS:
            raise ApprovalRefused(f"the note has {len(why)} characters; at most {MAX_NOTE_CHARS}")
        summary = f"{origin} in the console" + (f": {why}" if why else "")
        return await _import(
            sessions,
            text,
            name,
            admin,
            _Origin(ACTION_EDIT, EDITOR_SOURCE, summary, based_on),
            expected_latest,
            terminal,
            clock(),
        )
    except ApprovalRefused as exc:
        await _audit(sessions, ACTION_EDIT, admin, details, "; ".join(exc.errors), terminal, clock())
        raise


@dataclass(frozen=True, slots=True)
class _Origin:
    """How a new version came: the audit action, its source, the version's change summary, the version it
    was edited from."""

    action: str
    source: str
    summary: str
    based_on: int | None


async def _import(
    sessions: async_sessionmaker[AsyncSession],
    text: str,
    raw_name: str,
    admin: str,
    origin: _Origin,
    expected_latest: int | None,
    terminal: str | None,
    now: datetime,
) -> ImportResult:
    source = origin.source
    name = check_name(raw_name)
    async with sessions() as session:
        await _require_admin(session, admin)
    try:
        limits = await load_limits(sessions)
    except (LimitsError, StorageError) as exc:
        raise ApprovalRefused(f"the system's limits cannot be read: {exc}") from None
    try:
        plan = check_protocol(text, limits)
    except ProtocolError as exc:
        count = len(exc.errors)
        # A file's errors name the file; the editor's name only their field (shown next to it).
        prefix = f"{source}: " if origin.action == ACTION_IMPORT else ""
        raise ApprovalRefused(
            f"{prefix}refused ({count} problem{'s' if count != 1 else ''}): " + "; ".join(exc.errors),
            [f"{prefix}{error}" for error in exc.errors],
        ) from None
    kind = protocol_type(plan.definition)
    async with sessions() as session, session.begin():
        user = await _require_admin(session, admin)
        repo = ProtocolsRepository(session)
        protocol = await repo.get_by_name(name)
        latest_row = None
        if protocol is not None:
            rows = await repo.versions(protocol.protocol_id)
            latest_row = rows[-1] if rows else None
        latest = latest_row.version if latest_row is not None else 0
        if expected_latest is not None and latest != expected_latest:
            if latest_row is None:
                raise ConcurrentProtocolChange(f"{name}: the protocol was removed since you looked")
            who = (await _names(session, {latest_row.created_by_tech_id})).get(
                latest_row.created_by_tech_id or -1, SYSTEM
            )
            seen = "no protocol" if expected_latest == 0 else f"version {expected_latest}"
            raise ConcurrentProtocolChange(
                f"{name}: version {latest} was saved by {who} {_when(latest_row.created_date)} since you "
                f"looked (you saw {seen}); nothing was stored, look again"
            )
        if protocol is not None and protocol.is_active is False:
            raise ApprovalRefused(f"{name}: the protocol is retired; import under a new name")
        if latest_row is not None and _same_protocol(latest_row.protocol_data, text):
            what = "the file is" if origin.action == ACTION_IMPORT else "the steps are"
            raise ApprovalRefused(f"{name}: {what} identical to version {latest}; nothing to store")
        audit = AuditRepository(session)
        summary = origin.summary
        if protocol is None:
            protocol = await repo.add(name, kind, text, description=summary, created_by_tech_id=user.tech_id)
            rows = await repo.versions(protocol.protocol_id)
            row = rows[-1]
            created = True
        else:
            row = await repo.add_version(
                protocol.protocol_id, text, change_summary=summary, created_by_tech_id=user.tech_id
            )
            protocol.protocol_type = kind
            created = False
        details: dict[str, Any] = {
            "protocol": name,
            "version": row.version,
            "source": source,
            "old_status": None,
            "new_status": DRAFT,
            "new_protocol": created,
        }
        if origin.action == ACTION_EDIT:
            details["based_on"] = origin.based_on
        await audit.add(
            origin.action,
            "success",
            tech_id=user.tech_id,
            username=user.username,
            entity_type=ENTITY_VERSION,
            entity_id=row.version_id,
            terminal=terminal,
            details=details,
            timestamp=now,
        )
        return ImportResult(name=name, version=row.version, created_protocol=created, protocol_type=kind)


# ----------------------------------------------------------------------------------- submit, approve, reject


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A version's status changed: the protocol, the version, before and after, by whom."""

    name: str
    version: int
    old_status: str
    new_status: str
    admin: str


_ALLOWED_FROM: Final = {
    SUBMITTED: (DRAFT,),
    APPROVED: (DRAFT, SUBMITTED),
    REJECTED: (DRAFT, SUBMITTED),
}
_ACTION_OF: Final = {SUBMITTED: ACTION_SUBMIT, APPROVED: ACTION_APPROVE, REJECTED: ACTION_REJECT}
_VERB_OF: Final = {SUBMITTED: "submit", APPROVED: "approve", REJECTED: "reject"}


async def change_version_status(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    version: int,
    new: str,
    *,
    admin: str,
    reason: str | None = None,
    expected_status: str | None = None,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> StatusChange:
    """Move ``version`` of ``name`` to ``new`` as ``admin`` (see the module documentation): ``SUBMITTED``
    offers a draft for approval; ``APPROVED`` and ``REJECTED`` are refused for a non-admin, for the version's
    author and for a version already approved or rejected, and a rejection needs a ``reason``. With
    ``expected_status`` (the status the admin saw) a version changed meanwhile is refused
    (:class:`ConcurrentProtocolChange`). A refusal is recorded in the audit trail, then raised."""
    if new not in _ACTION_OF:
        raise ValueError(f"no status change to {new!r} (one of {', '.join(_ACTION_OF)})")
    details: dict[str, Any] = {"protocol": name, "version": version, "new_status": new}
    if reason is not None:
        details["reason"] = reason
    try:
        async with sessions() as session, session.begin():
            return await _apply_status(
                session, name, version, new, admin, reason, expected_status, terminal, clock(), details
            )
    except ApprovalRefused as exc:
        await _audit(sessions, _ACTION_OF[new], admin, details, str(exc), terminal, clock())
        raise


async def _apply_status(
    session: AsyncSession,
    name: str,
    version: int,
    new: str,
    admin: str,
    reason: str | None,
    expected_status: str | None,
    terminal: str | None,
    now: datetime,
    details: dict[str, Any],
) -> StatusChange:
    verb = _VERB_OF[new]
    user = await _require_admin(session, admin)
    repo = ProtocolsRepository(session)
    protocol = await repo.get_by_name(name)
    if protocol is None:
        raise ApprovalRefused(f"no protocol named {name!r}")
    row = next((v for v in await repo.versions(protocol.protocol_id) if v.version == version), None)
    if row is None:
        raise ApprovalRefused(f"{name}: there is no version {version}")
    details["old_status"] = row.status
    names = await _names(
        session,
        {row.created_by_tech_id, row.submitted_by_tech_id, row.approved_by_tech_id, row.rejected_by_tech_id},
    )
    if expected_status is not None and row.status != expected_status:
        if row.status == APPROVED:
            by = names.get(row.approved_by_tech_id or -1, SYSTEM)
            what = f"approved by {by} {_when(row.approved_at)}"
        elif row.status == REJECTED:
            by = names.get(row.rejected_by_tech_id or -1, "someone")
            what = f"rejected by {by} {_when(row.rejected_at)} ({row.rejection_reason})"
        else:
            by = names.get(row.submitted_by_tech_id or -1, "someone")
            what = f"submitted by {by} {_when(row.submitted_at)}"
        raise ConcurrentProtocolChange(
            f"{name} v{version}: it was {expected_status} when you looked and has since been {what}; "
            "nothing was changed"
        )
    if protocol.is_active is False:
        raise ApprovalRefused(f"{name}: the protocol is retired")
    if row.status == new:
        raise ApprovalRefused(f"{name} v{version}: already {new}; a version is {verb}d once")
    if row.status not in _ALLOWED_FROM[new]:
        raise ApprovalRefused(f"{name} v{version}: cannot {verb} a version that is {row.status}")
    if new in (APPROVED, REJECTED) and row.created_by_tech_id == user.tech_id:
        raise ApprovalRefused(f"{name} v{version}: {admin} is its author; another admin must {verb} it")
    why: str | None = None
    if new == REJECTED:
        why = (reason or "").strip()
        if not why:
            raise ApprovalRefused(f"{name} v{version}: a rejection needs a reason")
        if len(why) > MAX_REASON_CHARS:
            raise ApprovalRefused(f"the reason has {len(why)} characters; at most {MAX_REASON_CHARS}")
        details["reason"] = why
    old = row.status
    row.status = new
    if new == SUBMITTED:
        row.submitted_by_tech_id, row.submitted_at = user.tech_id, now
    elif new == APPROVED:
        row.approved_by_tech_id, row.approved_at = user.tech_id, now
    else:
        row.rejected_by_tech_id, row.rejected_at, row.rejection_reason = user.tech_id, now, why
    await session.flush()
    await AuditRepository(session).add(
        _ACTION_OF[new],
        "success",
        tech_id=user.tech_id,
        username=user.username,
        entity_type=ENTITY_VERSION,
        entity_id=row.version_id,
        terminal=terminal,
        details={**details, "old_status": old},
        timestamp=now,
    )
    return StatusChange(name=name, version=version, old_status=old, new_status=new, admin=user.username)


# ------------------------------------------------------------------------------------------------- retire


async def retire_protocol(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    *,
    admin: str,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Retire ``name``: no longer listed for treatment; its versions and sessions are kept. Refused for a
    non-admin, an unknown protocol and one already retired; audited either way."""
    details: dict[str, Any] = {"protocol": name, "old_status": "active", "new_status": "retired"}
    try:
        async with sessions() as session, session.begin():
            user = await _require_admin(session, admin)
            protocol = await ProtocolsRepository(session).get_by_name(name)
            if protocol is None:
                raise ApprovalRefused(f"no protocol named {name!r}")
            if protocol.is_active is False:
                details["old_status"] = "retired"
                raise ApprovalRefused(f"{name}: already retired")
            protocol.is_active = False
            protocol.last_modified_date = clock()
            await session.flush()
            await AuditRepository(session).add(
                ACTION_RETIRE,
                "success",
                tech_id=user.tech_id,
                username=user.username,
                entity_type=ENTITY_PROTOCOL,
                entity_id=protocol.protocol_id,
                terminal=terminal,
                details=details,
                timestamp=clock(),
            )
    except ApprovalRefused as exc:
        await _audit(sessions, ACTION_RETIRE, admin, details, str(exc), terminal, clock())
        raise


__all__ = [
    "ACTION_APPROVE",
    "ACTION_EDIT",
    "ACTION_IMPORT",
    "ACTION_REJECT",
    "ACTION_RETIRE",
    "ACTION_SUBMIT",
    "APPROVED",
    "DRAFT",
    "EDITOR_SOURCE",
    "MAX_PROTOCOL_FILE_BYTES",
    "REJECTED",
    "SUBMITTED",
    "SYSTEM",
    "TRIAL_STATUSES",
    "ApprovalRefused",
    "ConcurrentProtocolChange",
    "ImportResult",
    "LibraryEntry",
    "NotAnAdmin",
    "StatusChange",
    "VersionInfo",
    "approve_as_system",
    "change_version_status",
    "check_name",
    "import_protocol",
    "import_protocol_file",
    "library_entry",
    "list_library",
    "read_protocol_file",
    "record_refusal",
    "retire_protocol",
    "save_edited_version",
    "usable_version",
]
