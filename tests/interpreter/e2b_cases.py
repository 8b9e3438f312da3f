"""E2B's own expectations for javascript/typescript results and console output and for
charts, shared by the Python SDK tests (`test_javascript.py`, `test_charts.py`) and the npm
SDK's (`npm/cases.mjs`, run by `test_npm.py`).

Sources, in e2b-dev/code-interpreter: `js/tests/languages/js.test.ts` and
`python/tests/languages/test_js.py` (top-level await, es6, context, cwd, ts),
`js/tests/env_vars/js.test.ts`, and for charts `js/tests/charts/*.test.ts`,
`js/tests/graphs/*.test.ts`, `python/tests/charts/test_scale.py` and
`chart_data_extractor/tests/` (the `e2b-charts` package). The other javascript values
follow from E2B's kernel (ijavascript, see `hearth.interpreter._deno`): node's
`util.inspect`, then the server strips the quotes around a string; its console output is a
node `console.Console`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# (language, code, the main result's text; None: no result at all)
JS_RESULTS: list[tuple[str, str, str | None]] = [
    ("js", "async function main() {\n  return 'Hello, World!'\n}\nawait main()", "Hello, World!"),
    ("js", "const add = (x, y) => x + y;\nadd(1, 2)", "3"),
    ("js", "process.cwd()", "/home/user"),
    (
        "ts",
        "function subtract(x: number, y: number): number {\n  return x - y\n}\nsubtract(1, 2)",
        "-1",
    ),
    ("ts", "const greeting: string = 'typed'\ngreeting", "typed"),
    ("javascript", "'hello'", "hello"),
    ("javascript", '"it\'s"', '"it\'s"'),  # inspect quotes it with ", which stays
    ("javascript", "42", "42"),
    ("javascript", "-2.5", "-2.5"),
    ("javascript", "true", "true"),
    ("javascript", "({a: 1, b: 'x'})", "{ a: 1, b: 'x' }"),
    ("javascript", "[1, 2, 'a']", "[ 1, 2, 'a' ]"),
    ("javascript", "new Map([[1, 'a']])", "Map(1) { 1 => 'a' }"),
    ("javascript", "Promise.resolve('resolved')", "resolved"),
    ("javascript", "await new Promise((r) => setTimeout(() => r('later'), 100))", "later"),
    # Values deno's own result hook loses (hearth.interpreter._deno): inspect shows them.
    ("javascript", "null", "null"),
    ("javascript", "NaN", "NaN"),
    ("javascript", "-Infinity", "-Infinity"),
    ("javascript", "-0", "-0"),
    ("javascript", "10n", "10n"),
    ("javascript", "await Promise.resolve(null)", "null"),
    ("ts", "const nothing: string | null = null\nnothing", "null"),
    ("javascript", "undefined", None),
    ("javascript", "void 0", None),
    ("javascript", "let declared = 1", None),
    ("javascript", "process.env.SANDBOX_VAR", "from create"),
    ("javascript", "process.env.NOT_SET || 'default'", "default"),
]

# (language, code, stdout, stderr): console output as node's `console` prints it (nel runs
# cells with one): `util.format`, so strings raw at the top level and quoted in objects.
JS_LOGS: list[tuple[str, str, str, str]] = [
    ("javascript", "console.log({a: 'x'})", "{ a: 'x' }\n", ""),
    (
        "javascript",
        "console.log('raw', \"it's\", 42, ['q'], null)",
        "raw it's 42 [ 'q' ] null\n",
        "",
    ),
    (
        "javascript",
        "console.log('%s is %d, %i, %o, 100%%', 'Bob', 42.5, 7.9, {k: 'v'})",
        "Bob is 42.5, 7, { k: 'v' }, 100%\n",
        "",
    ),
    (
        "ts",
        "const m: Map<string, string> = new Map([['k', 'v']])\nconsole.error(m)",
        "",
        "Map(1) { 'k' => 'v' }\n",
    ),
    (
        "javascript",
        "console.group('G'); console.warn('in'); console.groupEnd(); console.info('out')",
        "G\nout\n",
        "  in\n",
    ),
    # node's `process`, once used, must not take the console's output with it.
    (
        "javascript",
        "console.log(process.pid > 0, {b: 'x'}); console.count()",
        "true { b: 'x' }\ndefault: 1\n",
        "",
    ),
    # Writes to node's streams reach the cell's output as in node's kernel.
    (
        "javascript",
        "process.stdout.write('no newline'); process.stdout.write(' then\\n');"
        " void process.stderr.write(new TextEncoder().encode('bytes\\n'))",
        "no newline then\n",
        "bytes\n",
    ),
]

BOX_DATA = """
data = {
    'Class A': [85, 90, 78, 92, 88],
    'Class B': [95, 89, 76, 91, 84, 87],
    'Class C': [75, 82, 88, 79, 86]
}
"""

CHARTS: dict[str, str] = {
    "line": """
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(0, 2*np.pi, 100)
y_sin = np.sin(x)
y_cos = np.cos(x)

