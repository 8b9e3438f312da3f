"""`hearth template build|ls|rm` as a user runs them: the real command line, in a process.

`build NAME` builds a built-in template on this machine (no server); `build -f` builds a
Dockerfile through the running server with the E2B SDK, as `ls` and `rm` call its API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from .conftest import Hearth

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds run in containers")


def _hearth(
    *argv: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `hearth ARGV...`; `env` entries override the test's environment (None unsets)."""
    environ = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run(
        [sys.executable, "-m", "hearth.cli", *argv], capture_output=True, text=True, env=environ
    )


def _rows(listing: str) -> list[list[str]]:
    """The table `template ls` prints, a list of cells per line (header first)."""
    lines = listing.splitlines()
    header = lines[0]
    starts = [header.index(title) for title in _COLUMNS]
    return [
        [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        for line in lines
    ]


_COLUMNS = ("NAMES", "TEMPLATE ID", "STATUS", "CPU", "MEMORY MB", "PUBLIC", "LAST BUILD")


def test_the_help_names_the_builtin_templates() -> None:
    from hearth import cli
    from hearth.template import builtins

    assert builtins.names() == cli.BUILTIN_TEMPLATES


@pytest.mark.root
@needs_root
def test_build_a_builtin_template_here(container_data_dir: Path) -> None:
    done = _hearth("template", "build", "busybox", env={"HEARTH_DATA_DIR": str(container_data_dir)})
    assert done.returncode == 0, done.stderr
    layers = [Path(line) for line in done.stdout.splitlines()]
    assert layers and all(layer.is_dir() for layer in layers)
    assert (layers[0] / "bin/busybox").exists()
    # Progress lines, each with the time since the start.
    assert "busybox root" in done.stderr
    assert any(line.strip().split(" ", 1)[0].endswith("s") for line in done.stderr.splitlines())


def test_build_of_another_name_needs_a_dockerfile() -> None:
    done = _hearth("template", "build", "my-template")
    assert done.returncode == 2
    assert "pass -f Dockerfile" in done.stderr and done.stdout == ""


def test_builtin_build_takes_no_dockerfile_options() -> None:
    done = _hearth("template", "build", "busybox", "--cpu-count", "2")
    assert done.returncode == 2 and "--cpu-count" in done.stderr and "only with -f" in done.stderr


def test_dockerfile_build_needs_an_api_key(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM e2bdev/base\n")
    done = _hearth("template", "build", "x", "-f", str(dockerfile), env={"E2B_API_KEY": None})
    assert done.returncode == 2
    assert "set E2B_API_KEY" in done.stderr and "hearth keys create" in done.stderr


def test_start_command_needs_a_ready_command(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM e2bdev/base\n")
    env = {"E2B_API_KEY": "e2b_" + "0" * 40, "E2B_API_URL": "http://127.0.0.1:9"}
    done = _hearth("template", "build", "x", "-f", str(dockerfile), "-c", "sleep inf", env=env)
    assert done.returncode == 2 and "--ready-cmd" in done.stderr


@pytest.mark.root
def test_ls_lists_the_builtin_templates(hearth: Hearth) -> None:
    done = _hearth("template", "ls", env=hearth.env())
    assert done.returncode == 0, done.stderr
    header, *rows = _rows(done.stdout)
    assert header == list(_COLUMNS)
    base = next(row for row in rows if "base" in row[0].split(","))
    assert base[2] == "ready" and base[5] == "yes" and int(base[3]) > 0 and int(base[4]) > 0


@pytest.mark.root
def test_ls_needs_a_key_the_server_knows(hearth: Hearth) -> None:
    done = _hearth("template", "ls", env={**hearth.env(), "E2B_API_KEY": "e2b_" + "0" * 40})
    assert done.returncode == 1 and "401" in done.stderr


@pytest.mark.root
def test_rm_of_an_unknown_template_fails(hearth: Hearth) -> None:
    done = _hearth("template", "rm", f"nothing-{uuid.uuid4().hex[:8]}", env=hearth.env())
    assert done.returncode == 1 and "404" in done.stderr
    assert done.stdout == ""


@pytest.mark.root
def test_build_a_dockerfile_through_the_server(hearth: Hearth, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM e2bdev/base\nRUN echo hi > /tmp/hi\nENV A=1\n")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    done = _hearth("template", "build", name, "-f", str(tmp_path / "Dockerfile"), env=hearth.env())
    assert done.returncode == 0, done.stderr
    assert f"{name}: template " in done.stdout and ", build " in done.stdout
    # The SDK's build logs, with the time and level of each.
    assert "INFO" in done.stderr and "echo hi" in done.stderr

    listing = _hearth("template", "ls", env=hearth.env())
    assert listing.returncode == 0, listing.stderr
    row = next(row for row in _rows(listing.stdout)[1:] if name in row[0].split(","))
    assert row[2] == "ready" and row[5] == "no"

    removed = _hearth("template", "rm", name, env=hearth.env())
    assert (removed.returncode, removed.stdout) == (0, f"removed {name}\n"), removed.stderr
    listing = _hearth("template", "ls", env=hearth.env())
    assert name not in listing.stdout
