"""The java kernel without a sandbox: its language entry and env-var code, and its JShell
runner (`Repl.java`, built by `build_command()`, driven by `kernel.Runner`) on this
machine's JDK 17, when it has one (`apt-get install openjdk-17-jdk-headless`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.interpreter._languages import language
from hearth.interpreter.java.kernel import SOURCE, Runner, build_command


def test_language_entry_and_env_code() -> None:
    java = language("java")
    assert java is not None and java.kernel == "java"
    assert java.argv[1].endswith("interpreter/java/kernel.py")
    # JSON strings are Java literals: quotes, backslashes, newlines and \u escapes.
    assert java.set_env("K", 'a "b" \\ é\n') == r'hearth.Repl.setenv("K", "a \"b\" \\ \u00e9\n");'
    assert java.unset_env("K") == 'hearth.Repl.unsetenv("K");'


def _jdk17() -> bool:
    if not all(shutil.which(tool) for tool in ("java", "javac", "jar")):
        return False
    version = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    return 'version "17.' in version


@pytest.fixture(scope="module")
def runner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _jdk17():
        pytest.skip("no JDK 17 (java, javac, jar) on PATH")
    directory = tmp_path_factory.mktemp("java-runner")
    subprocess.run(["bash", "-c", build_command(SOURCE, str(directory))], check=True)
    assert (directory / "repl.jar").is_file() and (directory / "repl.jsa").is_file()
    return directory


@pytest.fixture(scope="module")
def runner(runner_dir: Path) -> Iterator[Runner]:
    runner = Runner(str(runner_dir))
    try:
        yield runner
    finally:
        runner.close()


def run(runner: Runner, code: str) -> tuple[dict, list[tuple[str, str]]]:
    streams: list[tuple[str, str]] = []
    reply = runner.run(code, lambda name, text: streams.append((name, text)))
    assert reply is not None
    return reply, streams


def test_values_and_state(runner: Runner) -> None:
    assert run(runner, "1 + 1")[0] == {"done": True, "result": "2"}
    assert run(runner, '"a string"')[0]["result"] == "a string"  # as IJava: no quotes
    assert "result" not in run(runner, "int counter = 10;")[0]  # declarations show nothing
    run(runner, "counter += 5;")
    code = "record Point(int x, int y) {}\nint sum(Point p) { return p.x() + p.y(); }"
    assert "error" not in run(runner, code)[0]
    assert run(runner, "sum(new Point(counter, 1))")[0]["result"] == "16"
    assert "result" not in run(runner, "null")[0]


def test_output_streams(runner: Runner) -> None:
    code = 'System.out.print("héllo ✓ "); System.err.println("to err"); printf("%d-%s%n", 1, "a")'
    reply, streams = run(runner, code)
    assert "".join(text for name, text in streams if name == "stdout") == "héllo ✓ 1-a\n"
    assert [text for name, text in streams if name == "stderr"] == ["to err\n"]


def test_errors_as_ijava_names_them(runner: Runner) -> None:
    error = run(runner, "int zero = 0;\n10 / zero")[0]["error"]
    assert (error["ename"], error["evalue"]) == ("EvalException", "/ by zero")
    assert error["traceback"][0] == "java.lang.ArithmeticException: / by zero\n"
    error = run(runner, "String nothing = null;\nnothing.length()")[0]["error"]
    assert 'because "nothing" is null' in error["evalue"]  # JShell's REPL.$JShell$N. gone
    error = run(runner, "undefinedName + 1")[0]["error"]
    assert error["ename"] == "CompilationException"
    assert error["evalue"].startswith("cannot find symbol")
    assert error["traceback"][:2] == ["undefinedName + 1\n", "^" + "~" * 12 + "\n"]
    error = run(runner, "for (int i = 0; i < 3; i++) {")[0]["error"]
    assert error["ename"] == "IncompleteSourceException"
    run(runner, "void later() { notYet(); }")
    error = run(runner, "later()")[0]["error"]
    assert error["ename"] == "UnresolvedReferenceException" and "notYet()" in error["evalue"]
    # The snippets after a failing one do not run.
    run(runner, 'int after = 1;\nInteger.parseInt("x");\nafter = 2;')
    assert run(runner, "after")[0]["result"] == "1"


def test_env_code_sets_properties_and_environment(runner: Runner) -> None:
    java = language("java")
    assert java is not None
    value = 'it\'s "quoted" \\ é'
    assert run(runner, java.set_env("HEARTH_TEST", value))[0] == {"done": True}
    code = 'System.getProperty("HEARTH_TEST") + "|" + System.getenv("HEARTH_TEST")'
    assert run(runner, code)[0]["result"] == f"{value}|{value}"
    # Children see it whether or not their environment() was asked for: a ProcessBuilder's
    # environment() starts from System.getenv(), a plain start or Runtime.exec inherits the
    # process's own environment.
    output = "new String({}.getInputStream().readAllBytes())"
    asked = 'var pb = new ProcessBuilder("printenv", "HEARTH_TEST"); pb.environment();'
    run(runner, asked)
    assert run(runner, output.format("pb.start()"))[0]["result"] == value + "\n"
    plain = output.format('new ProcessBuilder("printenv", "HEARTH_TEST").start()')
    assert run(runner, plain)[0]["result"] == value + "\n"
    shell = (
        'Runtime.getRuntime().exec(new String[] {"sh", "-c", "echo \\"[${HEARTH_TEST-unset}]\\""})'
    )
    assert run(runner, output.format(shell))[0]["result"] == f"[{value}]\n"
    run(runner, java.unset_env("HEARTH_TEST"))
    assert run(runner, code)[0]["result"] == "null|null"
    assert run(runner, output.format(shell))[0]["result"] == "[unset]\n"
    # A name the environment cannot hold stays a property, and leaves the environment be.
    run(runner, java.set_env("HEARTH=BAD", "x"))
    assert run(runner, 'System.getProperty("HEARTH=BAD")')[0]["result"] == "x"
    environment = run(runner, output.format('new ProcessBuilder("env").start()'))[0]["result"]
    assert "HEARTH=BAD" not in environment and "HEARTH_TEST" not in environment


def test_sigint_stops_the_run(runner: Runner) -> None:
    run(runner, "long ticks = 0;")

    def interrupt(name: str, text: str) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # as jupyter_client interrupts the kernel

    code = 'System.out.println("started");\nwhile (true) { ticks++; }'
    reply = runner.run(code, interrupt)
    assert reply is not None and reply["error"]["ename"] == "EvaluationInterruptedException"
    assert run(runner, "Thread.currentThread().getName()")[0]["result"] == "main"
    assert run(runner, '"after"')[0]["result"] == "after"


def test_system_exit_ends_the_runner(runner_dir: Path) -> None:
    runner = Runner(str(runner_dir))
    try:
        assert runner.run("System.exit(3);", lambda name, text: None) is None
        assert runner.process.wait() == 3
    finally:
        runner.close()
