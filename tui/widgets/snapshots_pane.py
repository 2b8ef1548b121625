"""A session's snapshots, as a list: when each picture was recorded, its file, size and resolution, what it
shows (the camera frame, or the ring drawn with its diameter), and a file no longer where its record says."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from control.imaging_records import SnapshotRecord
from tui.safe_text import plain


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


class SnapshotsPane(VerticalScroll):
    """The list of a session's snapshots (:func:`snapshots_text`)."""

    DEFAULT_CSS = """
    SnapshotsPane {
        padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        yield Static("reading...", id="snapshots-list")

    def show(self, records: list[SnapshotRecord]) -> None:
        self.query_one("#snapshots-list", Static).update(snapshots_text(records))
