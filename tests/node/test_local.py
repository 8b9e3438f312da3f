"""LocalNode with the isolated runtime, and what the container runtime checks at start."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from .conftest import ROOT_ONLY, spec, wait_no_leaks

pytestmark = ROOT_ONLY


async def test_the_isolated_runtime_serves_the_sdk_on_loopback(tmp_path: Path, sdk_env) -> None:
    from e2b import AsyncSandbox

    from hearth.node.local import LocalNode

    async with LocalNode(tmp_path, runtime="isolated") as node:
        s = spec("busybox", env_vars={"GREETING": "hi"})
        address = await node.create(s)
        assert address.host == "127.0.0.1" and address.port(49983) != 49983
        sdk_env(address)
        sandbox = await AsyncSandbox.create()
        result = await sandbox.commands.run('id -un; echo "$HOME $E2B_SANDBOX_ID $GREETING"')
        assert result.stdout.splitlines() == ["user", f"/home/user {s.sandbox_id} hi"]
        assert await node.running() == [s.sandbox_id]
        state_dirs = [node.sandbox(s.sandbox_id)._envd.state_dir]
        assert state_dirs[0].is_dir()
        assert await node.kill(s.sandbox_id)
        assert node.address(s.sandbox_id) is None
        other = spec("busybox")
        await node.create(other)  # left for close()
        state_dirs.append(node.sandbox(other.sandbox_id)._envd.state_dir)
    assert not any(d.exists() for d in state_dirs)


async def test_a_data_dir_the_sandboxes_cannot_reach_is_refused(tmp_path: Path) -> None:
    from hearth.node.local import LocalNode
    from hearth.node.runtime.container import ContainerError

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ContainerError, match="not searchable"):
        await LocalNode(private / "data").start()


async def test_runc_serves_as_the_fallback_runtime(sdk_env) -> None:
    from e2b import AsyncSandbox

    from hearth.node.local import LocalNode

    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    data_dir = Path(tempfile.mkdtemp(prefix="hearth-node-runc-"))
    try:
        async with LocalNode(data_dir, oci_runtime="runc") as node:
            assert node.runtime.runtime.oci.name == "runc"
            s = spec("busybox")
            address = await node.create(s)
            sdk_env(address)
            sandbox = await AsyncSandbox.create()
            assert (await sandbox.commands.run("id -un")).stdout.strip() == "user"
            assert await node.kill(s.sandbox_id)
        assert wait_no_leaks(data_dir, closed=True) == {}
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
