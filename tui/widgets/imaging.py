"""The treatment imaging keys the dashboard and the pre-treatment checks share: a snapshot of the treatment
site and the aiming beam.

:data:`SNAPSHOT_KEY` asks the controller to save the camera's newest frame (raw, and with the ring drawn) in
the session's folder; the answer says it is being saved and where, or why not (no image to take), and the
controller's event of kind ``snapshot`` then says how it ended (both files saved, or why not: a full disk).
:data:`AIM_KEY` switches the aiming beam (the visible pilot light, never the treatment laser) on or off; its
state, as the controller's snapshots report it, is :func:`aim_text`. Both work while a session is open, from
the console holding it. Function keys, so that they also work while a text field has the focus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.text import Text
from textual.screen import Screen

from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import (
    AimingBeam,
    Event,
    FocusStackStarted,
    Snapshot,
    SnapshotStarted,
    TakeFocusStack,
    TakeSnapshot,
)
from tui.safe_text import escape_controls

if TYPE_CHECKING:
    from tui.link import ConsoleLink

SNAPSHOT_KEY = "f2"
SNAPSHOT_KEY_LABEL = "F2"
AIM_KEY = "f3"
AIM_KEY_LABEL = "F3"

#: How long the controller may take to answer a snapshot's key, s (it answers once the snapshot has started).
SNAPSHOT_TIMEOUT_S = 5.0
#: The kind of the controller's events that say how a snapshot ended.
SNAPSHOT_EVENT = "snapshot"
#: The key that records a focus stack into the open session (on the pre-treatment checks), and its label.
FOCUS_STACK_KEY = "f10"
#: The kind of the controller's events that say how a focus stack ended.
FOCUS_STACK_EVENT = "focus_stack"


def aim_text(snapshot: Snapshot | None) -> Text:
    """The aiming beam's state in a few words: ``aiming beam ON`` (bold) or ``aiming beam off``."""
    if snapshot is not None and snapshot.aiming_beam:
        return Text("aiming beam ON", style="bold")
    return Text("aiming beam off")


def snapshot_outcome(event: Event) -> tuple[str, bool] | None:
    """How a snapshot or a focus stack ended, from the controller's event of kind ``snapshot`` or
    ``focus_stack``: (the words, whether it failed); None for any other event."""
    if event.kind not in (SNAPSHOT_EVENT, FOCUS_STACK_EVENT):
        return None
    return event.message, event.severity != "info"


def show_snapshot_outcome(screen: Screen[Any], event: Event) -> str | None:
    """Say on ``screen`` how a snapshot ended (an event of kind ``snapshot``); returns the words, or None for
    another event."""
    outcome = snapshot_outcome(event)
    if outcome is None:
        return None
    words, failed = outcome
    _say(screen, words, error=failed, timeout=15 if failed else 10)
    return words


def _say(screen: Screen[Any], text: str, *, error: bool, timeout: float) -> None:
    screen.notify(
        escape_controls(text), severity="error" if error else "information", timeout=timeout, markup=False
    )


async def take_snapshot(screen: Screen[Any], link: ConsoleLink | None) -> str | None:
    """Ask for a snapshot and say on ``screen`` that it is being saved (and where) or why not; returns the
    folder. How it ends comes later, as an event (:func:`show_snapshot_outcome`)."""
    if link is None:
        _say(screen, "snapshot refused: no controller", error=True, timeout=10)
        return None
    try:
        reply = await link.call(TakeSnapshot(), timeout_s=SNAPSHOT_TIMEOUT_S)
        started = SnapshotStarted.model_validate(reply)
    except (CommandFailed, ControllerUnavailable) as exc:
        _say(screen, f"snapshot refused: {exc}", error=True, timeout=15)
        return None
    except ValidationError as exc:
        _say(screen, f"snapshot answer unreadable: {exc}", error=True, timeout=15)
        return None
    _say(screen, f"saving a snapshot in {started.folder}", error=False, timeout=3)
    return started.folder


async def take_focus_stack(screen: Screen[Any], link: ConsoleLink | None) -> str | None:
    """Ask for a focus stack of the open session and say on ``screen`` that it is being taken (where, how
    many frames over how long) or why not; returns the folder. How it ends comes later, as an event of kind
    ``focus_stack`` (:func:`show_snapshot_outcome`)."""
    if link is None:
        _say(screen, "focus stack refused: no controller", error=True, timeout=10)
        return None
    try:
        reply = await link.call(TakeFocusStack(), timeout_s=SNAPSHOT_TIMEOUT_S)
        started = FocusStackStarted.model_validate(reply)
    except (CommandFailed, ControllerUnavailable) as exc:
        _say(screen, f"focus stack refused: {exc}", error=True, timeout=15)
        return None
    except ValidationError as exc:
        _say(screen, f"focus stack answer unreadable: {exc}", error=True, timeout=15)
        return None
    _say(
        screen,
        f"taking a focus stack of {started.frames} frames over {started.duration_s:g} s in {started.folder}: "
        "turn the focus ring",
        error=False,
        timeout=5,
    )
    return started.folder


async def toggle_aiming_beam(screen: Screen[Any], link: ConsoleLink | None) -> bool | None:
    """Switch the aiming beam to the other state than the newest snapshot shows, and say so on ``screen``;
    returns the state afterwards (``None``: refused)."""
    if link is None:
        _say(screen, "aiming beam refused: no controller", error=True, timeout=10)
        return None
    current = link.snapshot is not None and link.snapshot.aiming_beam
    try:
        reply = await link.call(AimingBeam(on=not current))
    except (CommandFailed, ControllerUnavailable) as exc:
        _say(screen, f"aiming beam refused: {exc}", error=True, timeout=15)
        return None
    on = bool(reply.get("on"))
    _say(screen, f"aiming beam {'on' if on else 'off'}", error=False, timeout=4)
    return on
