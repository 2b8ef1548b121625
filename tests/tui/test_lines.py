"""The line panel (the dashboard's figures and interlocks): a changed line is redrawn in place, a long one is
cut with an ellipsis, a line more or fewer changes the panel's height."""

from __future__ import annotations

import html
import re

from rich.text import Text
from textual.app import App, ComposeResult

from tui.widgets.lines import LinePanel


class PanelApp(App[None]):
    CSS = """
    LinePanel { width: 24; padding: 0 1; border-left: vkey white; }
    """

    def compose(self) -> ComposeResult:
        yield LinePanel(id="panel")


def screen_rows(app: App[None]) -> list[str]:
    """The screen's text, row by row, as the SVG screenshot holds it."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for x, y, text in re.findall(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(y), []).append((float(x), html.unescape(text).replace("\xa0", " ")))
    return ["".join(text for _, text in sorted(parts)).rstrip() for _, parts in sorted(rows.items())]


async def test_changed_lines_are_redrawn_and_long_ones_cut() -> None:
    app = PanelApp()
    async with app.run_test(size=(40, 8)) as pilot:
        panel = app.query_one(LinePanel)
        panel.show(Text("Power  set 2.00 W\nRing   3.00 mm\nEnergy 12.0 J"))
        await pilot.pause()
        assert panel.region.height == 3
        assert any("Ring   3.00 mm" in row for row in screen_rows(app))
        panel.show(Text("Power  set 2.00 W\nRing   3.10 mm\nEnergy 12.0 J and a great deal more text"))
        await pilot.pause()
        rows = screen_rows(app)
        assert any("Ring   3.10 mm" in row for row in rows)
        assert not any("3.00 mm" in row for row in rows)
        assert any("Power  set 2.00 W" in row for row in rows)
        assert any(row.strip().endswith("Energy 12.0 J and a …") for row in rows), rows
        assert panel.text.plain.splitlines()[1] == "Ring   3.10 mm"
        panel.show(Text("one\ntwo\nthree\nfour"))
        await pilot.pause()
        assert panel.region.height == 4
        assert any("four" in row for row in screen_rows(app))
