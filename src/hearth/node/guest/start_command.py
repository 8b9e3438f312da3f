"""A template's start command: run in the background as root through envd's process API
when a sandbox starts, and waited for until its readiness check passes (E2B's
`set_start_cmd(cmd, ready_cmd)`). The `code-interpreter` template starts its
interpreter server this way, and is ready once port 49999 answers /health.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from hearth.node.interface import SandboxAddress, SandboxSpec

ENVD_PORT = 49983
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class StartCommand:
    command: str  # run by `/bin/bash -l -c` as root, with the sandbox's env vars
    ready_port: int  # ready once GET http://<sandbox>:<ready_port><ready_path> is 200
    ready_path: str = "/health"
    timeout: float = 180.0  # a first start reads a cold template from disk


class StartCommandError(RuntimeError):
    pass


class _Sandbox(Protocol):
    @property
    def address(self) -> SandboxAddress: ...

    async def stop(self) -> None: ...


def start_command(kind: str) -> StartCommand | None:
    """The start command of the template root `kind`, if it has one."""
    if kind == "code-interpreter":
        from hearth.node.disk.code_interpreter import START_COMMAND

        return START_COMMAND
    return None


async def start_template(sandbox: _Sandbox, kind: str, spec: SandboxSpec) -> None:
    """Run `kind`'s start command in the new sandbox and wait until it is ready. If it
    fails the sandbox is stopped, so a failed create leaves nothing behind."""
    command = start_command(kind)
    if command is None:
        return
    try:
        await run_start_command(sandbox.address, spec.envd_access_token, command)
    except BaseException:
        await sandbox.stop()
        raise


async def is_ready(address: SandboxAddress, command: StartCommand) -> bool:
    """One readiness check of a started command (a pooled sandbox's, before a claim)."""
    ready = f"http://{address.host}:{address.port(command.ready_port)}{command.ready_path}"
    # A plain-HTTP address of the node's own: no TLS context (it costs tens of ms).
    async with httpx.AsyncClient(timeout=2.0, verify=False, trust_env=False) as client:
        try:
            return (await client.get(ready)).status_code == 200
        except httpx.HTTPError:
            return False


async def run_start_command(
    address: SandboxAddress, access_token: str | None, command: StartCommand
) -> None:
    envd = f"http://{address.host}:{address.port(ENVD_PORT)}"
    ready = f"http://{address.host}:{address.port(command.ready_port)}{command.ready_path}"
    headers = {
        "Content-Type": "application/connect+json",
        "Connect-Protocol-Version": "1",
        "Authorization": "Basic " + base64.b64encode(b"root:").decode(),
    }
    if access_token:
        headers["X-Access-Token"] = access_token
    request = {
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", command.command], "cwd": "/"},
        "stdin": False,
    }
    body = json.dumps(request).encode()
    timeout = httpx.Timeout(10.0, read=None)
    async with (
        httpx.AsyncClient(timeout=timeout, trust_env=False) as client,
        client.stream(
            "POST",
            f"{envd}/process.Process/Start",
            content=struct.pack(">BI", 0, len(body)) + body,
            headers=headers,
        ) as response,
    ):
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise StartCommandError(
                f"envd refused the start command: {response.status_code} {text[:500]}"
            )
        # The process's events, read while the readiness check polls: an end before
        # ready is a failed start, reported with what it printed.
        events = asyncio.ensure_future(_until_end(response))
        try:
            await _wait_ready(client, ready, events, command.timeout)
        finally:
            events.cancel()
            with contextlib.suppress(BaseException):
                await events
    # Closing the stream leaves the process running (as the SDK's background commands).


async def _until_end(response: httpx.Response) -> str:
    """Read the Start stream's envelopes; return the output once the process ends."""
    output: list[str] = []
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while len(buffer) >= 5:
            flags, size = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + size:
                break
            message: dict[str, Any] = json.loads(buffer[5 : 5 + size] or b"{}")
            buffer = buffer[5 + size :]
            if flags & 0x02:
                error = message.get("error")
                return f"stream ended: {error}" if error else "\n".join(output)
            event = message.get("event", {})
            data = event.get("data", {})
            for key in ("stdout", "stderr"):
                if key in data:
                    output.append(base64.b64decode(data[key]).decode(errors="replace"))
            if "end" in event:
                end = event["end"]
                output.append(f"exited: {end.get('exitCode', 0)} {end.get('error', '')}")
                return "".join(output)
    return "\n".join(output) or "the process stream closed"


async def _wait_ready(
    client: httpx.AsyncClient, url: str, events: asyncio.Future[str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if events.done():
            detail = events.exception() or events.result()[-2000:]
            raise StartCommandError(f"the start command ended before it was ready: {detail}")
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(url, timeout=2.0)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise StartCommandError(f"the start command was not ready within {timeout:.0f} s")
        await asyncio.sleep(POLL_INTERVAL)
