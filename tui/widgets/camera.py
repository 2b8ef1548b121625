"""The camera preview: the controller's latest camera image with the detected ring, or why there is none.

:class:`CameraPreview` shows a :class:`control.messages.Preview` (pushed by the controller a few times a
second): the small JPEG with the ring drawn on it, and under it the ring's diameter in millimetres ("no ring
found" when the detection found none) and the focus score. When there is no usable image it shows instead,
large and in the error colour, NO CAMERA (no camera configured or it cannot be opened, or no preview from
the controller), CAMERA FROZEN (identical frames) or NO CAMERA IMAGE (the camera delivers no frames, or the
image could not be read), with the reason. An image is never left on screen as if it were live: when no new
preview arrives for ``stale_after_s`` seconds the widget says so instead.

Images are drawn by the ``textual-image`` package's widgets (half-blocks by its widget with the cells drawn
here, cheaper at four previews a second: :func:`halfblock_strips`). That package probes the terminal when
it is first imported (a Sixel query, a Kitty graphics query and the cell size in pixels), which only works
before Textual takes over the terminal, reads the terminal's input and, where the terminal does not answer,
may swallow a typed character. So this module never imports it at import time:

- where the environment names a terminal that may draw graphics (:func:`control.terminal.may_draw_graphics`)
  the console calls :func:`prepare_terminal_graphics` just before the app starts, and the widget then uses
  the best renderer found: Sixel or the Kitty graphics protocol where the terminal has them, coloured
  half-blocks otherwise;
- elsewhere (tmux, SSH from an ordinary terminal, the Linux console) asking would only cost the start up to
  0.1 s a question: the console calls :func:`use_halfblocks` instead, and the widget draws half-blocks,
  loading the package on first use without letting it ask the terminal anything;
- with ``force_halfblock`` (or the class attribute ``FORCE_HALFBLOCK``) the widget always draws half-blocks
  sized by the widget itself, independent of the terminal's cell size (the tests and snapshots use this);
- where importing the package would probe a terminal that is already in use (not prepared, but standard
  output is a terminal), the widget does not import it: it shows the ring and the state, and says that the
  image is off.
"""

from __future__ import annotations

import base64
import binascii
import functools
import importlib
import io
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from textual.app import ComposeResult
from textual.containers import Center, Container, Vertical
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from tui.safe_text import plain

if TYPE_CHECKING:
    from control.messages import Preview

_LOG = logging.getLogger(__name__)

#: The package module whose import probes the terminal; present in ``sys.modules`` once it has been probed.
_GRAPHICS_MODULE = "textual_image.widget"

NO_CAMERA = "NO CAMERA"
CAMERA_FROZEN = "CAMERA FROZEN"
NO_CAMERA_IMAGE = "NO CAMERA IMAGE"
NO_PREVIEW = "NO CAMERA PREVIEW"

_STATE_TITLES = {
    "none": NO_CAMERA,
    "not_opened": NO_CAMERA,
    "frozen": CAMERA_FROZEN,
    "no_frames": NO_CAMERA_IMAGE,
    "ok": NO_CAMERA_IMAGE,
}


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def _graphics_imported() -> bool:
    return _GRAPHICS_MODULE in sys.modules


#: Set by :func:`use_halfblocks`: draw half-blocks, and load the package without it asking the terminal.
_halfblocks_without_probing = False


def use_halfblocks() -> None:
    """Draw camera images with half-blocks, without asking the terminal about graphics (see the module)."""
    global _halfblocks_without_probing
    _halfblocks_without_probing = True


