"""The engineer's camera focus screen: the live camera with its focus score, for adjusting the optics, and a
key that records a focus stack.

The preview and its focus score come from the controller (the previews it pushes a few times a second to every
console connected, at the kiosk or over SSH): the score is the variance of the Laplacian of the camera's
full-resolution frame, higher when sharper. It is judged against the camera's focus reference (the active
``camera_focus_calibration``, read from the records: :func:`control.imaging_records.focus_reference`): IN
FOCUS from the reference's fraction on (80 % unless the calibration says otherwise), NOT IN FOCUS below it,
or that there is no reference yet.

:data:`STACK_KEY` asks the controller for a focus stack (``focus_stack``): it takes the configured number of
fresh frames (``focus_stack_frames``, default 15) over a few seconds while the engineer turns the focus ring
through focus, and saves each with its score in one folder with an index naming the sharpest. The answer says
it is being taken and where; the controller's event of kind ``focus_stack`` then says how it ended, and the
reference is read again (a stack outside a session becomes the new reference). Without a usable camera image
the controller refuses and nothing is recorded. The stop key keeps working throughout: it has its own
connection, and the stack is written on the camera's low-priority thread. The remote console shows the
preview and the score (``observe.sock`` gets the previews too) but refuses the stack key with the reason
(:func:`tui.remote.remote_refusal`): a stack is recorded for the person at the rig, so it is taken at the
kiosk.

Open it with ``CameraFocusScreen(context, user)``; Escape goes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, Static

from control.account_rules import UserInfo
from control.imaging_records import FocusReference, focus_reference, judge_focus
from control.ipc_errors import CommandFailed, ControllerUnavailable
from control.messages import FocusStackStarted, TakeFocusStack
from tui.remote import remote_refusal
from tui.safe_text import escape_controls, plain
from tui.screens._base import ControllerEvent, PreviewUpdated, ScreenContext
from tui.widgets.camera import CameraPreview
from tui.widgets.header import ConsoleHeader

if TYPE_CHECKING:
    from control.messages import Preview

STACK_KEY = "r"
#: The kind of the controller's events that say how a focus stack ended.
FOCUS_STACK_EVENT = "focus_stack"
#: How long the controller may take to answer the stack's key, s (it answers once the stack has started).
STACK_TIMEOUT_S = 5.0

IN_FOCUS = "IN FOCUS"
NOT_IN_FOCUS = "NOT IN FOCUS"
NO_REFERENCE = "NO REFERENCE"
NO_SCORE = "NO IMAGE"


def score_text(preview: Preview | None) -> str:
    """The focus score line: ``focus 412`` or why there is none."""
    if preview is None:
        return "focus: no preview from the controller"
    if preview.camera != "ok" or preview.focus is None:
        detail = f" ({preview.detail})" if preview.detail else ""
        return f"focus: no camera image, the camera is {preview.camera}{detail}"
    return f"focus {preview.focus:.0f}"


def verdict(preview: Preview | None, reference: FocusReference | None) -> tuple[str, str]:
    """The verdict's title (IN FOCUS, NOT IN FOCUS, NO REFERENCE, NO IMAGE) and its words."""
    if preview is None or preview.camera != "ok" or preview.focus is None:
        return NO_SCORE, "no focus score without a camera image"
    judged = judge_focus(preview.focus, reference)
    if judged.in_focus is None:
        return NO_REFERENCE, judged.words()
    return (IN_FOCUS if judged.in_focus else NOT_IN_FOCUS), judged.words()


def reference_text(reference: FocusReference | None, problem: str = "") -> str:
    """The reference line: its score, calibration and date, or that there is none (or why it is unusable)."""
    if problem:
        return f"reference: unusable ({problem})"
    if reference is None:
        return "reference: none yet (a stack taken outside a session keeps one)"
    return (
        f"reference {reference.score:.0f} (calibration #{reference.calibration_id}, "
        f"{reference.calibrated_at:%Y-%m-%d %H:%M} UTC); in focus from {reference.threshold:.0f} "
        f"({100 * reference.in_focus_fraction:.0f} %)"
    )


