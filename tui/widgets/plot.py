"""A line plot drawn with Unicode braille characters, for laser power against time.

Each character cell holds a 2 x 4 grid of dots (U+2800 to U+28FF), so a plot ``c`` cells wide and ``r`` cells
tall has ``2c`` x ``4r`` dots. Points are joined by straight lines (Bresenham's algorithm, after clipping the
segment to the plot area), so a ramp shows as a slope and a change of power as a vertical edge.

Layout, from the top: the plot area with the y axis on its left (tick labels in the unit, the top one
carrying the unit), an axis line with tick marks (when the widget is at least 8 rows tall), the x tick labels
(the last one followed by the unit) and a one-line legend. Up to three series are drawn, each in its own
colour from the component classes ``power-plot--series-1`` to ``-3``; where two series share a cell, the one
set last wins the colour. NaN and infinite values are not drawn: the line breaks there.

Rendering goes through :meth:`PowerPlot.render_line` from a cache rebuilt only when the data, the ranges or
the size change; :meth:`PowerPlot.add_point` only appends and asks for a refresh, so a live trace fed at
30 Hz costs one cache rebuild per screen refresh, not one per point.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget

#: Most series one plot draws.
MAX_SERIES: Final = 3
#: Most points one series keeps (the oldest are dropped beyond this).
MAX_POINTS: Final = 200_000
#: Text shown in the plot area while no series has a drawable point.
NO_DATA: Final = "no data"
#: Smallest size, in cells, the plot draws itself at (below it, a one-line notice).
MIN_WIDTH: Final = 20
MIN_HEIGHT: Final = 3

#: The bit of each dot in a braille cell, by [row 0..3][column 0..1].
BRAILLE_DOTS: Final = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
BRAILLE_BLANK: Final = 0x2800

_Point = tuple[float, float]


def braille_cell(dots: Sequence[tuple[int, int]]) -> str:
    """The braille character with the given ``(column 0..1, row 0..3)`` dots raised."""
    bits = 0
    for column, row in dots:
        bits |= BRAILLE_DOTS[row][column]
    return chr(BRAILLE_BLANK + bits)


def nice_step(span: float, count: int) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten): about ``count`` intervals over ``span``."""
    if span <= 0 or count < 1 or not math.isfinite(span):
        return 1.0
    raw = span / count
    power = 10.0 ** math.floor(math.log10(raw))
    # The candidate nearest to the raw spacing on a log scale.
    return min((f * power for f in (1.0, 2.0, 5.0, 10.0)), key=lambda step: abs(math.log(step / raw)))


def format_tick(value: float, step: float) -> str:
    """A tick value with as many decimals as its spacing needs (never ``-0``)."""
    decimals = 0 if step >= 1 else min(6, max(0, -math.floor(math.log10(step) + 1e-9)))
    text = f"{value:.{decimals}f}"
    return "0" if text.lstrip("-").strip("0.") == "" else text


def ticks(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of ``step`` from ``lo`` to ``hi`` inclusive."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _check_range(name: str, value: tuple[float, float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the {name} range must be two numbers (low, high); got {value!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"the {name} range must be finite with low < high; got ({lo!r}, {hi!r})")
    return lo, hi


def _finite(x: float, y: float) -> bool:
    return math.isfinite(x) and math.isfinite(y)


def _clip(x0: float, y0: float, x1: float, y1: float, w: float, h: float) -> tuple[float, ...] | None:
    """Liang-Barsky: the part of the segment inside ``[0, w] x [0, h]``, or None."""
    dx, dy = x1 - x0, y1 - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0), (dx, w - x0), (-dy, y0), (dy, h - y0)):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            if t > t1:
                return None
            t0 = max(t0, t)
        else:
            if t < t0:
                return None
            t1 = min(t1, t)
    return x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy


@dataclass
class _Series:
    label: str
    slot: int
    points: deque[_Point] = field(default_factory=lambda: deque(maxlen=MAX_POINTS))