class _NotATerminal:
    """Standard output as the image package sees it while it loads without probing: not a terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _import_without_probing() -> None:
    """Load ``textual-image`` with standard output looking like no terminal: it then asks nothing and takes
    the cell size from its defaults (half-blocks are sized by this widget, not by the cell size)."""
    real = sys.__stdout__
    sys.__stdout__ = _NotATerminal(real)  # type: ignore[misc, assignment]
    try:
        importlib.import_module(_GRAPHICS_MODULE)
    finally:
        sys.__stdout__ = real  # type: ignore[misc]


def _import_is_quiet() -> bool:
    """True when importing ``textual-image`` now sends nothing to a terminal: it was already imported, or
    standard output is not a terminal (tests, pipes; the package then probes nothing), or it will be
    loaded without probing (:func:`use_halfblocks`)."""
    if _graphics_imported() or _halfblocks_without_probing:
        return True
    return sys.__stdout__ is not None and not _is_terminal(sys.__stdout__)


def prepare_terminal_graphics() -> str:
    """Probe the terminal for image support once, before the console's app starts.

    Call it from the console's entry point just before ``App.run()`` when the settings ask for ``"auto"``
    images. It imports ``textual-image``, which asks the terminal (with 0.1 s time-outs) whether it draws
    Sixel or Kitty graphics and how large a cell is in pixels. It probes only when standard input and output
    are both the terminal, and the terminal has a size; its warnings go to the log, not to the screen.

    Returns:
        The renderer the widget will use: ``"sixel"``, ``"kitty"``, ``"halfblock"`` or ``"unicode"``; or
        ``""`` when nothing was probed (no terminal, or the probe failed, which is logged).
    """
    if not _graphics_imported():
        if not (_is_terminal(sys.__stdin__) and _is_terminal(sys.__stdout__)):
            return ""
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return ""
        if size.columns == 0 or size.lines == 0:
            return ""  # a terminal without a size: the package's cell-size probe would divide by zero
        # Without a handler of its own, the package's "cell size unknown" warning would be printed on the
        # terminal by the logging module's last-resort handler.
        logging.getLogger("textual_image").addHandler(logging.NullHandler())
        try:
            importlib.import_module(_GRAPHICS_MODULE)
        except Exception as exc:
            _LOG.warning("probing the terminal for image support failed (%s: %s)", type(exc).__name__, exc)
            return ""
    return _renderer_name()


def _renderer_name() -> str:
    from textual_image import renderable

    auto = renderable.Image
    names: dict[type[Any], str] = {
        renderable.SixelImage: "sixel",
        renderable.TGPImage: "kitty",
        renderable.HalfcellImage: "halfblock",
        renderable.UnicodeImage: "unicode",
    }
    return names.get(auto, "unknown")


def terminal_draws_images() -> bool:
    """True when the terminal was found, at the console's start, to draw real images (Sixel or the Kitty
    graphics protocol); False where images would be half-blocks or were never asked about."""
    if not _graphics_imported() or _halfblocks_without_probing:
        return False
    return _renderer_name() in ("sixel", "kitty")


def image_widget_class(halfblock: bool) -> type[Widget] | None:
    """The ``textual-image`` widget class that draws an image here (its half-block one with ``halfblock``),
    or None when loading it now would probe a terminal already in use."""
    return _image_widget_class(halfblock)


def _image_widget_class(halfblock: bool) -> type[Widget] | None:
    """The ``textual-image`` widget class to draw with, or None when importing it would probe the terminal."""
    if not _import_is_quiet():
        return None
    if _halfblocks_without_probing and not _graphics_imported():
        _import_without_probing()
    if halfblock or _halfblocks_without_probing:
        return _halfblock_widget_class()
    from textual_image import widget as images

    chosen: type[Widget] = images.Image
    return chosen


@functools.lru_cache(maxsize=1024)
def _pixel_colour(rgb: int) -> Any:
    """The Rich colour of one pixel packed as ``0xRRGGBB``."""
    from rich.color import Color

    return Color.from_rgb((rgb >> 16) & 0xFF, (rgb >> 8) & 0xFF, rgb & 0xFF)


@functools.lru_cache(maxsize=8192)
def _cell_style(upper: int, lower: int) -> Any:
    """The style of one half-block cell: the upper pixel is the foreground, the lower the background."""
    from rich.style import Style

    return Style(color=_pixel_colour(upper), bgcolor=_pixel_colour(lower))


def halfblock_rows(image: PILImage.Image, width: int, height: int) -> list[list[tuple[int, int]]]:
    """``image`` scaled to ``width`` x ``2 * height`` pixels (Pillow's default resampling, as
    ``textual-image`` scales), as ``height`` rows of ``width`` (upper, lower) pixel pairs packed as
    ``0xRRGGBB``."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB").resize((width, 2 * height)), dtype=np.uint32)
    packed = (pixels[:, :, 0] << 16) | (pixels[:, :, 1] << 8) | pixels[:, :, 2]
    uppers, lowers = packed[0::2].tolist(), packed[1::2].tolist()
    return [list(zip(upper, lower, strict=True)) for upper, lower in zip(uppers, lowers, strict=True)]


