"""`hearth serve` as a user runs it: a process that prints recipe A and stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def _serve(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hearth.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        + ["--data-dir", str(data_dir), "--runtime", "isolated", "--no-trust-ca"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _recipe(process: subprocess.Popen[str]) -> dict[str, str]:
    lines = {}
    assert process.stdout is not None
    while "E2B_DOMAIN" not in lines:
        line = process.stdout.readline()
        assert line, f"hearth serve exited: {process.stderr.read() if process.stderr else ''}"
        match = re.fullmatch(r"export (E2B_[A-Z_]+)=(\S+)\n", line)
        assert match, f"not a recipe line: {line!r}"
        lines[match[1]] = match[2]
    return lines


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_prints_recipe_a_and_keeps_its_key(tmp_path: Path) -> None:
    process = _serve(tmp_path)
    try:
        env = _recipe(process)
        assert list(env) == ["E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DOMAIN"]
        assert re.fullmatch(r"e2b_[0-9a-f]{40}", env["E2B_API_KEY"])
        port = re.fullmatch(r"http://127\.0\.0\.1:(\d+)", env["E2B_API_URL"])[1]
        assert env["E2B_SANDBOX_URL"] == env["E2B_API_URL"]
        assert env["E2B_DOMAIN"] == f"localhost:{port}"
        assert httpx.get(f"{env['E2B_API_URL']}/health").text == "Health check successful"
        listed = httpx.get(
            f"{env['E2B_API_URL']}/v2/sandboxes", headers={"X-API-Key": env["E2B_API_KEY"]}
        )
        assert (listed.status_code, listed.json()) == (200, [])
    finally:
        _stop(process)

    again = _serve(tmp_path)  # same data: same team, and its key is not shown again
    try:
        second = _recipe(again)
        assert "E2B_API_KEY" not in second
        listed = httpx.get(
            f"{second['E2B_API_URL']}/v2/sandboxes", headers={"X-API-Key": env["E2B_API_KEY"]}
        )
        assert listed.status_code == 200
    finally:
        _stop(again)


@pytest.mark.parametrize("flag", ["--runtime=nosuchruntime", "--port=notaport"])
def test_rejects_bad_options(flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hearth.cli", "serve", flag], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage:" in result.stderr
