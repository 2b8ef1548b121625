"""Where a person is sitting: the terminal recorded in every audit row.

A login over SSH is recorded as ``ssh:<client address>`` (from ``SSH_CONNECTION`` or, failing that,
``SSH_CLIENT``); a login at the machine's own screen as the tty name of standard input (``/dev/tty1``,
``/dev/pts/3``). A process whose standard input is not a terminal (a pipe, a file, a service) is recorded as
``no-tty``, so an audit row always names *something* and never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Recorded when standard input is not a terminal and the process is not under SSH.
NO_TTY = "no-tty"

_SSH_VARIABLES = ("SSH_CONNECTION", "SSH_CLIENT")


def ssh_client_address(environ: Mapping[str, str] | None = None) -> str | None:
    """The SSH client's address, or ``None`` when this process is not running under an SSH login.

    ``SSH_CONNECTION`` is ``"client_ip client_port server_ip server_port"`` and ``SSH_CLIENT`` is
    ``"client_ip client_port server_port"``; the first word of either is the client address. A variable that
    is set but empty or blank is treated as absent.
    """
    env = os.environ if environ is None else environ
    for name in _SSH_VARIABLES:
        words = env.get(name, "").split()
        if words:
            return words[0]
    return None


def detect_terminal(environ: Mapping[str, str] | None = None, stdin_fd: int | None = 0) -> str:
    """Name the terminal this process is used from, for the audit trail.

    Args:
        environ: the environment to read the SSH variables from (default: ``os.environ``).
        stdin_fd: the descriptor whose tty name is used when not under SSH (default 0, standard input);
            ``None`` means there is no such descriptor.

    Returns:
        ``"ssh:<client address>"`` under SSH, else the tty name of ``stdin_fd``, else :data:`NO_TTY`.
    """
    address = ssh_client_address(environ)
    if address is not None:
        return f"ssh:{address}"
    if stdin_fd is None:
        return NO_TTY
    try:
        return os.ttyname(stdin_fd)
    except OSError:
        return NO_TTY


def is_ssh_session(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process runs under an SSH login (the console then refuses to arm the laser)."""
    return ssh_client_address(environ) is not None


#: ``TERM`` values of terminals that draw Sixel or Kitty graphics.
GRAPHICS_TERMS = frozenset(
    {"xterm-kitty", "xterm-ghostty", "foot", "foot-extra", "mlterm", "contour", "wezterm"}
)
#: ``TERM_PROGRAM`` values of terminals that draw Sixel or Kitty graphics.
GRAPHICS_PROGRAMS = frozenset({"WezTerm", "ghostty", "iTerm.app", "contour"})
#: Variables that only terminals drawing graphics set.
GRAPHICS_VARIABLES = ("KITTY_WINDOW_ID", "KONSOLE_VERSION", "XTERM_VERSION", "MLTERM", "WEZTERM_EXECUTABLE")
#: Set to ``1`` to have the console ask the terminal about graphics where none of the above says it can.
PROBE_GRAPHICS_VARIABLE = "TOSCA_PROBE_GRAPHICS"


def may_draw_graphics(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names a terminal that may draw Sixel or Kitty graphics, so that asking it
    (up to 0.1 s a question where it does not answer, before the console can start) is worth it. Inside
    tmux or screen, whose default is to pass no graphics, and on the Linux console it is False, unless
    :data:`PROBE_GRAPHICS_VARIABLE` is ``1``."""
    env = os.environ if environ is None else environ
    if env.get(PROBE_GRAPHICS_VARIABLE) == "1":
        return True
    term = env.get("TERM", "")
    if env.get("TMUX") or env.get("STY") or term.startswith(("screen", "tmux")) or term == "linux":
        return False
    return (
        term in GRAPHICS_TERMS
        or env.get("TERM_PROGRAM", "") in GRAPHICS_PROGRAMS
        or any(env.get(name) for name in GRAPHICS_VARIABLES)
    )
