"""Plots of the training history as inline SVG, for the evaluate step's HTML report.

SVG written directly keeps the report one self-contained file that the KFP UI shows as is,
with no plotting library in the step images.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, MARGIN = 320, 180, 40


def _label(x: float, y: float, text, anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="10">{text}</text>'


def _chart(name: str, epochs: list[int], values: list[float]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    first, last = epochs[0], epochs[-1]

    def x(epoch: int) -> float:
        if last == first:
            return WIDTH / 2
        return MARGIN + (epoch - first) / (last - first) * (WIDTH - 2 * MARGIN)

    def y(value: float) -> float:
        return HEIGHT - MARGIN - (value - low) / span * (HEIGHT - 2 * MARGIN)

    points = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in zip(epochs, values, strict=True))
    dots = "".join(
        f'<circle cx="{x(e):.1f}" cy="{y(v):.1f}" r="3"><title>epoch {e}: {v:.4f}</title></circle>'
        for e, v in zip(epochs, values, strict=True)
    )
    bottom = HEIGHT - MARGIN
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(name)} per epoch">'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(name)}</text>'
        f'<line x1="{MARGIN}" y1="{bottom}" x2="{WIDTH - MARGIN}" y2="{bottom}" stroke="#999"/>'
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{bottom}" stroke="#999"/>'
        + _label(MARGIN - 4, MARGIN + 4, f"{high:.4g}", "end")
        + _label(MARGIN - 4, bottom, f"{low:.4g}", "end")
        + _label(x(first), bottom + 14, first)
        + _label(x(last), bottom + 14, last)
        + _label(WIDTH / 2, HEIGHT - 6, "epoch")
        + f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="2"/>'
        f'<g fill="#1f77b4">{dots}</g></svg>'
    )


def history_svg(history: list[dict]) -> str:
    """One small line chart per metric of the epochs' metrics ({"epoch": 1, "ndcg@10": ...})."""
    if not history:
        return ""
    epochs = [entry["epoch"] for entry in history]
    names = [name for name in history[0] if name != "epoch"]
    return "".join(
        _chart(name, epochs, [float(entry[name]) for entry in history])
        for name in names
        if all(name in entry for entry in history)
    )
