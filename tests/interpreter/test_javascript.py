"""Javascript and typescript results and console output through the released
`e2b-code-interpreter` SDK, as E2B's javascript kernel gives them (`e2b_cases.JS_RESULTS`,
`e2b_cases.JS_LOGS`, `hearth.interpreter._deno`)."""

from __future__ import annotations

import pytest
from e2b_code_interpreter import Sandbox

from .e2b_cases import JS_LOGS, JS_RESULTS

pytestmark = pytest.mark.root


@pytest.mark.parametrize(("language", "code", "expected"), JS_RESULTS)
def test_results_read_as_on_e2b(
    sbx: Sandbox, language: str, code: str, expected: str | None
) -> None:
    execution = sbx.run_code(code, language=language)
    assert execution.error is None, execution.error
    assert execution.text == expected
    if expected is None:
        assert execution.results == []


@pytest.mark.parametrize(("language", "code", "stdout", "stderr"), JS_LOGS)
def test_console_prints_as_node(
    sbx: Sandbox, language: str, code: str, stdout: str, stderr: str
) -> None:
    execution = sbx.run_code(code, language=language)
    assert execution.error is None, execution.error
    assert ("".join(execution.logs.stdout), "".join(execution.logs.stderr)) == (stdout, stderr)
    assert execution.results == []


def test_state_env_vars_and_cwd(sbx: Sandbox) -> None:
    sbx.run_code("const z = 1", language="js")
    assert sbx.run_code("z", language="js").text == "1"
    assert sbx.run_code("process.env.FOO", language="js", envs={"FOO": "bar"}).text == "bar"
    assert sbx.run_code("process.env.FOO || 'default'", language="js").text == "default"
    code = "process.env.SANDBOX_VAR"
    assert sbx.run_code(code, language="js", envs={"SANDBOX_VAR": "over"}).text == "over"
    assert sbx.run_code(code, language="js").text == "from create"
    context = sbx.create_code_context(cwd="/home", language="js")
    try:
        assert sbx.run_code("process.cwd()", context=context).text == "/home"
    finally:
        sbx.remove_code_context(context)


def test_rich_displays_and_errors(sbx: Sandbox) -> None:
    display = (
        "({ [Symbol.for('Jupyter.display')]() {\n"
        "  return { 'text/plain': 'Hello world!', 'text/html': '<h1>Hello world!</h1>' }\n"
        "} })"
    )
    result = sbx.run_code(display, language="ts").results[0]
    assert (result.text, result.html) == ("Hello world!", "<h1>Hello world!</h1>")
    assert sbx.run_code("Deno.jupyter.html`<b>x</b>`", language="js").results[0].html == "<b>x</b>"
    rejected = sbx.run_code("Promise.reject(new TypeError('nope'))", language="js").error
    assert rejected is not None and (rejected.name, rejected.value) == ("TypeError", "nope")
    thrown = sbx.run_code("throw new RangeError('far')", language="js").error
    assert thrown is not None and (thrown.name, thrown.value) == ("RangeError", "far")
    assert sbx.run_code("'after errors'", language="js").text == "after errors"


def test_a_restarted_kernel_reads_the_same(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="typescript")
    try:
        assert sbx.run_code("'before'", context=context).text == "before"
        sbx.restart_code_context(context)
        assert sbx.run_code("['after']", context=context).text == "[ 'after' ]"
    finally:
        sbx.remove_code_context(context)
