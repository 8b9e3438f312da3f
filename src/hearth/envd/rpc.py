"""How a service declares its RPC methods for the Connect transport.

Handlers speak proto3 canonical JSON as plain dicts: request keys arrive lowerCamelCase
(the transport folds snake_case input), responses use lowerCamelCase, enum names, base64
strings for bytes and RFC 3339 strings for timestamps. The binary codec converts at the
edge, so handlers never see protobuf objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from hearth.envd.context import Context

Kind = Literal["unary", "server_stream", "client_stream"]


@dataclass(frozen=True)
class Method:
    kind: Kind
    # unary: (ctx, request) -> response
    # server_stream: (ctx, request) -> iterator of responses (closed if the client leaves)
    # client_stream: (ctx, iterator of requests) -> response
    handler: Callable
    request_type: str  # fully qualified proto message names, for the binary codec
    response_type: str


def unary(handler: Callable[[Context, dict], dict], req: str, resp: str) -> Method:
    return Method("unary", handler, req, resp)


def server_stream(handler: Callable[[Context, dict], Iterator[dict]], req: str, resp: str):
    return Method("server_stream", handler, req, resp)


def client_stream(handler: Callable[[Context, Iterator[dict]], dict], req: str, resp: str):
    return Method("client_stream", handler, req, resp)
