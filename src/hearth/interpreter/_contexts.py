"""Contexts: Jupyter kernels driven directly with jupyter_client, one execution at a time.

A context is one kernel (its id is the context id) with one client; a reader task per
channel hands each message to the execution it belongs to (by parent message id). Kernels run
as the sandbox's user in the context's directory; jupyter_client's restarter starts a
kernel again if it dies, and an execution running then ends with `ContextRestarting`.
A context exists before its kernel does: the kernel starts on `ensure_started()` (its first
execution or restart, or at once for the contexts the server wants warm).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import signal
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel

from hearth.interpreter import _outputs
from hearth.interpreter._languages import Language, language

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
KEEPALIVE = 5.0  # seconds of silence before a keepalive line
START_TIMEOUT = 120.0
INTERRUPT_GRACE = 5.0  # an interrupted execution that does not end by then: restart
KERNEL_USER = "user"
CONNECTION_DIR = "/tmp/.hearth-kernels"
# jupyter_client renames a kernel called "python"; ours are named by language.
KERNEL_PREFIX = "hearth-"
FLUSH = "hearth_flush"  # the message type of the javascript kernel's output marker


class _Specs(KernelSpecManager):
    """Kernel specs from `_languages`, not from files: one place says how each starts."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        spec = language(kernel_name.removeprefix(KERNEL_PREFIX))
        if spec is None:
            raise NoSuchKernel(kernel_name)
        return KernelSpec(
            argv=list(spec.argv),
            display_name=spec.name,
            language=spec.kernel,
            env=dict(spec.env),
            interrupt_mode="signal",
            resource_dir="",
        )


class _Manager(AsyncIOLoopKernelManager):
    """Writes the connection file where the kernel's user can read it."""

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        account = _account()
        if account is not None and os.geteuid() == 0:
            os.chown(self.connection_file, account.pw_uid, account.pw_gid)


def _account() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(KERNEL_USER)
    except KeyError:
        return None


def _die_with_parent() -> None:
    """In the kernel's process before exec: end with the server, so a server that dies
    leaves no kernel behind (ipykernel would notice; deno would not)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kernel_environment() -> dict[str, str]:
    """The kernels' environment: the server's, as the sandbox's user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "JPY_"))}
    account = _account()
    if account is not None and os.geteuid() == 0:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    return env


class ContextClosed(Exception):
    """The context was removed (or the server is stopping) while its kernel started."""


