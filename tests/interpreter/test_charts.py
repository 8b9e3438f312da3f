"""Every chart type of `e2b-charts` through the released `e2b-code-interpreter` SDK, with
the fields E2B's chart tests expect (`e2b_cases.CHARTS`, `e2b_cases.check_chart`)."""

from __future__ import annotations

import base64

import pytest
from e2b_code_interpreter import Sandbox
from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    Chart,
    ChartType,
    LineChart,
    PieChart,
    ScatterChart,
    SuperChart,
)

from .e2b_cases import CHARTS, check_chart

pytestmark = pytest.mark.root

TYPES = {
    "line": LineChart,
    "line_dates": LineChart,
    "log": LineChart,
    "categorical_scale": LineChart,
    "scatter": ScatterChart,
    "bar": BarChart,
    "bar_grouped": BarChart,
    "pie": PieChart,
    "box_and_whisker": BoxAndWhiskerChart,
    "box_and_whisker_tick_labels": BoxAndWhiskerChart,
    "superchart": SuperChart,
    "unknown": Chart,
}


@pytest.mark.parametrize("name", CHARTS)
def test_chart(sbx: Sandbox, name: str) -> None:
    execution = sbx.run_code(CHARTS[name])
    assert execution.error is None, execution.error
    [figure] = execution.results
    assert base64.b64decode(figure.png).startswith(b"\x89PNG")
    chart = figure.chart
    if name == "blank":
        assert chart is None
        return
    assert type(chart) is TYPES[name]
    check_chart(name, chart.to_dict())
    if isinstance(chart, SuperChart):
        assert [type(c) for c in chart.elements] == [LineChart, ScatterChart]
    if isinstance(chart, BoxAndWhiskerChart):  # python/tests/graphs/test_box_and_whiskers.py
        assert chart.type is ChartType.BOX_AND_WHISKER
        fields = ("min", "first_quartile", "median", "third_quartile", "max")
        assert all(isinstance(getattr(box, f), float) for box in chart.elements for f in fields)
