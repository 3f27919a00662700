"""Line charts as inline SVG, drawn on the server (no script, no plotting library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 12, 28
PALETTE = ("#1f6fb2", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def line_chart(series: Sequence[Series], *, title: str, y_label: str,
               y_min: float | None = None, y_max: float | None = None) -> str:
    """An accessible SVG (role="img", a title) with one polyline and legend entry per series."""
    points = [p for s in series for p in s.points]
    if not points:
        return (f'<p class="empty">{escape(title)}: no data yet.</p>')
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0 = min(ys) if y_min is None else y_min
    y1 = max(ys) if y_max is None else y_max
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>']
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{LEFT - 4}" y="{y + 4:.1f}" class="tick" '
                     f'text-anchor="end">{tick:.2f}</text>')
    for tick in sorted({round(t) for t in _ticks(x0, x1)}):
        x = sx(tick)
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 10}" class="tick" '
                     f'text-anchor="middle">{tick}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT}" class="axis" '
                 f'text-anchor="middle">round</text>')
    parts.append(f'<text x="10" y="{TOP + plot_h / 2:.0f}" class="axis" text-anchor="middle" '
                 f'transform="rotate(-90 10 {TOP + plot_h / 2:.0f})">{escape(y_label)}</text>')
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"/>')
        for x, y in s.points[-1:]:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        ly = TOP + 14 + i * 16
        parts.append(f'<line x1="{WIDTH - RIGHT + 10}" x2="{WIDTH - RIGHT + 26}" y1="{ly - 4}" '
                     f'y2="{ly - 4}" stroke="{colour}" stroke-width="3"/><text '
                     f'x="{WIDTH - RIGHT + 30}" y="{ly}" class="legend">{escape(s.label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
