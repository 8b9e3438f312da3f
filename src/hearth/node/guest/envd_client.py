"""What the node asks of a sandbox's envd, in one place: wait for health, `/init`, run a
command (process.Start over Connect, JSON envelopes), upload a file.

Used by the runtimes at create and resume, by template start and ready commands, and by
the template builder's steps. Plain HTTP to an address of the node's own, so no TLS
context and no proxy from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from opentelemetry.trace import SpanKind

from hearth import tracing
from hearth.node.interface import SandboxSpec

ENVD_PORT = 49983
# Where every runtime mounts the envd bundle inside a sandbox.
ENVD_TARGET = "/opt/hearth/envd"
HEALTH_POLL = 0.005
DEFAULT_USER = "user"


class EnvdError(RuntimeError):
    """envd refused a request or did not come up; the message carries what it said."""


@dataclass(frozen=True)
class Finished:
    exit_code: int
    output: str  # stdout and stderr as they came, the tail of it


def client(timeout: float = 10.0, read: float | None = None) -> httpx.AsyncClient:
    """No read timeout by default: a process stream is read for as long as the process
    runs."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=2.0, read=read), trust_env=False, verify=False
    )


async def wait_healthy(
    url: str,
    *,
    timeout: float,
    dead: Callable[[], str | None] = lambda: None,
    interval: float = HEALTH_POLL,
) -> None:
    """Return once GET `url`/health answers 204. `dead()` says why the sandbox can no
    longer answer (its process exited), which ends the wait at once."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with client(2.0) as http:
        while True:
            reason = dead()
            if reason is not None:
                raise EnvdError(f"{reason} before envd answered")
            try:
                status = (await http.get(f"{url}/health")).status_code
                if status == 204:
                    return
                last = f"status {status}"
            except httpx.HTTPError as e:
                last = str(e) or type(e).__name__
            if time.monotonic() > deadline:
                raise EnvdError(
                    f"envd did not answer GET {url}/health with 204 within {timeout:.0f} s"
                    f" (last: {last})"
                )
            await asyncio.sleep(interval)


def init_body(spec: SandboxSpec) -> dict[str, Any]:
    """The /init of a sandbox of `spec`: its template's env, user and workdir, the
    create's env vars and token, E2B's own variables and the host's clock."""
    artifact = spec.artifact
    body: dict[str, Any] = {
        "envVars": {
            **(artifact.env if artifact else {}),
            **spec.env_vars,
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": spec.sandbox_id,
            "E2B_TEMPLATE_ID": spec.template_id,
        },
        "defaultUser": artifact.user if artifact else DEFAULT_USER,
        "timestamp": now(),
    }
    if artifact is not None:
        body["defaultWorkdir"] = artifact.workdir
    if spec.envd_access_token:
        body["accessToken"] = spec.envd_access_token
    return body


def defaults_body(env: dict[str, str], user: str, workdir: str) -> dict[str, Any]:
    """An /init of env vars, who and where commands run, and the clock: no sandbox's."""
    return {"envVars": env, "defaultUser": user, "defaultWorkdir": workdir, "timestamp": now()}


def now() -> str:
    """The host's clock as /init takes it."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def init(
    url: str, body: dict[str, Any], *, timeout: float = 10.0, access_token: str | None = None
) -> None:
    """POST /init with `body` (see `init_body`): at create, at a claim, after every
    resume, and in build sandboxes. `access_token`: the token envd holds now, when it is
    not the body's (a VM restored from another sandbox's memory)."""
    headers = {}
    held = access_token or body.get("accessToken")
    if held:
        # After a resume envd already holds the token and takes /init only with it.
        headers["X-Access-Token"] = held
    with tracing.child_span("envd.init", {"url.full": f"{url}/init"}, kind=SpanKind.CLIENT):
        async with client(timeout, read=timeout) as http:
            r = await http.post(f"{url}/init", json=body, headers=headers)
    if r.status_code != 204:
        raise EnvdError(f"envd refused /init: {r.status_code} {r.text[:500]}")


def _headers(user: str, access_token: str | None, content_type: str) -> dict[str, str]:
    headers = {
        "Content-Type": content_type,
        "Connect-Protocol-Version": "1",
        "Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode(),
    }
    if access_token:
        headers["X-Access-Token"] = access_token
    return headers


async def upload(
    url: str, path: str, data: bytes, *, user: str = "root", access_token: str | None = None
) -> None:
    """Write `data` to `path` inside the sandbox (as `user`), through envd's /files."""
    headers = _headers(user, access_token, "application/octet-stream")
    del headers["Connect-Protocol-Version"]
    async with client() as http:
        r = await http.post(
            f"{url}/files", params={"path": path, "username": user}, content=data, headers=headers
        )
    if r.status_code != 200:
        raise EnvdError(f"envd refused the upload of {path}: {r.status_code} {r.text[:300]}")


