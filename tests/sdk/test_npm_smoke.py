"""The npm `e2b` SDK against envd: `tests/sdk/npm/smoke.mjs`, run with node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Envd

pytestmark = pytest.mark.root

NPM_DIR = Path(__file__).with_name("npm")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The locked npm packages, installed on first use (`npm ci`)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed for the npm SDK smoke test")
    modules = NPM_DIR / "node_modules"
    if not (modules / "e2b" / "package.json").is_file():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NPM_DIR,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return modules


def test_npm_sdk_smoke(envd: Envd, node_modules: Path):
    env = {
        **os.environ,
        "E2B_DEBUG": "true",
        "E2B_SANDBOX_URL": envd.url,
    }
    done = subprocess.run(
        ["node", "smoke.mjs"],
        cwd=NPM_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hung stream must not hang the suite; no speed is asserted
    )
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, key, value = line.split(" ", 2)
            results[key] = json.loads(value)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "SMOKE OK" in done.stdout
    assert results["sandboxId"] == "debug_sandbox_id"
    assert results["echo"] == "hello\n"
    assert results["exitCode"] == 3
    assert results["whoami"] == "user\n/home/user\n"
    assert results["killedExitCode"] == -1
    assert results["stdin"] == "piped\n"
    assert results["pty"] is True
    assert results["list"] == ["a.txt", "sub", "sub/b.txt"]
    assert ["create", "sub/watched.txt"] in results["watch"]
    assert ["write", "sub/watched.txt"] in results["watch"]
    assert results["remove"] is True
