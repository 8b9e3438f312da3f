"""Java through the released `e2b-code-interpreter` SDK (sync) on code-interpreter-v1:
Hearth's java kernel (JShell) as E2B's IJava contexts behave, E2B's own java env-var
tests (`python/tests/sync/env_vars/test_java.py`: `System.getProperty`) included."""

from __future__ import annotations

import pytest
from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

pytestmark = pytest.mark.root


def text(sbx: Sandbox, code: str, **options: object) -> str | None:
    if "context" not in options:
        options["language"] = "java"
    execution = sbx.run_code(code, **options)  # type: ignore[arg-type]
    assert execution.error is None, execution.error
    return execution.text


def test_values_as_ijava_shows_them(sbx: Sandbox) -> None:
    execution = sbx.run_code("1 + 1", language="java")
    assert execution.error is None and execution.text == "2"
    assert execution.results[0].is_main_result and execution.execution_count is not None
    assert text(sbx, '"a" + "b"') == "ab"  # a String is itself, unquoted
    assert text(sbx, "List.of(1, 2, 3)") == "[1, 2, 3]"  # jshell's default imports
    # Declarations, statements and void calls show nothing.
    assert sbx.run_code("int declared = 1;", language="java").results == []
    assert sbx.run_code("Math.abs(-1);\nif (declared > 0) {}", language="java").results == []


def test_state_persists_between_runs(sbx: Sandbox) -> None:
    text(sbx, "int counter = 10;")
    text(sbx, "counter += 5;")
    assert text(sbx, "counter") == "15"
    code = "record Point(int x, int y) {}\nint sum(Point p) { return p.x() + p.y(); }"
    assert text(sbx, code) is None
    assert text(sbx, "sum(new Point(counter, 27))") == "42"


def test_streaming_output(sbx: Sandbox) -> None:
    stdout, stderr = [], []
    code = (
        'System.out.println("out one");\nSystem.err.println("err one");\nprintf("%d-%s%n", 2, "x")'
    )
    execution = sbx.run_code(
        code, language="java", on_stdout=stdout.append, on_stderr=stderr.append
    )
    assert "".join(execution.logs.stdout) == "out one\n2-x\n"
    assert execution.logs.stderr == ["err one\n"]
    assert stdout[0].line == "out one\n" and stdout[0].timestamp
    assert [m.line for m in stderr] == ["err one\n"] and stderr[0].error


def test_errors(sbx: Sandbox) -> None:
    errors = []
    execution = sbx.run_code("int zero = 0;\n10 / zero", language="java", on_error=errors.append)
    assert execution.error is not None
    # As IJava names them: the exception's class is in the traceback.
    assert (execution.error.name, execution.error.value) == ("EvalException", "/ by zero")
    assert "java.lang.ArithmeticException: / by zero" in execution.error.traceback
    assert errors and errors[0].name == "EvalException"
    thrown = sbx.run_code('throw new IllegalStateException("boom")', language="java").error
    assert thrown is not None and thrown.value == "boom"
    assert "java.lang.IllegalStateException: boom" in thrown.traceback
    compiled = sbx.run_code("undefinedName + 1", language="java").error
    assert compiled is not None and compiled.name == "CompilationException"
    assert "cannot find symbol" in compiled.value and "undefinedName" in compiled.traceback
    # What follows a failing snippet does not run; the context goes on.
    sbx.run_code('int after = 1;\nInteger.parseInt("x");\nafter = 2;', language="java")
    assert text(sbx, "after") == "1"


def test_env_vars_sandbox_per_execution_and_overwrite(sbx: Sandbox) -> None:
    # E2B's java contexts have them as system properties; here System.getenv has them too.
    sandbox = 'System.getProperty("SANDBOX_VAR") + " " + System.getenv("SANDBOX_VAR")'
    assert text(sbx, sandbox) == "from create from create"
    run = 'System.getProperty("FOO", "default") + " " + System.getenv().getOrDefault("FOO", "-")'
    assert text(sbx, run, envs={"FOO": "bar"}) == "bar bar"
    assert text(sbx, run) == "default -"
    assert text(sbx, sandbox, envs={"SANDBOX_VAR": "overwrite"}) == "overwrite overwrite"
    assert text(sbx, sandbox) == "from create from create"
    quoted = 'it\'s "quoted" \\ é\n'
    assert text(sbx, 'System.getenv("QUOTED")', envs={"QUOTED": quoted}) == quoted


