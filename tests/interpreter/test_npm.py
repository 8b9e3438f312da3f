"""The npm `@e2b/code-interpreter` SDK (JS) against `hearth serve`: `npm/run_code.mjs`, and
E2B's javascript, console and chart cases (`e2b_cases`) through `npm/cases.mjs`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Hearth
from .e2b_cases import CHARTS, JS_LOGS, JS_RESULTS, check_chart

pytestmark = pytest.mark.root

NPM = Path(__file__).with_name("npm")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The locked npm packages, installed on first use (`npm ci`)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the npm SDK test")
    modules = NPM / "node_modules"
    if not (modules / "@e2b" / "code-interpreter" / "package.json").is_file():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NPM, capture_output=True, text=True
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


def _node(hearth: Hearth, *args: str) -> dict[str, object]:
    """Run a script of npm/ with node; its `RESULT <name> <json>` lines, by name."""
    done = subprocess.run(
        ["node", *args],
        cwd=NPM,
        env={**os.environ, **hearth.env()},
        capture_output=True,
        text=True,
        timeout=600,  # a hung stream must not hang the suite; no speed is asserted
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, value = line.split(" ", 2)
            results[name] = json.loads(value)
    return results


def test_npm_code_interpreter(hearth: Hearth, node_modules: Path) -> None:
    results = _node(hearth, "run_code.mjs")
    assert results["python"] == "42"
    assert results["chart"] == "line"
    assert results["java"] is True
    assert results["timeout"] is True
    assert results["killed"] == "TimeoutError"
    assert results["done"] is True


def test_npm_e2b_cases(hearth: Hearth, node_modules: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.json"
    js = [[language, code] for language, code, _ in JS_RESULTS]
    logs = [[language, code] for language, code, _, _ in JS_LOGS]
    cases.write_text(json.dumps({"js": js, "logs": logs, "charts": CHARTS}))
    results = _node(hearth, "cases.mjs", str(cases))
    assert results["done"] is True
    for i, (language, code, expected) in enumerate(JS_RESULTS):
        got = results[f"js:{i}"]
        want = {"text": expected, "results": 0 if expected is None else 1, "error": None}
        assert got == want, (language, code)
    for i, (language, code, stdout, stderr) in enumerate(JS_LOGS):
        got = results[f"logs:{i}"]
        assert got == {"stdout": stdout, "stderr": stderr, "error": None}, (language, code)
    for name in CHARTS:
        got = results[f"chart:{name}"]
        assert isinstance(got, dict) and got["error"] is None, (name, got)
        check_chart(name, got["chart"])
