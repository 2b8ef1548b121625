"""The controller's log (``logs/controller.log`` in the data directory), following new lines.

It opens on the last :data:`FIRST_LINES` lines, each with its time (UTC), level and source as the
controller wrote them (:mod:`storage.logfile`): warnings in bold, errors and critical lines in bold red.
While following (``f`` pauses and resumes) it looks at the file every :data:`POLL_S` seconds and reads only
what was appended since (a log moved aside is followed into its new file); the view stays at the newest line.
``v`` shows only lines at a level or more serious (all, INFO, WARNING, ERROR, CRITICAL, in turn). At most
:data:`KEPT_LINES` lines are kept. A log that does not exist yet is said so, and shows once the controller
writes it. Lines are drawn as text, with control characters escaped, never as markup. The file is read in a
worker thread: the screen needs no controller. For engineers and admins.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import ClassVar, Final

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Label, RichLog

from control.account_rules import UserInfo
from storage.logfile import LEVELS, LogFollower, LogLine, log_path, parse_line
from tui.safe_text import escape_controls, plain
from tui.screens._base import ScreenContext
from tui.widgets.header import ConsoleHeader

#: Roles that may use this screen.
ROLES = frozenset({"engineer", "admin"})
#: Lines read from the end of the file when the screen opens.
FIRST_LINES: Final = 500
#: Most lines kept on the screen.
KEPT_LINES: Final = 2000
#: Seconds between two looks at the file while following.
POLL_S: Final = 0.5
#: The level filters ``v`` steps through (None: every line).
LEVEL_STEPS: Final[tuple[str | None, ...]] = (None, "INFO", "WARNING", "ERROR", "CRITICAL")
_LEVEL_STYLE: Final = {"DEBUG": "dim", "WARNING": "bold", "ERROR": "bold red", "CRITICAL": "bold red reverse"}


def line_text(line: LogLine) -> Text:
    """One log line to draw: its time, level and source, then the message (control characters escaped)."""
    if line.level is None or line.at is None:
        return plain(line.text)
    text = Text(end="")
    text.append(f"{line.at:%Y-%m-%d %H:%M:%S}.{line.at.microsecond // 1000:03d} ", style="dim")
    text.append(f"{line.level:<8} ", style=_LEVEL_STYLE.get(line.level, ""))
    text.append(escape_controls(line.source or ""), style="dim")
    text.append(": ")
    text.append(escape_controls(line.message), style=_LEVEL_STYLE.get(line.level, ""))
    return text


class LogsScreen(Screen[None]):
    """The controller's log, following new lines (see the module documentation)."""

    DEFAULT_CSS = """
    LogsScreen #logs {
        height: 1fr;
        padding: 0 1;
    }
    LogsScreen #log-view {
        height: 1fr;
        background: $surface;
        scrollbar-size-vertical: 1;
    }
    LogsScreen #log-info {
        height: 1;
        color: $text-muted;
    }
    LogsScreen #status {
        height: 1;
    }
    LogsScreen #status.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "toggle_follow", "Follow/pause"),
        Binding("v", "next_level", "Level"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, context: ScreenContext, user: UserInfo, *, poll_s: float = POLL_S) -> None:
        super().__init__()
        self.context = context
        self.user = user
        self.path = log_path(context.settings.data_dir)
        self.poll_s = poll_s
        self.follower = LogFollower(self.path)
        #: Every line read (the newest :data:`KEPT_LINES`).
        self.lines: deque[LogLine] = deque(maxlen=KEPT_LINES)
        self.following = True
        #: The level shown at least (None: every line).
        self.level: str | None = None
        #: True once the first lines have been read.
        self.loaded = False
        self._timer: Timer | None = None
        self._reading = False

    @property
    def allowed(self) -> bool:
        return self.user.role in ROLES

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Controller log",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Vertical(id="logs"):
            yield RichLog(id="log-view", max_lines=KEPT_LINES, wrap=False, markup=False, highlight=False)
            yield Label("", id="log-info")
            yield Label("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#log-view", RichLog).focus()
        if not self.allowed:
            who = f"{self.user.username} is {self.user.role}"
            self.show_status(f"only an engineer or an admin may use this screen ({who})", error=True)
            return
        self.show_info()
        self.read_first()

    def on_unmount(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.follower.close()

    def show_status(self, text: str, *, error: bool) -> None:
        label = self.query_one("#status", Label)
        label.update(plain(text))
        label.set_class(error, "error")

    def show_info(self) -> None:
        level = "every level" if self.level is None else f"{self.level} and above"
        state = f"following (every {self.poll_s:g} s)" if self.following else "paused (f follows)"
        shown = sum(1 for line in self.lines if self._shown(line))
        self.query_one("#log-info", Label).update(plain(f"{self.path}; {state}; {level}; {shown} lines"))

    def _shown(self, line: LogLine) -> bool:
        return self.level is None or line.at_least(self.level)

    # -- reading ---------------------------------------------------------------------------------------------

    @work(exclusive=True, group="log-first", exit_on_error=False)
    async def read_first(self) -> None:
        """The last lines of the file, then follow it."""
        try:
            first = await asyncio.to_thread(self.follower.last_lines, FIRST_LINES)
        except OSError as exc:
            self.show_status(f"cannot read {self.path}: {exc.strerror or exc}", error=True)
            first = []
        else:
            if not first and not self.path.exists():
                self.show_status(f"no controller log yet at {self.path}; it shows once written", error=False)
        self.add_lines(first)
        self.loaded = True
        self._timer = self.set_interval(self.poll_s, self.poll)

    def poll(self) -> None:
        if self.following and not self._reading:
            self._reading = True
            self.read_new()

    @work(exclusive=True, group="log-follow", exit_on_error=False)
    async def read_new(self) -> None:
        """What was appended since the last look."""
        try:
            lines = await asyncio.to_thread(self.follower.new_lines)
        except ValueError:
            return  # the file was closed as the screen closed
        except OSError as exc:
            self.show_status(f"cannot read {self.path}: {exc.strerror or exc}", error=True)
            return
        finally:
            self._reading = False
        if lines:
            self.show_status("", error=False)
            self.add_lines(lines)

    def add_lines(self, texts: list[str]) -> None:
        """Keep and draw new lines (those at the level shown)."""
        view = self.query_one("#log-view", RichLog)
        for raw in texts:
            line = parse_line(raw)
            self.lines.append(line)
            if self._shown(line):
                view.write(line_text(line), scroll_end=self.following)
        self.show_info()

    def redraw(self) -> None:
        view = self.query_one("#log-view", RichLog)
        view.clear()
        for line in self.lines:
            if self._shown(line):
                view.write(line_text(line), scroll_end=True)
        self.show_info()

    # -- keys ------------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if not self.allowed and action != "back":
            return False
        return True

    def action_toggle_follow(self) -> None:
        """Pause or resume following; resuming reads what was written meanwhile."""
        self.following = not self.following
        if self.following:
            self.query_one("#log-view", RichLog).scroll_end(animate=False)
            self.poll()
        self.show_info()

    def action_next_level(self) -> None:
        """Show only the next level and more serious ones (after CRITICAL: every line again)."""
        index = LEVEL_STEPS.index(self.level)
        self.level = LEVEL_STEPS[(index + 1) % len(LEVEL_STEPS)]
        self.redraw()

    def action_back(self) -> None:
        self.dismiss(None)


__all__ = ["FIRST_LINES", "KEPT_LINES", "LEVELS", "LogsScreen", "line_text"]