def halfblock_strips(image: PILImage.Image, width: int, height: int) -> list[Strip]:
    """``image`` drawn in ``width`` x ``height`` cells of upper half blocks: each cell's upper pixel is the
    foreground, its lower pixel the background. The same cells as ``textual-image``'s half-block renderable
    draws, made once per image and size."""
    from rich.segment import Segment

    block = "\u2580"
    return [
        Strip([Segment(block, _cell_style(upper, lower)) for upper, lower in row], width)
        for row in halfblock_rows(image, width, height)
    ]


@functools.cache
def _halfblock_widget_class() -> type[Widget]:
    """``textual-image``'s half-block widget, with two changes that matter at four previews a second:

    - it draws its lines itself (Textual's line API) from :func:`halfblock_strips`, made once per image and
      size, instead of going through a Rich renderable that builds two colours and a style per cell each
      time it is drawn (and warns once per frame about Pillow 13's ``Image.getdata``);
    - a new image repaints the widget without a layout pass: in half-blocks the camera panel sets this
      widget's size in cells (``_fit_image``), so a new image of the same size changes no layout.
    """
    from textual_image.renderable import halfcell
    from textual_image.widget import HalfcellImage

    class CameraHalfcellImage(HalfcellImage, Renderable=halfcell.Image):
        """Half-block camera image."""

        _repaint_only = False
        #: The strips of the image shown, and the (image number, width, height) they were made for.
        _strips: list[Strip] | None = None
        _strips_key: tuple[int, int, int] | None = None
        #: Counts the images set, so strips are never reused for another image.
        _image_number = 0

        @property
        def image(self) -> Any:
            return HalfcellImage.image.fget(self)  # type: ignore[attr-defined]

        @image.setter
        def image(self, value: Any) -> None:
            self._image_number += 1
            self._repaint_only = True
            try:
                HalfcellImage.image.fset(self, value)  # type: ignore[attr-defined]
            finally:
                self._repaint_only = False

        def refresh(
            self, *regions: Any, repaint: bool = True, layout: bool = False, recompose: bool = False
        ) -> Any:
            return super().refresh(
                *regions, repaint=repaint, layout=layout and not self._repaint_only, recompose=recompose
            )

        def render_line(self, y: int) -> Strip:
            width, height = self.content_size
            image = self.image
            if not isinstance(image, PILImage.Image) or width <= 0 or height <= 0:
                return Strip.blank(width)
            key = (self._image_number, width, height)
            if self._strips is None or self._strips_key != key:
                self._strips = halfblock_strips(image, width, height)
                self._strips_key = key
            return self._strips[y] if 0 <= y < len(self._strips) else Strip.blank(width)

    return CameraHalfcellImage


def decode_preview_image(preview: Preview) -> PILImage.Image:
    """The preview's JPEG as an RGB image; ValueError saying why when it is missing or unreadable."""
    if preview.jpeg_b64 is None:
        raise ValueError("the preview has no image")
    try:
        data = base64.b64decode(preview.jpeg_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the preview image is not valid base64: {exc}") from None
    try:
        image = PILImage.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"the preview image could not be decoded: {exc}") from None
    if image.format != "JPEG":
        raise ValueError(f"the preview image is {image.format or 'of an unknown format'}, not JPEG")
    if image.width == 0 or image.height == 0:
        raise ValueError("the preview image is empty")
    return image.convert("RGB")


