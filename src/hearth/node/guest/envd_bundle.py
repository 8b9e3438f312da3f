"""Build the relocatable envd bundle: interpreter, its libraries and loader, stdlib, envd.

Layout of the bundle directory (it works at any path; sandboxes see it at
`/opt/hearth/envd`):

    lib/ld-linux-x86-64.so.2      the dynamic loader envd is started through
    lib/*.so*                     every shared library the interpreter and the kept
                                  extension modules need (libc, libpython, libssl, ...)
    bin/python3.11                the project's base interpreter
    bin/python3.11._pth           sys.path, relative to bin/ (see below)
    lib/python3.11/               the trimmed standard library, precompiled
    site-packages/                hearth/__init__.py, hearth/envd, hearth/_proto and
                                  envd's third-party runtime dependencies

Nothing is read from the root filesystem it runs in: the loader is given the bundle's
`lib/` as its library path on the command line (not through LD_LIBRARY_PATH, which the
user's processes would inherit), and CPython 3.11 takes its whole sys.path from the
`._pth` file beside the executable. That file also switches the interpreter to isolated
mode (PYTHON* variables ignored, no `site`, no current directory on sys.path), so envd
needs no environment variable at all and has none to strip from its children.
"""

from __future__ import annotations

import argparse
import compileall
import hashlib
import importlib.metadata
import json
import os
import posixpath
import py_compile
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hearth.config import settings
from hearth.node.disk.cache import ensure_dir, progress, read_stamp

# Bump when the bundle's layout or build steps change in a way the inputs below miss.
RECIPE_VERSION = 1

PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
LOADER = "ld-linux-x86-64.so.2"

# The parts of hearth that run inside the sandbox, and what envd needs from PyPI.
HEARTH_PARTS = ("envd", "_proto")
# protobuf-py serves only the binary codec, which envd imports on the first binary request.
ENVD_DISTRIBUTIONS = ("inotify_simple", "protobuf-py", "protobuf-py-ext", "typing_extensions")

# Standard-library directories that no daemon imports: tests, GUIs, installers, build
# tooling (distutils), docs data. Matched by name at any depth (`test`, `tests`).
STDLIB_DROP_DIRS = frozenset(
    {
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "venv",
        "site-packages",
        "distutils",
    }
)
STDLIB_DROP_FILES = frozenset({"turtle.py"})
# Extension modules that are tests, GUIs, audio, or interactive-only and pull in large
# libraries (readline and curses: ncurses; nis: Kerberos). Prefixes of the file name.
DYNLOAD_DROP = (
    "_tkinter",
    "_test",
    "_ctypes_test",
    "_xx",
    "xx",
    "audioop",
    "ossaudiodev",
    "nis",
    "_curses",
    "readline",
)
# glibc dlopens libgcc_s for pthread_exit and thread cancellation (CPython ends threads
# with pthread_exit at shutdown); ldd cannot see that, and a busybox root has no copy.
EXTRA_LIBRARIES = ("libgcc_s.so.1",)
# Proof that the bundle works before it is stamped: the C modules envd may rely on; the
# smoke test also imports every module of hearth.envd, so a dropped stdlib module shows.
SMOKE_IMPORTS = ("asyncio", "ctypes", "hashlib", "select", "sqlite3", "ssl", "zlib")
SMOKE_TEST = """
import importlib, pkgutil, hearth.envd
for module in pkgutil.walk_packages(hearth.envd.__path__, "hearth.envd."):
    importlib.import_module(module.name)
"""


def default_bundle_dir() -> Path:
    """`build/envd-bundle` in a source checkout, else the envd bundle in Hearth's cache."""
    repo = Path(__file__).resolve().parents[4]
    if (repo / "pyproject.toml").is_file() and (repo / "src" / "hearth").is_dir():
        return repo / "build" / "envd-bundle"
    return settings().cache_dir / "envd-bundle"