class Context:
    """One kernel and what runs on it."""

    def __init__(self, lang: Language, cwd: str) -> None:
        self.id = str(uuid.uuid4())
        self.language = lang
        self.cwd = cwd
        self._manager: _Manager | None = None
        self._client: Any = None
        self._readers: list[asyncio.Task[None]] = []
        self._waiting: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()  # one execution at a time, in arrival order
        self._cleanup: asyncio.Task[None] | None = None  # env vars to restore
        self._global_envs: dict[str, str] | None = None
        self._starting: asyncio.Task[None] | None = None  # the kernel's start, once asked
        self._recovering: asyncio.Future[None] | None = None  # reconnect after a restart
        self._closed = False

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language.name, "cwd": self.cwd}

    @property
    def started(self) -> bool:
        task = self._starting
        return task is not None and task.done() and not task.cancelled() and not task.exception()

    async def ensure_started(self) -> None:
        """Start the kernel unless it runs already. Callers at the same time share one
        start; a start that failed is tried again by the next caller. Raises
        `ContextClosed` if the context is removed meanwhile."""
        if self._closed:
            raise ContextClosed(self.id)
        if self.started:
            return
        task = self._starting
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self._starting = asyncio.create_task(self._start())
        try:
            await asyncio.shield(task)  # one caller leaving does not stop the start
        except asyncio.CancelledError:
            if self._closed and task.cancelled():
                raise ContextClosed(self.id) from None
            raise
        if self._closed:
            raise ContextClosed(self.id)

    async def _start(self) -> None:
        os.makedirs(CONNECTION_DIR, mode=0o700, exist_ok=True)
        account = _account()
        launch: dict[str, Any] = {
            "env": kernel_environment(),
            "cwd": self.cwd,
            "preexec_fn": _die_with_parent,
        }
        if account is not None and os.geteuid() == 0:
            os.chown(CONNECTION_DIR, account.pw_uid, account.pw_gid)
            launch.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        manager = _Manager(
            kernel_name=KERNEL_PREFIX + self.language.name,
            kernel_spec_manager=_Specs(),
            connection_file=f"{CONNECTION_DIR}/kernel-{self.id}.json",
        )
        self._manager = manager
        try:
            await manager.start_kernel(kernel_id=self.id, **launch)
            manager.start_restarter()
            manager.add_restart_callback(self._restarted, "restart")
            await self._connect()
        except BaseException:
            await self._stop_kernel()
            raise

    async def _connect(self) -> None:
        assert self._manager is not None
        client = self._manager.client()
        client.start_channels()
        self._client = client
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Wait until the kernel answers, then read its channels. wait_for_ready reads
        the shell and iopub channels itself, so the readers stop meanwhile."""
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        try:
            await self._client.wait_for_ready(timeout=START_TIMEOUT)
        finally:
            self._readers = [
                asyncio.create_task(self._read(self._client.get_iopub_msg)),
                asyncio.create_task(self._read(self._client.get_shell_msg)),
            ]

    async def _restart_kernel(self) -> None:
        assert self._manager is not None
        self._global_envs = None
        await self._manager.restart_kernel(now=True)
        await self._wait_ready()

    async def _read(self, get: Any) -> None:
        """Hand each message of one channel to the execution it answers (iopub output;
        the shell channel's execute_reply)."""
        while True:
            try:
                msg = await get()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a malformed message must not stop the reader
                log.exception("reading a kernel channel")
                await asyncio.sleep(0.1)  # and a broken channel must not spin
                continue
            queue = self._waiting.get(msg.get("parent_header", {}).get("msg_id"))
            if queue is not None:
                queue.put_nowait(msg)

    def _restarted(self) -> None:
        """The restarter found the kernel dead and is starting it again: end what was
        running on it, and have the next execution wait for the new kernel."""
        log.warning("context %s: the kernel died and was restarted", self.id)
        self._global_envs = None
        for queue in self._waiting.values():
            queue.put_nowait({"hearth": "restarted"})
        self._recovering = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """After the restarter's restart: a fresh client on the new kernel, once it
        answers. A request sent on the old channels while the kernel was down can be
        lost, and the run that sent it would wait for ever."""
        manager = self._manager
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        await asyncio.sleep(0)  # the restarter's restart_kernel starts after callbacks
        while manager is self._manager and manager is not None:
            if await manager.is_alive() or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        if manager is None or manager is not self._manager or self._client is None:
            return  # removed meanwhile
        old = self._client
        with contextlib.suppress(Exception):
            old.stop_channels()
        self._client = manager.client()
        self._client.start_channels()
        await self._wait_ready()

    async def restart(self) -> None:
        if not self.started:  # a kernel that never ran (or is starting) starts fresh
            await self.ensure_started()
            return
        # What runs now ends at once (ContextRestarting), so the lock comes free.
        for queue in self._waiting.values():
            queue.put_nowait({"hearth": "restarted"})
        async with self._lock:
            await self._restart_kernel()

    async def shutdown(self) -> None:
        self._closed = True
        for queue in self._waiting.values():  # what runs ends now, as on a restart
            queue.put_nowait({"hearth": "restarted"})
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()  # its own cleanup stops what it started
            await asyncio.gather(self._starting, return_exceptions=True)
        await self._stop_kernel()

    async def _stop_kernel(self) -> None:
        if self._recovering is not None:
            self._recovering.cancel()
            await asyncio.gather(self._recovering, return_exceptions=True)
            self._recovering = None
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.stop_channels()
        if self._manager is not None:
            with contextlib.suppress(Exception):
                self._manager.stop_restarter()
                await self._manager.shutdown_kernel(now=True)
            with contextlib.suppress(Exception):
                await self._manager.cleanup_resources()
        self._readers, self._client, self._manager = [], None, None

    async def execute(
        self,
        code: str,
        env_vars: dict[str, str] | None,
        fetch_envs: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Run `code`, yielding the stream's lines; the last is `end_of_execution`.

        `fetch_envs()` gives the sandbox's environment variables, asked for on the
        context's first execution. Closing the iterator early (the client went away)
        interrupts the kernel, and the context stays locked until the kernel is idle.
        """
        async with self._lock:
            if self._closed or self._client is None:  # removed while this run waited
                yield _outputs.error("ContextNotFound", f"Context {self.id} not found", "")
                yield {"type": "end_of_execution"}
                return
            if self._recovering is not None:
                await asyncio.gather(self._recovering, return_exceptions=True)
                self._recovering = None
            if self._cleanup is not None:
                await asyncio.gather(self._cleanup, return_exceptions=True)
                self._cleanup = None
            setup = []
            if self._global_envs is None:  # the kernel's first run since it (re)started
                self._global_envs = dict(await fetch_envs())
                if self.language.prelude:
                    setup.append(self.language.prelude)
                setup += [self.language.set_env(k, v) for k, v in self._global_envs.items()]
            if env_vars:
                setup += [self.language.set_env(k, v) for k, v in env_vars.items()]
            if setup:
                async with contextlib.aclosing(self._run("\n".join(setup), True)) as run:
                    async for _ in run:
                        pass
            try:
                async with contextlib.aclosing(self._run(code, silent=False)) as run:
                    async for line in run:
                        yield line
            finally:
                if env_vars:
                    self._cleanup = asyncio.create_task(self._restore(env_vars))
        yield {"type": "end_of_execution"}

    async def _restore(self, env_vars: dict[str, str]) -> None:
        assert self._global_envs is not None
        code = "\n".join(
            self.language.set_env(k, self._global_envs[k])
            if k in self._global_envs
            else self.language.unset_env(k)
            for k in env_vars
        )
        async with contextlib.aclosing(self._run(code, silent=True)) as run:
            async for _ in run:
                pass

    async def _run(self, code: str, silent: bool) -> AsyncGenerator[dict[str, Any], None]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        msg_id = self._client.execute(
            code, silent=silent, store_history=not silent, allow_stdin=False
        )
        self._waiting[msg_id] = queue
        finished = False
        errored = False
        flush_id = None
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield {"type": "keepalive"}
                    continue
                if "hearth" in msg:  # the kernel restarted under this execution
                    finished = True
                    yield _outputs.error("ContextRestarting", "Context was restarted", "")
                    return
                kind = msg["header"]["msg_type"]
                if kind == FLUSH:
                    finished = True
                    return
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue  # the flush execution's own messages
                if kind == "status" and msg["content"].get("execution_state") == "idle":
                    if self.language.kernel != "javascript" or silent:
                        finished = True
                        return
                    # deno publishes results through a queue of its own, which can
                    # deliver them after the idle status: a marker sent through that
                    # same queue comes after all of them.
                    flush_id = self._client.execute(
                        f"Deno.jupyter.broadcast({FLUSH!r}, {{}})", silent=True,
                        store_history=False, allow_stdin=False,
                    )  # fmt: skip
                    self._waiting[flush_id] = queue
                    continue
                if kind in ("status", "execute_reply"):
                    continue
                if kind == "error":
                    if errored:
                        continue
                    errored = True
                line = _outputs.convert(msg)
                if line is not None and not silent:
                    yield line
        finally:
            if not finished:
                await self._interrupt(queue)
            self._waiting.pop(msg_id, None)
            if flush_id is not None:
                self._waiting.pop(flush_id, None)

    async def _interrupt(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Stop what runs (the client left or timed out) so the next execution can."""
        if self._manager is None:  # the context was removed meanwhile
            return
        try:
            await self._manager.interrupt_kernel()
            async with asyncio.timeout(INTERRUPT_GRACE):
                while True:
                    msg = await queue.get()
                    if "hearth" in msg:
                        return
                    if msg["header"]["msg_type"] == "status" and (
                        msg["content"].get("execution_state") == "idle"
                    ):
                        return
        except TimeoutError:
            log.warning("context %s: the interrupt did not end the run; restarting", self.id)
            with contextlib.suppress(Exception):
                await self._restart_kernel()
        except Exception:  # noqa: BLE001 - best effort; the next execution will tell
            log.exception("context %s: interrupt", self.id)
