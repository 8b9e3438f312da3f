"""A real OCI registry on loopback, and images made from directory trees, for tests and
benchmarks of image pulls without the internet.

`Registry` runs Debian's `docker-registry` (the CNCF distribution registry) on
127.0.0.1 at a free port, with its storage in a temporary directory and optional htpasswd
users. `push_directory` turns a directory into a one-layer OCI image with umoci and copies
it in with skopeo; `push_with_whiteout` adds layers that delete paths of the first, and
`push_multiarch` an index of several architectures. Pushing needs root (umoci must read
every file of the tree, /root included, and records real owners).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REGISTRY_BINARY = "/usr/bin/docker-registry"
# bcrypt's cheapest cost: the registry checks the hash on every request, and these are
# throwaway test passwords.
COST = 4

CONFIG = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: {host}
"""

AUTH = """\
auth:
  htpasswd:
    realm: hearth-test
    path: {htpasswd}
"""


class Registry:
    """A docker-registry process on 127.0.0.1:PORT; `with Registry() as r:` or start/stop."""

    def __init__(self, users: Mapping[str, str] | None = None) -> None:
        self.users = dict(users or {})
        self.host = ""  # 127.0.0.1:PORT once started
        self._dir: Path | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def creds(self) -> tuple[str, str] | None:
        """The first user's (username, password), to push into an authenticated registry."""
        return next(iter(self.users.items()), None)

    def reference(self, name: str) -> str:
        """`name` (like library/busybox:1) at this registry, as `docker pull` spells it."""
        return f"{self.host}/{name}"

    def start(self) -> Registry:
        self._dir = Path(tempfile.mkdtemp(prefix="hearth-registry-"))
        try:
            # A free port can be taken between probing and binding: try a few.
            for _ in range(5):
                if self._launch(_free_port()):
                    return self
            raise RuntimeError(f"docker-registry would not start: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _launch(self, port: int) -> bool:
        assert self._dir is not None
        self.host = f"127.0.0.1:{port}"
        storage = self._dir / "storage"
        storage.mkdir(exist_ok=True)
        config = CONFIG.format(storage=storage, host=self.host)
        if self.users:
            htpasswd = self._dir / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in self.users.items()))
            config += AUTH.format(htpasswd=htpasswd)
        (self._dir / "config.yml").write_text(config)
        with (self._dir / "registry.log").open("wb") as log:
            self._process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self._dir / "config.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self._wait_ready()

    def _wait_ready(self) -> bool:
        """Poll GET /v2/ until it answers (401 counts: auth is on) or the process exits."""
        assert self._process is not None
        while self._process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/"):
                    return True
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        self._process = None
        return False

    def _log_tail(self) -> str:
        log = self._dir / "registry.log" if self._dir else None
        if log and log.exists():
            return "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- htpasswd -----------------------------------------------------------------------------


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for docker-registry's htpasswd (it accepts no other scheme).

    Tries Python's bcrypt, then `htpasswd -B` (apache2-utils), then the C library's
    crypt(3) through the stdlib `crypt` module (Python < 3.13; libxcrypt does bcrypt).
    """
    with contextlib.suppress(ImportError):
        import bcrypt  # type: ignore[import-not-found]

        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=COST)).decode()
    htpasswd = shutil.which("htpasswd")
    if htpasswd:
        done = subprocess.run(
            [htpasswd, "-nbB", "-C", str(COST), "u", password],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip().split(":", 1)[1]
    hashed = _crypt_bcrypt(password)
    if hashed:
        return hashed
    raise RuntimeError("no bcrypt available (pip install bcrypt, or apt-get install apache2-utils)")


def _crypt_bcrypt(password: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            return None
    try:
        hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=2**COST))
    except (OSError, ValueError):
        return None
    return hashed if hashed and hashed.startswith("$2") else None


def auth_available() -> str | None:
    """None if htpasswd users can be made here, else why not (for a skip reason)."""
    try:
        bcrypt_hash("probe")
    except (RuntimeError, subprocess.CalledProcessError) as e:
        return str(e)
    return None


# --- images -------------------------------------------------------------------------------


def _run(*command: str | os.PathLike) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stderr.strip()}")
    return done.stdout


def make_layout(
    root: Path,
    image: str,
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    cmd: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    architecture: str | None = None,
) -> None:
    """An OCI image `image` (LAYOUT:TAG) with `root` as its one layer and the given config."""
    layout = image.rsplit(":", 1)[0]
    if not (Path(layout) / "index.json").exists():
        _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", image)
    _run("umoci", "insert", "--no-history", "--image", image, root, "/")
    config: list[str] = []
    for key, value in (env or {}).items():
        config += ["--config.env", f"{key}={value}"]
    if workdir:
        config += ["--config.workingdir", workdir]
    if user:
        config += ["--config.user", user]
    for arg in cmd or ():
        config += ["--config.cmd", arg]
    for arg in entrypoint or ():
        config += ["--config.entrypoint", arg]
    if architecture:
        config += ["--architecture", architecture]
    if config:
        _run("umoci", "config", "--no-history", "--image", image, *config)


def add_layer(image: str, *, add: Path | None = None, delete: Sequence[str] = ()) -> None:
    """Layers on top of `image`: the tree `add` at /, then a whiteout for each `delete` path."""
    if add is not None:
        _run("umoci", "insert", "--no-history", "--image", image, add, "/")
    for path in delete:
        _run("umoci", "insert", "--no-history", "--image", image, "--whiteout", path)


def push_layout(image: str, reference: str, creds: tuple[str, str] | None = None) -> str:
    """skopeo copy of the OCI image `image` (LAYOUT:TAG) to the registry `reference`
    (HOST:PORT/NAME:TAG, plain HTTP); returns the pushed manifest's digest."""
    layout = image.rsplit(":", 1)[0]
    _run("umoci", "gc", "--layout", layout)  # umoci config leaves the old config behind
    with tempfile.TemporaryDirectory() as scratch:
        digestfile = Path(scratch) / "digest"
        command = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
        command += ["--digestfile", str(digestfile)]
        if creds:  # test credentials: argv is fine here
            command += ["--dest-creds", f"{creds[0]}:{creds[1]}"]
        _run(*command, f"oci:{image}", f"docker://{reference}")
        return digestfile.read_text().strip()