def fit_halfblock(image_w: int, image_h: int, cells_w: int, cells_h: int) -> tuple[int, int]:
    """The largest (width, height) in cells that shows an ``image_w`` x ``image_h`` pixel image with its
    aspect ratio within ``cells_w`` x ``cells_h`` cells, as half-blocks: each cell shows two pixels, one above
    the other, so a cell twice as tall as it is wide keeps the pixels square. (0, 0) when nothing fits."""
    if min(image_w, image_h, cells_w, cells_h) <= 0:
        return 0, 0
    scale = min(cells_w / image_w, 2.0 * cells_h / image_h)
    width = min(cells_w, max(1, math.floor(image_w * scale + 1e-9)))
    height = min(cells_h, max(1, round(image_h * scale / 2.0)))
    return width, height


def ring_caption(preview: Preview) -> str:
    """The line under the image: the ring's diameter in mm (or "no ring found") and the focus score."""
    if preview.ring_diameter_mm is not None:
        text = f"ring {preview.ring_diameter_mm:.2f} mm"
    elif preview.ring_diameter_px is not None:
        text = f"ring {preview.ring_diameter_px:.0f} px (uncalibrated)"
    else:
        text = "no ring found"
    if preview.focus is not None:
        text += f" · focus {preview.focus:.0f}"
    return text


