"""The interpreter's pieces that need no sandbox: the stream's result mapping, the
languages' env-var code, and a failing start command stopping its sandbox."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from hearth.interpreter._languages import language, normalize
from hearth.interpreter._outputs import convert, result
from hearth.node.guest.start_command import StartCommand, start_template
from hearth.node.interface import SandboxAddress, SandboxSpec


def test_result_maps_mime_types_to_fields() -> None:
    data = {
        "text/plain": "'quoted'",
        "text/html": "<b>x</b>",
        "image/png": "iVBOR",
        "application/json": {"a": 1},
        "e2b/chart": {"type": "line"},
        "e2b/data": {"a": [1]},
        "application/vnd.custom": "x",
        "text/markdown": None,
    }
    assert result(data, True) == {
        "type": "result",
        "is_main_result": True,
        "text": "quoted",
        "html": "<b>x</b>",
        "png": "iVBOR",
        "json": {"a": 1},
        "chart": {"type": "line"},
        "data": {"a": [1]},
        "extra": {"application/vnd.custom": "x"},
    }


def test_stream_and_error_lines() -> None:
    header = {"msg_type": "stream", "date": "2026-01-01T00:00:00.000001Z"}
    line = convert({"header": header, "content": {"name": "stderr", "text": "x"}})
    assert line == {"type": "stderr", "text": "x", "timestamp": "2026-01-01T00:00:00.000001Z"}
    error = {"ename": "E", "evalue": "v", "traceback": ["a\n", "b"]}
    line = convert({"header": {"msg_type": "error"}, "content": error})
    assert line == {"type": "error", "name": "E", "value": "v", "traceback": "a\nb"}


def test_languages_and_env_code() -> None:
    assert normalize(" JS ") == "javascript" and normalize(None) == "python"
    assert normalize("ts") == "typescript"
    assert language("java") is None
    python, js = language("python"), language("typescript")
    assert python is not None and js is not None and js.kernel == "javascript"
    assert python.set_env("K", "it's") == '__import__(\'os\').environ["K"] = "it\'s"'
    assert js.unset_env("K") == 'Deno.env.delete("K");'
    bash = language("bash")
    assert bash is not None and bash.set_env("K", "a b'c") == "export K='a b'\"'\"'c'"


class _FakeSandbox:
    def __init__(self, port: int) -> None:
        self.address = SandboxAddress("127.0.0.1", {49983: port})
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_failed_start_command_stops_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sandbox = _FakeSandbox(port)
    spec = SandboxSpec("s" * 20, "code-interpreter-v1", 1, 256)
    monkeypatch.setattr(
        "hearth.node.guest.start_command.start_command",
        lambda kind: StartCommand("true", ready_port=port, timeout=1),
    )
    with pytest.raises(httpx.ConnectError):  # envd is not there
        await asyncio.wait_for(start_template(sandbox, "code-interpreter", spec), 30)
    assert sandbox.stopped


async def test_templates_without_a_start_command_are_left_alone() -> None:
    sandbox = _FakeSandbox(1)
    await start_template(sandbox, "base", SandboxSpec("s" * 20, "base", 1, 256))
    assert not sandbox.stopped
