"""How one console is configured: the settings object the console's app factory takes.

Built from the command line by ``tosca`` and directly by tests. The clock is part of the settings so that
everything time-dependent (lockouts, automatic lock, times shown) can be driven by a test instead of waited
for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from control.account_rules import HashingParameters
from control.clock import Clock, utc_now
from storage.errors import ConfigValueError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from control.subject_codes import CodePattern


ControllerMode = Literal["start", "connect", "off"]
ImageProtocol = Literal["auto", "halfblock"]


@dataclass(frozen=True, kw_only=True)
class ConsoleSettings:
    """Settings of one console (a plain dataclass, checked when made: the console builds it before its
    first screen, where loading a validation library would cost start-up time).

    Attributes:
        data_dir: the data directory (``tosca.db``, ``backups/``, ...); shown as given, so a relative path
            stays relative on screen.
        sim: run on the simulated rig; the header then says SIMULATED RIG.
        kiosk: the locked-down console (no quit key, no command palette, Ctrl+C and Ctrl+Z do nothing).
        clock: returns naive UTC now.
        idle_check_seconds: how often, in seconds, inactivity is checked against ``auto_lock_minutes``.
        hashing: argon2id cost parameters for passwords.
        terminal: the terminal recorded in audit rows; ``None`` detects it (tty name or SSH client).
        cursor_blink: whether text cursors blink (off gives steady screenshots and calmer kiosk screens).
        controller: how the console reaches the controller: ``"start"`` connects, starting ``tosca
            controller`` when none is running (a desktop console on the simulated rig); ``"connect"`` only
            connects and keeps retrying (the kiosk, where systemd runs the controller); ``"off"`` runs no link
            at all (screens that need no controller, in tests).
        image_protocol: how camera images are drawn: ``"auto"`` uses the terminal's graphics (Kitty, Sixel)
            where it has them and half-blocks otherwise; ``"halfblock"`` always uses half-blocks (steady
            screenshots, and terminals that answer graphics queries wrongly).
        over_ssh: the console runs over SSH, so it refuses to arm the laser; ``None`` detects it from
            ``SSH_CONNECTION`` in the environment.
    """

    data_dir: Path
    sim: bool = False
    kiosk: bool = False
    clock: Clock = utc_now
    idle_check_seconds: float = 5.0
    hashing: HashingParameters = field(default_factory=HashingParameters)
    terminal: str | None = None
    cursor_blink: bool = True
    controller: ControllerMode = "start"
    image_protocol: ImageProtocol = "auto"
    over_ssh: bool | None = None

    def __post_init__(self) -> None:
        """Check every field; a path given as text becomes a :class:`~pathlib.Path`.

        Raises:
            ValueError: saying which field is wrong and what it accepts.
        """
        if isinstance(self.data_dir, str):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not isinstance(self.data_dir, Path):
            raise ValueError(f"data_dir must be a path, not {self.data_dir!r}")
        for name in ("sim", "kiosk", "cursor_blink"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.over_ssh is not None and not isinstance(self.over_ssh, bool):
            raise ValueError(f"over_ssh must be true, false or None, not {self.over_ssh!r}")
        if not callable(self.clock):
            raise ValueError(f"clock must be callable, not {self.clock!r}")
        seconds = self.idle_check_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not 0 < seconds <= 60
        ):
            raise ValueError(f"idle_check_seconds must be above 0 and at most 60, not {seconds!r}")
        if not isinstance(self.hashing, HashingParameters):
            raise ValueError(f"hashing must be HashingParameters, not {self.hashing!r}")
        if self.terminal is not None and not isinstance(self.terminal, str):
            raise ValueError(f"terminal must be text or None, not {self.terminal!r}")
        for name, choices in (
            ("controller", get_args(ControllerMode)),
            ("image_protocol", get_args(ImageProtocol)),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")

    @property
    def remote(self) -> bool:
        """True when the console runs over SSH (it then never arms the laser)."""
        if self.over_ssh is not None:
            return self.over_ssh
        return bool(os.environ.get("SSH_CONNECTION"))


#: ``system_config`` key: minutes without input before the console locks.
AUTO_LOCK_KEY = "auto_lock_minutes"
#: Used when the key is absent or its value is unusable.
DEFAULT_AUTO_LOCK_MINUTES = 10
#: Longest automatic-lock delay accepted from the configuration, in minutes (a working day).
MAX_AUTO_LOCK_MINUTES = 12 * 60


async def read_auto_lock_minutes(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, str | None]:
    """Minutes of inactivity before the console locks, from ``system_config`` (via the config repository).

    Returns ``(minutes, problem)``: ``problem`` is ``None`` normally, or a one-line reason when the stored
    value was unusable (not an integer, or outside 1 to :data:`MAX_AUTO_LOCK_MINUTES`) and the default of
    :data:`DEFAULT_AUTO_LOCK_MINUTES` was used instead. A console never runs without an automatic lock.
    """
    async with sessions() as session:
        return await _read_int_setting(
            session, AUTO_LOCK_KEY, DEFAULT_AUTO_LOCK_MINUTES, 1, MAX_AUTO_LOCK_MINUTES, "minutes"
        )


async def _read_int_setting(
    session: AsyncSession, key: str, default: int, low: int, high: int, unit: str
) -> tuple[int, str | None]:
    """An integer setting from ``system_config`` within ``low`` to ``high`` (``unit`` names it in messages),
    as ``(value, problem)``: ``default`` and a one-line reason when the stored value is unusable."""
    from storage.repositories import ConfigRepository  # SQLAlchemy: loaded once the database is open

    try:
        value = await ConfigRepository(session).get(key, default)
    except ConfigValueError as exc:
        return default, f"{exc}; using {default} {unit}"
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return default, f"config {key}: {value!r} is outside {low} to {high} {unit}; using {default} {unit}"
    return value, None


#: ``system_config`` key: free space, in megabytes, the data directory's file system must keep for a session
#: to open.
MIN_FREE_DISK_KEY = "min_free_disk_mb"
#: Used when the key is absent or its value is unusable.
DEFAULT_MIN_FREE_DISK_MB = 1024
#: Largest floor accepted from the configuration, in megabytes (10 TB).
MAX_MIN_FREE_DISK_MB = 10_000_000


async def read_min_free_disk_mb(session: AsyncSession) -> tuple[int, str | None]:
    """The free-space floor in megabytes from ``system_config``, as ``(megabytes, problem)``.

    ``problem`` is ``None`` normally, or a one-line reason when the stored value was unusable (not an integer,
    or outside 0 to :data:`MAX_MIN_FREE_DISK_MB`) and :data:`DEFAULT_MIN_FREE_DISK_MB` was used instead. 0
    switches the floor off.
    """
    return await _read_int_setting(
        session, MIN_FREE_DISK_KEY, DEFAULT_MIN_FREE_DISK_MB, 0, MAX_MIN_FREE_DISK_MB, "MB"
    )


async def read_subject_code_pattern(session: AsyncSession) -> CodePattern:
    """The clinic's subject code pattern from ``system_config`` (``subject_code_pattern``, default
    ``P-YYYY-NNNN``). Raises :class:`~control.subject_codes.CodePatternError` naming the setting when the
    stored pattern is unusable: codes are never made up from a pattern nobody chose."""
    from control.subject_codes import DEFAULT_PATTERN, PATTERN_KEY, CodePattern, CodePatternError
    from storage.repositories import ConfigRepository

    try:
        text = await ConfigRepository(session).get(PATTERN_KEY, DEFAULT_PATTERN)
        return CodePattern.parse(text)
    except (ConfigValueError, CodePatternError) as exc:
        raise CodePatternError(f"config {PATTERN_KEY}: {exc}") from None
