"""The training report: one self-contained page, honest tables, charts that are well-formed SVG."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from gallop.training.report import render_report

SVG = "{http://www.w3.org/2000/svg}"
ALL_SECTIONS = ["facts", "metrics", "calibration", "ndcg", "weights", "importance", "roi"]


def ranking_report() -> dict[str, Any]:
    bins = [{"predicted": 0.5, "observed": 0.5, "count": 40}]
    return {
        "title": "gallop model 3f2a9c (ranking)",
        "task": "ranking",
        "facts": {"run id": "r-1", "rows": 1200, "ONNX parity": 1e-6},
        "metrics": {
            "stack": {"logloss": 0.60, "ndcg@5": 0.70, "ece": 0.02},
            "base_0_lambdarank": {"logloss": 0.65, "ndcg@5": 0.75},
        },
        "calibration": {
            "stack": [*bins, {"predicted": 0.25, "observed": 0.75, "count": 10}],
            "base_0_lambdarank": bins,
        },
        "ndcg": {"stack": {"1": 0.5, "5": 0.7}, "base_0_lambdarank": {"1": 0.45, "5": 0.75}},
        "weights": [{"model": "base_0_lambdarank", "weight": 1.3}],
        "importance": [
            {"feature": "draw", "mean_abs_shap": 12.5},
            {"feature": "odds", "mean_abs_shap": 3.0},
        ],
        "roi": {"flat": {"bets": 120, "profit": -3.2, "roi": -0.027}},
    }


class Page(HTMLParser):
    """Section ids in order, and each section's table rows as (text, class) cells."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.rows: dict[str, list[list[tuple[str, str]]]] = {}
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(dict(attrs)["id"] or "")
        elif tag == "tr":
            self.rows.setdefault(self.sections[-1], []).append([])
        elif tag in ("td", "th"):
            self._cell = ["", dict(attrs).get("class") or ""]

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[0] += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[self.sections[-1]][-1].append((self._cell[0], self._cell[1]))
            self._cell = None


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", html, flags=re.DOTALL)]


def section_svg(html: str, section: str) -> ET.Element:
    match = re.search(rf'<section id="{section}"><h2>[^<]*</h2>\s*(<svg.*?</svg>)', html, re.DOTALL)
    assert match, section
    return ET.fromstring(match.group(1))


def test_a_ranking_report_has_every_section_and_stands_alone() -> None:
    html = render_report(ranking_report())
    page = Page(html)
    assert page.sections == ALL_SECTIONS
    assert len(svgs(html)) == 4  # calibration, ndcg, weights, importance
    assert not {"script", "link", "img", "iframe"} & set(page.tags)
    assert not [cls for row in page.rows["roi"] for _, cls in row if cls]  # nothing to rank


def test_a_regression_report_omits_calibration_and_ndcg_and_shows_intervals() -> None:
    report = {**ranking_report(), "task": "regression", "intervals": {"nominal": 0.9}}
    for key in ("calibration", "ndcg", "roi"):
        del report[key]
    page = Page(render_report(report))
    assert page.sections == ["facts", "metrics", "weights", "importance", "intervals"]
    assert page.rows["intervals"] == [[("nominal", ""), ("0.9000", "")]]


def test_metric_table_has_every_model_and_metric_and_marks_the_best() -> None:
    rows = Page(render_report(ranking_report())).rows["metrics"]
    assert [text for text, _ in rows[0]] == ["model", "logloss", "ndcg@5", "ece"]
    stack, base = ({text: cls for text, cls in row} for row in rows[1:])
    assert list(stack) == ["stack", "0.6000", "0.7000", "0.0200"]
    assert list(base) == ["base_0_lambdarank", "0.6500", "0.7500", "–"]
    # GIVEN stack has the lower log loss and the base model the higher NDCG
    assert stack["0.6000"] == "best" and base["0.6500"] == ""
    assert base["0.7500"] == "best" and stack["0.7000"] == ""


@pytest.mark.parametrize(("nominal", "best"), [(0.9, "0.8800"), (None, None)])
def test_coverage_is_best_closest_to_nominal_or_not_marked(nominal: Any, best: Any) -> None:
    report = {**ranking_report(), "facts": {} if nominal is None else {"nominal_coverage": nominal}}
    report["metrics"] = {"stack": {"coverage": 0.88}, "base_0": {"coverage": 0.97}}
    rows = Page(render_report(report)).rows["metrics"][1:]
    marked = [text for row in rows for text, cls in row if cls == "best"]
    assert marked == ([] if best is None else [best])


def test_reliability_points_sit_where_their_values_say() -> None:
    svg = section_svg(render_report(ranking_report()), "calibration")
    diagonal = svg.find(f".//{SVG}line[@class='diagonal']")
    assert diagonal is not None
    x1, y1, x2, y2 = (float(diagonal.get(a, "")) for a in ("x1", "y1", "x2", "y2"))
    assert x1 < x2 and y2 < y1  # from (0, 0) bottom left to (1, 1) top right
    *_, stack = svg.iter(f"{SVG}g")  # drawn last, so on top
    assert stack.get("data-model") == "stack"
    points = [(float(c.get("cx", "")), float(c.get("cy", ""))) for c in stack.iter(f"{SVG}circle")]
    # (0.5, 0.5) is the diagonal's midpoint; (0.25, 0.75) is a quarter across, 3/4 up
    assert points[0] == pytest.approx(((x1 + x2) / 2, (y1 + y2) / 2), abs=0.1)
    assert points[1] == pytest.approx((x1 + 0.25 * (x2 - x1), y1 + 0.75 * (y2 - y1)), abs=0.1)


def test_a_hostile_feature_name_is_escaped() -> None:
    report = ranking_report()
    report["importance"] = [{"feature": "<script>alert(1)</script>", "mean_abs_shap": 1.0}]
    html = render_report(report)
    assert "<script>" not in html and "script" not in Page(html).tags
    titles = [t.text for t in section_svg(html, "importance").iter(f"{SVG}title")]
    assert titles == ["<script>alert(1)</script>: 1"]


def test_nan_and_inf_show_as_a_dash_and_never_reach_svg() -> None:
    report = ranking_report()
    report["metrics"]["stack"] = {"logloss": math.nan, "ndcg@5": math.inf, "ece": -math.inf}
    report["calibration"]["stack"].append({"predicted": math.nan, "observed": 0.1, "count": 0})
    report["ndcg"]["stack"]["10"] = math.nan
    report["weights"].append({"model": "stack_bias", "weight": math.inf})
    html = render_report(report)
    stack_row = Page(html).rows["metrics"][1]
    assert [text for text, _ in stack_row] == ["stack", "–", "–", "–"]
    for svg in svgs(html):
        for element in svg.iter():
            assert not any(re.search("nan|inf", v, re.I) for v in element.attrib.values())
    stack = section_svg(html, "calibration").find(f".//{SVG}g[@data-model='stack']")
    assert stack is not None and len(list(stack.iter(f"{SVG}circle"))) == 2


def test_zero_weights_draw_flat_bars() -> None:
    report = ranking_report()
    report["weights"] = [{"model": "a", "weight": 0.0}, {"model": "b", "weight": 0}]
    svg = section_svg(render_report(report), "weights")
    assert [float(bar.get("width", "")) for bar in svg.iter(f"{SVG}rect")] == [0.0, 0.0]
    ticks = [t.text for t in svg.iter(f"{SVG}text") if t.get("class") == "tick"]
    assert len(set(ticks)) > 1  # the axis still spans something
