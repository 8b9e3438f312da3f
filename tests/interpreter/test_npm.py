"""The npm `@e2b/code-interpreter` SDK (JS) against `hearth serve`: `npm/run_code.mjs`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Hearth

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


def test_npm_code_interpreter(hearth: Hearth, node_modules: Path) -> None:
    done = subprocess.run(
        ["node", "run_code.mjs"],
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
    assert results["python"] == "42"
    assert results["chart"] == "line"
    assert results["timeout"] is True
    assert results["killed"] == "TimeoutError"
    assert results["done"] is True
