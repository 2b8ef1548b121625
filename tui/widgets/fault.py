"""A latched fault where the dashboard is not showing: what happened, how to reset it, and the reset itself.

The home, subjects and pre-treatment checks screens show :class:`FaultNotice` while the controller is in
FAULT (with or without an open session) and offer :data:`RESET_KEY`, which runs :func:`reset_fault`: the
operator's password in the console's password dialog, then ``reset_fault`` on the controller, which refuses
while the cause is still there and logs who reset it and when.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.widgets import Static

from control.ipc_errors import CommandFailed, ControllerUnavailable

if TYPE_CHECKING:
    from textual.screen import Screen

    from control.account_rules import UserInfo
    from control.messages import Snapshot
    from tui.screens._base import ScreenContext

#: The key that resets a latched fault on the screens other than the dashboard (a function key, since the
#: checks and subjects screens have text fields where letters are typed).
RESET_KEY = "f4"
#: How the key is named on screen.
RESET_KEY_LABEL = "F4"


def in_fault(snapshot: Snapshot | None) -> bool:
    """True while the controller reports a latched fault."""
    return snapshot is not None and snapshot.state == "fault"


def fault_text(snapshot: Snapshot) -> Text:
    """What happened, how to reset it and whether that may be done now (the fault's texts as plain text)."""
    fault = snapshot.fault
    text = Text()
    text.append("FAULT ", style="bold")
    if fault is None:
        text.append("latched", style="bold")
        text.append(f"\n{RESET_KEY_LABEL}: reset with your password once the cause has cleared")
        return text
    text.append(fault.what, style="bold")
    text.append(f" (at {fault.at})\nTo reset: {fault.how_to_reset}")
    if fault.cause_cleared:
        text.append(f"\nCause cleared: {RESET_KEY_LABEL} resets it with your password", style="bold")
    else:
        text.append("\nCause still present: the reset is refused until it clears")
    return text


class FaultNotice(Static):
    """A band showing the latched fault; hidden while there is none."""

    DEFAULT_CSS = """
    FaultNotice {
        display: none;
        width: 100%;
        height: auto;
        padding: 0 1;
        background: $error;
        color: $text;
    }
    FaultNotice.shown {
        display: block;
    }
    """

    _key: tuple[object, ...] = ()

    def show(self, snapshot: Snapshot | None) -> bool:
        """Show the fault of ``snapshot`` (hide the band when there is none; drawn again only when what it
        says changes); returns whether it changed between shown and hidden."""
        shown = in_fault(snapshot)
        was = self.has_class("shown")
        if shown:
            assert snapshot is not None
            fault = snapshot.fault
            key = (fault.what, fault.at, fault.cause_cleared) if fault is not None else (None,)
            if key != self._key:
                self._key = key
                self.update(fault_text(snapshot))
        else:
            self._key = ()
        self.set_class(shown, "shown")
        return shown != was


async def reset_fault(screen: Screen[Any], context: ScreenContext, user: UserInfo) -> bool:
    """Ask for the password and send the reset (call from a worker); True when the controller reset it.

    A refusal (the cause still there, a wrong password) is shown as a notification and changes nothing.
    """
    from control.messages import ResetFault
    from tui.screens.dialogs import PasswordDialog

    link = context.link
    if link is None:
        screen.notify("no controller: nothing to reset", severity="error")
        return False
    answer = await screen.app.push_screen_wait(
        PasswordDialog(
            "Reset the fault",
            "Acknowledge the fault: the laser stays off until armed again.",
            username=user.username,
            cursor_blink=context.settings.cursor_blink,
        )
    )
    if answer is None:
        return False
    username, password = answer
    try:
        await link.call(ResetFault(username=username, password=password), timeout_s=15.0)
    except (CommandFailed, ControllerUnavailable) as exc:
        screen.notify(f"fault not reset: {exc}", severity="error", timeout=15)
        return False
    screen.notify("fault reset: the laser stays off until armed again", timeout=6)
    return True
