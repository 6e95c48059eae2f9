"""The training report: one self-contained HTML page, its charts drawn as inline SVG.

No template engine and no plotting library: the page is built from strings, every text
that comes from the data goes through `html.escape`, and every number drawn is checked
finite first, so a NaN metric can never reach an SVG coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape
from typing import Any

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH, HEIGHT = 480, 320
# Line charts: plotting area (left, top, right, bottom); the legend sits right of it.
PLOT = (48, 16, 300, 280)
# Bar charts: labels left of BAR_LEFT, values right of BAR_RIGHT, one row per bar.
BAR_LEFT, BAR_RIGHT, ROW = 176, 416, 20
COLOURS = ("#1f4e79", "#d9822b", "#3a923a", "#c23b3b", "#7b5ea7", "#8c6d31", "#2a9d8f")
LOWER_IS_BETTER = ("loss", "brier", "ece", "rmse", "mae", "interval_width")
UNIT_TICKS = [0.0, 0.25, 0.5, 0.75, 1.0]
DASH = "–"
TICK = ' class="tick"'
DIAGONAL = 'class="diagonal" stroke="#888" stroke-dasharray="4 4"'
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
td.best{font-weight:bold;background:#e3f1e3}
svg{max-width:100%;height:auto}
"""

Point = tuple[float, float, str]  # x, y and the tooltip shown on hover
Scale = Callable[[float, float], tuple[float, float]]  # data (x, y) to SVG (x, y)


def render_report(report: dict[str, Any]) -> str:
    """The training report as one self-contained HTML page."""
    facts = report.get("facts") or {}
    nominal = _finite(facts.get("nominal_coverage"))
    weights = [(w["model"], w["weight"]) for w in report.get("weights") or []]
    importance = [(f["feature"], f["mean_abs_shap"]) for f in report.get("importance") or []]
    sections = [
        ("facts", "Run", _definitions(facts)),
        ("metrics", "Metrics", _grid(report.get("metrics") or {}, "model", True, nominal)),
        (
            "against_best_base",
            "The stack against its best base (paired 95 % bootstrap interval)",
            _grid(report.get("against_best_base") or {}, "metric"),
        ),
        ("calibration", "Calibration", _calibration_chart(report.get("calibration") or {})),
        ("ndcg", "NDCG@k", _ndcg_chart(report.get("ndcg") or {})),
        ("weights", "Meta-learner weights", _bar_chart(weights, "weight")),
        (
            "selection",
            "Meta-learner candidates (cross-validated on out-of-fold margins)",
            _grid(report.get("selection") or {}, "candidate", True),
        ),
        (
            "search",
            "Hyperparameter search (each base's first fold; trial 1 is the kind's defaults)",
            _grid(report.get("search") or {}, "trial"),
        ),
        (
            "importance",
            "Feature importance (mean |SHAP| of the served stack, held-out rows)",
            _bar_chart(importance, "mean |SHAP|"),
        ),
        ("roi", "Betting strategies", _grid(report.get("roi") or {}, "strategy")),
        ("intervals", "Prediction intervals", _definitions(report.get("intervals") or {})),
    ]
    body = "\n".join(
        f'<section id="{key}"><h2>{heading}</h2>\n{content}</section>'
        for key, heading, content in sections
        if content
    )
    title = escape(str(report.get("title", "gallop training report")))
    task = escape(str(report.get("task", "")))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{CSS}</style></head>\n"
        f"<body><h1>{title}</h1><p>Task: {task}</p>\n{body}\n</body></html>\n"
    )


# --- numbers and tables ---------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """The value as a float, or None when it cannot be shown as a number (NaN, inf, text)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any) -> str:
    """Table text: strings as given, ints exact, floats to 4 decimals, NaN/inf as a dash."""
    if isinstance(value, str | bool):
        return escape(str(value))
    if isinstance(value, int):
        return str(value)
    number = _finite(value)
    if number is None:
        return DASH
    return f"{number:.3e}" if 0 < abs(number) < 1e-3 else f"{number:.4f}"  # tiny is not 0


def _definitions(values: dict[str, Any]) -> str | None:
    if not values:
        return None
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in values.items()
    )
    return f"<table>{rows}</table>"


