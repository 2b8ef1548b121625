"""How one console is configured: the settings object the console's app factory takes, and the console's own
settings read from the configuration (the automatic lock).

Built from the command line by ``tosca`` and directly by tests. The clock is part of the settings so that
everything time-dependent (lockouts, automatic lock, times shown) can be driven by a test instead of waited
for. Only the console uses these; the settings the controller reads too are in :mod:`control.settings`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from control.account_rules import HashingParameters
from control.clock import Clock, utc_now
from control.settings import int_setting_or_default

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


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


async def read_auto_lock_minutes(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, str | None]:
    """Minutes of inactivity before the console locks: the setting ``auto_lock_minutes``
    (:mod:`control.system_config` states its range and default).

    Returns ``(minutes, problem)``: ``problem`` is ``None`` normally, or a one-line reason when the stored
    value was refused and the default was used instead. A console never runs without an automatic lock.
    """
    async with sessions() as session:
        return await int_setting_or_default(session, "auto_lock_minutes", "minutes")


def default_setting(key: str) -> object:
    """The default of the setting ``key`` (from :mod:`control.system_config`, loaded on first use)."""
    from control.system_config import spec

    return spec(key).default
