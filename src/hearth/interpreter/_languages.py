"""The languages a context may run: their kernels' command lines, and the code each
language needs to set up a fresh kernel or to set and unset an environment variable."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hearth.interpreter import _deno

# Aliases the SDKs accept (spec §4.3); names are lower-cased and trimmed first.
ALIASES = {"js": "javascript", "ts": "typescript"}
STARTUP = Path(__file__).with_name("ipython_startup.py")
JAVA_KERNEL = Path(__file__).with_name("java") / "kernel.py"
# The python kernel's launcher: ipykernel's own, with its debugger off. ipykernel imports
# debugpy at start for the Jupyter debug protocol (~8 MiB per kernel, ~110 modules), which
# no E2B client can reach; `import debugpy` in user code still works afterwards.
# The cwd leaves sys.path first, as ipykernel_launcher has it (IPython puts it back).
PYTHON_LAUNCHER = (
    "import runpy, sys; sys.path[0] == '' and sys.path.pop(0); "
    "sys.modules['debugpy'] = None; import ipykernel.debugger; del sys.modules['debugpy']; "
    "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)"
)


def normalize(language: str | None) -> str:
    name = (language or "python").strip().lower() or "python"
    return ALIASES.get(name, name)


@dataclass(frozen=True)
class Language:
    name: str
    kernel: str  # the kernel that runs it: typescript runs on the javascript kernel
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    prelude: str = ""  # run (silently) before a fresh kernel's first execution

    def set_env(self, key: str, value: str) -> str:
        k, v = json.dumps(key), json.dumps(value)
        if self.kernel == "python":
            return f"__import__('os').environ[{k}] = {v}"
        if self.kernel == "javascript":
            return f"Deno.env.set({k}, {v});"
        if self.kernel == "r":
            return f"do.call(Sys.setenv, setNames(list({v}), {k}))"
        if self.kernel == "java":  # a JSON string is a Java literal, \uXXXX escapes too
            return f"hearth.Repl.setenv({k}, {v});"
        return f"export {key}={shlex.quote(value)}"

    def unset_env(self, key: str) -> str:
        k = json.dumps(key)
        if self.kernel == "python":
            return f"__import__('os').environ.pop({k}, None)"
        if self.kernel == "javascript":
            return f"Deno.env.delete({k});"
        if self.kernel == "r":
            return f"Sys.unsetenv({k})"
        if self.kernel == "java":
            return f"hearth.Repl.unsetenv({k});"
        return f"unset {key}"


def language(name: str) -> Language | None:
    """The language called `name` (normalized), or None if no kernel runs it."""
    python = sys.executable or "/usr/bin/python3"
    if name == "python":
        # NoColor: tracebacks as plain text, as E2B's kernel config has them.
        argv: tuple[str, ...] = (
            *(python, "-c", PYTHON_LAUNCHER, "-f", "{connection_file}"),
            *("--InteractiveShell.colors=NoColor", f"--IPKernelApp.exec_files={STARTUP}"),
        )
        return Language(name, "python", argv)
    if name in ("javascript", "typescript"):
        deno = shutil.which("deno") or "/usr/local/bin/deno"
        argv = (deno, "jupyter", "--kernel", "--conn", "{connection_file}")
        return Language(name, "javascript", argv, (("NO_COLOR", "1"),), _deno.PRELUDE)
    if name == "bash":
        return Language(name, "bash", (python, "-m", "bash_kernel", "-f", "{connection_file}"))
    if name == "r":
        argv = ("R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}")
        return Language(name, "r", argv)
    if name == "java":
        return Language(name, "java", (python, str(JAVA_KERNEL), "-f", "{connection_file}"))
    return None