def _grid(
    rows: dict[str, dict[str, Any]],
    corner: str,
    highlight: bool = False,
    nominal: float | None = None,
) -> str | None:
    """One row per key, one column per inner key (first-seen order); best per column marked."""
    if not rows:
        return None
    columns = list(dict.fromkeys(name for values in rows.values() for name in values))
    best = {c: _best_rows(c, [_finite(v.get(c)) for v in rows.values()], nominal) for c in columns}
    head = "".join(f"<th>{escape(str(c))}</th>" for c in [corner, *columns])
    body = []
    for i, (name, values) in enumerate(rows.items()):
        cells = "".join(_cell(values.get(c, math.nan), highlight and i in best[c]) for c in columns)
        body.append(f"<tr><th>{escape(str(name))}</th>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value: Any, best: bool) -> str:
    return f'<td class="best">{_fmt(value)}</td>' if best else f"<td>{_fmt(value)}</td>"


def _score(metric: str, value: float, nominal: float | None) -> float | None:
    """The value turned so that higher is better; None when the metric has no 'best'."""
    name = metric.lower()
    if "coverage" in name:
        return None if nominal is None else -abs(value - nominal)
    if any(word in name for word in LOWER_IS_BETTER):
        return -value
    return value


def _best_rows(metric: str, values: list[float | None], nominal: float | None) -> set[int]:
    scores = {
        i: s
        for i, v in enumerate(values)
        if v is not None and (s := _score(metric, v, nominal)) is not None
    }
    top = max(scores.values(), default=None)
    return {i for i, s in scores.items() if s == top}


# --- charts ---------------------------------------------------------------------------


def _svg(height: float, parts: list[str], label: str) -> str:
    return (
        f'<svg xmlns="{SVG_NS}" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" '
        f'height="{height:.0f}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="{escape(label)}">{"".join(parts)}</svg>'
    )


def _scale(value: float, lo: float, hi: float, start: float, end: float) -> float:
    """Map [lo, hi] onto [start, end]; a domain of zero width maps to the middle."""
    if hi == lo:
        return (start + end) / 2
    return start + (value - lo) / (hi - lo) * (end - start)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(x1: float, y1: float, x2: float, y2: float, style: str = 'stroke="#eee"') -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}/>'


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{escape(text)}</text>'


def _calibration_chart(calibration: dict[str, list[dict[str, Any]]]) -> str | None:
    if not calibration:
        return None
    series = {
        model: [(p["predicted"], p["observed"], _bin_tip(model, p)) for p in points]
        for model, points in calibration.items()
    }
    return _line_chart(series, UNIT_TICKS, "mean predicted probability", "observed frequency", True)


def _bin_tip(model: str, point: dict[str, Any]) -> str:
    predicted, observed = _fmt(point["predicted"]), _fmt(point["observed"])
    return f"{model}: predicted {predicted}, observed {observed}, n={_fmt(point.get('count'))}"


def _ndcg_chart(ndcg: dict[str, dict[str, float]]) -> str | None:
    if not ndcg:
        return None
    series = {
        model: [(float(k), v, f"{model}: NDCG@{k} = {_fmt(v)}") for k, v in by_k.items()]
        for model, by_k in ndcg.items()
    }
    ks = sorted({x for points in series.values() for x, _, _ in points})
    if not ks:
        return None
    return _line_chart(series, ks, "k", "NDCG@k", False)


def _line_chart(
    series: dict[str, list[Point]], x_ticks: list[float], x_label: str, y_label: str, diagonal: bool
) -> str:
    """Lines with points on a 0..1 y axis; 'stack' is drawn last and boldest."""
    left, top, right, bottom = PLOT

    def at(x: float, y: float) -> tuple[float, float]:
        return _scale(x, x_ticks[0], x_ticks[-1], left, right), _scale(y, 0.0, 1.0, bottom, top)

    parts = _axes(at, x_ticks, x_label, y_label)
    if diagonal:  # perfect calibration
        parts.append(_line(*at(0, 0), *at(1, 1), DIAGONAL))
    colours = {model: COLOURS[i % len(COLOURS)] for i, model in enumerate(series)}
    for model in sorted(series, key=lambda m: m == "stack"):  # stack on top
        parts.append(_series(model, series[model], colours[model], at))
    for i, (model, colour) in enumerate(colours.items()):  # legend, right of the plot
        y = top + 10 + i * 18
        style = f'stroke="{colour}" stroke-width="{_stroke(model)}"'
        parts.append(_line(right + 12, y, right + 30, y, style))
        parts.append(_text(right + 34, y + 4, _clip(model, 24), "start"))
    return _svg(HEIGHT, parts, y_label)


