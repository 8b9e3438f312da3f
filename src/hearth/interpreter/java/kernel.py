"""Hearth's java kernel: a Jupyter kernel (ipykernel's `Kernel`) in front of one JShell.

    python3 kernel.py [--runner DIR] -f CONNECTION_FILE

The JShell runs in a JVM of its own (`Repl.java`, compiled into DIR at template build by
`build_command()`), started before ipykernel is imported so that the two start at once.
The kernel sends each cell to it on its stdin and reads its replies, JSON lines on a pipe
of their own (the JVM's stdout is its log), relaying them as IJava would: what the code
prints as `stream`s, the last snippet's value as `execute_result` (`text/plain`), a
failure as `error`.

An interrupt (SIGINT, from jupyter_client or ipykernel's interrupt_request) asks the JVM
to stop the running snippet; the JVM itself ignores SIGINT (it inherits the ignoring), so
a process-group signal leaves it alive. It ends with its stdin, when the kernel does, or
with the kernel's process group; should it end first (`System.exit`), so does the kernel,
and jupyter_client's restarter starts both again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

RUNNER_DIR = "/opt/hearth/java"
RUNNER_CLASS = "hearth.Repl"
JAR = "repl.jar"
FOREIGN = "jdk.incubator.foreign"
ARCHIVE = "repl.jsa"  # AppCDS: JShell's and javac's classes, mapped instead of loaded (~0.3 s)
JVM_OPTIONS = (
    # C1 only and the serial collector: javac warms up in half the time and the idle
    # JVM holds ~40% less memory; hot loops of the user's code run slower than with C2.
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseSerialGC",
    # A heap that starts small and grows as the code needs: sized from the host's memory
    # (a container sandbox sees all of it), the idle JVM held twice as much.
    "-Xms16m",
    # Repl.setenv reaches the map behind System.getenv(), and libc's setenv through the
    # foreign linker (incubating in JDK 17: the JVM prints a warning on its stderr, the log).
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    f"--add-modules={FOREIGN}",
    "--enable-native-access=ALL-UNNAMED",
    "-Dfile.encoding=UTF-8",  # what JDK 18 made the default, whatever the locale
)
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Repl.java")
READ_SIZE = 1 << 16


def _files(directory: str) -> tuple[str, str]:
    """The runner's jar and class archive in `directory` (the archive holds the jar's
    path, which must be the same string when it is used)."""
    return os.path.join(directory, JAR), os.path.join(directory, ARCHIVE)


def build_command(source: str, directory: str = RUNNER_DIR) -> str:
    """The shell command that compiles the runner into `directory` and dumps its class
    archive from a run that warms JShell up and ends (its stdin is empty)."""
    classes = os.path.join(directory, "classes")
    jar, archive = _files(directory)
    dump = shlex.join(
        ("java", *JVM_OPTIONS, f"-XX:ArchiveClassesAtExit={archive}", "-Xlog:cds=off")
        + ("-cp", jar, RUNNER_CLASS, "3")
    )
    return (
        f"mkdir -p {classes} && javac -encoding UTF-8 --add-modules {FOREIGN}"
        f" -d {classes} {shlex.quote(source)}"
        f" && jar cf {jar} -C {classes} . && rm -rf {classes}"
        f" && {dump} </dev/null 3>/dev/null"
    )


class Runner:
    """The JVM that runs JShell, and the two pipes to it."""

    def __init__(self, directory: str = RUNNER_DIR) -> None:
        java = shutil.which("java") or "/usr/bin/java"
        jar, archive = _files(directory)
        shared = (f"-XX:SharedArchiveFile={archive}",) if os.path.exists(archive) else ()
        requests, self._requests = os.pipe()
        self._replies, replies = os.pipe()
        # SIGINT is for this kernel: the JVM starts ignoring it, and keeps to that.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.process = subprocess.Popen(
                (java, *JVM_OPTIONS, *shared, "-cp", jar, RUNNER_CLASS, str(replies)),
                stdin=requests,
                pass_fds=(replies,),
            )
        finally:
            signal.signal(signal.SIGINT, previous)
            os.close(requests)
            os.close(replies)
        self._buffer = b""

    def run(self, code: str, on_stream: Callable[[str, str], None]) -> dict[str, Any] | None:
        """Evaluate `code`, calling `on_stream(name, text)` for what it prints; its reply
        (`result` or `error`), or None if the JVM ended. A SIGINT meanwhile stops it."""
        previous = signal.signal(signal.SIGINT, self._interrupted)
        try:
            data = code.encode("utf-8", "replace")  # a lone surrogate JSON let through
            # An interrupt must not write its request into the middle of this one.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                self._write(b"eval %d\n" % len(data) + data)
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            while True:
                message = self._read()
                if message is None or "done" in message:
                    return message
                if "stream" in message:
                    on_stream(message["stream"], message["text"])
        except BrokenPipeError:
            return None
        finally:
            signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        os.close(self._requests)  # the JVM ends at the end of its stdin
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _interrupted(self, signum: int, frame: Any) -> None:
        with contextlib.suppress(OSError):  # the JVM is gone: the run's read says so
            os.write(self._requests, b"stop\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._requests, view) :]

    def _read(self) -> dict[str, Any] | None:
        """The next reply line ({"ready"} lines skipped), or None at the pipe's end."""
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                message = json.loads(line)
                if "ready" not in message:
                    return message
                continue
            chunk = os.read(self._replies, READ_SIZE)
            if not chunk:
                return None
            self._buffer += chunk


def main() -> None:
    argv = sys.argv[1:]
    directory = RUNNER_DIR
    if argv[:1] == ["--runner"]:
        directory, argv = argv[1], argv[2:]
    runner = Runner(directory)

    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.kernelbase import Kernel

    class JavaKernel(Kernel):
        implementation = "hearth-java"
        implementation_version = "1.0"
        language = "java"
        language_version = "17"
        language_info = {
            "name": "java",
            "version": "17",
            "mimetype": "text/x-java-source",
            "file_extension": ".jshell",
            "codemirror_mode": "java",
            "pygments_lexer": "java",
        }
        banner = "Java (JShell)"

        async def do_execute(
            self,
            code: str,
            silent: bool,
            store_history: bool = True,
            user_expressions: Any = None,
            allow_stdin: bool = False,
        ) -> dict[str, Any]:
            def stream(name: str, text: str) -> None:
                if not silent:
                    self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

            reply = runner.run(code, stream)
            if reply is None:
                os._exit(1)  # the JVM ended (System.exit): the restarter starts both again
            count = self.execution_count
            error = reply.get("error")
            if error is not None:
                if not silent:
                    self.send_response(self.iopub_socket, "error", error)
                return {"status": "error", "execution_count": count, **error}
            if "result" in reply and not silent:
                content = {
                    "execution_count": count,
                    "data": {"text/plain": reply["result"]},
                    "metadata": {},
                }
                self.send_response(self.iopub_socket, "execute_result", content)
            return {"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}

        async def do_shutdown(self, restart: bool) -> dict[str, Any]:
            runner.close()
            return {"status": "ok", "restart": restart}

    IPKernelApp.launch_instance(argv=argv, kernel_class=JavaKernel)


if __name__ == "__main__":
    main()
