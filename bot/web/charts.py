"""The equity and drawdown chart as inline SVG, drawn on the server: no script, no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

W, H, PAD = 800, 220, 36


def _path(values: Sequence[float], lo: float, hi: float, top: float, height: float) -> str:
    n = len(values)
    span = (hi - lo) or 1.0
    pts = []
    for i, v in enumerate(values):
        x = PAD + (W - 2 * PAD) * (i / max(1, n - 1))
        y = top + height * (1 - (v - lo) / span)
        pts.append(f"{x:.1f},{y:.1f}")
    return "M" + " L".join(pts)


def equity_svg(points: Sequence[dict[str, Any]]) -> str:
    """Equity above, drawdown (as a negative percentage) below; a note when there is none."""
    if len(points) < 2:
        return ('<svg class="chart" viewBox="0 0 800 60" role="img" aria-label="no equity yet">'
                '<text x="20" y="35">No equity snapshots yet.</text></svg>')
    eq = [float(p["equity"]) for p in points]
    dd = [-100 * float(p["drawdown"]) for p in points]
    lo, hi = min(eq), max(eq)
    dlo = min(min(dd), -0.01)
    top_h, bot_top, bot_h = 120.0, 160.0, 50.0
    first, last = escape(points[0]["ts"][:16]), escape(points[-1]["ts"][:16])
    return (
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="equity from {eq[0]:.2f} to {eq[-1]:.2f}, max drawdown {-dlo:.2f}%">'
        f'<text class="axis" x="4" y="20">{hi:,.2f}</text>'
        f'<text class="axis" x="4" y="{20 + top_h - 6:.0f}">{lo:,.2f}</text>'
        f'<path class="equity" d="{_path(eq, lo, hi, 14, top_h)}"/>'
        f'<text class="axis" x="4" y="{bot_top - 4:.0f}">drawdown {-dlo:.2f}%</text>'
        f'<path class="drawdown" d="{_path(dd, dlo, 0.0, bot_top, bot_h)}"/>'
        f'<text class="axis" x="{PAD}" y="{H - 2}">{first}</text>'
        f'<text class="axis" x="{W - PAD}" y="{H - 2}" text-anchor="end">{last}</text>'
        "</svg>")
