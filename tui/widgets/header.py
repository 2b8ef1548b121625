"""The console's header: the product name, the screen, SIMULATED RIG when on the simulator, and who is logged
in."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.safe_text import plain

#: The badge text shown on every screen while the console runs on the simulated rig.
SIMULATED_RIG = "SIMULATED RIG"


class ConsoleHeader(Horizontal):
    """One-line header.

    Args:
        screen_title: what the current screen is for ("Log in", "Home", ...).
        sim: show the SIMULATED RIG badge.
        user_text: who is logged in ("" when nobody is).
    """

    def __init__(self, screen_title: str, *, sim: bool, user_text: str = "") -> None:
        super().__init__(id="header")
        self._screen_title = screen_title
        self._sim = sim
        self._user_text = user_text

    def compose(self) -> ComposeResult:
        yield Static("TOSCA", id="brand")
        if self._sim:
            yield Static(SIMULATED_RIG, id="sim-badge")
        yield Static(self._screen_title, id="screen-title")
        yield Static(plain(self._user_text), id="header-user")
