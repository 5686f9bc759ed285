"""Geometry of the report's inline SVG line charts.

Python only scales points onto the plot square; the markup is drawn by the `line_chart`
macro in templates/macros.html.j2 from these numbers (so the titles and labels are escaped
by the template engine like every other string).
"""

from __future__ import annotations

from typing import Any

SERIES_COLORS = ("#c0392b", "#2471a3", "#229954", "#d68910", "#7d3c98",
                 "#17a589", "#a04000", "#2e4053", "#c71585", "#7f8c8d")
CHART_SIZE = 220
CHART_PAD = 32


def tick(value: float) -> str:
    """An axis-end label."""
    return f"{value:.3g}"


def line_chart(series: list[tuple[list[float], list[float]]], title: str, x_label: str, y_label: str,
               x_range: tuple[float, float] = (0.0, 1.0), y_range: tuple[float, float] = (0.0, 1.0),
               diagonal: bool = False, size: int = CHART_SIZE) -> dict[str, Any]:
    """What the `line_chart` macro draws: one or more lines on a square plot.

    Series i is drawn in SERIES_COLORS[i % 10] (empty series are skipped); points are scaled
    from x_range x y_range onto the plot square, whose corners are labelled with the ranges' ends."""
    pad = CHART_PAD
    span = size - 2 * pad
    (x0, x1), (y0, y1) = x_range, y_range
    x_span, y_span = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    drawn = [(xs, ys) for xs, ys in series if xs]
    lines = [{"color": SERIES_COLORS[i % len(SERIES_COLORS)],
              "points": [(pad + (x - x0) / x_span * span, size - pad - (y - y0) / y_span * span) for x, y in zip(xs, ys)]}
             for i, (xs, ys) in enumerate(drawn)]
    return {"size": size, "pad": pad, "span": span, "title": title, "x_label": x_label, "y_label": y_label,
            "diagonal": diagonal, "lines": lines, "x0": tick(x0), "x1": tick(x1), "y0": tick(y0), "y1": tick(y1)}


def curve_chart(xs: list[float], ys: list[float], title: str, x_label: str, y_label: str,
                diagonal: bool = False, size: int = CHART_SIZE) -> dict[str, Any]:
    """One line on [0,1]x[0,1] (ROC, precision-recall)."""
    return line_chart([(xs, ys)], title, x_label, y_label, diagonal=diagonal, size=size)