def push_directory(
    root: Path,
    reference: str,
    *,
    env: dict | None = None,
    workdir: str | None = None,
    user: str | None = None,
    cmd: list[str] | None = None,
    creds: tuple[str, str] | None = None,
) -> str:
    """Push the tree `root` as a one-layer image to `reference` (HOST:PORT/NAME:TAG)."""
    with _layout() as layout:
        make_layout(root, f"{layout}:image", env=env, workdir=workdir, user=user, cmd=cmd)
        return push_layout(f"{layout}:image", reference, creds)


def push_with_whiteout(
    root: Path,
    reference: str,
    *,
    delete: Sequence[str],
    add: Path | None = None,
    env: dict | None = None,
    creds: tuple[str, str] | None = None,
) -> str:
    """Push `root` as the first layer, then `add` and whiteouts of `delete` as later layers."""
    with _layout() as layout:
        make_layout(root, f"{layout}:image", env=env)
        add_layer(f"{layout}:image", add=add, delete=delete)
        return push_layout(f"{layout}:image", reference, creds)


def push_multiarch(roots: Mapping[str, Path], reference: str) -> str:
    """Push an image index with one linux image per architecture (amd64, arm64, ...)."""
    with _layout() as layout:
        entries = []
        for arch, root in roots.items():
            make_layout(root, f"{layout}:{arch}", architecture=arch)
        index = json.loads((layout / "index.json").read_text())
        for entry in index["manifests"]:
            arch = entry["annotations"]["org.opencontainers.image.ref.name"]
            platform = {"architecture": arch, "os": "linux"}
            entries.append(
                {k: entry[k] for k in ("mediaType", "digest", "size")} | {"platform": platform}
            )
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": entries,
            }
        ).encode()
        digest = hashlib.sha256(body).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(body)
        index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": f"sha256:{digest}",
                "size": len(body),
                "annotations": {"org.opencontainers.image.ref.name": "index"},
            }
        )
        (layout / "index.json").write_text(json.dumps(index))
        with tempfile.TemporaryDirectory() as scratch:
            digestfile = Path(scratch) / "digest"
            _run(
                "skopeo", "--insecure-policy", "copy", "--quiet", "--all",
                "--dest-tls-verify=false", "--digestfile", digestfile,
                f"oci:{layout}:index", f"docker://{reference}",
            )  # fmt: skip
            return digestfile.read_text().strip()


@contextlib.contextmanager
def _layout() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hearth-layout-") as scratch:
        yield Path(scratch) / "layout"
