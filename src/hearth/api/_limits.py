"""How much a request may carry: the bounds of its body and fields, checked before any
route runs, so that a refused request leaves nothing behind.

E2B's API bounds only some of these itself: `limit` (1..100), a refresh's `duration`
(0..3600), a fork's `count` (1..100), timeouts (int32, at most the team's hours),
template resources, and network rules (in `hearth.node.network.policy`, with infra's
numbers). It leaves body size, metadata and envVars to its HTTP server and gRPC message
limits; Hearth bounds them here with numbers no E2B client comes near: a body of 1 MiB
(413 beyond), metadata of 100 entries of 256-character keys and 4096-character values,
envVars of 1000 entries of 1024-character names and 64 KiB values (a Linux process takes
128 KiB per variable), and no NUL character anywhere: PostgreSQL, E2B's store and one of
Hearth's, cannot keep one, and no process can be given one.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hearth.api._errors import error_response

MAX_BODY_BYTES = 1 << 20
MAX_METADATA_ENTRIES = 100
MAX_METADATA_KEY_LENGTH = 256
MAX_METADATA_VALUE_LENGTH = 4096
MAX_ENV_VARS = 1000
MAX_ENV_NAME_LENGTH = 1024
MAX_ENV_VALUE_LENGTH = 64 * 1024
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# The last millisecond of year 9999: later times are not dates Python can hold.
MAX_UNIX_MS = 253402300799999

_NO_NUL = r"^[^\x00]*$"
MetadataKey = Annotated[str, StringConstraints(max_length=MAX_METADATA_KEY_LENGTH, pattern=_NO_NUL)]
MetadataValue = Annotated[
    str, StringConstraints(max_length=MAX_METADATA_VALUE_LENGTH, pattern=_NO_NUL)
]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_ENTRIES)]
# A process's environment: `NAME=value` strings, so a name has no `=`.
EnvName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ENV_NAME_LENGTH, pattern=r"^[^=\x00]+$")
]
EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_VALUE_LENGTH, pattern=_NO_NUL)]
EnvVars = Annotated[dict[EnvName, EnvValue], Field(max_length=MAX_ENV_VARS)]
# E2B's int32 fields (timeouts, counts, resources), and the seconds one may hold.
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Seconds = Annotated[int, Field(ge=0, le=INT32_MAX)]


class RequestBody(BaseModel):
    """A JSON request body as E2B's Go server decodes one: unknown fields ignored, every
    field of its own JSON type (no `"1"` for 1, no 1 for true: a 400)."""

    model_config = ConfigDict(extra="ignore", strict=True)


# A JSON string escape of U+0000 that is not itself an escaped backslash and a `u0000`.
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BoundedRequests:
    """Answers 413 for a body over MAX_BODY_BYTES, and 400 for a NUL in the path, the
    query or the JSON body, before the app sees the request. Bodies are read whole (they
    are small); paths under `streamed` (the upload links' tars) are passed on as they
    come, their size left to the route."""

    def __init__(self, app: ASGIApp, *, streamed: str) -> None:
        self.app = app
        self._streamed = streamed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if _has_nul(raw_path) or _has_nul(scope.get("query_string", b"")):
            await _refuse(scope, receive, send, 400, "The request must not contain NUL characters")
            return
        if scope["path"].startswith(self._streamed):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            await _refuse(scope, receive, send, 413, _TOO_LARGE)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _refuse(scope, receive, send, 413, _TOO_LARGE)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _ESCAPED_NUL.search(body) or b"\x00" in body:
            await _refuse(scope, receive, send, 400, "The request must not contain NUL characters")
            return
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


_TOO_LARGE = f"Request body is too large: at most {MAX_BODY_BYTES} bytes are accepted"


def _has_nul(raw: bytes) -> bool:
    return b"\x00" in raw or b"%00" in raw


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `messages` first, then what the client sends next (its
    disconnect, which streaming answers wait for)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await error_response(status, message)(scope, receive, send)
