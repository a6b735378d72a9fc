"""Server-rendered SVG charts (console/charts.py): bars and points scaled to the series, labelled, escaped."""

from __future__ import annotations

import re
from decimal import Decimal

from console.charts import Point, bar_chart, count_label, line_chart, usd_label

SERIES = [Point("Mon", Decimal("1.00")), Point("Tue", Decimal("2.00")), Point("Wed", Decimal(0))]
PLOT_HEIGHT = 180  # HEIGHT 220 - TOP 12 - BOTTOM 28


def heights(svg: str) -> list[str]:
    return re.findall(r'<rect class="bar"[^>]* height="([0-9.]+)"', svg)


def test_it_draws_one_bar_per_point_scaled_to_the_largest() -> None:
    svg = bar_chart(SERIES, label="Spend", fmt=usd_label)

    assert heights(svg) == ["90", str(PLOT_HEIGHT), "0"]


def test_each_bar_has_its_tooltip() -> None:
    svg = bar_chart([*SERIES[:2], Point("Wed", 3, title="Wednesday: three")], label="Spend", fmt=usd_label)

    assert re.findall(r"<title>([^<]*)</title></rect>", svg) == ["Mon: $1.00", "Tue: $2.00", "Wednesday: three"]


def test_it_is_an_accessible_image_with_axis_labels() -> None:
    svg = bar_chart(SERIES, label="Spend per day in USD", fmt=usd_label)

    assert svg.startswith('<svg class="chart bar-chart" role="img" aria-label="Spend per day in USD"')
    assert re.findall(r'<text class="y-label"[^>]*>([^<]*)</text>', svg) == ["$0.00", "$1.00", "$2.00"]
    assert re.findall(r'<text class="x-label"[^>]*>([^<]*)</text>', svg) == ["Mon", "Tue", "Wed"]


def test_a_long_series_labels_only_a_few_days_including_both_ends() -> None:
    svg = bar_chart([Point(f"d{n}", n) for n in range(30)], label="Requests", fmt=count_label)

    labels = re.findall(r'<text class="x-label"[^>]*>([^<]*)</text>', svg)
    assert labels[0] == "d0"
    assert labels[-1] == "d29"
    assert len(labels) == 6
    assert len(heights(svg)) == 30


def test_an_empty_or_all_zero_series_draws_no_bar_height() -> None:
    svg = bar_chart([Point("Mon", 0), Point("Tue", 0)], label="Spend", fmt=usd_label)

    assert heights(svg) == ["0", "0"]
    assert re.findall(r'<text class="y-label"[^>]*>([^<]*)</text>', svg) == ["$0.00"]
    assert bar_chart([], label="Nothing").count("<rect") == 0


def test_text_is_escaped() -> None:
    svg = bar_chart([Point("<b>", 1)], label='"Spend" & <co>')

    assert 'aria-label="&quot;Spend&quot; &amp; &lt;co&gt;"' in svg
    assert "<b>" not in svg


def test_a_line_chart_has_a_dot_per_point_and_a_line_through_them() -> None:
    svg = line_chart([Point("a", 0), Point("b", 4), Point("c", 2)], label="Requests", fmt=count_label)

    dots = re.findall(r'<circle class="point" data-value="([^"]*)" cx="[0-9.]+" cy="([0-9.]+)"', svg)
    assert dots == [("0", str(12 + PLOT_HEIGHT)), ("4", "12"), ("2", str(12 + PLOT_HEIGHT // 2))]
    assert svg.count("<polyline") == 1
    assert "<title>b: 4</title>" in svg


def test_money_labels_keep_small_amounts_readable() -> None:
    assert usd_label(Decimal("1234.5")) == "$1,234.50"
    assert usd_label(Decimal("0.0012300000")) == "$0.00123"
    assert usd_label(0) == "$0.00"