def _axes(at: Scale, x_ticks: list[float], x_label: str, y_label: str) -> list[str]:
    """Frame, grid lines with tick labels, and axis titles of a line chart."""
    left, top, right, bottom = PLOT
    parts = [
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>'
    ]
    for x in x_ticks:
        px = at(x, 0)[0]
        parts.append(_line(px, top, px, bottom))
        parts.append(_text(px, bottom + 14, f"{x:.3g}", extra=TICK))
    for y in UNIT_TICKS:
        py = at(x_ticks[0], y)[1]
        parts.append(_line(left, py, right, py))
        parts.append(_text(left - 6, py + 4, f"{y:.3g}", "end", TICK))
    parts.append(_text((left + right) / 2, HEIGHT - 6, x_label))
    middle = (top + bottom) / 2
    parts.append(_text(12, middle, y_label, extra=f' transform="rotate(-90 12 {middle})"'))
    return parts


def _stroke(model: str) -> float:
    return 3.0 if model == "stack" else 1.5


def _series(model: str, points: list[Point], colour: str, at: Scale) -> str:
    drawn = [(at(x, y), tip) for x, y, tip in points if None not in (_finite(x), _finite(y))]
    coords = " ".join(f"{px:.1f},{py:.1f}" for (px, py), _ in drawn)
    line = ""
    if len(drawn) > 1:
        line = f'<polyline points="{coords}" fill="none" stroke="{colour}" '
        line += f'stroke-width="{_stroke(model)}"/>'
    dots = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{_stroke(model) + 1:g}" fill="{colour}">'
        f"<title>{escape(tip)}</title></circle>"
        for (px, py), tip in drawn
    )
    return f'<g class="series" data-model="{escape(model)}">{line}{dots}</g>'


def _bar_chart(items: list[tuple[str, Any]], label: str) -> str | None:
    """Horizontal bars from a zero line; NaN/inf values are left out."""
    if not items:
        return None
    bars = [(str(name), v) for name, raw in items if (v := _finite(raw)) is not None]
    values = [v for _, v in bars]
    ticks = _round_ticks(min([0.0, *values]), max([0.0, *values]))
    lo, hi = ticks[0], ticks[-1]
    top, bottom = 8, 8 + ROW * max(len(bars), 1)
    zero = _scale(0.0, lo, hi, BAR_LEFT, BAR_RIGHT)
    parts = []
    for tick in ticks:
        px = _scale(tick, lo, hi, BAR_LEFT, BAR_RIGHT)
        parts.append(_line(px, top, px, bottom))
        parts.append(_text(px, bottom + 14, f"{tick:.3g}", extra=TICK))
    for i, (name, value) in enumerate(bars):
        y, end = top + i * ROW, _scale(value, lo, hi, BAR_LEFT, BAR_RIGHT)
        parts.append(
            f"<g><title>{escape(name)}: {value:.4g}</title>"
            + _text(BAR_LEFT - 6, y + 14, _clip(name, 28), "end")
            + f'<rect class="bar" x="{min(zero, end):.1f}" y="{y + 3}" '
            f'width="{abs(end - zero):.1f}" height="{ROW - 6}" fill="{COLOURS[0]}"/>'
            + _text(WIDTH - 4, y + 14, f"{value:.4g}", "end")
            + "</g>"
        )
    parts.append(_line(zero, top, zero, bottom, 'stroke="#444"'))
    return _svg(bottom + 24, parts, label)


def _round_ticks(lo: float, hi: float) -> list[float]:
    """Round ticks (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if hi == lo:  # all zeros: the axis must still span something
        hi = lo + 1.0
    rough = (hi - lo) / 5
    power = 10.0 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    return [i * step for i in range(math.floor(lo / step), math.ceil(hi / step) + 1)]