@dataclass(frozen=True)
class _Frame:
    """Where things go for one size: ranges, ticks and the plot area in cells."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_ticks: list[float]
    x_step: float
    y_ticks: list[float]
    y_step: float
    gutter: int
    cols: int
    rows: int
    axis_row: bool


class PowerPlot(Widget):
    """A braille line plot of up to three series, with axes in ``y_unit`` and ``x_unit`` and a legend.

    Args:
        y_unit: unit of the y values, shown on the top y label (watts by default).
        x_unit: unit of the x values, shown after the last x label (seconds by default).
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "power-plot--axis",
        "power-plot--empty",
        "power-plot--series-1",
        "power-plot--series-2",
        "power-plot--series-3",
    }

    DEFAULT_CSS = """
    PowerPlot {
        height: 12;
        min-height: 5;
        width: 1fr;
        background: $surface;
        color: $foreground;
    }
    PowerPlot > .power-plot--axis {
        color: $text-muted;
    }
    PowerPlot > .power-plot--empty {
        color: $text-muted;
        text-style: italic;
    }
    PowerPlot > .power-plot--series-1 {
        color: $primary;
    }
    PowerPlot > .power-plot--series-2 {
        color: $warning;
    }
    PowerPlot > .power-plot--series-3 {
        color: $success;
    }
    """

    def __init__(
        self,
        *,
        y_unit: str = "W",
        x_unit: str = "s",
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
        redraw_interval_s: float = 0.0,
    ) -> None:
        """``redraw_interval_s`` > 0: a change is drawn at most that often (the data is always current, only
        the picture waits); for a live trace fed many times a second."""
        super().__init__(name=name, id=id, classes=classes)
        if not (math.isfinite(redraw_interval_s) and redraw_interval_s >= 0):
            raise ValueError(f"redraw_interval_s must be a finite number >= 0; got {redraw_interval_s!r}")
        self.y_unit = y_unit
        self.x_unit = x_unit
        self.redraw_interval_s = redraw_interval_s
        self._redraw_timer: Timer | None = None
        self._series: dict[str, _Series] = {}
        self._x_fixed: tuple[float, float] | None = None
        self._y_fixed: tuple[float, float] | None = None
        self._lines: list[Strip] | None = None
        self._lines_size: tuple[int, int] = (0, 0)

    # -- data ----------------------------------------------------------------------------------------------

    @property
    def series_keys(self) -> list[str]:
        """The keys of the series drawn, in the order they were added."""
        return list(self._series)

    def points(self, key: str) -> list[_Point]:
        """The points kept for series ``key`` (KeyError if there is none)."""
        return list(self._series[key].points)

    def set_series(self, key: str, points: Sequence[tuple[float, float]], *, label: str) -> None:
        """Replace (or add) the series ``key`` with ``points`` ``(x, y)``, shown as ``label`` in the legend.

        Raises:
            ValueError: a fourth series, or a point that is not a pair of numbers (nothing is changed).
        """
        checked = [self._point(point) for point in points]
        series = self._series.get(key) or self._new_series(key, label)
        series.label = label
        series.points.clear()
        series.points.extend(checked[-MAX_POINTS:])
        self._changed()

    def add_point(self, key: str, x: float, y: float, *, keep_s: float | None = None) -> None:
        """Append ``(x, y)`` to series ``key`` (created, labelled ``key``, if absent) and drop the points
        older than ``keep_s`` x units before ``x`` (all are kept when None, up to :data:`MAX_POINTS`)."""
        point = self._point((x, y))
        if keep_s is not None and not (math.isfinite(keep_s) and keep_s > 0):
            raise ValueError(f"keep_s must be a finite number > 0; got {keep_s!r}")
        series = self._series.get(key) or self._new_series(key, key)
        series.points.append(point)
        if keep_s is not None and math.isfinite(point[0]):
            oldest = point[0] - keep_s
            kept = series.points
            while kept and not kept[0][0] >= oldest:
                kept.popleft()
        self._changed()

    def clear_series(self, key: str | None = None) -> None:
        """Remove series ``key`` (every series when None); an unknown key changes nothing."""
        if key is None:
            self._series.clear()
        elif self._series.pop(key, None) is None:
            return
        self._changed()

    def set_ranges(self, x: tuple[float, float] | None = None, y: tuple[float, float] | None = None) -> None:
        """Fix the x and y ranges (None: from the data). The y range is always widened to include 0, so a
        power plot never hides its zero.

        Raises:
            ValueError: a range that is not two finite numbers with low < high (nothing is changed).
        """
        x_range, y_range = _check_range("x", x), _check_range("y", y)
        self._x_fixed, self._y_fixed = x_range, y_range
        self._changed()

    def _point(self, point: tuple[float, float]) -> _Point:
        try:
            x, y = point
            return float(x), float(y)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a point must be a pair of numbers (x, y); got {point!r}") from exc

    def _new_series(self, key: str, label: str) -> _Series:
        if len(self._series) >= MAX_SERIES:
            raise ValueError(f"a plot draws at most {MAX_SERIES} series; {key!r} would be one more")
        used = {series.slot for series in self._series.values()}
        slot = next(n for n in range(1, MAX_SERIES + 1) if n not in used)
        series = _Series(label=label, slot=slot)
        self._series[key] = series
        return series

    def _changed(self) -> None:
        if self.redraw_interval_s <= 0 or not self.is_mounted:
            self._redraw()
        elif self._redraw_timer is None:
            self._redraw_timer = self.set_timer(self.redraw_interval_s, self._redraw, name="plot-redraw")

    def _redraw(self) -> None:
        self._redraw_timer = None
        self._lines = None
        self.refresh()

    def notify_style_update(self) -> None:
        """Colours changed (a new theme): draw again."""
        super().notify_style_update()
        self._lines = None

    # -- ranges and layout ---------------------------------------------------------------------------------

    def data_ranges(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The x and y extent of every drawable point, or None when there is none."""
        xs: list[float] = []
        ys: list[float] = []
        for series in self._series.values():
            for x, y in series.points:
                if _finite(x, y):
                    xs.append(x)
                    ys.append(y)
        if not xs:
            return None
        return (min(xs), max(xs)), (min(ys), max(ys))

    def _frame(self, width: int, height: int) -> _Frame:
        axis_row = height >= 8
        rows = max(1, height - 2 - (1 if axis_row else 0))
        extent = self.data_ranges()
        if self._x_fixed is not None:
            x_lo, x_hi = self._x_fixed
        elif extent is not None and extent[0][1] > extent[0][0]:
            x_lo, x_hi = extent[0]
        elif extent is not None:
            x_lo, x_hi = extent[0][0], extent[0][0] + 1.0
        else:
            x_lo, x_hi = 0.0, 1.0
        if self._y_fixed is not None:
            y_lo, y_hi = self._y_fixed
        elif extent is not None:
            y_lo, y_hi = extent[1]
        else:
            y_lo, y_hi = 0.0, 1.0
        y_lo, y_hi = min(y_lo, 0.0), max(y_hi, 0.0)
        if y_hi <= y_lo:
            y_hi = y_lo + 1.0
        y_step = nice_step(y_hi - y_lo, max(1, min(5, rows // 2)))
        if self._y_fixed is None:  # round the automatic range out to whole ticks
            y_lo = math.floor(y_lo / y_step + 1e-9) * y_step
            y_hi = math.ceil(y_hi / y_step - 1e-9) * y_step
        y_ticks = ticks(y_lo, y_hi, y_step)
        labels = [format_tick(v, y_step) for v in y_ticks] or ["0"]
        top = f"{labels[-1]} {self.y_unit}".rstrip()
        gutter = max(len(top), *(len(label) for label in labels)) + 1
        cols = max(1, width - gutter - 1)
        x_step = nice_step(x_hi - x_lo, max(2, cols // 9))
        return _Frame(
            x_range=(x_lo, x_hi),
            y_range=(y_lo, y_hi),
            x_ticks=ticks(x_lo, x_hi, x_step),
            x_step=x_step,
            y_ticks=y_ticks,
            y_step=y_step,
            gutter=gutter,
            cols=cols,
            rows=rows,
            axis_row=axis_row,
        )

    @staticmethod
    def _x_pixel(frame: _Frame, x: float) -> float:
        lo, hi = frame.x_range
        return (x - lo) / (hi - lo) * (frame.cols * 2 - 1)

    @staticmethod
    def _y_pixel(frame: _Frame, y: float) -> float:
        lo, hi = frame.y_range
        return (hi - y) / (hi - lo) * (frame.rows * 4 - 1)

    # -- drawing -------------------------------------------------------------------------------------------

    def dot_grid(self, width: int, height: int) -> tuple[list[int], list[int], _Frame]:
        """The braille bits and owning series slot of every plot cell (row by row) for a widget of
        ``width`` x ``height`` cells, and the frame it was laid out in."""
        frame = self._frame(width, height)
        cols, rows = frame.cols, frame.rows
        bits = [0] * (cols * rows)
        owner = [0] * (cols * rows)
        w, h = cols * 2 - 1, rows * 4 - 1

        def dot(px: int, py: int, slot: int) -> None:
            cell = (py >> 2) * cols + (px >> 1)
            bits[cell] |= BRAILLE_DOTS[py & 3][px & 1]
            owner[cell] = slot

        for series in self._series.values():
            slot = series.slot
            previous: tuple[float, float] | None = None
            last_pixel: tuple[int, int] | None = None
            for x, y in series.points:
                if not _finite(x, y):
                    previous = None
                    continue
                here = (self._x_pixel(frame, x), self._y_pixel(frame, y))
                if previous is None:
                    if 0 <= here[0] <= w and 0 <= here[1] <= h:
                        dot(round(here[0]), round(here[1]), slot)
                    previous = here
                    last_pixel = None
                    continue
                pixel = (round(here[0]), round(here[1]))
                if pixel == last_pixel:
                    previous = here
                    continue
                clipped = _clip(previous[0], previous[1], here[0], here[1], w, h)
                if clipped is not None:
                    self._line(clipped, dot, slot)
                previous, last_pixel = here, pixel
        return bits, owner, frame

    @staticmethod
    def _line(segment: tuple[float, ...], plot: Callable[[int, int, int], None], slot: int) -> None:
        """Raise the dots of a segment (Bresenham over whole dots)."""
        x0, y0, x1, y1 = (round(v) for v in segment)
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            plot(x0, y0, slot)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        if self._lines is None or self._lines_size != (width, height):
            self._lines = self.build_lines(width, height)
            self._lines_size = (width, height)
        if 0 <= y < len(self._lines):
            return self._lines[y]
        return Strip.blank(width, self.rich_style)

    def build_lines(self, width: int, height: int) -> list[Strip]:
        """Every line of the plot for a widget of ``width`` x ``height`` cells."""
        base = self.rich_style
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            notice = "plot needs more room"[: max(0, width)]
            lines = [Strip([Segment(notice, base)]).adjust_cell_length(width, base)]
            return lines + [Strip.blank(width, base)] * max(0, height - 1)
        axis = self.get_component_rich_style("power-plot--axis")
        styles = {slot: self.get_component_rich_style(f"power-plot--series-{slot}") for slot in range(1, 4)}
        bits, owner, frame = self.dot_grid(width, height)
        lines = self._plot_rows(frame, bits, owner, base, axis, styles)
        if frame.axis_row:
            lines.append(self._axis_line(frame, width, axis))
        lines.append(self._x_labels(frame, width, axis))
        lines.append(self._legend(width, base, styles))
        return [line.adjust_cell_length(width, base) for line in lines[:height]]

    def _plot_rows(
        self,
        frame: _Frame,
        bits: list[int],
        owner: list[int],
        base: Style,
        axis: Style,
        styles: dict[int, Style],
    ) -> list[Strip]:
        label_at: dict[int, str] = {}
        for value in reversed(frame.y_ticks):
            row = min(frame.rows - 1, int(self._y_pixel(frame, value) + 0.5) >> 2)
            label_at.setdefault(row, format_tick(value, frame.y_step))
        if label_at:
            top_row = min(label_at)
            label_at[top_row] = f"{label_at[top_row]} {self.y_unit}".rstrip()
        empty = not any(bits)
        lines: list[Strip] = []
        for row in range(frame.rows):
            label = label_at.get(row)
            tick = "┤" if label is not None else "│"
            segments = [Segment(f"{label or '':>{frame.gutter - 1}}{tick}", axis)]
            start = row * frame.cols
            run_style: Style | None = None
            run: list[str] = []
            for cell in range(start, start + frame.cols):
                cell_bits = bits[cell]
                style = styles[owner[cell]] if cell_bits else base
                char = chr(BRAILLE_BLANK + cell_bits) if cell_bits else " "
                if style is not run_style and run:
                    segments.append(Segment("".join(run), run_style))
                    run = []
                run_style = style
                run.append(char)
            if run:
                segments.append(Segment("".join(run), run_style))
            lines.append(Strip(segments))
        if empty:
            middle = frame.rows // 2
            text = NO_DATA[: frame.cols]
            pad = (frame.cols - len(text)) // 2
            label = label_at.get(middle)
            tick = "┤" if label is not None else "│"
            lines[middle] = Strip(
                [
                    Segment(f"{label or '':>{frame.gutter - 1}}{tick}", axis),
                    Segment(" " * pad, base),
                    Segment(text, self.get_component_rich_style("power-plot--empty")),
                ]
            )
        return lines

    def _tick_columns(self, frame: _Frame) -> list[tuple[int, float]]:
        return [(int(self._x_pixel(frame, v) + 0.5) >> 1, v) for v in frame.x_ticks]

    def _axis_line(self, frame: _Frame, width: int, axis: Style) -> Strip:
        chars = ["─"] * frame.cols
        for col, _value in self._tick_columns(frame):
            if 0 <= col < frame.cols:
                chars[col] = "┬"
        return Strip([Segment(" " * (frame.gutter - 1) + "└" + "".join(chars), axis)])

    def _x_labels(self, frame: _Frame, width: int, axis: Style) -> Strip:
        unit = f" {self.x_unit}" if self.x_unit else ""
        row = [" "] * width
        free_from = 0
        placed_end = -1
        for col, value in self._tick_columns(frame):
            text = format_tick(value, frame.x_step)
            start = max(free_from, frame.gutter + col - len(text) // 2)
            end = start + len(text)
            if end + len(unit) > width:
                break  # the unit follows the last label that leaves room for it
            row[start:end] = text
            free_from = end + 1
            placed_end = end
        if unit and placed_end >= 0:
            row[placed_end : placed_end + len(unit)] = unit
        elif unit and len(unit) <= width:
            row[width - len(unit) :] = unit
        return Strip([Segment("".join(row), axis)])

    def _legend(self, width: int, base: Style, styles: dict[int, Style]) -> Strip:
        segments: list[Segment] = []
        used = 0
        for series in self._series.values():
            for text, style in (("━━ ", styles[series.slot]), (series.label, base), ("  ", base)):
                if used + len(text) > width:
                    room = width - used
                    if room > 0:
                        segments.append(Segment(text[: room - 1] + "…" if room > 1 else "…", style))
                    return Strip(segments)
                segments.append(Segment(text, style))
                used += len(text)
        return Strip(segments)


__all__ = [
    "BRAILLE_BLANK",
    "BRAILLE_DOTS",
    "MAX_POINTS",
    "MAX_SERIES",
    "NO_DATA",
    "PowerPlot",
    "braille_cell",
    "format_tick",
    "nice_step",
    "ticks",
]
