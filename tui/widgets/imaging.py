"""The treatment imaging keys the dashboard and the pre-treatment checks share: a snapshot of the treatment
site and the aiming beam.

:data:`SNAPSHOT_KEY` asks the controller to save the camera's newest frame (raw, and with the ring drawn) in
the session's folder; the answer says where, or why not (no image to take, a full disk). :data:`AIM_KEY`
switches the aiming beam (the visible pilot light, never the treatment laser) on or off; its state, as the
controller's snapshots report it, is :func:`aim_text`. Both work while a session is open, from the console
holding it. Function keys, so that they also work while a text field has the focus.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.text import Text
from textual.screen import Screen

from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import AimingBeam, Snapshot, SnapshotTaken, TakeSnapshot
from tui.safe_text import escape_controls

if TYPE_CHECKING:
    from tui.link import ConsoleLink

SNAPSHOT_KEY = "f2"
SNAPSHOT_KEY_LABEL = "F2"
AIM_KEY = "f3"
AIM_KEY_LABEL = "F3"

#: How long the controller may take to save a snapshot, s (it writes two full-resolution PNG files).
SNAPSHOT_TIMEOUT_S = 15.0


def aim_text(snapshot: Snapshot | None) -> Text:
    """The aiming beam's state in a few words: ``aiming beam ON`` (bold) or ``aiming beam off``."""
    if snapshot is not None and snapshot.aiming_beam:
        return Text("aiming beam ON", style="bold")
    return Text("aiming beam off")


def snapshot_words(taken: SnapshotTaken) -> str:
    """What the console says of a snapshot saved: where the two pictures are, and the ring measured."""
    raw, annotated = Path(taken.raw_path), Path(taken.annotated_path)
    ring = f"ring {taken.ring_mm:.2f} mm" if taken.ring_mm is not None else "no ring found"
    return (
        f"snapshot saved at {taken.offset_s:.1f} s ({taken.resolution}, {ring}): "
        f"{raw.name} and {annotated.name} in {raw.parent}"
    )


def _say(screen: Screen[Any], text: str, *, error: bool, timeout: float) -> None:
    screen.notify(
        escape_controls(text), severity="error" if error else "information", timeout=timeout, markup=False
    )


async def take_snapshot(screen: Screen[Any], link: ConsoleLink | None) -> SnapshotTaken | None:
    """Ask for a snapshot and say on ``screen`` where it was saved or why it was not; returns what was
    saved."""
    if link is None:
        _say(screen, "snapshot refused: no controller", error=True, timeout=10)
        return None
    try:
        reply = await link.call(TakeSnapshot(), timeout_s=SNAPSHOT_TIMEOUT_S)
        taken = SnapshotTaken.model_validate(reply)
    except (CommandFailed, ControllerUnavailable) as exc:
        _say(screen, f"snapshot refused: {exc}", error=True, timeout=15)
        return None
    except ValidationError as exc:
        _say(screen, f"snapshot answer unreadable: {exc}", error=True, timeout=15)
        return None
    _say(screen, snapshot_words(taken), error=False, timeout=10)
    return taken


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
