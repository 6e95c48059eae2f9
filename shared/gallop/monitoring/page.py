"""A model's monitoring page: one self-contained HTML page beside its training report,
drawn as inline SVG like the report (gallop.training.report: no script, nothing fetched).

It shows the alarms' states, live calibration, the alarm metric day by day against the
training figure, PSI per feature against the drift threshold, the drift table and the
daily figures. Its input is gallop.monitoring.status.monitoring_status's answer (what the
API answers), plus the live calibration bins the monitor run just computed.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from gallop.layout import monitoring_page_key
from gallop.monitoring.drift import SCORE
from gallop.monitoring.status import ALARM_METRIC, lower_is_better, monitoring_status
from gallop.serving.registry import model_prefix
from gallop.training.report import (
    COLOURS,
    CSS,
    PLOT,
    ROW,
    TICK,
    UNIT_TICKS,
    WIDTH,
    _clip,
    _definitions,
    _finite,
    _fmt,
    _grid,
    _line,
    _line_chart,
    _round_ticks,
    _scale,
    _series,
    _svg,
    _text,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gallop.metadata.models import RegisteredModel
    from gallop.monitoring.compare import Comparison
    from gallop.settings import Settings
    from gallop.storage import Store

HEIGHT = 320
ALARM_COLOUR, DRIFT_COLOUR = "#c23b3b", "#c23b3b"
STATE_BACKGROUND = {"OK": "#e3f1e3", "ALARM": "#f6d5d5", "INSUFFICIENT_DATA": "#eeeeee"}
PAGE_CSS = CSS + (
    "td.state{font-weight:bold;text-align:left}.text{text-align:left}"
    "th,td{white-space:nowrap}.wide{overflow-x:auto}"
    "tr.drifted td,tr.drifted th{background:#f6d5d5}\n"
)
# The live table's columns per task (the API answers every metric)
HEADLINE = {
    "ranking": ("race_log_loss", "ndcg@1", "ndcg@3", "ndcg@4", "top1_hit_rate", "ece", "top1_roi"),
    "binary": ("auc", "log_loss", "ece"),
    "regression": ("rmse", "coverage"),
}
MOST_BARS = 40  # features drawn in the PSI chart, largest first; the table has them all
DRIFT_COLUMNS = {  # the drift row's field: the table's heading
    "psi": "PSI",
    "ks_statistic": "KS",
    "ks_p": "KS p",
    "ks_p_threshold": "KS p limit",
    "missing_share": "missing",
    "reference_missing_share": "missing in training",
    "unseen_share": "unseen",
}


def render_monitoring_page(
    status: dict[str, Any],
    calibration: list[dict[str, Any]] | None = None,
    psi_threshold: float = 0.25,
    quality_margin: float = 0.05,
    comparison: dict[str, Any] | None = None,
) -> str:
    """The page as HTML text. status: monitoring_status's dict; calibration: reliability
    bins of the served probability against outcomes (gallop.monitoring.quality);
    comparison: gallop.monitoring.compare's, as a dict."""
    task = str(status.get("task", ""))
    metric = ALARM_METRIC.get(task, "")
    drift = status.get("drift") or {}
    features = drift.get("features") or []
    sections = [
        ("alarms", "Alarms", _alarms(status.get("alarms") or [])),
        ("comparison", "Champion against challenger", _comparison(comparison)),
        (
            "calibration",
            "Live calibration (served probability against outcome)",
            _calibration(calibration),
        ),
        (
            "over-time",
            f"Live {escape(metric)} by day against training (dashed), alarm line dotted",
            _over_time(status, metric, quality_margin),
        ),
        (
            "psi",
            f"PSI per feature (threshold {psi_threshold:g})",
            _psi_chart(features, psi_threshold),
        ),
        ("drift", "Drift", _drift_table(features, drift)),
        ("live", "Live figures by day", _live_table(status.get("live") or [], task)),
        ("training", "Training figures (held out)", _definitions(status.get("training") or {})),
    ]
    body = "\n".join(
        f'<section id="{key}"><h2>{heading}</h2>\n{content}</section>'
        for key, heading, content in sections
        if content
    )
    title = escape(f"Monitoring {status.get('model_id', '')}")
    facts = escape(f"Dataset: {status.get('dataset') or '–'} · Task: {task}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{PAGE_CSS}</style></head>\n"
        f"<body><h1>{title}</h1><p>{facts}</p>\n{body or '<p>Nothing monitored yet.</p>'}\n"
        "</body></html>\n"
    )


