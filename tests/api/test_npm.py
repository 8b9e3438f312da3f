"""The npm `e2b` SDK (JS) against `hearth serve`, recipe A: v2 create and connect, the
metadata filter as JS encodes it, and envd through the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Hearth, run_npm_script

pytestmark = pytest.mark.root

SCRIPT = Path(__file__).with_name("control_plane.mjs")


def test_npm_sdk_control_plane(hearth: Hearth) -> None:
    printed = run_npm_script(SCRIPT, hearth.env(), timeout=120)
    results = {name: values[-1] for name, values in printed.items()}
    assert results["listed"] == 1 and results["done"] is True