plt.figure(figsize=(10, 6))
plt.plot(x, y_sin, label='sin(x)')
plt.plot(x, y_cos, label='cos(x)')
plt.xlabel("Time (s)")
plt.ylabel("Amplitude (Hz)")
plt.title('Plot of sin(x) and cos(x)')
plt.show()
""",
    "line_dates": """
import numpy as np
import matplotlib.pyplot as plt
import datetime

dates = [datetime.date(2023, 9, 1) + datetime.timedelta(seconds=i) for i in range(100)]

x = np.linspace(0, 2*np.pi, 100)
y_sin = np.sin(x)
y_cos = np.cos(x)

plt.figure(figsize=(10, 6))
plt.plot(dates, y_sin, label='sin(x)')
plt.plot(dates, y_cos, label='cos(x)')
plt.xlabel("Time (s)")
plt.ylabel("Amplitude (Hz)")
plt.title('Plot of sin(x) and cos(x)')
plt.show()
""",
    "log": """
import numpy as np
import matplotlib.pyplot as plt

x = np.linspace(0, 100, 100)
y = np.exp(x)

plt.figure(figsize=(10, 6))
plt.plot(x, y, label='y = e^x')
plt.yscale('log')
plt.xlabel('X-axis')
plt.ylabel('Y-axis (log scale)')
plt.title('Graph with Log Scale on Y-axis')
plt.legend()
plt.grid(True)
plt.show()
""",
    # Indented, as E2B's test sends it.
    "categorical_scale": """
    import numpy as np
    import matplotlib.pyplot as plt

    x = [1, 2, 3, 4, 5]
    y = ['A', 'B', 'C', 'D', 'E']

    plt.figure(figsize=(10, 6))
    plt.plot(x, y)
    plt.show()
    """,
    "scatter": """
import matplotlib.pyplot as plt
import numpy as np

N = 5
x1 = np.random.rand(N)
y1 = np.random.rand(N)
x2 = np.random.rand(2*N)
y2 = np.random.rand(2*N)

plt.xlabel("A")
plt.ylabel("B")
plt.scatter(x1, y1, c='blue', label='Dataset 1')
plt.scatter(x2, y2, c='red', label='Dataset 2')
plt.show()
""",
    "bar": """
import matplotlib.pyplot as plt

authors = ['Author A', 'Author B', 'Author C', 'Author D']
sales = [100, 200, 300, 400]

plt.figure(figsize=(10, 6))
plt.bar(authors, sales)
plt.xlabel('Authors')
plt.ylabel('Number of Books Sold')
plt.title('Book Sales by Authors')
plt.tight_layout()
plt.show()
""",
    "bar_grouped": """
import matplotlib.pyplot as plt

authors = ["Author A", "Author B", "Author C", "Author D"]
sales = [100, 200, 300, 400]

plt.figure(figsize=(10, 6))
plt.bar(authors, sales, label="Books Sold", color="blue")
plt.xlabel("Authors")
plt.ylabel("Number of Books Sold")
plt.title("Book Sales by Authors")
plt.tight_layout()
plt.show()
""",
    "pie": """
import matplotlib.pyplot as plt
import numpy as np

categories = ["No", "No, in blue"]
sizes = [90, 10]

