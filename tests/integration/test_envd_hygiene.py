"""envd's bundle stays invisible to the user's processes, and envd reaps orphans.

Driven by the real `e2b` SDK in debug mode against envd in a throwaway root.
"""

from __future__ import annotations

import os

import pytest
from e2b import CommandExitException, Sandbox

from hearth.node.runtime.isolated import IsolatedEnvd

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: uid maps and mounts"),
]

LEAKY = ("PYTHONHOME", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONSAFEPATH")


@pytest.fixture(scope="module", params=["debian", "busybox"])
def sandbox(request):
    with IsolatedEnvd(request.param) as envd, pytest.MonkeyPatch.context() as mp:
        mp.setenv("E2B_DEBUG", "true")
        mp.setenv("E2B_SANDBOX_URL", envd.url)
        yield request.param, Sandbox.create()


def test_no_bundle_variables_reach_user_processes(sandbox):
    _, sbx = sandbox
    env = dict(
        line.split("=", 1) for line in sbx.commands.run("env").stdout.splitlines() if "=" in line
    )
    assert not [name for name in LEAKY if name in env]
    assert "hearth" not in env["PATH"]
    root_env = sbx.commands.run("env", user="root").stdout
    assert not [name for name in LEAKY if f"{name}=" in root_env]


def test_python_is_the_templates_own(sandbox):
    kind, sbx = sandbox
    if kind == "busybox":
        # The root has no Python at all, and envd's must not show through.
        with pytest.raises(CommandExitException):
            sbx.commands.run("command -v python3")
        return
    assert sbx.commands.run("command -v python3").stdout.strip() == "/usr/bin/python3"
    prefix = "import sys; print(sys.prefix, sys.version_info[:2] >= (3, 11))"
    assert sbx.commands.run(f"python3 -c '{prefix}'").stdout.split()[0] == "/usr"
    assert sbx.commands.run(f"/usr/bin/env python3 -c '{prefix}'").stdout.split()[0] == "/usr"


def test_orphaned_grandchildren_are_reaped(sandbox):
    _, sbx = sandbox
    # The shell exits at once; its background child is re-parented to PID 1 and exits.
    sbx.commands.run("sh -c 'sleep 0.2 &'")
    sbx.commands.run("sleep 1")
    states = sbx.commands.run(
        "for f in /proc/[0-9]*/stat; do cut -d' ' -f3 \"$f\" 2>/dev/null; done"
    ).stdout.split()
    assert states and "Z" not in states