def test_child_processes_see_the_env_vars(sbx: Sandbox) -> None:
    # A child that Runtime.exec or a ProcessBuilder starts inherits the sandbox's variables
    # and the run's, as a child of the python kernel does (the last run).
    def child(name: str) -> str:
        command = f'new String[] {{"sh", "-c", "echo ${{{name}-unset}}"}}'
        return f"new String(Runtime.getRuntime().exec({command}).getInputStream().readAllBytes())"

    printenv = (
        'new String(new ProcessBuilder("printenv", "FOO").start().getInputStream().readAllBytes())'
    )
    assert text(sbx, child("SANDBOX_VAR")) == "from create\n"
    assert text(sbx, child("FOO"), envs={"FOO": "bar"}) == "bar\n"
    assert text(sbx, printenv, envs={"FOO": "via builder"}) == "via builder\n"
    assert text(sbx, child("FOO")) == "unset\n"  # the run's variables end with the run
    assert text(sbx, child("SANDBOX_VAR"), envs={"SANDBOX_VAR": "over"}) == "over\n"
    assert text(sbx, child("SANDBOX_VAR")) == "from create\n"
    python = sbx.run_code(
        "import subprocess\nsubprocess.run(['printenv', 'FOO'], capture_output=True).stdout",
        envs={"FOO": "bar"},
    )
    assert python.text == "b'bar\\n'"


def test_cwd_and_user(sbx: Sandbox) -> None:
    code = 'System.getProperty("user.dir") + " " + Path.of("f").toAbsolutePath()'
    assert text(sbx, code) == "/home/user /home/user/f"
    assert text(sbx, 'System.getProperty("user.name")') == "user"
    context = sbx.create_code_context(language="java", cwd="/tmp")
    try:
        assert text(sbx, code, context=context) == "/tmp /tmp/f"
        text(sbx, 'Files.writeString(Path.of("made-by-java.txt"), "hi");', context=context)
        assert sbx.files.read("/tmp/made-by-java.txt") == "hi"
    finally:
        sbx.remove_code_context(context)


def test_timeout_interrupts_and_next_run_works(sbx: Sandbox) -> None:
    text(sbx, "long ticks = 0;")
    with pytest.raises(TimeoutException):
        sbx.run_code("while (true) { ticks++; }", language="java", timeout=2)
    # The interrupted loop stopped, and the context still has its state.
    first = text(sbx, "ticks")
    assert first is not None and int(first) > 0
    assert text(sbx, "ticks") == first
    with pytest.raises(TimeoutException):
        sbx.run_code("Thread.sleep(600_000);", language="java", timeout=2)
    assert text(sbx, "1 + 1") == "2"


def test_java_context(sbx: Sandbox) -> None:
    context = sbx.create_code_context(language="java")
    assert context.language == "java" and context.cwd == "/home/user"
    try:
        assert context.id in {c.id for c in sbx.list_code_contexts()}
        # A context of its own, with the sandbox's env vars from its first run.
        text(sbx, "int inContext = 7;", context=context)
        assert text(sbx, "inContext * 6", context=context) == "42"
        assert text(sbx, 'System.getenv("SANDBOX_VAR")', context=context) == "from create"
        other = sbx.run_code("inContext", language="java").error
        assert other is not None and other.name == "CompilationException"
        sbx.restart_code_context(context)
        restarted = sbx.run_code("inContext", context=context).error
        assert restarted is not None and restarted.name == "CompilationException"
        assert text(sbx, 'System.getenv("SANDBOX_VAR")', context=context) == "from create"
        # System.exit ends the kernel: the run says so, and the context starts again.
        execution = sbx.run_code("System.exit(1);", context=context)
        assert execution.error is not None and execution.error.name == "ContextRestarting"
        assert text(sbx, "2 + 2", context=context) == "4"
    finally:
        sbx.remove_code_context(context)
    log = sbx.commands.run("cat /var/log/hearth-interpreter.log", user="root").stdout
    assert "Traceback" not in log
