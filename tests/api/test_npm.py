"""The npm `e2b` SDK (JS) against `hearth serve`, recipe A: v2 create and connect, the
metadata filter as JS encodes it, and envd through the gateway."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Hearth, npm_installed

pytestmark = pytest.mark.root

NPM = Path(__file__).parents[1] / "sdk" / "npm"
SCRIPT = Path(__file__).with_name("control_plane.mjs")


def test_npm_sdk_control_plane(hearth: Hearth) -> None:
    npm_installed(NPM, "e2b")
    result = subprocess.run(
        ["node", "--input-type=module", "-e", SCRIPT.read_text()],
        cwd=NPM,  # resolves `e2b` from tests/sdk/npm/node_modules
        env={**os.environ, **hearth.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    results = {}
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, value = line.split(" ", 2)
            results[name] = json.loads(value)
    assert results["listed"] == 1 and results["done"] is True
