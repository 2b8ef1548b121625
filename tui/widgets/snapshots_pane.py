"""A session's snapshots: thumbnails where the terminal draws images, and always the list.

The list has one line per picture: when it was recorded, its file, size and resolution, what it shows (the
camera frame, or the ring drawn with its diameter), and ``MISSING`` for a file no longer where its record
says.

Where the terminal draws real images (Sixel or the Kitty graphics protocol, found when the console started:
:func:`tui.widgets.camera.terminal_draws_images`) the list is preceded by a thumbnail of each snapshot (the
picture with the ring drawn, or the raw one when that is missing), with its time and which picture it is,
drawn by ``textual-image``. The pictures are read and shrunk off the event loop; at most
:data:`MAX_THUMBNAILS` are drawn, the list naming every one. Elsewhere (half-blocks, a terminal never asked,
the tests' terminal) only the list is shown.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Grid, Vertical, VerticalScroll
from textual.widgets import Static

from control.imaging_records import SnapshotRecord
from storage.crypto_files import open_session_file
from storage.errors import StorageError
from tui.safe_text import plain
from tui.widgets.camera import image_widget_class, terminal_draws_images

#: The most thumbnails drawn for one session.
MAX_THUMBNAILS = 24
#: A thumbnail's size in cells (the picture keeps its aspect ratio within it).
THUMB_CELLS = (32, 9)
#: A thumbnail's largest size in pixels, as read from its file.
THUMB_PIXELS = (320, 180)
#: How an annotated picture's name ends (:mod:`devices.camera.snapshot`).
ANNOTATED_END = "_ring.png"


def snapshots_text(records: list[SnapshotRecord]) -> Text:
    """One line per snapshot file, oldest first; says so when the session has none."""
    text = Text()
    if not records:
        text.append("No snapshots were taken in this session.")
        return text
    folders = {record.path.rsplit("/", 1)[0] for record in records}
    for index, record in enumerate(records):
        if index:
            text.append("\n")
        text.append(record.taken_at.strftime("%H:%M:%S "), style="bold")
        text.append_text(plain(record.name, "bold"))
        size = "" if record.size_bytes is None else f"  {record.size_bytes / 1e6:.1f} MB"
        text.append(f"{size}  {record.resolution or '?'}")
        if record.notes:
            text.append("  ")
            text.append_text(plain(record.notes))
        if not record.present:
            text.append("  MISSING", style="bold reverse")
    text.append("\nin ")
    text.append_text(plain(", ".join(sorted(folders))))
    return text


def thumbnail_records(records: list[SnapshotRecord]) -> list[SnapshotRecord]:
    """One picture per snapshot, in the order taken: the one with the ring drawn, or the raw one when that
    is missing; a snapshot with neither file present has none."""
    pairs: dict[str, list[SnapshotRecord]] = {}
    for record in records:
        name = record.name
        stem = name[: -len(ANNOTATED_END)] if name.endswith(ANNOTATED_END) else name.removesuffix(".png")
        pairs.setdefault(f"{record.path.rsplit('/', 1)[0]}/{stem}", []).append(record)
    chosen: list[SnapshotRecord] = []
    for pair in pairs.values():
        present = [r for r in pair if r.present]
        annotated = [r for r in present if r.name.endswith(ANNOTATED_END)]
        if annotated or present:
            chosen.append((annotated or present)[0])
    return chosen


@dataclass(frozen=True, slots=True)
class Thumbnail:
    """A snapshot's picture, shrunk, with its caption."""

    record: SnapshotRecord
    image: PILImage.Image

    @property
    def caption(self) -> Text:
        """Its time and which picture it is (the list under the thumbnails names the files)."""
        text = Text(self.record.taken_at.strftime("%H:%M:%S "), style="bold")
        text.append("ring drawn" if self.record.name.endswith(ANNOTATED_END) else "camera frame")
        return text


def read_thumbnails(records: list[SnapshotRecord]) -> tuple[list[Thumbnail], list[str]]:
    """The pictures of ``records`` shrunk to :data:`THUMB_PIXELS`, and why any could not be read (blocking:
    call it in a thread)."""
    thumbs: list[Thumbnail] = []
    problems: list[str] = []
    for record in records:
        try:
            with open_session_file(Path(record.path)) as raw, PILImage.open(raw) as opened:
                image = opened.convert("RGB")
            image.thumbnail(THUMB_PIXELS)
        except (OSError, ValueError, StorageError) as exc:
            problems.append(f"{record.name}: {exc}")
            continue
        thumbs.append(Thumbnail(record, image))
    return thumbs, problems


class SnapshotsPane(VerticalScroll):
    """A session's snapshots: thumbnails where the terminal draws images, and the list
    (:func:`snapshots_text`).

    Args:
        thumbnails: draw thumbnails; None (the default) where the terminal draws real images.
        halfblock: draw the thumbnails with half-blocks (steady screenshots and tests).
    """

    DEFAULT_CSS = """
    SnapshotsPane {
        padding: 0 1;
    }
    SnapshotsPane #snapshot-thumbnails {
        grid-size: 3;
        grid-gutter: 0 2;
        grid-rows: 11;
        height: auto;
        display: none;
    }
    SnapshotsPane.-thumbnails #snapshot-thumbnails {
        display: block;
    }
    SnapshotsPane .snapshot-thumb {
        height: 11;
    }
    SnapshotsPane .snapshot-caption {
        height: 1;
        color: $text-muted;
    }
    """

    def __init__(
        self,
        *,
        thumbnails: bool | None = None,
        halfblock: bool = False,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.thumbnails = terminal_draws_images() if thumbnails is None else thumbnails
        self.halfblock = halfblock
        #: The thumbnails drawn (after :meth:`show` has read them).
        self.drawn: list[Thumbnail] = []

    def compose(self) -> ComposeResult:
        yield Grid(id="snapshot-thumbnails")
        yield Static("reading...", id="snapshots-list")

    def show(self, records: list[SnapshotRecord]) -> None:
        """Show ``records``: the list at once, and the thumbnails once read."""
        self.query_one("#snapshots-list", Static).update(snapshots_text(records))
        if self.thumbnails:
            self.draw_thumbnails(records)

    @work(exclusive=True, group="snapshot-thumbnails", exit_on_error=False)
    async def draw_thumbnails(self, records: list[SnapshotRecord]) -> None:
        """Read the pictures off the loop and draw them (nothing where images cannot be drawn here)."""
        widget_class = image_widget_class(self.halfblock)
        if widget_class is None:
            return
        chosen = thumbnail_records(records)[:MAX_THUMBNAILS]
        thumbs, _problems = await asyncio.to_thread(read_thumbnails, chosen)
        grid = self.query_one("#snapshot-thumbnails", Grid)
        await grid.remove_children()
        boxes = []
        for thumb in thumbs:
            image = widget_class(classes="snapshot-image")
            image.image = thumb.image  # type: ignore[attr-defined]
            image.styles.width, image.styles.height = THUMB_CELLS
            boxes.append(
                Vertical(image, Static(thumb.caption, classes="snapshot-caption"), classes="snapshot-thumb")
            )
        await grid.mount_all(boxes)
        self.drawn = thumbs
        self.set_class(bool(thumbs), "-thumbnails")
