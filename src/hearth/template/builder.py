"""The builder: turns a recipe into layers, one cached layer per step, and an artifact.

Each step that changes files runs in a build sandbox of the container runtime, as
isolated as any sandbox (its own uid range, seccomp, network slot with egress), over
the layers so far; its writable layer becomes the step's layer. A layer is cached under
a key of (parent layer, team, step, files hash), so a rebuild runs only what changed.
Metadata steps (ENV, and the user and workdir of USER/WORKDIR) need no sandbox to be
replayed from the cache.

Phases, named as the SDK names them in `reason.step`: "base" (pull or resolve what the
recipe starts from and prepare it: the `user` account, a bash, /tmp), "1".."N" (the
steps), "finalize" (the start command runs and the ready command passes once, as a
sandbox of the template would).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from hearth.node.guest import envd_client
from hearth.node.guest.envd_bundle import LOADER, PYTHON
from hearth.node.interface import BuildFailed, BuildLog, BuildRequest
from hearth.template.artifact import Artifact
from hearth.template.layers import (
    LayerStore,
    layer_key,
    move_tree,
    root_layer,
    strip_sandbox_files,
)
from hearth.template.recipe import (
    DEFAULT_READY_AFTER_START,
    DEFAULT_USER,
    DEFAULT_WORKDIR,
    E2B_BASE_IMAGE,
    Base,
    Recipe,
    Step,
)

# Bump when what a step's layer holds changes for the same inputs.
BUILDER_VERSION = 1
GUEST_SCRIPT = Path(__file__).with_name("_guest.py")
READY_INTERVAL = 2.0  # E2B's: the ready command runs every 2 s
READY_TIMEOUT = 600.0
CA_PATH = "/tmp/.hearth-build-ca.crt"
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class BuildSandbox(Protocol):
    """A sandbox over some layers in which build steps run (see the node)."""

    @property
    def url(self) -> str: ...

    async def commit(self, dest: Path) -> None:
        """Stop the sandbox; its writable layer, in the host's ids, becomes `dest`."""

    async def stop(self) -> None: ...


# (layers, vCPUs, memory MiB, disk MiB or None) -> a build sandbox over those layers.
OpenSandbox = Callable[[list[Path], int, int, int | None], Awaitable[BuildSandbox]]
# (recipe name, log) -> the artifact of a built-in template (e2bdev/base is `base`).
BuiltinArtifact = Callable[[str, BuildLog], Awaitable[Artifact]]