class CameraPreview(Widget):
    """The latest camera preview, or a clear NO CAMERA / CAMERA FROZEN / NO CAMERA IMAGE state.

    Args:
        force_halfblock: always draw half-blocks (steady screenshots, terminals whose graphics answers are
            wrong); None follows the class attribute ``FORCE_HALFBLOCK`` and :func:`use_halfblocks`.
        stale_after_s: seconds without a new preview after which the image is replaced by NO CAMERA PREVIEW;
            None never (snapshots). Checked four times a second.
        clock: monotonic clock, seconds, that times the staleness.

    Call :meth:`show` with every preview (or None when there is none); it is cheap (a 160-pixel JPEG decodes
    in well under a millisecond).
    """

    DEFAULT_CSS = """
    CameraPreview {
        layout: vertical;
        width: 1fr;
        height: 1fr;
        min-height: 4;
    }
    CameraPreview > #camera-frame {
        width: 100%;
        height: 1fr;
        align: center middle;
    }
    CameraPreview > #camera-banner {
        width: 100%;
        height: 1fr;
        align: center middle;
        display: none;
    }
    CameraPreview #camera-state {
        width: auto;
        padding: 1 3;
        background: $error;
        color: $text;
        text-style: bold;
    }
    CameraPreview #camera-detail {
        width: 100%;
        height: auto;
        max-height: 3;
        margin: 1 1 0 1;
        color: $text-muted;
        text-align: center;
    }
    CameraPreview > #camera-caption {
        width: 100%;
        height: 1;
        color: $foreground;
        text-align: center;
        text-style: bold;
    }
    CameraPreview.-no-image > #camera-frame {
        display: none;
    }
    CameraPreview.-no-image > #camera-banner {
        display: block;
    }
    CameraPreview.-no-image > #camera-caption {
        color: $text-muted;
        text-style: none;
    }
    """

    FORCE_HALFBLOCK: ClassVar[bool] = False
    """Draw half-blocks in every instance that does not say otherwise."""

    STALE_AFTER_S: ClassVar[float] = 2.0
    """Default seconds without a preview before the image is called stale."""

    def __init__(
        self,
        *,
        force_halfblock: bool | None = None,
        stale_after_s: float | None = STALE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        if stale_after_s is not None and not (math.isfinite(stale_after_s) and stale_after_s > 0):
            raise ValueError(f"stale_after_s must be a number of seconds > 0 or None, got {stale_after_s!r}")
        super().__init__(name=name, id=id, classes=classes)
        default = self.FORCE_HALFBLOCK or _halfblocks_without_probing
        self.halfblock = default if force_halfblock is None else bool(force_halfblock)
        self.stale_after_s = stale_after_s
        self._clock = clock
        self.preview: Preview | None = None
        """The preview shown (None before the first)."""
        self.state_title = NO_CAMERA
        """The state shown in place of the image ("" while an image is shown)."""
        self._image_widget: Widget | None = None
        self._image_size: tuple[int, int] | None = None
        self._image_class_checked = False
        self._image_class: type[Widget] | None = None
        self._shown_at = self._clock()
        self._stale = False
        self.add_class("-no-image")

    def compose(self) -> ComposeResult:
        yield Container(id="camera-frame")
        with Vertical(id="camera-banner"):
            with Center():
                yield Static(NO_CAMERA, id="camera-state")
            yield Static("no preview from the controller", id="camera-detail")
        yield Static("", id="camera-caption")

    def on_mount(self) -> None:
        if self.stale_after_s is not None:
            self.set_interval(0.25, self.check_stale, name="camera-preview-stale")
        if self.preview is not None:
            preview, self.preview = self.preview, None
            self.show(preview)

    # -- what is shown -------------------------------------------------------------------------------------

    def show(self, preview: Preview | None) -> None:
        """Show ``preview`` (None: no preview from the controller)."""
        if preview is not None and preview is self.preview and self.is_mounted:
            return  # nothing new: the staleness clock keeps running
        self.preview = preview
        self._shown_at = self._clock()
        self._stale = False
        if not self.is_mounted:
            return
        if preview is None:
            self._show_state(NO_CAMERA, "no preview from the controller", "")
            return
        if preview.camera != "ok" or preview.jpeg_b64 is None:
            title = _STATE_TITLES.get(preview.camera, f"CAMERA {preview.camera.upper()}")
            detail = preview.detail or (
                "the camera sent no image" if preview.camera == "ok" else f"camera state: {preview.camera}"
            )
            self._show_state(title, detail, "")
            return
        try:
            image = decode_preview_image(preview)
        except ValueError as exc:
            self._show_state(NO_CAMERA_IMAGE, str(exc), ring_caption(preview))
            return
        self._show_image(image, ring_caption(preview))

    def _show_state(self, title: str, detail: str, caption: str) -> None:
        self.state_title = title
        self.query_one("#camera-state", Static).update(plain(title))
        self.query_one("#camera-detail", Static).update(plain(detail))
        self.query_one("#camera-caption", Static).update(caption)
        self.add_class("-no-image")

    def _show_image(self, image: PILImage.Image, caption: str) -> None:
        widget = self._ensure_image_widget()
        if widget is None:
            self._show_state(
                NO_CAMERA_IMAGE,
                "images are off: the terminal was not prepared for graphics before the console started",
                caption,
            )
            return
        widget.image = image  # type: ignore[attr-defined]
        size = (image.width, image.height)
        if size != self._image_size:
            self._image_size = size
            self._fit_image()
        self.state_title = ""
        self.query_one("#camera-caption", Static).update(caption, layout=False)  # one line, always
        self.remove_class("-no-image")

    def _ensure_image_widget(self) -> Widget | None:
        if self._image_widget is not None:
            return self._image_widget
        if not self._image_class_checked:
            self._image_class_checked = True
            self._image_class = _image_widget_class(self.halfblock)
        if self._image_class is None:
            return None
        widget = self._image_class(id="camera-image")
        self._image_widget = widget
        self.query_one("#camera-frame", Container).mount(widget)
        return widget

    @property
    def image_widget(self) -> Widget | None:
        """The ``textual-image`` widget drawing the image (None before the first image)."""
        return self._image_widget

    # -- size and staleness ----------------------------------------------------------------------------------

    def on_resize(self) -> None:
        self._fit_image()

    def _fit_image(self) -> None:
        widget = self._image_widget
        size = self._image_size
        if widget is None or size is None:
            return
        if not self.halfblock:
            # Sixel and Kitty images know the terminal's cell size in pixels: they fit themselves.
            widget.styles.width = "auto"
            widget.styles.height = "auto"
            return
        caption = 1
        width, height = fit_halfblock(
            size[0], size[1], self.content_size.width, max(0, self.content_size.height - caption)
        )
        widget.styles.width = max(1, width)
        widget.styles.height = max(1, height)

    def check_stale(self) -> bool:
        """Replace the preview by NO CAMERA PREVIEW when it is ``stale_after_s`` old; True when it is stale.

        Runs four times a second while the widget is mounted."""
        if self.stale_after_s is None or self.preview is None:
            return False
        if self._stale:
            return True
        age = self._clock() - self._shown_at
        if age < self.stale_after_s:
            return False
        self._stale = True
        self._show_state(NO_PREVIEW, f"no new preview from the controller for {age:.0f} s", "")
        return True
