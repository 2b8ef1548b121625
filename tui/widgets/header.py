"""The console's header: the product name, the screen, SIMULATED RIG when on the simulator, who is logged in,
and the stop key (F12 STOP LASER) wherever it acts: in the header it is never cut off, as the footer's last
keys are at 80 columns."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.safe_text import plain

#: The badge text shown on every screen while the console runs on the simulated rig.
SIMULATED_RIG = "SIMULATED RIG"
#: The stop key's label, shown on every screen of a console with a controller.
STOP_LABEL = "F12 STOP LASER"


class StopKeyLabel(Static):
    """The stop key's label; a click on it stops emission too."""

    async def on_click(self, event: events.Click) -> None:
        event.stop()
        await self.app.run_action("app.stop_emission")


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
        link = getattr(self.app, "link", None)
        if link is not None and not getattr(link, "observe", False):
            # The console's F12 acts (see tui.app): its label is always on screen (not on the remote
            # console, whose link has no stop command).
            yield StopKeyLabel(STOP_LABEL, id="stop-key")
