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

BAR, GAP, WIDTH, LABELS = 24, 10, 640, 290
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
    room = WIDTH - LABELS - 110
    parts = []
    for i, (name, value) in enumerate(rows):
        y = 34 + i * (BAR + GAP)
        length = max(1.0, room * value / top)
        colour = COLOURS["ours" if ours(name) else "other"]
        text_y = y + BAR * 0.7
        shown = escape(value_label(value))
        parts.append(
            f'<text x="{LABELS - 8}" y="{text_y:.0f}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{LABELS}" y="{y}" width="{length:.0f}" height="{BAR}" fill="{colour}"/>'
            f'<text x="{LABELS + length + 6:.0f}" y="{text_y:.0f}">{shown}</text>'
        )
    height = 34 + len(rows) * (BAR + GAP) + 6
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="13">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="20" font-weight="bold">{escape(title)}</text>{"".join(parts)}</svg>\n'
    )
