"""The past session's snapshots: thumbnails (one per snapshot, the ring picture or the raw one when that is
missing) where the terminal draws images, the list always, and only the list in a terminal that draws none
(the tests' own); snapshots of the thumbnails at 80x24 and 120x40."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Static

from control.imaging_records import SnapshotRecord
from tests.support import wait_until
from tui.widgets.snapshots_pane import SnapshotsPane

SnapCompare = Callable[..., bool]


def _picture(path: Path, ring: bool, shade: int) -> None:
    image = np.full((180, 320, 3), shade, dtype=np.uint8)
    cv2.circle(image, (160, 90), 50, (230, 230, 230), 6)
    if ring:
        cv2.circle(image, (160, 90), 50, (0, 220, 0), 2)
    assert cv2.imwrite(str(path), image)


def _records(folder: Path) -> list[SnapshotRecord]:
    """Three snapshots: both pictures; the raw one only (the ring picture gone); neither."""
    folder.mkdir(parents=True, exist_ok=True)
    out: list[SnapshotRecord] = []
    for n, (raw_here, ring_here) in enumerate(((True, True), (True, False), (False, False)), start=1):
        stem = f"snapshot_20260314_0930{n:02d}_000"
        for ring, here in ((False, raw_here), (True, ring_here)):
            path = folder / f"{stem}{'_ring' if ring else ''}.png"
            if here:
                _picture(path, ring, 40 * n)
            out.append(
                SnapshotRecord(
                    path=str(path),
                    size_bytes=1000,
                    resolution="320x180",
                    taken_at=datetime(2026, 3, 14, 9, 30, n),
                    notes="snapshot annotated: ring 2.00 mm drawn" if ring else "snapshot: the camera frame",
                    present=here,
                )
            )
    return out


class PaneApp(App[None]):
    def __init__(self, records: list[SnapshotRecord], **pane: Any) -> None:
        super().__init__()
        self.records = records
        self.pane = pane

    def compose(self) -> ComposeResult:
        yield SnapshotsPane(**self.pane)

    def on_mount(self) -> None:
        self.query_one(SnapshotsPane).show(self.records)


def _list_text(app: App[Any]) -> str:
    return str(app.query_one("#snapshots-list", Static).content)


async def test_thumbnails_show_one_picture_per_snapshot_and_the_list_stays(tmp_path: Path) -> None:
    records = _records(tmp_path / "session")
    app = PaneApp(records, thumbnails=True, halfblock=True)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(SnapshotsPane)
        await wait_until(lambda: len(pane.drawn) == 2, 10.0, "the thumbnails drawn")
        await pilot.pause()
        # The first snapshot by its ring picture, the second by its raw one; the third has no file left.
        assert [t.record.name for t in pane.drawn] == [
            "snapshot_20260314_093001_000_ring.png",
            "snapshot_20260314_093002_000.png",
        ]
        captions = [str(s.content) for s in app.query(".snapshot-caption").results(Static)]
        assert captions == ["09:30:01 ring drawn", "09:30:02 camera frame"]
        images = list(app.query(".snapshot-image"))
        assert len(images) == 2 and all(image.region.area > 0 for image in images)
        # The picture drawn is the file's, shrunk: the ring's green is in the first, not the second.
        first, second = (t.image for t in pane.drawn)
        assert first.size == second.size == (320, 180)
        assert first.getpixel((210, 90))[1] > 200 and first.getpixel((210, 90))[0] < 100
        assert second.getpixel((210, 90)) == (230, 230, 230)
        text = _list_text(app)
        assert text.count("MISSING") == 3 and "snapshot_20260314_093003_000.png" in text


async def test_a_terminal_that_draws_no_images_gets_the_list_only(tmp_path: Path) -> None:
    records = _records(tmp_path / "session")
    app = PaneApp(records)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        pane = app.query_one(SnapshotsPane)
        assert pane.thumbnails is False
        assert "snapshot_20260314_093001_000_ring.png" in _list_text(app)
        assert not app.query(".snapshot-image") and pane.drawn == []
        assert not app.query_one("#snapshot-thumbnails").display


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_snapshot_thumbnails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snap_compare: SnapCompare, size: tuple[int, int]
) -> None:
    monkeypatch.chdir(tmp_path)  # the list names the folder: relative, the same every time
    records = _records(Path("data") / "sessions" / "P-2026-0042" / "f00d")

    async def drawn(pilot: Pilot[Any]) -> None:
        pane = pilot.app.query_one(SnapshotsPane)
        await wait_until(lambda: len(pane.drawn) == 2, 10.0, "the thumbnails drawn")
        await pilot.pause()

    assert snap_compare(
        PaneApp(records, thumbnails=True, halfblock=True), terminal_size=size, run_before=drawn
    )
