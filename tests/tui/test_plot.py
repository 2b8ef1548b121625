"""The braille power plot: dot maths, axes, legend, empty plot, bad input, resizing, live traces, snapshot."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from tui.widgets.plot import (
    BRAILLE_BLANK,
    BRAILLE_DOTS,
    MAX_SERIES,
    NO_DATA,
    PowerPlot,
    braille_cell,
    format_tick,
    nice_step,
    ticks,
)

SnapCompare = Callable[..., bool]

SEED_CURVE = [(0.0, 5.0), (60.0, 5.0), (60.0, 5.0), (90.0, 8.0)]


class PlotApp(App[None]):
    """A plot filling the screen."""

    CSS = "PowerPlot { height: 1fr; }"

    def __init__(self, fill: Callable[[PowerPlot], None] | None = None) -> None:
        super().__init__()
        self.fill = fill

    def compose(self) -> ComposeResult:
        yield PowerPlot(id="plot")

    def on_mount(self) -> None:
        if self.fill is not None:
            self.fill(self.query_one(PowerPlot))


@contextlib.asynccontextmanager
async def mounted_plot() -> AsyncIterator[PowerPlot]:
    """A plot on screen (its colours come from the stylesheet), to draw at any size with build_lines."""
    app = PlotApp()
    async with app.run_test(size=(40, 10)):
        yield app.query_one(PowerPlot)


def text_of(plot: PowerPlot) -> list[str]:
    width, height = plot.size
    return [strip.text for strip in plot.build_lines(width, height)]


def cell_bits(char: str) -> int:
    return ord(char) - BRAILLE_BLANK if char != " " else 0


def test_braille_cells_raise_the_right_dots() -> None:
    assert braille_cell([(0, 0)]) == "⠁"
    assert braille_cell([(1, 0)]) == "⠈"
    assert braille_cell([(0, 3)]) == "⡀"
    assert braille_cell([(1, 3)]) == "⢀"
    assert braille_cell([(c, r) for c in range(2) for r in range(4)]) == "⣿"


def test_a_known_point_lands_on_its_dot() -> None:
    plot = PowerPlot()
    plot.set_ranges(x=(0.0, 10.0), y=(0.0, 10.0))
    plot.set_series("a", [(0.0, 10.0)], label="top left")
    bits, owner, frame = plot.dot_grid(40, 10)
    assert (frame.x_range, frame.y_range) == ((0.0, 10.0), (0.0, 10.0))
    assert bits[0] == 0x01 and owner[0] == 1
    assert sum(1 for b in bits if b) == 1
    plot.set_series("a", [(10.0, 0.0)], label="bottom right")
    bits, _owner, frame = plot.dot_grid(40, 10)
    assert bits[-1] == 0x80 and sum(1 for b in bits if b) == 1
    # x = 5 of 0..10 spread over the 2 * cols dot columns, y = 5 over the 4 * rows dot rows.
    plot.set_series("a", [(5.0, 5.0)], label="middle")
    bits, _owner, frame = plot.dot_grid(40, 10)
    px = round(5.0 / 10.0 * (frame.cols * 2 - 1))
    py = round(5.0 / 10.0 * (frame.rows * 4 - 1))
    assert raised_dots(bits, frame.cols) == {(px, py)}


def raised_dots(bits: list[int], cols: int) -> set[tuple[int, int]]:
    """Every raised dot as (dot column, dot row) over the whole plot area."""
    found: set[tuple[int, int]] = set()
    for cell, value in enumerate(bits):
        row, col = divmod(cell, cols)
        for r, pair in enumerate(BRAILLE_DOTS):
            for c, bit in enumerate(pair):
                if value & bit:
                    found.add((col * 2 + c, row * 4 + r))
    return found


def test_a_line_joins_its_points_without_gaps() -> None:
    plot = PowerPlot()
    plot.set_ranges(x=(0.0, 1.0), y=(0.0, 1.0))
    plot.set_series("ramp", [(0.0, 0.0), (1.0, 1.0)], label="ramp")
    bits, _owner, frame = plot.dot_grid(40, 10)
    dots = raised_dots(bits, frame.cols)
    width, height = frame.cols * 2, frame.rows * 4
    # A line from the bottom-left dot to the top-right dot with a dot in every column, rising throughout.
    assert (0, height - 1) in dots and (width - 1, 0) in dots
    assert {x for x, _y in dots} == set(range(width))
    lowest = [max(y for x, y in dots if x == column) for column in range(width)]
    assert lowest == sorted(lowest, reverse=True)


def test_nan_and_infinite_points_are_not_drawn_and_break_the_line() -> None:
    plot = PowerPlot()
    plot.set_series("m", [(0.0, 1.0), (1.0, math.nan), (2.0, 1.0), (math.inf, 50.0)], label="m")
    assert plot.data_ranges() == ((0.0, 2.0), (1.0, 1.0))
    bits, _owner, frame = plot.dot_grid(40, 10)
    assert frame.x_range == (0.0, 2.0)
    assert sum(1 for b in bits if b) == 2  # the two finite points, not joined across the NaN


async def test_axis_labels_carry_units_and_y_includes_zero() -> None:
    async with mounted_plot() as plot:
        plot.set_series("plan", SEED_CURVE, label="setpoint")
        lines = [strip.text for strip in plot.build_lines(60, 12)]
        assert lines[0].startswith("8 W┤")
        assert any(line.lstrip().startswith("0┤") for line in lines)
        assert lines[-3].lstrip().startswith("└┬")
        x_labels = lines[-2].split()
        assert x_labels[0] == "0" and x_labels[-1] == "s" and x_labels[-2] in ("80", "90")
        assert lines[-1].startswith("━━ setpoint")
        # A fixed y range that leaves out 0 is widened to include it.
        plot.set_ranges(y=(2.0, 8.0))
        _bits, _owner, frame = plot.dot_grid(60, 12)
        assert frame.y_range == (0.0, 8.0)


async def test_the_empty_plot_says_no_data() -> None:
    async with mounted_plot() as plot:
        lines = [strip.text for strip in plot.build_lines(40, 10)]
        assert sum(NO_DATA in line for line in lines) == 1
        plot.set_series("m", [(0.0, math.nan)], label="measured")
        lines = [strip.text for strip in plot.build_lines(40, 10)]
        assert any(NO_DATA in line for line in lines)
        assert lines[-1].startswith("━━ measured")
        plot.set_series("m", [(0.0, 1.0)], label="measured")
        assert not any(NO_DATA in strip.text for strip in plot.build_lines(40, 10))


def test_tick_spacing_and_labels() -> None:
    assert nice_step(90.0, 4) == 20.0
    assert nice_step(8.0, 4) == 2.0
    assert nice_step(0.9, 3) == 0.2
    assert nice_step(30.0, 1) == 20.0
    assert ticks(0.0, 10.0, 2.5) == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert format_tick(2.5, 0.5) == "2.5"
    assert format_tick(-0.0, 1.0) == "0"
    assert format_tick(20.0, 10.0) == "20"


def test_bad_input_is_refused_and_changes_nothing() -> None:
    plot = PowerPlot()
    plot.set_series("a", [(0.0, 1.0)], label="a")
    with pytest.raises(ValueError, match="pair of numbers"):
        plot.set_series("a", [(0.0, 1.0), ("x", 2.0)], label="a")  # type: ignore[list-item]
    assert plot.points("a") == [(0.0, 1.0)]
    with pytest.raises(ValueError, match="low < high"):
        plot.set_ranges(x=(5.0, 5.0))
    with pytest.raises(ValueError, match="finite"):
        plot.set_ranges(y=(0.0, math.inf))
    plot.set_series("b", [], label="b")
    plot.set_series("c", [], label="c")
    with pytest.raises(ValueError, match=f"at most {MAX_SERIES} series"):
        plot.set_series("d", [], label="d")
    assert plot.series_keys == ["a", "b", "c"]
    with pytest.raises(ValueError, match="keep_s"):
        plot.add_point("a", 1.0, 1.0, keep_s=0.0)
    assert plot.points("a") == [(0.0, 1.0)]
    plot.clear_series("b")
    plot.set_series("d", [(0.0, 2.0)], label="d")  # takes the freed colour
    bits, owner, _frame = plot.dot_grid(40, 10)
    assert {o for b, o in zip(bits, owner, strict=True) if b} == {1, 2}
    plot.clear_series()
    assert plot.series_keys == []


async def test_live_points_drop_what_is_older_than_keep_s_and_stay_cheap() -> None:
    async with mounted_plot() as plot:
        started = time.perf_counter()
        for k in range(3000):  # 100 s at 30 Hz
            plot.add_point("measured", k / 30.0, 5.0 + math.sin(k / 10.0), keep_s=10.0)
        lines = plot.build_lines(120, 20)
        elapsed = time.perf_counter() - started
        kept = plot.points("measured")
        assert kept[0][0] >= kept[-1][0] - 10.0 and len(kept) == 301
        assert len(lines) == 20
        assert elapsed < 2.0, f"3000 points and one drawing took {elapsed:.3f} s"


async def test_small_and_large_sizes() -> None:
    async with mounted_plot() as plot:
        plot.set_series("plan", SEED_CURVE, label="setpoint")
        for width, height in ((20, 5), (200, 60), (33, 7)):
            lines = plot.build_lines(width, height)
            assert len(lines) == height
            assert all(line.cell_length == width for line in lines)
            text = [line.text for line in lines]
            assert any(cell_bits(ch) for line in text for ch in line if "⠀" <= ch <= "⣿")
            assert "s" in text[-2] and text[-1].startswith("━━")
        tiny = [line.text for line in plot.build_lines(12, 2)]
        assert tiny[0].startswith("plot needs m")


async def test_the_plot_redraws_to_its_size() -> None:
    app = PlotApp(lambda plot: plot.set_series("plan", SEED_CURVE, label="setpoint"))
    async with app.run_test(size=(40, 10)) as pilot:
        plot = app.query_one(PowerPlot)
        await pilot.pause()
        before = text_of(plot)
        assert len(before) == 10 and all(len(line) == 40 for line in before)
        await pilot.resize_terminal(90, 20)
        await pilot.pause()
        after = text_of(plot)
        assert plot.size == (90, 20)
        assert len(after) == 20 and all(len(line) == 90 for line in after)
        assert [plot.render_line(y).text for y in range(20)] == after
        plot.add_point("measured", 30.0, 5.2)
        await pilot.pause()
        assert plot.render_line(19).text.startswith("━━ setpoint  ━━ measured")


def test_plot_snapshot(snap_compare: SnapCompare) -> None:
    def fill(plot: PowerPlot) -> None:
        plot.set_series("plan", SEED_CURVE, label="setpoint")
        plot.set_series(
            "measured", [(t / 2, 5.0 + 0.3 * math.sin(t)) for t in range(0, 140)], label="measured"
        )

    async def settled(pilot: Pilot[Any]) -> None:
        await pilot.pause()

    assert snap_compare(PlotApp(fill), terminal_size=(40, 10), run_before=settled)
