"""Changing a setting: an admin edits one ``system_config`` key, checked, audited, never overwritten unawares.

:func:`change_setting` is the only writer of the settings (the configuration screen and ``tosca config set``
both use it). A change goes through these checks, in one transaction, and is refused with one line naming the
key and the reason when any fails:

* the person named is an active admin, by the role the database holds now (not the role they logged in with);
* the key is a setting (:data:`control.system_config.SETTING_KEYS`);
* the text is a value of the key's type (a whole number, a finite decimal number, or text), in its range
  (:func:`control.system_config.check_setting`), and the settings as a whole stay valid with it (the
  photodiode warning threshold below the fault threshold: :func:`control.system_config.settings_from`);
* a reason is given;
* the stored value is still the one the admin saw (``expected``): when another admin changed it meanwhile the
  change is refused with who changed it, from what to what.

A change writes the value (inserted with the key's type where the key was absent, updated otherwise, with
the admin's id and the time) and one ``audit_log`` row, action ``config_change``, details ``{key, old, new,
reason}``, in the same transaction. A refusal changes nothing and writes one ``config_change`` audit row
with outcome ``failure``, the refusal and the value tried.

:func:`read_entries` lists every setting as an editor shows it: the stored value (or the default where the
key is absent), the default, the unit and the meaning, with a note where a stored value is unusable.

When a change applies: the controller reads the settings when it starts and again each time a session opens
(``control/controller/treatment.py`` ``_load_limits``): the supervisor's photodiode thresholds and power
ceiling, the loop rate, and the ceiling each protocol is checked against. A change therefore never alters
the limits of a session that is open; see :data:`WHEN_APPLIED`.

All database work goes through :mod:`storage.repositories`; this module contains no SQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from control.system_config import (
    DEFAULTS,
    SETTING_KEYS,
    SettingError,
    SettingSpec,
    check_setting,
    settings_from,
    spec,
)
from storage.errors import ConfigValueError
from storage.models import utc_now
from storage.repositories import AuditRepository, ConfigRepository, UsersRepository, parse_config_value

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

#: The audit action of every change and refused change.
ACTION_CONFIG_CHANGE: Final = "config_change"
#: ``audit_log.entity_type`` of a setting.
ENTITY_CONFIG: Final = "system_config"
#: Longest reason kept (a pasted file is refused, not stored).
MAX_REASON_CHARS: Final = 500
#: Longest value text looked at.
MAX_VALUE_CHARS: Final = 4096
#: When a changed setting takes effect, said wherever settings are changed.
WHEN_APPLIED: Final = (
    "Safety limits never change during a session: a new power ceiling, photodiode threshold or loop rate "
    "holds from the next session the controller opens."
)

_WHOLE: Final = re.compile(r"[+-]?[0-9]+")
_DECIMAL: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NOT_FINITE: Final = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


class ConfigChangeRefused(SettingError):
    """A change was refused; nothing was changed. The message names the key and says why, in one line."""


class ConcurrentSettingChange(ConfigChangeRefused):
    """The stored value is no longer the one the admin saw: someone changed it meanwhile."""


class NotAnAdmin(ConfigChangeRefused):
    """The person asking is not an active admin."""


@dataclass(frozen=True, slots=True)
class SettingEntry:
    """One setting as an editor lists it. ``value`` is what the controller would use (the stored value, or the
    default where none is stored or the stored one is unusable); ``stored`` is False where the key is absent;
    ``problem`` says why a stored value is unusable (None normally)."""

    spec: SettingSpec
    value: Any
    stored: bool
    problem: str | None
    changed_by: str | None
    changed_at: datetime | None

    @property
    def key(self) -> str:
        return self.spec.key


@dataclass(frozen=True, slots=True)
class SettingChange:
    """A change made: the key, the value before and after, the admin and their reason."""

    key: str
    old: Any
    new: Any
    admin: str
    reason: str


#: The words a boolean setting accepts (any case), as ``system_config`` reads them.
_TRUE_WORDS: Final = frozenset({"true", "on", "yes", "1"})
_FALSE_WORDS: Final = frozenset({"false", "off", "no", "0"})


def format_value(value: Any) -> str:
    """A value as the editor shows it and as ``tosca config`` prints it (``10`` W as ``10.0``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_setting_text(key: str, raw_text: str) -> Any:
    """The value ``raw_text`` gives for ``key``, converted to the key's type and checked against its range
    (surrounding spaces ignored); ConfigChangeRefused naming the key and the reason otherwise."""
    try:
        described = spec(key)
    except SettingError as exc:
        raise ConfigChangeRefused(str(exc)) from None
    if len(raw_text) > MAX_VALUE_CHARS:
        raise ConfigChangeRefused(
            f"config {key}: refused: the value is longer than {MAX_VALUE_CHARS} characters"
        )
    text = raw_text.strip()
    shown = text if len(text) <= 40 else text[:37] + "..."
    if not text:
        raise ConfigChangeRefused(f"config {key}: refused: no value given")
    value: Any
    if described.config_type == "integer":
        if not _WHOLE.fullmatch(text):
            raise ConfigChangeRefused(f"config {key}: {shown!r} refused: must be a whole number")
        value = int(text)
    elif described.config_type == "float":
        if _NOT_FINITE.fullmatch(text):
            raise ConfigChangeRefused(f"config {key}: {shown!r} refused: must be a finite number")
        if not _DECIMAL.fullmatch(text):
            raise ConfigChangeRefused(f"config {key}: {shown!r} refused: must be a number")
        value = float(text)
        if not math.isfinite(value):
            raise ConfigChangeRefused(f"config {key}: {shown!r} refused: must be a finite number")
    elif described.config_type == "boolean":
        lowered = text.lower()
        if lowered not in _TRUE_WORDS | _FALSE_WORDS:
            raise ConfigChangeRefused(f"config {key}: {shown!r} refused: must be true or false")
        value = lowered in _TRUE_WORDS
    else:
        value = text
    try:
        return check_setting(key, value)
    except SettingError as exc:
        raise ConfigChangeRefused(str(exc)) from None


def check_reason(reason: str) -> str:
    """The reason stripped; ConfigChangeRefused when it is blank or longer than :data:`MAX_REASON_CHARS`."""
    text = reason.strip()
    if not text:
        raise ConfigChangeRefused("config: refused: a reason is needed; say why the setting changes")
    if len(text) > MAX_REASON_CHARS:
        raise ConfigChangeRefused(
            f"config: refused: the reason is {len(text)} characters long; at most {MAX_REASON_CHARS}"
        )
    return text


async def _stored_values(session: AsyncSession) -> dict[str, tuple[Any, str | None]]:
    """Each stored setting as ``(value, problem)``: the value as its ``config_type`` reads it (None where the
    text cannot be read) and why the model refuses it (None where it is usable)."""
    found: dict[str, tuple[Any, str | None]] = {}
    for entry in await ConfigRepository(session).all():
        if entry.config_key not in SETTING_KEYS:
            continue
        try:
            value = parse_config_value(entry.config_key, entry.config_value, entry.config_type)
        except ConfigValueError as exc:
            found[entry.config_key] = (None, str(exc))
            continue
        try:
            found[entry.config_key] = (check_setting(entry.config_key, value), None)
        except SettingError as exc:
            found[entry.config_key] = (value, str(exc))
    return found


async def read_entries(sessions: async_sessionmaker[AsyncSession]) -> list[SettingEntry]:
    """Every setting, in the model's order, as an editor lists it."""
    async with sessions() as session:
        rows = {entry.config_key: entry for entry in await ConfigRepository(session).all()}
        stored = await _stored_values(session)
        names: dict[int, str] = {}
        for row in rows.values():
            tech_id = row.modified_by_tech_id
            if tech_id is not None and tech_id not in names:
                user = await UsersRepository(session).get_by_id(tech_id)
                names[tech_id] = user.username if user is not None else f"#{tech_id}"
    entries: list[SettingEntry] = []
    for key in SETTING_KEYS:
        found = rows.get(key)
        value, problem = stored.get(key, (getattr(DEFAULTS, key), None))
        if problem is not None:
            value = getattr(DEFAULTS, key)
        entries.append(
            SettingEntry(
                spec=spec(key),
                value=value,
                stored=found is not None,
                problem=problem,
                changed_by=(
                    names.get(found.modified_by_tech_id)
                    if found is not None and found.modified_by_tech_id is not None
                    else None
                ),
                changed_at=found.last_modified if found is not None else None,
            )
        )
    return entries


async def read_entry(sessions: async_sessionmaker[AsyncSession], key: str) -> SettingEntry:
    """One setting as :func:`read_entries` lists it; ConfigChangeRefused for an unknown key."""
    if key not in SETTING_KEYS:
        raise ConfigChangeRefused(f"config {key}: no such setting")
    return next(entry for entry in await read_entries(sessions) if entry.key == key)


async def _require_admin(session: AsyncSession, admin: str) -> int:
    """The id of ``admin`` if the database holds them as an active admin now; NotAnAdmin otherwise."""
    row = await UsersRepository(session).get_by_username(admin)
    if row is None:
        raise NotAnAdmin(f"config: refused: no user named {admin!r}")
    if row.is_active is False:
        raise NotAnAdmin(f"config: refused: {admin!r} is deactivated")
    if row.role != "admin":
        raise NotAnAdmin(f"config: refused: only an admin may change settings ({admin!r} is {row.role})")
    return row.tech_id


async def _changed_by(session: AsyncSession, tech_id: int | None) -> str:
    if tech_id is None:
        return "someone"
    user = await UsersRepository(session).get_by_id(tech_id)
    return user.username if user is not None else f"user #{tech_id}"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


async def change_setting(
    sessions: async_sessionmaker[AsyncSession],
    key: str,
    raw_text: str,
    *,
    admin: str,
    reason: str,
    expected: Any,
    terminal: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> SettingChange:
    """Set ``key`` to the value ``raw_text`` gives, as ``admin`` for ``reason`` (see the module
    documentation). ``expected`` is the value the admin saw (as :func:`read_entries` gives it). Raises
    ConfigChangeRefused (ConcurrentSettingChange, NotAnAdmin) naming the key and the reason; then nothing
    changed and the refusal is audited."""
    try:
        async with sessions() as session, session.begin():
            return await _change(session, key, raw_text, admin, reason, expected, terminal, clock())
    except ConfigChangeRefused as exc:
        await _audit_refusal(sessions, key, raw_text, admin, reason, str(exc), terminal, clock())
        raise


async def _change(
    session: AsyncSession,
    key: str,
    raw_text: str,
    admin: str,
    reason: str,
    expected: Any,
    terminal: str | None,
    now: datetime,
) -> SettingChange:
    tech_id = await _require_admin(session, admin)
    value = parse_setting_text(key, raw_text)
    why = check_reason(reason)
    described = spec(key)
    config = ConfigRepository(session)
    entry = await config.get_entry(key)
    stored = await _stored_values(session)
    usable, problem = stored.get(key, (getattr(DEFAULTS, key), None))
    # What an editor shows: the stored value, or the default where none is stored or it is unusable.
    current = usable if problem is None else getattr(DEFAULTS, key)
    if not _same(current, expected):
        who = await _changed_by(session, entry.modified_by_tech_id if entry is not None else None)
        raise ConcurrentSettingChange(
            f"config {key}: changed meanwhile by {who} from {format_value(expected)} to "
            f"{format_value(current)}; nothing was saved: look at it again"
        )
    if problem is None and _same(current, value):
        raise ConfigChangeRefused(f"config {key}: is already {format_value(value)}; nothing to change")
    others = {name: good for name, (good, trouble) in stored.items() if trouble is None and name != key}
    try:
        settings_from({**others, key: value})
    except SettingError as exc:
        raise ConfigChangeRefused(
            f"config {key}: {format_value(value)} refused: {_after_colon(exc)}"
        ) from None
    old_text = entry.config_value if entry is not None else None
    try:
        written = await config.set(
            key,
            value,
            modified_by=tech_id,
            config_type=described.config_type,
            description=described.meaning if entry is None else None,
        )
    except ConfigValueError as exc:
        raise ConfigChangeRefused(str(exc)) from None
    written.last_modified = now  # the time of the audit row
    old: Any = current if problem is None else old_text
    details: dict[str, Any] = {"key": key, "old": old, "new": value, "reason": why}
    if problem is not None:
        details["old_refused"] = problem
    await AuditRepository(session).add(
        ACTION_CONFIG_CHANGE,
        "success",
        timestamp=now,
        tech_id=tech_id,
        username=admin,
        entity_type=ENTITY_CONFIG,
        terminal=terminal,
        details=details,
    )
    return SettingChange(key=key, old=old, new=value, admin=admin, reason=why)


def _after_colon(error: SettingError) -> str:
    """The reason of a whole-model refusal without its ``config:`` prefix."""
    return str(error).removeprefix("config: ")


async def _audit_refusal(
    sessions: async_sessionmaker[AsyncSession],
    key: str,
    raw_text: str,
    admin: str,
    reason: str,
    refusal: str,
    terminal: str | None,
    now: datetime,
) -> None:
    async with sessions() as session, session.begin():
        user = await UsersRepository(session).get_by_username(admin)
        await AuditRepository(session).add(
            ACTION_CONFIG_CHANGE,
            "failure",
            timestamp=now,
            tech_id=user.tech_id if user is not None else None,
            username=admin,
            entity_type=ENTITY_CONFIG,
            terminal=terminal,
            details={
                "key": key[:100],
                "value": raw_text[:200],
                "reason": reason.strip()[:MAX_REASON_CHARS],
                "refused": refusal,
            },
        )


__all__ = [
    "ACTION_CONFIG_CHANGE",
    "WHEN_APPLIED",
    "ConcurrentSettingChange",
    "ConfigChangeRefused",
    "NotAnAdmin",
    "SettingChange",
    "SettingEntry",
    "change_setting",
    "check_reason",
    "format_value",
    "parse_setting_text",
    "read_entries",
    "read_entry",
]
