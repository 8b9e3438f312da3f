"""The released `e2b-code-interpreter` SDK (sync) against `hearth serve`: every feature
of `run_code` and contexts, on real sandboxes of the code-interpreter-v1 template."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from e2b import NotFoundException, TimeoutException
from e2b_code_interpreter import Sandbox

from .conftest import TEMPLATE, Hearth

pytestmark = pytest.mark.root


def test_default_template_and_basic_run(sbx: Sandbox) -> None:
    assert sbx.get_info().template_id == TEMPLATE
    execution = sbx.run_code("x = 41\nx + 1")
    assert execution.error is None
    assert execution.text == "42"
    assert execution.results[0].is_main_result
    assert execution.execution_count is not None


def test_state_persists_between_runs(sbx: Sandbox) -> None:
    sbx.run_code("counter = 10")
    sbx.run_code("counter += 5")
    assert sbx.run_code("counter").text == "15"


def test_streaming_callbacks(sbx: Sandbox) -> None:
    stdout, stderr, results = [], [], []
    execution = sbx.run_code(
        "import sys\nprint('out one')\nprint('err one', file=sys.stderr)\n"
        "from IPython.display import display, HTML\ndisplay(HTML('<b>hi</b>'))\n'done'",
        on_stdout=stdout.append,
        on_stderr=stderr.append,
        on_result=results.append,
    )
    assert execution.logs.stdout == ["out one\n"]
    assert execution.logs.stderr == ["err one\n"]
    assert [m.line for m in stdout] == ["out one\n"] and stdout[0].timestamp
    assert [m.line for m in stderr] == ["err one\n"] and stderr[0].error
    assert [r.html for r in results if r.html] == ["<b>hi</b>"]
    main = [r for r in execution.results if r.is_main_result]
    assert main[0].text == "done"


def test_error_and_traceback(sbx: Sandbox) -> None:
    errors = []
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert "ZeroDivisionError" in execution.error.traceback
    assert "return 1 / 0" in execution.error.traceback
    assert errors and errors[0].name == "ZeroDivisionError"
    # The context is usable after an error.
    assert sbx.run_code("'still here'").text == "still here"


def test_matplotlib_png_and_chart(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='squares')\n"
        "plt.title('Squares')\nplt.xlabel('x')\nplt.ylabel('y')\nplt.show()"
    )
    assert execution.error is None
    figures = [r for r in execution.results if r.png]
    assert len(figures) == 1
    assert base64.b64decode(figures[0].png).startswith(b"\x89PNG")
    chart = figures[0].chart
    assert chart is not None
    assert chart.type.value == "line"
    assert chart.title == "Squares"
    assert chart.elements[0].label == "squares"
    assert [tuple(p) for p in chart.elements[0].points] == [(1, 1), (2, 4), (3, 9)]


def test_bar_chart(sbx: Sandbox) -> None:
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.figure()\n"
        "plt.bar(['a', 'b', 'c'], [3, 5, 7], label='n')\nplt.title('Bars')\nplt.show()"
    )
    chart = next(r.chart for r in execution.results if r.chart)
    assert chart.type.value == "bar"
    assert [(e.label, e.value) for e in chart.elements] == [("a", 3), ("b", 5), ("c", 7)]


def test_dataframe_data_and_html(sbx: Sandbox) -> None:
    execution = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    result = execution.results[0]
    assert result.data == {"a": [1, 2], "b": ["x", "y"]}
    assert "<table" in result.html


def test_json_and_markdown_results(sbx: Sandbox) -> None:
    assert sbx.run_code("{'a': 1, 'b': [1, 2]}").results[0].json == {"a": 1, "b": [1, 2]}
    markdown = sbx.run_code("from IPython.display import Markdown\nMarkdown('# Title')")
    assert markdown.results[0].markdown == "# Title"


def test_pil_image_show(sbx: Sandbox) -> None:
    execution = sbx.run_code("from PIL import Image\nImage.new('RGB', (4, 4), 'red').show()\nNone")
    assert any(r.png for r in execution.results)
    saved = sbx.run_code("Image.new('RGB', (4, 4), 'blue').save('/tmp/blue.png')\nNone")
    assert any(r.png for r in saved.results)


def test_kernel_starts_light_but_everything_imports(sbx: Sandbox) -> None:
    # PIL is patched on its first import and ipykernel's debugger is off, yet both import.
    fresh = sbx.create_code_context()
    try:
        code = "import sys\nsorted(m for m in ('PIL', 'debugpy') if m in sys.modules)"
        assert sbx.run_code(code, context=fresh).text == "[]"
        assert sbx.run_code("import debugpy\n'ok'", context=fresh).text == "ok"
        shown = sbx.run_code("import PIL.Image\nPIL.Image.new('L', (2, 2)).show()", context=fresh)
        assert any(r.png for r in shown.results)
    finally:
        sbx.remove_code_context(fresh)


def test_env_vars_sandbox_and_per_execution(sbx: Sandbox) -> None:
    code = "import os\nos.environ.get('SANDBOX_VAR'), os.environ.get('RUN_VAR')"
    assert sbx.run_code(code).text == "('from create', None)"
    with_env = sbx.run_code(code, envs={"RUN_VAR": "only now", "SANDBOX_VAR": "over"})
    assert with_env.text == "('over', 'only now')"
    assert sbx.run_code(code).text == "('from create', None)"


def test_runs_as_user_in_home(sbx: Sandbox) -> None:
    execution = sbx.run_code("import os, getpass\ngetpass.getuser(), os.getcwd()")
    assert execution.text == "('user', '/home/user')"


def test_contexts(sbx: Sandbox) -> None:
    context = sbx.create_code_context(cwd="/tmp")
    assert context.language == "python" and context.cwd == "/tmp"
    assert sbx.run_code("import os\nos.getcwd()", context=context).text == "/tmp"
    sbx.run_code("in_context = 1", context=context)
    assert sbx.run_code("'in_context' in dir()").text == "False"
    listed = {c.id: c for c in sbx.list_code_contexts()}
    assert context.id in listed
    assert {"python", "javascript"} <= {c.language for c in listed.values()}
    sbx.restart_code_context(context)
    restarted = sbx.run_code("'in_context' in dir()", context=context)
    assert restarted.text == "False"
    sbx.remove_code_context(context.id)
    assert context.id not in {c.id for c in sbx.list_code_contexts()}
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=context)
    # The server logged no error through all of it (a removed kernel's channels included).
    assert sbx.run_code("'after'").text == "after"
    log = sbx.commands.run("cat /var/log/hearth-interpreter.log", user="root").stdout
    assert "Traceback" not in log


def test_server_errors_on_the_wire(sbx: Sandbox, hearth: Hearth) -> None:
    # The SDK refuses language + context itself; the server answers as E2B's does.
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49999"}
    token = getattr(sbx, "_envd_access_token", None)
    if token:
        headers["X-Access-Token"] = token
    with httpx.Client(base_url=hearth.sandbox_url, headers=headers) as client:
        both = client.post("/execute", json={"code": "1", "context_id": "x", "language": "r"})
        assert both.status_code == 400
        assert both.text == "Only one of context_id or language can be provided"
        missing = client.post("/execute", json={"code": "1", "context_id": "nope"})
        assert (missing.status_code, missing.text) == (404, "Context nope not found")
        restart = client.post("/contexts/nope/restart")
        assert (restart.status_code, restart.text) == (404, "Context nope not found")
        assert client.delete("/contexts/nope").status_code == 404
        assert client.get("/health").json() == "OK"
        lines = client.post("/execute", json={"code": "print(1)\n2"}).text.splitlines()
        kinds = [json.loads(line)["type"] for line in lines]
        assert kinds == ["number_of_executions", "stdout", "result", "end_of_execution"]


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("javascript", "const a = 20; a + 22", "42"),
        ("js", "console.log('from js'); 6 * 7", "42"),
        ("typescript", "const n: number = 40; n + 2", "42"),
        ("ts", "function f(x: number): number { return x * 2 }\nf(21)", "42"),
    ],
)
def test_languages(sbx: Sandbox, language: str, code: str, expected: str) -> None:
    execution = sbx.run_code(code, language=language)
    assert execution.error is None, execution.error
    assert execution.text == expected


def test_r(sbx: Sandbox) -> None:
    # IRkernel shows values as display data (no main result), as in E2B's R contexts.
    execution = sbx.run_code("x <- 40\nx + 2", language="r")
    assert execution.error is None, execution.error
    assert [r.text for r in execution.results] == ["[1] 42"]
    error = sbx.run_code("stop('boom')", language="r").error
    assert error is not None and "boom" in error.value


def test_bash(sbx: Sandbox) -> None:
    execution = sbx.run_code("echo hello from bash; whoami; pwd", language="bash")
    assert execution.error is None
    assert "".join(execution.logs.stdout) == "hello from bash\nuser\n/home/user\n"


def test_state_in_other_languages(sbx: Sandbox) -> None:
    sbx.run_code("let kept = 5", language="javascript")
    assert sbx.run_code("kept * 2", language="javascript").text == "10"
    sbx.run_code("export KEPT=7", language="bash")
    assert "".join(sbx.run_code("echo $KEPT", language="bash").logs.stdout) == "7\n"
    sbx.run_code("kept <- 3", language="r")
    assert sbx.run_code("kept * 2", language="r").results[0].text == "[1] 6"


@pytest.mark.parametrize(
    ("language", "code", "when_set", "when_unset"),
    [
        # node's inspect puts "" around a string with a ', and E2B strips only ''.
        ("javascript", "process.env.RUN_VAR || 'unset'", '"it\'s set"', "unset"),
        ("bash", "echo ${RUN_VAR:-unset}", "it's set\n", "unset\n"),
        ("r", "Sys.getenv('RUN_VAR', 'unset')", '[1] "it\'s set"', '[1] "unset"'),
    ],
)
def test_env_vars_per_language(
    sbx: Sandbox, language: str, code: str, when_set: str, when_unset: str
) -> None:
    def run(envs: dict[str, str] | None) -> str:
        execution = sbx.run_code(code, language=language, envs=envs)
        assert execution.error is None, execution.error
        if language == "bash":
            return "".join(execution.logs.stdout)
        return execution.results[0].text

    assert run({"RUN_VAR": "it's set"}) == when_set
    assert run(None) == when_unset


def test_sandbox_env_vars_in_other_languages(sbx: Sandbox) -> None:
    assert sbx.run_code("Deno.env.get('SANDBOX_VAR')", language="js").text == "from create"
    r = sbx.run_code("Sys.getenv('SANDBOX_VAR')", language="r")
    assert r.results[0].text == '[1] "from create"'
    bash = sbx.run_code("echo $SANDBOX_VAR", language="bash")
    assert "".join(bash.logs.stdout) == "from create\n"


def test_timeout_interrupts_and_next_run_works(sbx: Sandbox) -> None:
    sbx.run_code("import time\nticks = 0")
    with pytest.raises(TimeoutException):
        sbx.run_code("while True:\n    ticks += 1\n    time.sleep(0.01)", timeout=2)
    # The interrupted loop stopped, and the context still has its state.
    first = sbx.run_code("ticks").text
    assert int(first) > 0
    assert sbx.run_code("ticks").text == first
    assert sbx.run_code("1 + 1").text == "2"


def test_runs_in_one_context_are_queued(sbx: Sandbox) -> None:
    # A run queued behind a long one waits its turn (one execution per context).

    def slow() -> None:
        sbx.run_code("import time\ntime.sleep(1.5)\norder.append('slow')")

    sbx.run_code("order = []")
    thread = threading.Thread(target=slow)
    thread.start()
    try:
        sbx.run_code("import time\ntime.sleep(0.2)")
        sbx.run_code("order.append('fast')")
    finally:
        thread.join()
    assert sbx.run_code("order").text == "['slow', 'fast']"


def test_kernel_death_is_survived(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    try:
        execution = sbx.run_code("import os\nos._exit(1)", context=context)
        assert execution.error is not None
        assert execution.error.name == "ContextRestarting"
        assert sbx.run_code("2 + 2", context=context).text == "4"
    finally:
        sbx.remove_code_context(context)


def test_reconnect_to_running_sandbox(sbx: Sandbox) -> None:
    sbx.run_code("reconnect_marker = 'kept'")
    again = Sandbox.connect(sbx.sandbox_id)
    assert again.run_code("reconnect_marker").text == "kept"


def test_killed_sandbox_gives_timeout_exception(hearth: Hearth) -> None:
    sandbox = Sandbox.create(timeout=120)
    assert sandbox.run_code("1").text == "1"
    sandbox.kill()
    with pytest.raises(TimeoutException):
        sandbox.run_code("1")


def test_pip_install_is_allowed(sbx: Sandbox) -> None:
    execution = sbx.commands.run("test ! -e /usr/lib/python3.11/EXTERNALLY-MANAGED && echo ok")
    assert execution.stdout == "ok\n"


def test_server_is_restarted_if_it_dies(hearth: Hearth) -> None:
    sandbox = Sandbox.create(timeout=300)
    try:
        assert sandbox.run_code("1").text == "1"
        assert sandbox.run_code("1", language="js").text == "1"
        found = sandbox.commands.run("pgrep -f '^/usr/bin/python3 -m hearth.interpreter'")
        pid = int(found.stdout.split()[0])
        sandbox.commands.run(f"kill -9 {pid}", user="root")
        # The supervisor starts it again; runs fail until its python kernel is warm.
        for _ in range(300):
            try:
                if sandbox.run_code("'back'", request_timeout=5).text == "back":
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.1)
        assert sandbox.run_code("'back'").text == "back"
        # The dead server's kernels died with it (its javascript one included): the new
        # server has its python kernel only, javascript starting on first use.
        kernels = sandbox.commands.run("pgrep -c -f '[i]pykernel_launcher|[d]eno jupyter'")
        assert kernels.stdout.strip() == "1"
    finally:
        sandbox.kill()


def _deno_kernels(sandbox: Sandbox) -> int:
    found = sandbox.commands.run("pgrep -c -f '[d]eno jupyter' || true")
    return int(found.stdout.strip() or 0)


def _js_default(sandbox: Sandbox):
    return next(c for c in sandbox.list_code_contexts() if c.language == "javascript")


def test_javascript_kernel_starts_on_first_use(hearth: Hearth) -> None:
    sandbox = Sandbox.create(timeout=300, envs={"SANDBOX_VAR": "from create"})
    try:
        # The default javascript context is listed from the start; no kernel runs it yet.
        js = _js_default(sandbox)
        assert js.cwd == "/home/user"
        assert _deno_kernels(sandbox) == 0
        # Removing it before it ever ran: gone, and its id is not found after.
        sandbox.remove_code_context(js.id)
        assert js.id not in {c.id for c in sandbox.list_code_contexts()}
        with pytest.raises(NotFoundException):
            sandbox.run_code("1", context=js)
        # The next javascript run makes a new default; runs arriving at once on it
        # start one kernel, each with the sandbox's and its own env vars and the cwd.
        code = (
            "JSON.stringify([Deno.env.get('SANDBOX_VAR'), Deno.env.get('RUN_VAR') ?? null,"
            " Deno.cwd()])"
        )

        def first(i: int):
            return sandbox.run_code(code, language="js", envs={"RUN_VAR": str(i)})

        threads, results = [], {}
        for i in range(4):
            threads.append(threading.Thread(target=lambda i=i: results.update({i: first(i)})))
            threads[-1].start()
        for thread in threads:
            thread.join()
        for i, execution in results.items():
            assert execution.error is None, execution.error
            assert json.loads(execution.text) == ["from create", str(i), "/home/user"]
        assert len(results) == 4
        assert _deno_kernels(sandbox) == 1
        after = sandbox.run_code(code, language="js").text
        assert json.loads(after) == ["from create", None, "/home/user"]
        user = sandbox.run_code("Deno.env.get('USER') + ' ' + Deno.env.get('HOME')", language="js")
        assert user.text == "user /home/user"
        assert _js_default(sandbox).id != js.id
    finally:
        sandbox.kill()


def test_restarting_a_javascript_context_that_never_ran(hearth: Hearth) -> None:
    sandbox = Sandbox.create(timeout=300)
    try:
        js = _js_default(sandbox)
        sandbox.restart_code_context(js)  # starts its kernel
        assert _deno_kernels(sandbox) == 1
        assert sandbox.run_code("typeof kept", context=js).text == "undefined"
        sandbox.run_code("var kept = 1", context=js)
        sandbox.restart_code_context(js)  # now a real restart
        assert sandbox.run_code("typeof kept", language="js").text == "undefined"
        assert _deno_kernels(sandbox) == 1
        assert sandbox.get_info() is not None  # health and the python kernel unaffected
        assert sandbox.run_code("1 + 1").text == "2"
    finally:
        sandbox.kill()
