"""Id blocks are claimed host-wide: two node processes (two data directories) never
hold the same block; a claim outlives its process while its sandbox's directory does;
a claim whose process and directory are both gone is taken again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.node.runtime.container.idblocks import IdBlockError, IdBlocks


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def test_two_nodes_get_different_blocks(tmp_path: Path, registry: Path) -> None:
    a = IdBlocks(tmp_path / "a" / "sandboxes", 8, registry)
    b = IdBlocks(tmp_path / "b" / "sandboxes", 8, registry)
    assert [a.claim("s1"), b.claim("s1"), a.claim("s2")] == [0, 1, 2]
    with pytest.raises(IdBlockError):
        b.claim("s9", 0)  # a's, and a is alive
    a.free(0)
    assert b.claim("s3") == 0


def test_another_nodes_block_is_not_freed(tmp_path: Path, registry: Path) -> None:
    a = IdBlocks(tmp_path / "a" / "sandboxes", 8, registry)
    b = IdBlocks(tmp_path / "b" / "sandboxes", 8, registry)
    block = a.claim("s1")
    b.free(block)
    assert b.claim("s2") == block + 1


def test_a_claim_outlives_its_process_while_the_sandbox_does(
    tmp_path: Path, registry: Path
) -> None:
    sandboxes = tmp_path / "a" / "sandboxes"
    script = (
        "import sys; from pathlib import Path;"
        "from hearth.node.runtime.container.idblocks import IdBlocks;"
        f"print(IdBlocks(Path({str(sandboxes)!r}), 8, Path({str(registry)!r})).claim('gone'))"
    )
    for sandbox_dir_left in (True, False):
        block = int(subprocess.check_output([sys.executable, "-c", script], text=True))
        claim = json.loads((registry / str(block)).read_text())
        assert claim["dir"] == str(sandboxes / "gone")
        other = IdBlocks(tmp_path / "b" / "sandboxes", 8, registry)
        if sandbox_dir_left:
            (sandboxes / "gone").mkdir(parents=True)  # running on after its node exited
            assert other.claim("x") != block
            # The restarted node adopts it under the same block.
            assert IdBlocks(sandboxes, 8, registry).claim("gone", block) == block
            (sandboxes / "gone").rmdir()
            IdBlocks(sandboxes, 8, registry).free(block)
        else:
            # Its node died before the sandbox had a directory: the claim is stale.
            assert other.claim("y", block) == block
