"""The interpreter's pieces that need no sandbox: the stream's result mapping, the
languages' env-var code."""

from __future__ import annotations

from hearth.interpreter._languages import language, normalize
from hearth.interpreter._outputs import convert, result


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
    assert language("cobol") is None
    python, js = language("python"), language("typescript")
    assert python is not None and js is not None and js.kernel == "javascript"
    assert python.set_env("K", "it's") == '__import__(\'os\').environ["K"] = "it\'s"'
    assert js.unset_env("K") == 'Deno.env.delete("K");'
    bash = language("bash")
    assert bash is not None and bash.set_env("K", "a b'c") == "export K='a b'\"'\"'c'"


def test_deno_kernels_get_the_results_prelude() -> None:
    # Set up on a fresh kernel's first run, as the sandbox's env vars are.
    js, ts, python = language("javascript"), language("typescript"), language("python")
    assert js is not None and ts is not None and python is not None
    assert js.prelude == ts.prelude and "broadcastResult" in js.prelude
    assert 'import("node:util")' in js.prelude
    assert python.prelude == ""