def publish_monitoring_page(
    engine: Engine,
    artifacts: Store,
    model: RegisteredModel,
    calibration: list[dict[str, Any]] | None,
    settings: Settings,
    comparison: Comparison | None = None,
) -> str:
    """Render the model's page from the store as it stands and put it beside its report
    (what the monitor run does after each check); returns its key. comparison: its
    dataset's champion against challenger, when the model is one of them."""
    window, margin = settings.monitor_window_days, settings.quality_margin
    status = monitoring_status(engine, model, window, margin)
    html = render_monitoring_page(
        status,
        calibration,
        settings.drift_psi_threshold,
        margin,
        comparison.to_dict() if comparison else None,
    )
    return write_monitoring_page(artifacts, model.model_id, html)


def write_monitoring_page(artifacts: Store, model_id: str, html: str) -> str:
    """Put the page beside the model's training report; returns its key."""
    key = monitoring_page_key(model_prefix(model_id))
    artifacts.put_bytes(key, html.encode(), "text/html; charset=utf-8")
    return key


def _alarms(alarms: list[dict[str, Any]]) -> str | None:
    if not alarms:
        return None
    rows = "".join(
        f"<tr><th>{escape(str(a['name']))}</th>"
        f'<td class="state" style="background:{STATE_BACKGROUND.get(a["state"], "#fff")}">'
        f"{escape(str(a['state']))}</td>"
        f'<td class="text">{escape(str(a.get("reason", "")))}</td></tr>'
        for a in alarms
    )
    head = '<tr><th>alarm</th><th class="text">state</th><th class="text">why</th></tr>'
    return f"<table><thead>{head}</thead>{rows}</table>"


def _comparison(comparison: dict[str, Any] | None) -> str | None:
    """The recommendation, its rule, and each metric's difference with its interval."""
    if not comparison:
        return None
    head = "".join(
        f"<th>{escape(c)}</th>"
        for c in ("metric", "races", "champion", "challenger", "difference", "95 % interval")
    )
    body = "".join(
        f"<tr><th>{escape(m['metric'])}</th><td>{m['races']}</td>"
        f"<td>{_fmt(m['champion'])}</td><td>{_fmt(m['challenger'])}</td>"
        f"<td>{_fmt(m['difference'])}</td>"
        f"<td>{_fmt(m['low'])} to {_fmt(m['high'])}</td></tr>"
        for m in comparison["metrics"]
    )
    facts = (
        f"<p>Champion {escape(comparison['champion'])}, challenger "
        f"{escape(comparison['challenger'])}, on {comparison['races']} races both scored. "
        f"Recommendation: <b>{escape(comparison['recommendation'])}</b> "
        f"({escape(comparison['reason'])}).</p>"
        f"<p>Difference: positive means the challenger is better. {escape(comparison['rule'])}</p>"
    )
    return f"{facts}<table><thead><tr>{head}</tr></thead>{body}</table>"


def _calibration(bins: list[dict[str, Any]] | None) -> str | None:
    if not bins:
        return None
    points = [
        (
            b["predicted"],
            b["observed"],
            f"predicted {_fmt(b['predicted'])}, observed "
            f"{_fmt(b['observed'])}, n={_fmt(b.get('count'))}",
        )
        for b in bins
    ]
    return _line_chart(
        {"live": points}, UNIT_TICKS, "mean served probability", "observed frequency", True
    )


