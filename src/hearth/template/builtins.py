"""The templates every installation has, written as recipes like any user's.

- `busybox` and `debian`: the built-in roots (for envd alone and the node's tests).
- `base`: what `Sandbox.create()` starts, as in E2B's base image: Debian with python3
  (also as `python`), pip, venv, nodejs, npm, git, curl and sudo for `user`.
- `code-interpreter-v1`: `base` plus Jupyter kernels (ipykernel, bash_kernel, deno,
  IRkernel, Hearth's java kernel on Debian's JDK 17), the pinned data stack and Hearth's
  interpreter server on port 49999, started by the template's start command. Its files
  (the package list, the server's source, the java kernel's runner) are copied in from
  this installation, as a user's COPY copies uploaded files.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from hearth.interpreter.java import kernel as java_kernel
from hearth.template.recipe import Base, Recipe, RootKind, Step

BASE = "base"
CODE_INTERPRETER = "code-interpreter-v1"
ROOTS: tuple[RootKind, ...] = ("busybox", "debian")

# python-is-python3: `python` is python3, as in E2B's base image (a python:3 image).
BASE_PACKAGES = (
    "python3-pip",
    "python3-venv",
    "python-is-python3",
    "nodejs",
    "npm",
    "git",
    "curl",
    "ca-certificates",
    "iproute2",  # `ss`: the SDKs' wait_for_port ready command
    "procps",  # ps, top, free
)
# R and IRkernel from Debian (CRAN's binaries are not on the archive).
INTERPRETER_APT = ("r-cran-irkernel",)
# The java kernel's JVM, javac and JShell; its runner is compiled in the template.
JAVA_APT = ("openjdk-17-jdk-headless",)
JAVA_SOURCE = Path(java_kernel.SOURCE)
REQUIREMENTS = Path(__file__).with_name("code_interpreter_requirements.txt")
SERVER_SOURCE = Path(__file__).parents[1] / "interpreter"
SERVER_DIR = "/opt/hearth/interpreter"
INTERPRETER_PORT = 49999

_APT = (
    "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q install -y"
    " --no-install-recommends {packages}"
    # Package caches are dead weight in a template's layer.
    " && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin"
)


def names() -> tuple[str, ...]:
    return (*ROOTS, BASE, CODE_INTERPRETER)


def recipe(name: str, files_dir: Path) -> Recipe:
    """The recipe of built-in template `name`; the files it copies are written (once,
    by content) under `files_dir`."""
    if name in ROOTS:
        return Recipe(base=Base(root=name))
    if name == BASE:
        return Recipe(
            base=Base(root="debian"),
            steps=(Step("RUN", (_APT.format(packages=" ".join(BASE_PACKAGES)), "root")),),
            cpu_count=2,
            memory_mb=512,
        )
    if name == CODE_INTERPRETER:
        return _code_interpreter(files_dir)
    raise KeyError(name)


def _code_interpreter(files_dir: Path) -> Recipe:
    requirements = _tar(files_dir, {"requirements.txt": REQUIREMENTS.read_bytes()})
    server = {"hearth/__init__.py": b'"""Hearth\'s interpreter server, in a sandbox."""\n'}
    for path in sorted(SERVER_SOURCE.rglob("*.py")):
        server[f"hearth/interpreter/{path.relative_to(SERVER_SOURCE)}"] = path.read_bytes()
    source = _tar(files_dir, server)
    java_source = _tar(files_dir, {"Repl.java": JAVA_SOURCE.read_bytes()})
    runner_source = f"{java_kernel.RUNNER_DIR}/Repl.java"
    pip = (
        "python3 -m pip install -q --no-warn-script-location --root-user-action=ignore"
        " --no-deps -r /tmp/hearth-requirements.txt && rm /tmp/hearth-requirements.txt"
        " && rm -rf /root/.cache/pip"
    )
    # The server runs as root (it starts each kernel) and is started again should it
    # exit; sudo keeps the sandbox's environment for it. Ready once /health answers:
    # the default python kernel is warm.
    start = (
        f"sudo --preserve-env bash -c 'cd {SERVER_DIR} && while :; do /usr/bin/python3 -m"
        " hearth.interpreter >>/var/log/hearth-interpreter.log 2>&1; sleep 1; done'"
    )
    ready = (
        f'curl -s -o /dev/null -w "%{{http_code}}" http://localhost:{INTERPRETER_PORT}/health'
        " | grep -q 200"
    )
    return Recipe(
        base=Base(template=BASE),
        steps=(
            Step("RUN", (_APT.format(packages=" ".join(INTERPRETER_APT)), "root")),
            # A user's `!pip install` works as in E2B's image.
            Step("RUN", ("rm -f /usr/lib/python3*/EXTERNALLY-MANAGED", "root")),
            Step(
                "COPY",
                ("requirements.txt", "/tmp/hearth-requirements.txt", "root", ""),
                files_hash=requirements,
            ),  # fmt: skip
            Step("RUN", (pip, "root")),
            Step("RUN", (_APT.format(packages=" ".join(JAVA_APT)), "root")),
            Step("COPY", ("Repl.java", runner_source, "root", ""), files_hash=java_source),
            Step("RUN", (java_kernel.build_command(runner_source), "root")),
            # Last, so that editing the server rebuilds only this layer.
            Step("COPY", ("hearth", f"{SERVER_DIR}/hearth", "root", ""), files_hash=source),
        ),
        start_cmd=start,
        ready_cmd=ready,
        cpu_count=2,
        memory_mb=1024,
        host_files={
            requirements: str(files_dir / requirements),
            java_source: str(files_dir / java_source),
            source: str(files_dir / source),
        },
    )


def _tar(files_dir: Path, files: dict[str, bytes]) -> str:
    """A tar of `files` (path -> content) under `files_dir`, named by its content."""
    digest = hashlib.sha256()
    for path, content in sorted(files.items()):
        digest.update(path.encode() + b"\0" + content + b"\0")
    name = digest.hexdigest()
    target = files_dir / name
    if not target.is_file():
        files_dir.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            directories = {p for path in files for p in _parents(path)}
            for directory in sorted(directories):
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for path, content in sorted(files.items()):
                info = tarfile.TarInfo(path)
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.rename(target)
    return name


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