class Process:
    """A command started through envd's process.Start; read its events with `wait()`."""

    def __init__(self, stream: contextlib.AbstractAsyncContextManager, response: httpx.Response):
        self._stream = stream
        self._response = response
        self.pid: int | None = None

    async def wait(self, on_output: Callable[[str], None] | None = None) -> Finished:
        """Until the process ends: its exit code and the tail of its output. Each chunk
        of output goes to `on_output` as it comes."""
        tail: list[str] = []
        buffer = b""
        try:
            async for chunk in self._response.aiter_bytes():
                buffer += chunk
                while len(buffer) >= 5:
                    flags, size = struct.unpack(">BI", buffer[:5])
                    if len(buffer) < 5 + size:
                        break
                    message: dict[str, Any] = json.loads(buffer[5 : 5 + size] or b"{}")
                    buffer = buffer[5 + size :]
                    if flags & 0x02:
                        error = message.get("error")
                        raise EnvdError(f"the process stream ended: {error or 'no end event'}")
                    event = message.get("event", {})
                    if "start" in event:
                        self.pid = event["start"].get("pid")
                    data = event.get("data", {})
                    for key in ("stdout", "stderr", "pty"):
                        if key in data:
                            text = base64.b64decode(data[key]).decode(errors="replace")
                            tail.append(text)
                            del tail[:-200]
                            if on_output is not None:
                                on_output(text)
                    if "end" in event:
                        end = event["end"]
                        code = end.get("exitCode", 0)
                        if not end.get("exited", True) and "exitCode" not in end:
                            code = -1
                        return Finished(int(code), "".join(tail)[-4000:])
        finally:
            await self.close()
        raise EnvdError("the process stream closed before the process ended")

    async def close(self) -> None:
        """Stop reading; the process keeps running (as the SDK's background commands)."""
        with contextlib.suppress(Exception):
            await self._stream.__aexit__(None, None, None)


async def start(
    url: str,
    argv: list[str],
    *,
    http: httpx.AsyncClient,
    user: str = "root",
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    access_token: str | None = None,
) -> Process:
    """Start `argv` in the sandbox as `user`; returns once envd accepted it."""
    process: dict[str, Any] = {"cmd": argv[0], "args": argv[1:], "envs": env or {}}
    if cwd:
        process["cwd"] = cwd
    body = json.dumps({"process": process, "stdin": False}).encode()
    stream = http.stream(
        "POST",
        f"{url}/process.Process/Start",
        content=struct.pack(">BI", 0, len(body)) + body,
        headers=_headers(user, access_token, "application/connect+json"),
    )
    response = await stream.__aenter__()
    if response.status_code != 200:
        text = (await response.aread()).decode(errors="replace")
        await stream.__aexit__(None, None, None)
        raise EnvdError(f"envd refused to start {argv[0]}: {response.status_code} {text[:500]}")
    return Process(stream, response)


async def run(
    url: str,
    argv: list[str],
    *,
    user: str = "root",
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    access_token: str | None = None,
    on_output: Callable[[str], None] | None = None,
) -> Finished:
    """Run `argv` to its end."""
    async with client() as http:
        process = await start(
            url, argv, http=http, user=user, cwd=cwd, env=env, access_token=access_token
        )
        return await process.wait(on_output)


def shell(command: str) -> list[str]:
    """The argv of a shell command as the SDK runs commands: bash as a login shell."""
    return ["/bin/bash", "-l", "-c", command]