def _over_time(status: dict[str, Any], metric: str, margin: float) -> str | None:
    """The metric per day (points joined), training's figure dashed, the alarm level dotted."""
    days = [
        (d["day"], v)
        for d in status.get("live") or []
        if (v := _finite((d.get("metrics") or {}).get(metric))) is not None
    ]
    if not days:
        return None
    trained = _finite((status.get("training") or {}).get(metric))
    alarm_at = None
    if trained is not None:
        alarm_at = trained * (1 + margin) if lower_is_better(metric) else trained * (1 - margin)
    values = [v for _, v in days] + [v for v in (trained, alarm_at) if v is not None]
    y_ticks = _round_ticks(min(values), max(values))
    left, top, right, bottom = PLOT
    x_hi = max(len(days) - 1, 1)

    def at(x: float, y: float) -> tuple[float, float]:
        return _scale(x, 0, x_hi, left, right), _scale(y, y_ticks[0], y_ticks[-1], bottom, top)

    parts = _frame(at, y_ticks, [d for d, _ in days], metric)
    legend = [("live", COLOURS[0], "")]
    if trained is not None:
        style = f'stroke="{COLOURS[1]}" stroke-width="2" stroke-dasharray="6 4"'
        parts.append(_line(*at(0, trained), *at(x_hi, trained), style))
        legend.append(("training", COLOURS[1], ' stroke-dasharray="6 4"'))
    if alarm_at is not None:
        style = f'stroke="{ALARM_COLOUR}" stroke-width="1.5" stroke-dasharray="2 3"'
        parts.append(_line(*at(0, alarm_at), *at(x_hi, alarm_at), style))
        legend.append((f"alarm ({margin:.0%} worse)", ALARM_COLOUR, ' stroke-dasharray="2 3"'))
    points = [(float(i), v, f"{day}: {metric} = {_fmt(v)}") for i, (day, v) in enumerate(days)]
    parts.append(_series("live", points, COLOURS[0], at))
    for i, (name, colour, dash) in enumerate(legend):
        y = top + 10 + i * 18
        parts.append(
            _line(right + 12, y, right + 30, y, f'stroke="{colour}" stroke-width="2"{dash}')
        )
        parts.append(_text(right + 34, y + 4, _clip(name, 24), "start"))
    return _svg(HEIGHT, parts, f"{metric} by day")


