"""The released `e2b-code-interpreter` SDK (async) against `hearth serve`, and many
sandboxes running code at once."""

from __future__ import annotations

import asyncio

import pytest
from e2b import TimeoutException
from e2b_code_interpreter import AsyncSandbox

from .conftest import Hearth

pytestmark = pytest.mark.root


async def test_async_run_code_state_and_callbacks(hearth: Hearth) -> None:
    sbx = await AsyncSandbox.create(timeout=300)
    try:
        lines: list[str] = []

        async def on_stdout(message) -> None:
            lines.append(message.line)

        execution = await sbx.run_code(
            "for i in range(3):\n    print(i)\nvalue = 'kept'\nvalue", on_stdout=on_stdout
        )
        assert execution.text == "kept"
        assert "".join(lines) == "0\n1\n2\n"
        assert (await sbx.run_code("value * 2")).text == "keptkept"

        context = await sbx.create_code_context(language="javascript", cwd="/tmp")
        assert context.language == "javascript"
        assert (await sbx.run_code("Deno.cwd()", context=context)).text == "/tmp"
        await sbx.restart_code_context(context)
        await sbx.remove_code_context(context)

        with pytest.raises(TimeoutException):
            await sbx.run_code("import time\ntime.sleep(60)", timeout=1)
        assert (await sbx.run_code("'after the timeout'")).text == "after the timeout"
    finally:
        await sbx.kill()


async def test_ten_sandboxes_run_code_at_once(hearth: Hearth) -> None:
    sandboxes = await asyncio.gather(*(AsyncSandbox.create(timeout=300) for _ in range(10)))
    try:
        code = (
            "import numpy as np, pandas as pd\n"
            "frame = pd.DataFrame(np.arange(10_000).reshape(-1, 10))\n"
            "int(frame.values.sum())"
        )
        executions = await asyncio.gather(*(s.run_code(code) for s in sandboxes))
        assert [e.text for e in executions] == [str(sum(range(10_000)))] * 10
        assert len({s.sandbox_id for s in sandboxes}) == 10
    finally:
        await asyncio.gather(*(s.kill() for s in sandboxes))