fig, ax = plt.subplots(figsize=(8, 8))
plt.xlabel("x")
plt.ylabel("y")
ax.pie(sizes, labels=categories, autopct='%1.1f%%', startangle=90, colors=plt.cm.Pastel1.colors[:len(categories)])
ax.axis('equal')
plt.title('Will I wake up early tomorrow?')
plt.show()
""",  # noqa: E501 - E2B's code as it is
    # E2B's test passes `labels=` (renamed `tick_labels` in matplotlib 3.9, gone in 3.11).
    "box_and_whisker": "import matplotlib.pyplot as plt\nimport numpy as np\n"
    + BOX_DATA
    + """
fig, ax = plt.subplots(figsize=(10, 6))
ax.set_title('Exam Scores Distribution')
ax.set_xlabel('Class')
ax.set_ylabel('Score')
ax.boxplot(data.values(), labels=data.keys(), patch_artist=True)
ax.legend()
plt.tight_layout()
plt.show()
""",
    "box_and_whisker_tick_labels": "import matplotlib.pyplot as plt\n"
    + BOX_DATA
    + """
fig, ax = plt.subplots(figsize=(10, 6))
ax.boxplot(data.values(), tick_labels=data.keys())
ax.set_title("Exam Scores Distribution")
ax.set_xlabel("Class")
ax.set_ylabel("Score")
ax.boxplot(data.values(), tick_labels=data.keys(), patch_artist=True)
plt.tight_layout()
plt.show()
""",
    "superchart": """
import matplotlib.pyplot as plt
import numpy as np

x1 = np.linspace(0, 10, 100)
y1 = np.sin(x1)

fig, axs = plt.subplots(1, 2, figsize=(10, 8))
fig.suptitle('Multiple Graphs Example', fontsize=16)

axs[0].plot(x1, y1, 'r')
axs[0].set_title('Sine Wave')
axs[0].grid(True)

N = 5
x2 = np.random.rand(N)
y2 = np.random.rand(N)

axs[1].scatter(x2, y2, c='blue', label='Dataset 1')
axs[1].set_xlabel('X')
axs[1].set_ylabel('Y')
axs[1].set_title('Scatter Plot')
axs[1].grid(True)
plt.show()
""",
    "unknown": """
import matplotlib.pyplot as plt
import numpy as np