def envd_command(bundle_dir_inside_root: str, host: str, port: int) -> list[str]:
    """The argv that starts envd from the bundle at `bundle_dir_inside_root`, no shell.

    The interpreter is run by the bundled loader rather than exec'd itself: its ELF
    header names `/lib64/ld-linux-x86-64.so.2`, which a template may lack or hold at an
    incompatible version. argv[0] of the interpreter stays `bin/python3.11`, which is
    where CPython looks for its `._pth` file.
    """
    return [
        *bundle_interpreter(bundle_dir_inside_root),
        "-I",
        "-m",
        "hearth.envd",
        "--host",
        host,
        "--port",
        str(port),
    ]


def bundle_interpreter(bundle_dir: str) -> list[str]:
    """The argv prefix that runs the bundle's Python at `bundle_dir` through its loader."""
    return [
        posixpath.join(bundle_dir, "lib", LOADER),
        "--library-path",
        posixpath.join(bundle_dir, "lib"),
        posixpath.join(bundle_dir, "bin", PYTHON),
    ]


def pid1_command(bundle_dir_inside_root: str) -> list[str]:
    """The argv of the minimal first process of a container whose envd the node's
    zygote forks in (`hearth/envd/pid1.py`): a script, so that it imports nothing."""
    script = posixpath.join(bundle_dir_inside_root, "site-packages", "hearth", "envd", "pid1.py")
    return [*bundle_interpreter(bundle_dir_inside_root), "-I", "-S", script]


def envd_environment(bundle_dir: str) -> dict[str, str]:
    """Environment variables envd itself needs from the bundle: none (see the module doc).

    So envd has no bundle variable to strip from its children's environment.
    """
    del bundle_dir  # the same answer for every location; the parameter keeps callers honest
    return {}


def ensure_bundle(dest: Path | None = None) -> Path:
    """Return the bundle directory, (re)building it if its inputs changed."""
    dest = dest or default_bundle_dir()
    sources = dict(_sources())
    stamp = _stamp(sources)
    if read_stamp(dest) == stamp:
        return dest
    return ensure_dir(dest, stamp, lambda tmp: _build(tmp, sources))


def _interpreter() -> Path:
    return Path(sys.base_prefix) / "bin" / PYTHON


def _stdlib() -> Path:
    # os.py lives in the base installation's stdlib even when running from a venv.
    return Path(os.__file__).parent