class CameraFocusScreen(Screen[None]):
    """The live camera, its focus score judged against the reference, and the focus stack key."""

    DEFAULT_CSS = """
    CameraFocusScreen #focus-body {
        height: 1fr;
    }
    CameraFocusScreen #focus-camera {
        width: 1fr;
        height: 100%;
        min-height: 4;
    }
    CameraFocusScreen #focus-panel {
        width: 40;
        height: 100%;
        padding: 0 1;
        border-left: vkey $panel;
    }
    CameraFocusScreen #focus-score {
        text-style: bold;
        margin: 1 0 0 0;
    }
    CameraFocusScreen #focus-verdict {
        width: auto;
        padding: 0 2;
        margin: 1 0 0 0;
        text-style: bold;
        background: $panel;
    }
    CameraFocusScreen #focus-verdict.-in-focus {
        background: $success;
        color: $text;
    }
    CameraFocusScreen #focus-verdict.-not-in-focus {
        background: $error;
        color: $text;
    }
    CameraFocusScreen #focus-words, CameraFocusScreen #focus-reference {
        color: $text-muted;
    }
    CameraFocusScreen #focus-stack {
        margin: 1 0 0 0;
    }
    CameraFocusScreen #focus-stack.error {
        color: $error;
        text-style: bold;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(STACK_KEY, "record_stack", "Record focus stack"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        context: ScreenContext,
        user: UserInfo,
        *,
        stale_after_s: float | None = CameraPreview.STALE_AFTER_S,
    ) -> None:
        """``stale_after_s``: seconds without a new preview before the image is called stale (None: never,
        for steady screenshots)."""
        super().__init__()
        self.context = context
        self.user = user
        self.stale_after_s = stale_after_s
        self.reference: FocusReference | None = None
        self.reference_problem = ""
        self.preview: Preview | None = None
        #: True from the key until the controller has answered (the stack itself is the controller's).
        self.asking = False
        #: The stack being taken, as the controller answered (its folder), until its event arrives.
        self.taking: str | None = None

    def compose(self) -> ComposeResult:
        yield ConsoleHeader(
            "Camera focus",
            sim=self.context.settings.sim,
            user_text=f"{self.user.username} ({self.user.role})",
        )
        with Horizontal(id="focus-body"):
            halfblock = self.context.settings.image_protocol == "halfblock"
            yield CameraPreview(
                id="focus-camera", force_halfblock=halfblock, stale_after_s=self.stale_after_s
            )
            with Vertical(id="focus-panel"):
                yield Label("Focus", classes="form-title")
                yield Static(score_text(None), id="focus-score")
                yield Static(NO_SCORE, id="focus-verdict")
                yield Static("", id="focus-words")
                yield Static("reference: reading...", id="focus-reference")
                yield Static(self._idle_words(), id="focus-stack")
        yield Footer(compact=True)

    def _idle_words(self) -> str:
        return (
            f"{STACK_KEY.upper()} records a focus stack: frames over a few seconds, each with its focus "
            "score; turn the focus ring through focus meanwhile."
        )

    def on_mount(self) -> None:
        link = self.context.link
        self.show_preview(link.preview if link is not None else None)
        if link is None:
            self.say("no controller: no camera image and no focus stack", error=True)
        self.load_reference()

    # -- what is shown ---------------------------------------------------------------------------------------

    def on_preview_updated(self, message: PreviewUpdated) -> None:
        self.show_preview(message.preview)

    def show_preview(self, preview: Preview | None) -> None:
        """Show ``preview`` and its focus score, judged against the reference."""
        self.preview = preview
        self.query_one("#focus-camera", CameraPreview).show(preview)
        self._show_verdict()

    def _show_verdict(self) -> None:
        preview = self.preview
        self.query_one("#focus-score", Static).update(plain(score_text(preview)))
        title, words = verdict(preview, self.reference)
        box = self.query_one("#focus-verdict", Static)
        box.update(title)
        box.set_class(title == IN_FOCUS, "-in-focus")
        box.set_class(title == NOT_IN_FOCUS, "-not-in-focus")
        self.query_one("#focus-words", Static).update(plain(words))

    def say(self, text: str, *, error: bool = False) -> None:
        """The stack's line: what is being done, or how it ended."""
        line = self.query_one("#focus-stack", Static)
        line.update(plain(text))
        line.set_class(error, "error")

    @work(exclusive=True, group="focus-reference", exit_on_error=False)
    async def load_reference(self) -> None:
        """Read the camera's focus reference from the records."""
        try:
            self.reference = await focus_reference(self.context.accounts.sessions)
            self.reference_problem = ""
        except ValueError as exc:
            self.reference, self.reference_problem = None, str(exc)
        self.query_one("#focus-reference", Static).update(
            plain(reference_text(self.reference, self.reference_problem))
        )
        self._show_verdict()

    # -- the stack -------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "record_stack":
            return True if self.context.link is not None and not self.asking else None
        return True

    @work(exclusive=True, group="focus-stack", exit_on_error=False)
    async def action_record_stack(self) -> None:
        """Ask the controller for a focus stack; say that it is being taken and where, or why not."""
        link = self.context.link
        if link is None or self.asking:
            return
        refusal = remote_refusal(self.context, "camera_focus.stack")
        if refusal is not None:
            self.say(f"focus stack refused: {refusal}", error=True)
            return
        self.asking = True
        self.refresh_bindings()
        try:
            reply = await link.call(TakeFocusStack(), timeout_s=STACK_TIMEOUT_S)
            started = FocusStackStarted.model_validate(reply)
        except (CommandFailed, ControllerUnavailable) as exc:
            self.say(f"focus stack refused: {exc}", error=True)
            return
        except ValueError as exc:
            self.say(f"focus stack answer unreadable: {exc}", error=True)
            return
        finally:
            self.asking = False
            self.refresh_bindings()
        self.taking = started.folder
        self.say(
            f"taking a focus stack: {started.frames} frames over {started.duration_s:.1f} s into "
            f"{started.folder}; turn the focus ring through focus now"
        )

    def on_controller_event(self, message: ControllerEvent) -> None:
        """How a focus stack ended: said here and as a notice; the reference is read again."""
        event = message.event
        if event.kind != FOCUS_STACK_EVENT:
            return
        self.taking = None
        failed = event.severity != "info"
        self.say(event.message, error=failed)
        self.notify(
            escape_controls(event.message),
            severity="error" if failed else "information",
            timeout=15,
            markup=False,
        )
        self.load_reference()

    def action_back(self) -> None:
        self.dismiss(None)


__all__ = ["STACK_KEY", "CameraFocusScreen", "reference_text", "score_text", "verdict"]