fig, ax = plt.subplots()
circle1 = plt.Circle((0, 0), 1, color='blue', fill=False, linewidth=2)
circle2 = plt.Circle((0, 0), 2, color='red', fill=False, linewidth=2)
ax.add_artist(circle1)
ax.add_artist(circle2)
ax.grid(True)
plt.title('Two Concentric Circles')
plt.show()
""",
    "blank": "import matplotlib.pyplot as plt\nfigure, _ = plt.subplots()\nplt.show()",
}


def _numbers(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _strings(values: list[Any]) -> bool:
    return all(isinstance(v, str) for v in values)


def _point_axes(chart: dict[str, Any], x_numeric: bool = True) -> None:
    assert (_numbers if x_numeric else _strings)(chart["x_ticks"]), chart["x_ticks"]
    assert _numbers(chart["y_ticks"]), chart["y_ticks"]
    assert _strings(chart["x_tick_labels"]) and _strings(chart["y_tick_labels"])


def check_chart(name: str, chart: dict[str, Any] | None) -> None:
    """Assert what E2B's tests assert of the chart (as JSON) that CHARTS[name] makes."""
    if name == "blank":
        assert not chart
        return
    assert chart, f"{name}: no chart"
    elements = chart["elements"]
    if name in ("line", "line_dates"):
        assert chart["type"] == "line"
        assert chart["title"] == "Plot of sin(x) and cos(x)"
        assert (chart["x_label"], chart["y_label"]) == ("Time (s)", "Amplitude (Hz)")
        assert (chart["x_unit"], chart["y_unit"]) == ("s", "Hz")
        dates = name == "line_dates"
        assert (chart["x_scale"], chart["y_scale"]) == ("datetime" if dates else "linear", "linear")
        _point_axes(chart, x_numeric=not dates)
        assert [e["label"] for e in elements] == ["sin(x)", "cos(x)"]
        for element in elements:
            assert len(element["points"]) == 100
            xs, ys = zip(*element["points"], strict=True)
            assert (_strings if dates else _numbers)(list(xs)) and _numbers(list(ys))
        if dates:
            assert datetime.fromisoformat(chart["x_ticks"][0])
            assert datetime.fromisoformat(elements[0]["points"][0][0]) == datetime(2023, 9, 1)
    elif name == "log":
        assert chart["type"] == "line"
        assert chart["title"] == "Graph with Log Scale on Y-axis"
        assert (chart["x_label"], chart["y_label"]) == ("X-axis", "Y-axis (log scale)")
        assert (chart["x_unit"], chart["y_unit"]) == (None, "log scale")
        assert (chart["x_scale"], chart["y_scale"]) == ("linear", "log")
        _point_axes(chart)
        assert [e["label"] for e in elements] == ["y = e^x"]
        assert len(elements[0]["points"]) == 100
        assert _numbers([v for point in elements[0]["points"] for v in point])
    elif name == "categorical_scale":
        assert chart["type"] == "line"
        assert (chart["x_scale"], chart["y_scale"]) == ("linear", "categorical")
    elif name == "scatter":
        assert chart["type"] == "scatter"
        assert chart["title"] is None
        assert (chart["x_label"], chart["y_label"]) == ("A", "B")
        _point_axes(chart)
        assert [(e["label"], len(e["points"])) for e in elements] == [
            ("Dataset 1", 5),
            ("Dataset 2", 10),
        ]
        assert _numbers([v for e in elements for point in e["points"] for v in point])
    elif name in ("bar", "bar_grouped"):
        assert chart["type"] == "bar"
        assert chart["title"] == "Book Sales by Authors"
        assert (chart["x_label"], chart["y_label"]) == ("Authors", "Number of Books Sold")
        assert (chart["x_unit"], chart["y_unit"]) == (None, None)
        assert [e["value"] for e in elements] == [100, 200, 300, 400]
        assert [e["label"] for e in elements] == [f"Author {c}" for c in "ABCD"]
        group = "Books Sold" if name == "bar_grouped" else "Group 0"
        assert [e["group"] for e in elements] == [group] * 4
    elif name == "pie":
        assert chart["type"] == "pie"
        assert chart["title"] == "Will I wake up early tomorrow?"
        assert [(e["label"], e["angle"], e["radius"]) for e in elements] == [
            ("No", 324, 1),
            ("No, in blue", 36, 1),
        ]
    elif name.startswith("box_and_whisker"):
        assert chart["type"] == "box_and_whisker"
        assert chart["title"] == "Exam Scores Distribution"
        assert (chart["x_label"], chart["y_label"]) == ("Class", "Score")
        assert (chart["x_unit"], chart["y_unit"]) == (None, None)
        assert [e["label"] for e in elements] == ["Class A", "Class B", "Class C"]
        fields = ("min", "first_quartile", "median", "third_quartile", "max")
        assert all(_numbers([e[f] for f in fields]) for e in elements)
        if name == "box_and_whisker":  # js/tests/charts/boxAndWhisker.test.ts
            assert [e["outliers"] for e in elements] == [[], [76], []]
            assert [e["min"] for e in elements] == [78, 84, 75]
            assert [e["first_quartile"] for e in elements] == [85, 84.75, 79]
            assert [e["median"] for e in elements] == [88, 88, 82]
            assert [e["third_quartile"] for e in elements] == [90, 90.5, 86]
            assert [e["max"] for e in elements] == [92, 95, 88]
    elif name == "superchart":
        assert chart["type"] == "superchart"
        assert chart["title"] == "Multiple Graphs Example"
        line, scatter = elements
        assert (line["type"], line["title"]) == ("line", "Sine Wave")
        assert (line["x_label"], line["y_label"]) == (None, None)
        assert [len(e["points"]) for e in line["elements"]] == [100]
        assert (scatter["type"], scatter["title"]) == ("scatter", "Scatter Plot")
        assert (scatter["x_label"], scatter["y_label"]) == ("X", "Y")
        assert [len(e["points"]) for e in scatter["elements"]] == [5]
    elif name == "unknown":
        assert chart["type"] == "unknown"
        assert chart["title"] == "Two Concentric Circles"
        assert elements == []
    else:
        raise AssertionError(f"no expectations for chart {name}")