def _sources() -> Iterator[tuple[str, Path]]:
    """(path inside site-packages, file on disk) for everything envd brings along."""
    import hearth

    package = Path(hearth.__file__).parent
    yield "hearth/__init__.py", package / "__init__.py"
    for part in HEARTH_PARTS:
        for path in sorted((package / part).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                yield path.relative_to(package.parent).as_posix(), path
    for name in ENVD_DISTRIBUTIONS:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            relative = file.as_posix()
            if relative.startswith("..") or ".dist-info/" in relative or "__pycache__" in relative:
                continue
            yield relative, Path(str(dist.locate_file(file)))


def _stamp(sources: dict[str, Path]) -> str:
    """Digest of every input: interpreter identity, copied sources, this recipe."""
    digest = hashlib.sha256()
    interpreter = _interpreter().resolve()
    libpython = Path(sys.base_prefix) / "lib" / f"lib{PYTHON}.so.1.0"
    identity = {
        "recipe": RECIPE_VERSION,
        "interpreter": str(interpreter),
        "version": sys.version,
        "binaries": [
            (str(p), p.stat().st_size, p.stat().st_mtime_ns)
            for p in (interpreter, libpython)
            if p.exists()
        ],
        "drop": [sorted(STDLIB_DROP_DIRS), sorted(STDLIB_DROP_FILES), DYNLOAD_DROP],
        "extra": EXTRA_LIBRARIES,
    }
    digest.update(json.dumps(identity, sort_keys=True).encode())
    for relative, path in sorted(sources.items()):
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _build(root: Path, sources: dict[str, Path]) -> None:
    started = time.monotonic()
    progress(f"building the envd bundle ({PYTHON} from {sys.base_prefix})")
    (root / "bin").mkdir()
    shutil.copy2(_interpreter().resolve(), root / "bin" / PYTHON)
    (root / "bin" / f"{PYTHON}._pth").write_text(
        "# sys.path of the bundled interpreter, relative to this file. Its presence also\n"
        "# makes the interpreter isolated (no PYTHON* variables, no site, no cwd).\n"
        f"../lib/{PYTHON}\n../lib/{PYTHON}/lib-dynload\n../site-packages\n"
    )
    stdlib = root / "lib" / PYTHON
    _copy_stdlib(_stdlib(), stdlib)
    site = root / "site-packages"
    for relative, path in sources.items():
        target = site / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    progress("envd bundle: collecting shared libraries (ldd)")
    extensions = sorted((stdlib / "lib-dynload").glob("*.so"))
    packaged = sorted(site.rglob("*.so"))  # extension modules of envd's dependencies
    _copy_libraries([root / "bin" / PYTHON, *extensions, *packaged], root / "lib")
    _strip_debug_info([*(root / "lib").glob("libpython*"), *extensions])
    progress("envd bundle: precompiling the standard library and envd")
    for tree in (stdlib, site):
        # Unchecked hash-based pycs: imports never stat the source to validate them, and
        # nothing tries to rewrite them on the read-only mount.
        ok = compileall.compile_dir(
            tree,
            quiet=1,
            workers=0,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        if not ok:
            raise RuntimeError(f"compileall failed in {tree}")
    _smoke_test(root)
    size = sum(p.lstat().st_size for p in root.rglob("*") if p.is_file())
    progress(f"envd bundle ready: {size / 2**20:.1f} MiB in {time.monotonic() - started:.1f} s")


def _copy_stdlib(source: Path, dest: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        dropped = set()
        for name in names:
            if (
                name in STDLIB_DROP_DIRS
                or name in STDLIB_DROP_FILES
                or name.startswith("config-")
                or name.endswith((".pyc", ".exe"))
                or (Path(directory).name == "lib-dynload" and name.startswith(DYNLOAD_DROP))
            ):
                dropped.add(name)
        return dropped

    shutil.copytree(source, dest, ignore=ignore, symlinks=False)


_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(\S+)\s+\(0x[0-9a-f]+\)\s*$")


def _copy_libraries(binaries: list[Path], lib_dir: Path) -> None:
    """Copy into `lib_dir` the loader and every library `binaries` need, transitively."""
    found: dict[str, Path] = {}
    pending = list(binaries)
    scanned: set[Path] = set()
    while pending:
        batch = [p for p in pending if p not in scanned]
        pending = []
        if not batch:
            break
        scanned.update(batch)
        for name, path in _ldd(batch):
            if name not in found:
                found[name] = path
                pending.append(path)
        libc_dir = found["libc.so.6"].parent
        for extra in EXTRA_LIBRARIES:
            if extra not in found:
                found[extra] = libc_dir / extra
                pending.append(libc_dir / extra)
    for name, path in sorted(found.items()):
        shutil.copy2(path.resolve(), lib_dir / name)


def _ldd(binaries: list[Path]) -> Iterator[tuple[str, Path]]:
    """(name to install as, file) for each library ldd reports for `binaries`."""
    out = subprocess.run(
        ["ldd", *map(str, binaries)], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        if "not found" in line:
            raise RuntimeError(f"a library of the envd bundle is missing: {line.strip()}")
        m = _LDD_LINE.match(line)
        if not m:
            continue
        soname, path = m.groups()
        if soname is None:  # the loader line: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            if path.endswith(LOADER):
                yield LOADER, Path(path)
        elif path.startswith("/"):  # not the vDSO
            yield soname, Path(path)


def _strip_debug_info(files: list[Path]) -> None:
    # pyenv builds keep DWARF in libpython (23 MiB of 26): every sandbox would map it.
    strip = shutil.which("strip")
    if strip and files:
        subprocess.run([strip, "--strip-debug", *map(str, files)], check=True)


def _smoke_test(root: Path) -> None:
    command = envd_command(str(root), "127.0.0.1", 0)[:5] + [
        "-c",
        f"import {', '.join(SMOKE_IMPORTS)}\n{SMOKE_TEST}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={}, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"the envd bundle does not start:\n{done.stderr}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hearth.node.guest.envd_bundle", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dest", type=Path, help="bundle directory (default: %(default)s)")
    parser.set_defaults(dest=None)
    args = parser.parse_args(argv)
    print(ensure_bundle(args.dest))


if __name__ == "__main__":
    main()
