"""The `code-interpreter` root: the `base` root plus Jupyter kernels, the data stack and
Hearth's interpreter server (`hearth.interpreter`), in two cached layers.

- The **stack** (`code-interpreter-stack-KEY`): a copy of the finished `base` root with
  R and its Jupyter kernel from Debian, and the pinned Python packages of
  `code_interpreter_requirements.txt` (ipykernel, bash_kernel, deno, e2b-charts, numpy,
  pandas, matplotlib, ...) installed system-wide with the root's own pip. The root's
  EXTERNALLY-MANAGED marker is removed so a user's `!pip install` works as in E2B's
  image. Its key hashes the base root's key and that package list: minutes to build.
- The **server layer** (`code-interpreter-KEY`): a hard-link copy of the stack (a
  second or two, no extra space) with the interpreter server's source added under
  `/opt/hearth/interpreter`. Its key adds the server's source hash, so editing the
  server rebuilds only this layer. New files only: a hard-linked file is never written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from hearth.node.disk.cache import ensure_dir, progress, read_stamp, remove_unmounted
from hearth.node.guest.start_command import StartCommand

# Bump when the build steps change in a way the inputs below miss.
RECIPE_VERSION = 1

REQUIREMENTS = Path(__file__).with_name("code_interpreter_requirements.txt")
# R and IRkernel from Debian (CRAN's binaries are not on the archive).
APT_PACKAGES = ("r-cran-irkernel",)
PYTHON = "python3.11"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Where the server lives inside the root; `python3 -m hearth.interpreter` from there.
SERVER_DIR = "opt/hearth/interpreter"
SERVER_SOURCE = Path(__file__).parents[2] / "interpreter"
SERVER_LAYER = re.compile(r"code-interpreter-[0-9a-f]{16}")
INTERPRETER_PORT = 49999
# The server, started as root in every sandbox and started again if it ever exits; it
# answers /health once the default python kernel is warm.
START_COMMAND = StartCommand(
    f"cd /{SERVER_DIR} && while :; do /usr/bin/python3 -m hearth.interpreter"
    " >>/var/log/hearth-interpreter.log 2>&1; sleep 1; done",
    ready_port=INTERPRETER_PORT,
)


def ensure_code_interpreter_root(base_root: Path, cache_dir: Path) -> Path:
    """The finished root (both layers), building what is missing."""
    roots = cache_dir / "roots"
    base_key = read_stamp(base_root.parent) or base_root.parent.name
    requirements = REQUIREMENTS.read_bytes()
    stack_key = _key(base=base_key, apt=APT_PACKAGES, pip=hashlib.sha256(requirements).hexdigest())
    stack = roots / f"code-interpreter-stack-{stack_key}"
    ensure_dir(stack, stack_key, lambda tmp: _build_stack(tmp, base_root))
    server_key = _key(stack=stack_key, server=_source_digest())
    entry = roots / f"code-interpreter-{server_key}"
    ensure_dir(entry, server_key, lambda tmp: _add_server(tmp, stack / "rootfs"))
    return entry / "rootfs"


def _prune_server_layers(roots: Path, keep: str) -> None:
    """Delete the server layers of earlier server sources that no sandbox has mounted
    (each edit of the server makes a new one; they cost inodes, not data)."""
    layers = roots.glob("code-interpreter-*")
    remove_unmounted([p for p in layers if SERVER_LAYER.fullmatch(p.name) and p.name != keep])


def _key(**inputs: object) -> str:
    text = repr(sorted({"version": RECIPE_VERSION, **inputs}.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in _server_files():
        digest.update(str(path.relative_to(SERVER_SOURCE)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _server_files() -> list[Path]:
    return sorted(
        p for p in SERVER_SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _build_stack(entry: Path, base_root: Path) -> None:
    from hearth.node.disk.rootfs import _apt_install

    started = time.monotonic()
    root = entry / "rootfs"
    progress(f"building the code-interpreter root in {entry.parent} (several minutes)")
    subprocess.run(["cp", "-a", "--reflink=auto", str(base_root), str(root)], check=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    # The build resolves names like the host does; the root keeps the file it had.
    resolv = root / "etc" / "resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    if Path("/etc/resolv.conf").is_file():
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        _apt_install(root, APT_PACKAGES, env)
        for marker in (root / "usr" / "lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        _pip_install(root, env, entry.parent.parent / "pip")
    finally:
        if saved is not None:
            resolv.write_bytes(saved)
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for item in (root / cache).glob("*"):
            if item.is_file():
                item.unlink()
    progress(f"code-interpreter root ready in {time.monotonic() - started:.0f} s")


def _pip_install(root: Path, env: dict[str, str], pip_cache: Path) -> None:
    """pip inside the root (its python, system-wide), with a download cache kept on the
    host so a rebuild does not fetch every wheel again."""
    count = sum(1 for line in REQUIREMENTS.read_text().splitlines() if "==" in line)
    progress(f"installing {count} Python packages into the root with pip (a few minutes)")
    pip_cache.mkdir(parents=True, exist_ok=True)
    inside = root / "root" / ".cache" / "pip"
    inside.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REQUIREMENTS, root / "tmp" / "requirements.txt")
    # The host's trust store, which knows any TLS-inspecting proxy the host goes through.
    cert = ""
    if Path(HOST_CA_BUNDLE).is_file():
        shutil.copyfile(HOST_CA_BUNDLE, root / "tmp" / "host-ca.crt")
        cert = " --cert /tmp/host-ca.crt"
    script = (
        f"mount --bind {pip_cache} {inside} && mount -t proc proc {root}/proc && "
        f"chroot {root} {PYTHON} -m pip install -q --no-warn-script-location"
        f" --root-user-action=ignore --no-deps{cert} -r /tmp/requirements.txt"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script],
        env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
    )
    (root / "tmp" / "requirements.txt").unlink()
    (root / "tmp" / "host-ca.crt").unlink(missing_ok=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).splitlines()[-20:]
        raise RuntimeError(f"pip install failed ({done.returncode}):\n" + "\n".join(tail))


def _add_server(entry: Path, stack_root: Path) -> None:
    _prune_server_layers(entry.parent, keep=entry.name)
    root = entry / "rootfs"
    subprocess.run(["cp", "-al", str(stack_root), str(root)], check=True)
    target = root / SERVER_DIR / "hearth"
    (target / "interpreter").mkdir(parents=True)
    (target / "__init__.py").write_text('"""Hearth\'s interpreter server, in a sandbox."""\n')
    for path in _server_files():
        dest = target / "interpreter" / path.relative_to(SERVER_SOURCE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    for directory, _, files in os.walk(root / SERVER_DIR):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