@dataclass
class _State:
    """What the steps so far have made: layers, and the metadata sandboxes inherit."""

    key: str
    layers: list[str]
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    env: dict[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None


class Builder:
    def __init__(
        self,
        layers: LayerStore,
        open_sandbox: OpenSandbox,
        builtin: BuiltinArtifact,
        *,
        envd_version: str,
        bundle_dir: Path,
        registry_mirror: str | None = None,
        ca_bundle: Path | None = None,
        pull_dir: Path | None = None,
    ) -> None:
        self.layers = layers
        self._open = open_sandbox
        self._builtin = builtin
        self.envd_version = envd_version
        self._bundle_dir = bundle_dir
        self._mirror = registry_mirror
        self._ca = ca_bundle.read_bytes() if ca_bundle and ca_bundle.is_file() else None
        self._pull_dir = pull_dir or layers.root

    async def build(self, request: BuildRequest, log: BuildLog) -> Artifact:
        recipe = request.recipe
        started = time.monotonic()
        state = await self._base(request, log)
        total = len(recipe.steps)
        for number, step in enumerate(recipe.steps, 1):
            state = await self._step(request, state, step, number, total, log)
        if recipe.start_cmd:
            state.start_cmd = recipe.start_cmd
            state.ready_cmd = recipe.ready_cmd
        elif recipe.ready_cmd:
            state.ready_cmd = recipe.ready_cmd
        artifact = Artifact(
            layers=tuple(state.layers),
            envd_version=self.envd_version,
            user=state.user,
            workdir=state.workdir,
            env=state.env,
            start_cmd=state.start_cmd,
            # E2B's default: `sleep 20` after a start command alone, else none.
            ready_cmd=state.ready_cmd or (DEFAULT_READY_AFTER_START if state.start_cmd else None),
            ready_explicit=bool(state.ready_cmd),
        )
        if artifact.start_cmd or artifact.ready_cmd:
            await self._finalize(recipe, artifact, log)
        log("info", f"Build finished in {time.monotonic() - started:.1f} s", None)
        return artifact

    # --- base -------------------------------------------------------------------------

    async def _base(self, request: BuildRequest, log: BuildLog) -> _State:
        base = request.recipe.base
        log("info", base.describe(), "base")
        try:
            if base.template:
                parent = request.parent
                if parent is None:
                    raise BuildFailed(f"template {base.template!r} has no ready build", "base")
                return _inherit(parent)
            if base.root:
                return await self._root(base, log)
            assert base.image
            if _is_e2b_base(base.image) and not self._mirror:
                log("info", f"{base.image} is Hearth's own `base` template here", "base")
                return _inherit(await self._builtin("base", log))
            return await self._image(request, base, log)
        except BuildFailed:
            raise
        except Exception as e:  # noqa: BLE001 - reported as the base step's failure
            raise BuildFailed(f"{base.describe()}: {e}", "base") from e

    async def _root(self, base: Base, log: BuildLog) -> _State:
        assert base.root is not None
        log("info", f"the built-in {base.root} root (built once, cached)", "base")
        key = await asyncio.to_thread(root_layer, self.layers, base.root)
        return _State(key=key, layers=[key], env=dict(_PATH_ENV))

    async def _image(self, request: BuildRequest, base: Base, log: BuildLog) -> _State:
        from hearth.template import oci

        assert base.image is not None
        image = base.image  # narrowed for `pull` below
        mirror = self._mirror
        try:
            reference, _, digest = await asyncio.to_thread(
                oci.resolve, base.image, registry=base.registry, mirror=mirror
            )
        except oci.RegistryError:
            if _is_e2b_base(base.image):
                log("info", f"{base.image} is not on the mirror: Hearth's `base`", "base")
                return _inherit(await self._builtin("base", log))
            raise
        image_key = layer_key("image", BUILDER_VERSION, digest)
        cached = self.layers.has(image_key)
        log("info", f"image {reference} ({digest[:19]}){' (cached)' if cached else ''}", "base")

        pull_log = _threadsafe(log, asyncio.get_running_loop())

        def pull(fs: Path) -> dict:
            config = oci.pull(
                image,
                fs,
                registry=base.registry,
                mirror=mirror,
                progress=lambda line: pull_log("info", line, "base"),
                work_dir=self._pull_dir,
            )
            return {"env": config.env, "workdir": config.workdir, "user": config.user}

        await asyncio.to_thread(self.layers.ensure, image_key, pull)
        meta = self.layers.meta(image_key)
        env = {**_PATH_ENV, **(meta.get("env") or {})}
        # Every root a sandbox runs needs `user`, a bash and /tmp: one layer on top.
        key = layer_key("prepare", BUILDER_VERSION, image_key)
        state = _State(key=image_key, layers=[image_key], env=env)
        if not self.layers.has(key):
            log("info", "preparing the image: the user account, bash and /tmp", "base")
            await self._in_sandbox(
                request, state, key, "base", log, lambda sb: self._guest(sb, "prepare", {}, "base")
            )
        return replace(state, key=key, layers=[image_key, key])

    # --- steps ------------------------------------------------------------------------

    async def _step(
        self,
        request: BuildRequest,
        state: _State,
        step: Step,
        number: int,
        total: int,
        log: BuildLog,
    ) -> _State:
        name = str(number)
        key = layer_key("step", BUILDER_VERSION, state.key, request.team_id, step.identity())
        force = step.force or request.recipe.force
        if step.type == "ENV":
            env = dict(state.env)
            for k, v in zip(step.args[::2], step.args[1::2], strict=False):
                env[k] = _expand(v, env)
            log("info", f"[{number}/{total}] {step.describe()}", name)
            return replace(state, key=key, env=env)
        after = state
        if step.type == "WORKDIR":
            after = replace(
                state, workdir=posixpath.normpath(posixpath.join(state.workdir, step.args[0]))
            )
        elif step.type == "USER":
            after = replace(state, user=step.args[0])
        cached = not force and self.layers.has(key)
        log("info", f"[{number}/{total}] {step.describe()}{' (cached)' if cached else ''}", name)
        if not cached:
            await self._in_sandbox(
                request,
                state,
                key,
                name,
                log,
                lambda sb: self._run_step(request, sb, state, after, step, name, log),
                rebuild=request.build_id if force else None,
            )
        return replace(after, key=key, layers=[*state.layers, key])

    async def _run_step(
        self,
        request: BuildRequest,
        sb: BuildSandbox,
        state: _State,
        after: _State,
        step: Step,
        name: str,
        log: BuildLog,
    ) -> None:
        if step.type == "RUN":
            user = step.args[1] if len(step.args) > 1 and step.args[1] else state.user
            await self._run(sb, step.args[0], user, state, name, log)
        elif step.type == "WORKDIR":
            await self._guest(sb, "workdir", {"path": after.workdir, "user": state.user}, name)
        elif step.type == "USER":
            sudo = len(step.args) > 1 and step.args[1] == "true"
            await self._guest(sb, "user", {"name": step.args[0], "sudo": sudo}, name)
        elif step.type == "COPY":
            await self._copy(request, sb, state, step, name)

    async def _run(
        self, sb: BuildSandbox, command: str, user: str, state: _State, name: str, log: BuildLog
    ) -> None:
        env = dict(state.env)
        if self._ca is not None:
            await envd_client.upload(sb.url, CA_PATH, self._ca)
            env.update(dict.fromkeys(CA_VARIABLES, CA_PATH))
        lines = _LineLog(log, name)
        try:
            done = await envd_client.run(
                sb.url,
                ["/bin/bash", "-c", command],
                user=user,
                cwd=state.workdir,
                env=env,
                on_output=lines.feed,
            )
        except envd_client.EnvdError as e:
            raise BuildFailed(f"RUN {command}: {_envd_hint(e, user, state.workdir)}", name) from e
        finally:
            lines.flush()
        if self._ca is not None:
            with contextlib.suppress(envd_client.EnvdError):
                await envd_client.run(sb.url, ["/bin/rm", "-f", CA_PATH])
        if done.exit_code != 0:
            raise BuildFailed(
                f"RUN {command}: exited with code {done.exit_code}: {done.output.strip()[-1000:]}",
                name,
            )

    async def _copy(
        self, request: BuildRequest, sb: BuildSandbox, state: _State, step: Step, name: str
    ) -> None:
        source = request.files.get(step.files_hash or "") or request.recipe.host_files.get(
            step.files_hash or ""
        )
        if source is None or not Path(source).is_file():
            raise BuildFailed(f"COPY {step.args[0]}: its files were not uploaded", name)
        tar = f"/tmp/.hearth-copy-{uuid.uuid4().hex}.tar"
        await envd_client.upload(sb.url, tar, await asyncio.to_thread(Path(source).read_bytes))
        args = {
            "tar": tar,
            "src": step.args[0],
            "dest": step.args[1],
            "owner": (step.args[2] if len(step.args) > 2 and step.args[2] else state.user),
            "mode": step.args[3] if len(step.args) > 3 and step.args[3] else None,
            "workdir": state.workdir,
        }
        await self._guest(sb, "copy", args, name)

    async def _guest(self, sb: BuildSandbox, op: str, args: dict, name: str) -> None:
        try:
            done = await self._guest_call(sb, op, args)
        except envd_client.EnvdError as e:
            raise BuildFailed(f"{op}: {e}", name) from e
        if done.exit_code != 0:
            raise BuildFailed(done.output.strip() or f"{op} failed ({done.exit_code})", name)

    async def _guest_call(self, sb: BuildSandbox, op: str, args: dict) -> envd_client.Finished:
        """Run a `_guest.py` operation with the envd bundle's Python: it needs nothing
        from the image."""
        bundle = envd_client.ENVD_TARGET
        argv = [
            f"{bundle}/lib/{LOADER}",
            "--library-path",
            f"{bundle}/lib",
            f"{bundle}/bin/{PYTHON}",
            "-I",
            "-S",
            "-c",
            _guest_source(),
            op,
            json.dumps(args),
        ]
        return await envd_client.run(sb.url, argv, user="root", cwd="/")

    async def _in_sandbox(
        self,
        request: BuildRequest,
        state: _State,
        key: str,
        name: str,
        log: BuildLog,
        work: Callable[[BuildSandbox], Awaitable[None]],
        rebuild: str | None = None,
    ) -> None:
        """Run `work` in a build sandbox over `state`'s layers; its changes become
        layer `key`. A failure or cancellation leaves no layer and no sandbox."""
        recipe = request.recipe
        staging = self.layers.root / f".build-{uuid.uuid4().hex}"
        sandbox = await self._open(
            self.layers.paths(state.layers), recipe.cpu_count, recipe.memory_mb, recipe.disk_mb
        )
        try:
            await envd_client.init(sandbox.url, envd_client.defaults_body(state.env, "root", "/"))
            await work(sandbox)
            await sandbox.commit(staging)
        except BaseException:
            await sandbox.stop()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            await asyncio.to_thread(strip_sandbox_files, staging, self.layers.paths(state.layers))
            await asyncio.to_thread(
                self.layers.ensure, key, lambda fs: _move_into(staging, fs), rebuild=rebuild
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- finalize ---------------------------------------------------------------------

    async def _finalize(self, recipe: Recipe, artifact: Artifact, log: BuildLog) -> None:
        log("info", f"Running the start command: {artifact.start_cmd or '(none)'}", "finalize")
        sandbox = await self._open(
            self.layers.paths(artifact.layers),
            recipe.cpu_count,
            recipe.memory_mb,
            recipe.disk_mb,
        )
        try:
            await envd_client.init(sandbox.url, template_body(artifact))
            try:
                await wait_started(
                    sandbox.url,
                    artifact,
                    log=_LineLog(log, "finalize").feed,
                    interval=READY_INTERVAL,
                )
            except (StartFailed, envd_client.EnvdError) as e:
                raise BuildFailed(str(e), "finalize") from e
            log("info", "The template is ready", "finalize")
        finally:
            await sandbox.stop()


@functools.cache
def _guest_source() -> str:
    return GUEST_SCRIPT.read_text()


def template_body(artifact: Artifact) -> dict:
    """/init of a sandbox in which a template's start command runs before any create
    (the build's check, a microVM template snapshot): the template's env and defaults."""
    return envd_client.defaults_body(artifact.env, artifact.user, artifact.workdir)


class StartFailed(RuntimeError):
    """A template's start command ended, or its ready command never passed."""


async def wait_started(
    url: str,
    artifact: Artifact,
    *,
    access_token: str | None = None,
    log: Callable[[str], None] | None = None,
    interval: float = 0.05,
    timeout: float = READY_TIMEOUT,
    wait_default: bool = True,
) -> None:
    """Start the artifact's start command in the background (as its user, in its
    workdir) and return once its ready command exits 0. `wait_default` False skips
    waiting on E2B's implicit `sleep 20` (a create from a template whose build already
    saw the command come up)."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(envd_client.client())
        process = None
        if artifact.start_cmd:
            process = await envd_client.start(
                url,
                envd_client.shell(artifact.start_cmd),
                http=http,
                user=artifact.user,
                cwd=artifact.workdir,
                access_token=access_token,
            )
        ready = artifact.ready_cmd
        if not ready or (not artifact.ready_explicit and not wait_default):
            if process is not None:
                await process.close()
            return
        ended = asyncio.ensure_future(process.wait(log)) if process is not None else None
        stack.callback(lambda: ended and ended.cancel())
        deadline = time.monotonic() + timeout
        delay = interval
        while True:
            if ended is not None and ended.done():
                if ended.exception() is not None:
                    raise StartFailed(f"the start command failed: {ended.exception()}")
                finished = ended.result()
                if finished.exit_code != 0:
                    raise StartFailed(
                        f"the start command exited with code {finished.exit_code}"
                        f" before it was ready: {finished.output.strip()[-1000:]}"
                    )
                ended = None  # exited 0: a command that daemonizes; keep asking
            check = await envd_client.run(
                url,
                envd_client.shell(ready),
                user=artifact.user,
                cwd=artifact.workdir,
                access_token=access_token,
            )
            if check.exit_code == 0:
                return
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"the ready command `{ready}` did not pass within {timeout:.0f} s"
                    f" (last exit code {check.exit_code}: {check.output.strip()[-500:]})"
                )
            await asyncio.sleep(delay)
            delay = min(READY_INTERVAL, delay * 2)


# --- helpers --------------------------------------------------------------------------

_PATH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def _inherit(parent: Artifact) -> _State:
    return _State(
        key=parent.key,
        layers=list(parent.layers),
        user=parent.user,
        workdir=parent.workdir,
        env=dict(parent.env),
        start_cmd=parent.start_cmd,
        ready_cmd=parent.ready_cmd if parent.ready_explicit else None,
    )


def _is_e2b_base(image: str) -> bool:
    name = image.removeprefix("docker.io/").removeprefix("index.docker.io/")
    return name in (E2B_BASE_IMAGE, f"{E2B_BASE_IMAGE}:latest")


def _expand(value: str, env: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _envd_hint(error: Exception, user: str, workdir: str) -> str:
    text = str(error)
    if "user" in text.lower() and "not found" in text.lower():
        return f"{text} (the user {user!r} does not exist: add set_user({user!r}) first)"
    if "no such file" in text.lower() or "cwd" in text.lower():
        return f"{text} (does the workdir {workdir} exist, and does the image have /bin/sh?)"
    return text


def _move_into(staging: Path, fs: Path) -> None:
    """Move a committed writable layer into the layer store's temporary directory."""
    fs.rmdir()
    move_tree(staging, fs)


def _threadsafe(log: BuildLog, loop: asyncio.AbstractEventLoop) -> BuildLog:
    """A log callback that may be called from a worker thread (the pull)."""

    def call(level: str, message: str, step: str | None) -> None:
        loop.call_soon_threadsafe(log, level, message, step)

    return call


class _LineLog:
    """Turns a step's output chunks into log lines."""

    def __init__(self, log: BuildLog | Callable, step: str) -> None:
        self._log = log
        self._step = step
        self._partial = ""

    def feed(self, text: str) -> None:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = ""

    def _emit(self, line: str) -> None:
        line = line.rstrip("\r")
        if line.strip():
            self._log("info", line, self._step)