def _frame(at: Any, y_ticks: list[float], days: list[str], y_label: str) -> list[str]:
    """Axes of a chart of days (at most 8 labelled) against a y range of round ticks."""
    left, top, right, bottom = PLOT
    parts = [
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>'
    ]
    step = max(1, -(-len(days) // 8))
    for i in range(0, len(days), step):
        px = at(i, y_ticks[0])[0]
        parts.append(_line(px, top, px, bottom))
        parts.append(_text(px, bottom + 18, days[i][5:], extra=TICK))  # MM-DD
    for y in y_ticks:
        py = at(0, y)[1]
        parts.append(_line(left, py, right, py))
        parts.append(_text(left - 6, py + 4, f"{y:.3g}", "end", TICK))
    parts.append(_text((left + right) / 2, HEIGHT - 6, "day served (UTC)"))
    middle = (top + bottom) / 2
    parts.append(_text(12, middle, y_label, extra=f' transform="rotate(-90 12 {middle})"'))
    return parts


def _psi_chart(features: list[dict[str, Any]], threshold: float) -> str | None:
    """Horizontal bars, largest PSI first; drifted ones red; the threshold a dashed line."""
    bars = sorted(
        (
            (str(f["feature"]), v, bool(f.get("flagged")))
            for f in features
            if (v := _finite(f.get("psi"))) is not None
        ),
        key=lambda bar: -bar[1],
    )[:MOST_BARS]
    if not bars:
        return None
    bar_left, bar_right = 176, 416
    ticks = _round_ticks(0.0, max([threshold * 1.2, *(v for _, v, _ in bars)]))
    top, bottom = 8, 8 + ROW * len(bars)
    parts = []
    for tick in ticks:
        px = _scale(tick, ticks[0], ticks[-1], bar_left, bar_right)
        parts.append(_line(px, top, px, bottom))
        parts.append(_text(px, bottom + 14, f"{tick:.3g}", extra=TICK))
    zero = _scale(0.0, ticks[0], ticks[-1], bar_left, bar_right)
    for i, (name, value, flagged) in enumerate(bars):
        y, end = top + i * ROW, _scale(value, ticks[0], ticks[-1], bar_left, bar_right)
        colour = DRIFT_COLOUR if flagged else COLOURS[4] if name == SCORE else COLOURS[0]
        parts.append(
            f"<g><title>{escape(name)}: PSI {value:.4g}{' (drifted)' if flagged else ''}</title>"
            + _text(bar_left - 6, y + 14, _clip(name, 28), "end")
            + f'<rect class="bar" x="{zero:.1f}" y="{y + 3}" width="{abs(end - zero):.1f}" '
            f'height="{ROW - 6}" fill="{colour}"/>'
            + _text(WIDTH - 4, y + 14, f"{value:.3g}", "end")
            + "</g>"
        )
    line = _scale(threshold, ticks[0], ticks[-1], bar_left, bar_right)
    style = f'class="threshold" stroke="{ALARM_COLOUR}" stroke-width="1.5" stroke-dasharray="5 3"'
    parts.append(_line(zero, top, zero, bottom, 'stroke="#444"'))
    parts.append(_line(line, top - 4, line, bottom, style))
    legend = "PSI; red: drifted, dashed: the drift threshold, purple: the score"
    parts.append(_text(bar_left, bottom + 30, legend, "start"))
    return _svg(bottom + 40, parts, "PSI per feature")


def _drift_facts(drift: dict[str, Any]) -> str:
    window = drift.get("window") or {}
    span = f"{_when(window.get('start'))} to {_when(window.get('end'))}"
    checked = _when(drift.get("checked_at"))
    return escape(f"{drift.get('rows')} rows served {span} (UTC), checked {checked}.")


def _when(value: Any) -> str:
    if value is None:
        return "–"
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text[:16].replace("T", " ")


def _drift_table(features: list[dict[str, Any]], drift: dict[str, Any]) -> str | None:
    """Drifted features first, then by PSI; drifted rows shaded."""
    if not features:
        return None
    ordered = sorted(features, key=lambda f: (not f.get("flagged"), -(_finite(f.get("psi")) or 0)))
    headings = ("feature", "drifted", *DRIFT_COLUMNS.values())
    head = "".join(f"<th>{escape(c)}</th>" for c in headings)
    body = "".join(
        ('<tr class="drifted">' if f.get("flagged") else "<tr>")
        + f"<th>{escape(str(f['feature']))}</th><td>{'yes' if f.get('flagged') else ''}</td>"
        + "".join(f"<td>{_fmt(f.get(c))}</td>" for c in DRIFT_COLUMNS)
        + "</tr>"
        for f in ordered
    )
    table = f"<table><thead><tr>{head}</tr></thead>{body}</table>"
    return f'<p>{_drift_facts(drift)}</p><div class="wide">{table}</div>'


def _live_table(live: list[dict[str, Any]], task: str) -> str | None:
    names = HEADLINE.get(task, ())
    rows = {
        d["day"]: {
            "races" if task == "ranking" else "groups": d["groups"],
            "rows": d["rows"],
            **_headline(d.get("metrics") or {}, names),
        }
        for d in live
    }
    table = _grid(rows, "day")
    return f'<div class="wide">{table}</div>' if table else None


def _headline(metrics: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The task's headline metrics in their order (every metric for a task not listed)."""
    return {n: metrics[n] for n in names if n in metrics} if names else metrics
