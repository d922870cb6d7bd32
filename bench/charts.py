"""Horizontal bar charts as small standalone SVG files, for docs/benchmarks.md.

Hand-written SVG rather than matplotlib: a dozen bars do not need a plotting
stack in the bench dependencies, and the files stay small and diffable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

#: Where the benches write their figures and charts.
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"

BAR, GAP, BARS_WIDTH = 24, 10, 330
#: Roughly the width of one character of 13 px sans-serif, to fit the labels.
CHAR = 7.3
COLOURS = {"ours": "#3b6ea8", "other": "#9aa5b1"}


def bar_chart(
    path: Path,
    title: str,
    rows: Sequence[tuple[str, float]],
    *,
    value_label: Callable[[float], str],
    ours: Callable[[str], bool] = lambda name: name.startswith(("ReplicaRouter", "replica-router")),
) -> None:
    """Write one bar per ``(label, value)``; bars of ours in blue, the others grey."""
    top = max((value for _, value in rows), default=0) or 1
    labels = round(16 + CHAR * max((len(name) for name, _ in rows), default=10))
    width = max(labels + BARS_WIDTH + 110, round(20 + CHAR * len(title)))
    parts = []
    for i, (name, value) in enumerate(rows):
        y = 34 + i * (BAR + GAP)
        length = max(1.0, BARS_WIDTH * value / top)
        colour = COLOURS["ours" if ours(name) else "other"]
        text_y = y + BAR * 0.7
        shown = escape(value_label(value))
        parts.append(
            f'<text x="{labels - 8}" y="{text_y:.0f}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{labels}" y="{y}" width="{length:.0f}" height="{BAR}" fill="{colour}"/>'
            f'<text x="{labels + length + 6:.0f}" y="{text_y:.0f}">{shown}</text>'
        )
    height = 34 + len(rows) * (BAR + GAP) + 6
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="20" font-weight="bold">{escape(title)}</text>{"".join(parts)}</svg>\n'
    )
