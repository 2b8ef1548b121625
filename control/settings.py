"""The settings both the controller and the console read from the configuration with a fallback or a refusal
of their own: the free-space floor of a new session and the subject code pattern.

The console's own settings (how a console is configured, its automatic lock) are in ``tui/settings.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from control.subject_codes import CodePattern


async def read_min_free_disk_mb(session: AsyncSession) -> tuple[int, str | None]:
    """The free-space floor in megabytes, the setting ``min_free_disk_mb``, as ``(megabytes, problem)``.

    ``problem`` is ``None`` normally, or a one-line reason when the stored value was refused and the default
    was used instead. 0 switches the floor off.
    """
    return await int_setting_or_default(session, "min_free_disk_mb", "MB")


async def int_setting_or_default(session: AsyncSession, key: str, unit: str) -> tuple[int, str | None]:
    """An integer setting, as ``(value, problem)``: its default and a one-line reason when the stored value
    is refused by the settings model."""
    from control.system_config import DEFAULTS, SettingError, read_setting  # pydantic: loaded when needed

    try:
        value = await read_setting(session, key)
    except SettingError as exc:
        default = getattr(DEFAULTS, key)
        return default, f"{exc}; using {default} {unit}"
    assert isinstance(value, int)
    return value, None


async def read_subject_code_pattern(session: AsyncSession) -> CodePattern:
    """The clinic's subject code pattern, the setting ``subject_code_pattern``. Raises
    :class:`~control.subject_codes.CodePatternError` naming the setting when the stored pattern is refused:
    codes are never made up from a pattern nobody chose."""
    from control.subject_codes import CodePattern, CodePatternError
    from control.system_config import SettingError, read_setting

    try:
        return CodePattern.parse(await read_setting(session, "subject_code_pattern"))
    except SettingError as exc:
        raise CodePatternError(str(exc)) from None
