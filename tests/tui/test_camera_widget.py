"""The camera preview widget: the image and the ring, the no-camera and frozen states, stale previews, and
snapshots at 40x12 and 60x20, drawn with half-blocks (the terminal is never probed in tests)."""

from __future__ import annotations

import base64
import fcntl
import io
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from console_fixtures import wait_until
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

from control.messages import Preview
from tui.widgets.camera import (
    CAMERA_FROZEN,
    NO_CAMERA,
    NO_CAMERA_IMAGE,
    NO_PREVIEW,
    CameraPreview,
    decode_preview_image,
    fit_halfblock,
)

SnapCompare = Callable[..., bool]


def synthetic_jpeg(width: int = 160, height: int = 90, ring_fraction: float = 1 / 3) -> str:
    """A fixed preview image: a grey gradient, a bright ring (its radius ``ring_fraction`` of the height) and
    the green outline the controller draws."""
    ys, xs = np.mgrid[0:height, 0:width]
    grey = (30 + 40 * xs / width + 20 * ys / height).astype(np.uint8)
    image = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    centre = (width // 2, height // 2)
    radius = int(height * ring_fraction)
    cv2.circle(image, centre, radius, (210, 210, 210), 3, cv2.LINE_AA)
    cv2.circle(image, centre, radius, (0, 200, 0), 1, cv2.LINE_AA)
    cv2.line(image, (centre[0] - 4, centre[1]), (centre[0] + 4, centre[1]), (0, 200, 0), 1)
    cv2.line(image, (centre[0], centre[1] - 4), (centre[0], centre[1] + 4), (0, 200, 0), 1)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def image_preview(seq: int = 1, ring_mm: float | None = 3.02, ring_fraction: float = 1 / 3) -> Preview:
    return Preview(
        seq=seq,
        time_s=100.0 + seq,
        camera="ok",
        width=160,
        height=90,
        jpeg_b64=synthetic_jpeg(ring_fraction=ring_fraction),
        ring_diameter_mm=ring_mm,
        ring_diameter_px=None if ring_mm is None else ring_mm * 100.0,
        focus=412.4,
    )


NO_CAMERA_PREVIEW = Preview(seq=1, time_s=100.0, camera="none", detail="no camera is configured on this rig")
FROZEN_PREVIEW = Preview(
    seq=2, time_s=101.0, camera="frozen", detail="simulated camera has sent identical frames for 1.2 s"
)


class PreviewApp(App[None]):
    """Just the widget, full screen, showing one preview when it starts."""

    def __init__(self, preview: Preview | None, *, stale_after_s: float | None = None) -> None:
        super().__init__()
        self.first = preview
        self.stale_after_s = stale_after_s
        self.now = 1000.0

    def compose(self) -> ComposeResult:
        yield CameraPreview(
            id="camera", force_halfblock=True, stale_after_s=self.stale_after_s, clock=lambda: self.now
        )

    def on_mount(self) -> None:
        self.camera.show(self.first)

    @property
    def camera(self) -> CameraPreview:
        return self.query_one("#camera", CameraPreview)


def _text(pilot: Pilot[Any], widget_id: str) -> str:
    return str(pilot.app.query_one(f"#{widget_id}", Static).render())


def _visible(pilot: Pilot[Any], widget_id: str) -> bool:
    widget = pilot.app.query_one(f"#{widget_id}")
    return bool(widget.display) and widget.region.area > 0


async def test_an_image_preview_shows_the_image_and_the_ring() -> None:
    app = PreviewApp(image_preview())
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        camera = app.camera
        image = camera.image_widget
        from textual_image.widget import HalfcellImage

        assert isinstance(image, HalfcellImage)
        assert image.image is not None  # type: ignore[attr-defined]
        assert _visible(pilot, "camera-image")
        assert not _visible(pilot, "camera-banner")
        assert _text(pilot, "camera-caption") == "ring 3.02 mm · focus 412"
        assert camera.state_title == ""
        # 160 x 90 pixels in 60 x 19 cells as half-blocks: 60 cells wide, 17 rows of two pixels.
        assert (image.region.width, image.region.height) == (60, 17)
        # A preview whose ring was not found keeps the image and says so.
        camera.show(image_preview(seq=2, ring_mm=None))
        await pilot.pause()
        assert _text(pilot, "camera-caption") == "no ring found · focus 412"
        assert _visible(pilot, "camera-image")
        # A ring found with no camera scale calibration active: its size in pixels, marked uncalibrated.
        uncalibrated = image_preview(seq=3).model_copy(update={"ring_diameter_mm": None})
        camera.show(uncalibrated)
        await pilot.pause()
        assert _text(pilot, "camera-caption") == "ring 302 px (uncalibrated) · focus 412"


async def test_each_new_image_is_drawn_in_place() -> None:
    """A new image of the same size is repainted where the last one was (no stale picture left behind)."""
    app = PreviewApp(image_preview())
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        image = app.camera.image_widget
        assert image is not None
        region = image.region
        first = app.export_screenshot()
        app.camera.show(image_preview(seq=2, ring_fraction=0.2))
        await pilot.pause()
        second = app.export_screenshot()
        assert second != first
        assert image.region == region
        app.camera.show(image_preview(seq=3))
        await pilot.pause()
        assert app.export_screenshot() == first


@pytest.mark.parametrize("cells", [(40, 12), (60, 17), (7, 3)])
def test_half_blocks_are_the_cells_textual_image_draws(cells: tuple[int, int]) -> None:
    """The camera's own half-block lines are exactly the cells ``textual-image``'s renderable draws."""
    import warnings

    from rich.console import Console
    from rich.segment import Segment
    from textual_image.renderable.halfcell import Image as TextualImageHalfcell

    from tui.widgets.camera import halfblock_strips

    image = decode_preview_image(image_preview())
    console = Console(width=cells[0], height=cells[1], color_system="truecolor", file=io.StringIO())
    options = console.options.update(width=cells[0], height=cells[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13's Image.getdata
        theirs = list(Segment.split_lines(console.render(TextualImageHalfcell(image, *cells), options)))
    ours = [list(strip) for strip in halfblock_strips(image, *cells)]
    assert len(ours) == cells[1] and all(
        strip.cell_length == cells[0] for strip in halfblock_strips(image, *cells)
    )
    assert [[(s.text, s.style) for s in line] for line in ours] == [
        [(s.text, s.style) for s in line] for line in theirs
    ]


@pytest.mark.parametrize("preview", [None, NO_CAMERA_PREVIEW], ids=["no-preview", "camera-none"])
async def test_no_camera_is_unmissable(preview: Preview | None) -> None:
    app = PreviewApp(preview)
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.pause()
        assert _text(pilot, "camera-state") == NO_CAMERA
        assert _visible(pilot, "camera-state")
        expected = "no preview from the controller" if preview is None else "no camera is configured"
        assert expected in _text(pilot, "camera-detail")
        assert app.camera.image_widget is None
        assert _text(pilot, "camera-caption") == ""


async def test_a_frozen_camera_hides_the_last_image_and_says_why() -> None:
    app = PreviewApp(image_preview())
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        assert _visible(pilot, "camera-image")
        app.camera.show(FROZEN_PREVIEW)
        await pilot.pause()
        assert _text(pilot, "camera-state") == CAMERA_FROZEN
        assert "identical frames for 1.2 s" in _text(pilot, "camera-detail")
        assert not _visible(pilot, "camera-image")
        assert _text(pilot, "camera-caption") == ""
        # Live again.
        app.camera.show(image_preview(seq=3))
        await pilot.pause()
        assert _visible(pilot, "camera-image") and not _visible(pilot, "camera-banner")


@pytest.mark.parametrize(
    ("preview", "title", "detail"),
    [
        (
            Preview(seq=1, time_s=1.0, camera="no_frames", detail="no frame from camera device 0 for 1.2 s"),
            NO_CAMERA_IMAGE,
            "no frame from camera device 0",
        ),
        (
            Preview(seq=1, time_s=1.0, camera="not_opened", detail="camera device 0 not found"),
            NO_CAMERA,
            "camera device 0 not found",
        ),
        (
            Preview(seq=1, time_s=1.0, camera="ok", jpeg_b64=base64.b64encode(b"not a jpeg").decode()),
            NO_CAMERA_IMAGE,
            "could not be decoded",
        ),
        (Preview(seq=1, time_s=1.0, camera="ok", jpeg_b64="%%%"), NO_CAMERA_IMAGE, "not valid base64"),
    ],
    ids=["no-frames", "not-opened", "undecodable", "bad-base64"],
)
async def test_unusable_previews_show_their_state(preview: Preview, title: str, detail: str) -> None:
    app = PreviewApp(preview)
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        assert _text(pilot, "camera-state") == title
        assert detail in _text(pilot, "camera-detail")
        assert app.camera.image_widget is None or not _visible(pilot, "camera-image")


async def test_an_image_is_not_left_on_screen_when_previews_stop() -> None:
    app = PreviewApp(image_preview(), stale_after_s=2.0)
    async with app.run_test(size=(60, 20)) as pilot:
        await pilot.pause()
        camera = app.camera
        assert _visible(pilot, "camera-image")
        app.now += 1.9
        camera.show(image_preview(seq=4))
        app.now += 1.9
        assert not camera.check_stale()  # 1.9 s since the newest preview
        app.now += 0.2
        # The widget's own timer notices.
        await wait_until(pilot, lambda: camera.state_title == NO_PREVIEW, "the stale state", limit=5.0)
        assert _text(pilot, "camera-detail") == "no new preview from the controller for 2 s"
        # Hidden by the stylesheet, and out of the layout, on the next refresh.
        await wait_until(pilot, lambda: not _visible(pilot, "camera-image"), "the image hidden", limit=5.0)
        # The same old preview again is nothing new; a new one is shown.
        camera.show(camera.preview)
        await pilot.pause()
        assert camera.state_title == NO_PREVIEW
        camera.show(image_preview(seq=5))
        assert camera.state_title == ""
        await wait_until(pilot, lambda: _visible(pilot, "camera-image"), "the new image shown", limit=5.0)
        assert not camera.check_stale()


def test_decoding_and_fitting() -> None:
    image = decode_preview_image(image_preview())
    assert (image.width, image.height, image.mode) == (160, 90, "RGB")
    png_ok, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    assert png_ok
    with pytest.raises(ValueError, match="not JPEG"):
        decode_preview_image(Preview(seq=1, time_s=1.0, camera="ok", jpeg_b64=base64.b64encode(png).decode()))
    with pytest.raises(ValueError, match="no image"):
        decode_preview_image(Preview(seq=1, time_s=1.0, camera="ok"))
    assert fit_halfblock(160, 90, 60, 19) == (60, 17)  # width-limited
    assert fit_halfblock(160, 90, 120, 10) == (35, 10)  # height-limited: 20 pixel rows
    assert fit_halfblock(160, 90, 0, 10) == (0, 0)
    with pytest.raises(ValueError, match="stale_after_s"):
        CameraPreview(stale_after_s=0.0)


def _run_on_a_terminal(
    code: str,
    answer: Callable[[bytes], bytes] | None = None,
    pixels: tuple[int, int] = (0, 0),
    cells: tuple[int, int] = (80, 24),
) -> tuple[int, bytes]:
    """Run ``code`` in a fresh interpreter whose standard streams are a pseudo-terminal of ``cells`` columns
    and rows, ``pixels`` wide and high (0 where the terminal does not say); return its exit status and every
    byte it wrote to the terminal. ``answer`` gives the terminal's reply to what it read."""
    master, slave = pty.openpty()
    try:
        winsize = struct.pack("HHHH", cells[1], cells[0], pixels[0], pixels[1])
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=slave, stdout=slave, stderr=slave, close_fds=True
        )
        os.close(slave)
        slave = -1
        written = b""
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                written += chunk
                if answer is not None:
                    os.write(master, answer(chunk))
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10.0), written
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_importing_the_console_on_a_terminal_writes_nothing_to_it() -> None:
    """Importing the app and this widget neither imports the image package nor sends the terminal a query."""
    status, written = _run_on_a_terminal(
        "import sys, tui.app, tui.widgets.camera\n"
        "sys.exit(3 if any(m.startswith('textual_image') for m in sys.modules) else 0)\n"
    )
    assert status == 0, written
    assert written == b""


_UNPREPARED_APP = """
import asyncio, base64, sys
import cv2, numpy as np
from textual.app import App
from control.messages import Preview
from tui.widgets.camera import CameraPreview

ok, jpeg = cv2.imencode(".jpg", np.full((90, 160, 3), 90, np.uint8))
preview = Preview(seq=1, time_s=1.0, camera="ok", width=160, height=90,
                  jpeg_b64=base64.b64encode(jpeg.tobytes()).decode(), ring_diameter_mm=2.5)

class One(App[None]):
    def compose(self):
        yield CameraPreview(id="camera", force_halfblock=True, stale_after_s=None)

async def main():
    app = One()
    async with app.run_test(size=(60, 20)) as pilot:
        camera = app.query_one(CameraPreview)
        camera.show(preview)
        await pilot.pause()
        result = (camera.state_title, str(app.query_one("#camera-detail").render()),
                  str(app.query_one("#camera-caption").render()))
    loaded = any(m.startswith("textual_image") for m in sys.modules)
    print("RESULT", result, loaded)

asyncio.run(main())
"""


def test_an_unprepared_terminal_is_never_probed_by_the_widget() -> None:
    """With a terminal on standard output that was not prepared, the widget does not import the image
    package (it would query the terminal under the running app): it says images are off, keeps the ring."""
    status, written = _run_on_a_terminal(_UNPREPARED_APP)
    assert status == 0, written
    text = written.decode(errors="replace")
    assert "\x1b" not in text, text
    line = next(row for row in text.splitlines() if row.startswith("RESULT"))
    assert "NO CAMERA IMAGE" in line and "images are off" in line and "ring 2.50 mm" in line
    assert line.endswith("False")


def test_half_blocks_without_probing_draw_the_image_and_ask_the_terminal_nothing() -> None:
    """Where the console does not ask the terminal about graphics (tmux, an ordinary terminal), the widget
    loads the image package on first use without its queries and draws the image in half-blocks."""
    code = _UNPREPARED_APP.replace(
        "from tui.widgets.camera import CameraPreview",
        "from tui.widgets.camera import CameraPreview, use_halfblocks\nuse_halfblocks()",
    ).replace(
        'CameraPreview(id="camera", force_halfblock=True, stale_after_s=None)',
        """CameraPreview(id="camera", stale_after_s=None)""",
    )
    # Sized as half-blocks by the widget (not by the package's guess at the cell size in pixels).
    check = "    assert camera.halfblock, 'not drawn as half-blocks'\n"
    code = code.replace("    loaded = any(", check + "    loaded = any(")
    assert "use_halfblocks()" in code and "force_halfblock" not in code and "camera.halfblock" in code
    status, written = _run_on_a_terminal(code)
    assert status == 0, written
    text = written.decode(errors="replace")
    assert "\x1b" not in text, text
    line = next(row for row in text.splitlines() if row.startswith("RESULT"))
    assert line.startswith("RESULT ('',") and "ring 2.50 mm" in line, line
    assert line.endswith("True")


def test_the_terminal_is_probed_only_when_asked() -> None:
    """On a terminal that answers no graphics query, preparing picks half-blocks, after the three queries,
    and prints no warning; without a terminal on standard input nothing is probed."""
    status, written = _run_on_a_terminal(
        "from tui.widgets.camera import prepare_terminal_graphics\n"
        "print('renderer=' + prepare_terminal_graphics())\n"
    )
    assert status == 0, written
    text = written.decode(errors="replace")
    assert "renderer=halfblock" in text
    assert "\x1b[c" in text  # the Sixel query (primary device attributes)
    assert "\x1b_G" in text  # the Kitty graphics query
    assert "Failed" not in text and "Traceback" not in text
    # A terminal that does not know its size is not probed (the package would divide by zero).
    status, written = _run_on_a_terminal(
        "from tui.widgets.camera import prepare_terminal_graphics\n"
        "print('renderer=' + repr(prepare_terminal_graphics()))\n",
        cells=(0, 0),
    )
    assert status == 0 and written.strip() == b"renderer=''", written
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom tui.widgets.camera import prepare_terminal_graphics\n"
            "print(repr(prepare_terminal_graphics()), 'textual_image.widget' in sys.modules)\n",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == ["''", "False"]


def test_a_terminal_with_sixel_graphics_gets_sixel_images() -> None:
    def terminal(received: bytes) -> bytes:
        return b"\x1b[?62;4;22c" if b"\x1b[c" in received else b""

    status, written = _run_on_a_terminal(
        "from tui.widgets.camera import prepare_terminal_graphics\n"
        "print('renderer=' + prepare_terminal_graphics())\n",
        answer=terminal,
        pixels=(800, 480),
    )
    assert status == 0, written
    assert "renderer=sixel" in written.decode(errors="replace")


@pytest.mark.parametrize("size", [(40, 12), (60, 20)], ids=["40x12", "60x20"])
def test_snapshot_image(size: tuple[int, int], snap_compare: SnapCompare) -> None:
    async def drawn(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, PreviewApp)
        await wait_until(pilot, lambda: app.camera.image_widget is not None, "the image")
        await pilot.pause()

    assert snap_compare(PreviewApp(image_preview()), terminal_size=size, run_before=drawn)


@pytest.mark.parametrize("size", [(40, 12), (60, 20)], ids=["40x12", "60x20"])
def test_snapshot_no_camera(size: tuple[int, int], snap_compare: SnapCompare) -> None:
    async def drawn(pilot: Pilot[Any]) -> None:
        await pilot.pause()

    assert snap_compare(PreviewApp(NO_CAMERA_PREVIEW), terminal_size=size, run_before=drawn)
