"""How one console is configured: the settings object the console's app factory takes.

Built from the command line by ``tosca`` and directly by tests. The clock is part of the settings so that
everything time-dependent (lockouts, automatic lock, times shown) can be driven by a test instead of waited
for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from control.account_rules import HashingParameters
from control.clock import Clock, utc_now
from storage.errors import ConfigValueError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class ConsoleSettings(BaseModel):
    """Settings of one console.

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

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    data_dir: Path
    sim: bool = False
    kiosk: bool = False
    clock: Clock = utc_now
    idle_check_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    hashing: HashingParameters = Field(default_factory=HashingParameters)
    terminal: str | None = None
    cursor_blink: bool = True
    controller: Literal["start", "connect", "off"] = "start"
    image_protocol: Literal["auto", "halfblock"] = "auto"
    over_ssh: bool | None = None

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
    from storage.repositories import ConfigRepository  # SQLAlchemy: loaded once the database is open

    async with sessions() as session:
        try:
            value = await ConfigRepository(session).get(AUTO_LOCK_KEY, DEFAULT_AUTO_LOCK_MINUTES)
        except ConfigValueError as exc:
            return DEFAULT_AUTO_LOCK_MINUTES, f"{exc}; using {DEFAULT_AUTO_LOCK_MINUTES} minutes"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_AUTO_LOCK_MINUTES:
        return DEFAULT_AUTO_LOCK_MINUTES, (
            f"config {AUTO_LOCK_KEY}: {value!r} is outside 1 to {MAX_AUTO_LOCK_MINUTES} minutes; "
            f"using {DEFAULT_AUTO_LOCK_MINUTES} minutes"
        )
    return value, None
