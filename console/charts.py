"""Charts drawn on the server as inline SVG: no JavaScript, no third-party code, readable by screen readers.

A chart takes a series of (label, value) points and returns ``<svg role="img"
aria-label=...>`` markup: bars (or a line with dots) scaled to the largest
value, a value axis with zero, the middle and the top, a few category labels
along the bottom, and a ``<title>`` on each bar or dot, which browsers show as
its tooltip. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

Number = Decimal | int | float

WIDTH = 640
HEIGHT = 220
LEFT = 64  # room for the value axis' labels
RIGHT = 8
TOP = 12
BOTTOM = 28  # room for the category labels
# Category labels shown at most, spread evenly (the first and the last always).
MAX_X_LABELS = 6


@dataclass(frozen=True)
class Point:
    label: str
    value: Number
    # The tooltip; defaults to "<label>: <formatted value>".
    title: str = ""


def _text(value: object) -> str:
    return str(escape(str(value)))


def _num(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _label_indexes(count: int) -> list[int]:
    if count <= MAX_X_LABELS:
        return list(range(count))
    step = (count - 1) / (MAX_X_LABELS - 1)
    return sorted({round(i * step) for i in range(MAX_X_LABELS)})


def _frame(
    points: Sequence[Point], label: str, fmt: Callable[[Number], str], css_class: str
) -> tuple[list[str], float, float, float]:
    """The opening tag, the value axis and the category labels; plus the plot's width, height and top value."""
    top = max((float(p.value) for p in points), default=0.0)
    scale_top = top if top > 0 else 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart {css_class}" role="img" aria-label="{_text(label)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
        f"<title>{_text(label)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        value = Decimal(str(scale_top * fraction)) if top > 0 else Decimal(0)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_num(y)}" y2="{_num(y)}" '
            f'stroke="#dde2ea" stroke-width="1"/>'
        )
        if fraction == 0.0 or top > 0:
            parts.append(
                f'<text class="y-label" x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end" font-size="11" '
                f'fill="#5f6b7a">{_text(fmt(value))}</text>'
            )
    slot = plot_w / max(len(points), 1)
    for index in _label_indexes(len(points)):
        x = LEFT + slot * (index + 0.5)
        parts.append(
            f'<text class="x-label" x="{_num(x)}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11" '
            f'fill="#5f6b7a">{_text(points[index].label)}</text>'
        )
    return parts, plot_w, plot_h, scale_top


def _tooltip(point: Point, fmt: Callable[[Number], str]) -> str:
    return _text(point.title or f"{point.label}: {fmt(point.value)}")


def bar_chart(points: Sequence[Point], *, label: str, fmt: Callable[[Number], str] = str) -> SafeString:
    """One bar per point, its height proportional to the value (zero is drawn as no bar)."""
    parts, plot_w, plot_h, top = _frame(points, label, fmt, "bar-chart")
    slot = plot_w / max(len(points), 1)
    width = max(slot * 0.7, 1.0)
    for index, point in enumerate(points):
        height = plot_h * float(point.value) / top if float(point.value) > 0 else 0.0
        x = LEFT + slot * index + (slot - width) / 2
        y = TOP + plot_h - height
        parts.append(
            f'<rect class="bar" data-value="{_text(point.value)}" x="{_num(x)}" y="{_num(y)}" '
            f'width="{_num(width)}" height="{_num(height)}" fill="#2557d6">'
            f"<title>{_tooltip(point, fmt)}</title></rect>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above went through escape()


def line_chart(points: Sequence[Point], *, label: str, fmt: Callable[[Number], str] = str) -> SafeString:
    """A line through the points, with a dot (and its tooltip) on each."""
    parts, plot_w, plot_h, top = _frame(points, label, fmt, "line-chart")
    slot = plot_w / max(len(points), 1)
    coords = [
        (LEFT + slot * (index + 0.5), TOP + plot_h - plot_h * max(float(point.value), 0.0) / top)
        for index, point in enumerate(points)
    ]
    if len(coords) > 1:
        path = " ".join(f"{_num(x)},{_num(y)}" for x, y in coords)
        parts.append(f'<polyline class="line" points="{path}" fill="none" stroke="#2557d6" stroke-width="2"/>')
    for (x, y), point in zip(coords, points, strict=True):
        parts.append(
            f'<circle class="point" data-value="{_text(point.value)}" cx="{_num(x)}" cy="{_num(y)}" r="3" '
            f'fill="#2557d6"><title>{_tooltip(point, fmt)}</title></circle>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text above went through escape()


def usd_label(value: Number) -> str:
    """Dollars for an axis or a tooltip: cents, or more places under a cent."""
    amount = Decimal(str(value))
    if amount == 0 or abs(amount) >= Decimal("0.01"):
        return f"${amount:,.2f}"
    return f"${amount.normalize():f}"


def count_label(value: Number) -> str:
    return f"{round(float(value)):,}"
