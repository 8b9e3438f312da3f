"""The Connect protocol over http11: unary and streaming calls, JSON and binary codecs.

Handlers work on proto-JSON dicts (see rpc.py). JSON requests are parsed with the
standard library; binary protobuf requests go through binary_codec, imported only when
such a request arrives, so that envd's start does not pay for protobuf.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from typing import overload

from hearth.envd.context import Context
from hearth.envd.errors import CONNECT_STATUS, RpcError
from hearth.envd.http11 import BadRequest, Body, Request, Response
from hearth.envd.rpc import Method

FLAG_END_STREAM = 0x02
FLAG_COMPRESSED = 0x01
MAX_MESSAGE_BYTES = 64 << 20
# Fields whose values are maps with user-chosen keys: their keys are never re-cased.
MAP_FIELDS = frozenset({"envs", "metadata"})
_SNAKE = re.compile(r"_([a-z0-9])")


@overload
def camel_keys(value: dict) -> dict: ...
@overload
def camel_keys(value: object) -> object: ...
def camel_keys(value: object) -> object:
    """Fold snake_case message keys to lowerCamelCase (proto-JSON accepts both)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = _SNAKE.sub(lambda m: m.group(1).upper(), key) if "_" in key else key
            out[name] = item if name in MAP_FIELDS else camel_keys(item)
        return out
    if isinstance(value, list):
        return [camel_keys(item) for item in value]
    return value


class Codec:
    """Turns wire bytes into handler dicts and back, for one content type family."""

    def __init__(self, binary: bool, method: Method) -> None:
        self.binary = binary
        self.method = method

    def decode(self, data: bytes) -> dict:
        if self.binary:
            from hearth.envd import binary_codec

            return binary_codec.decode(self.method.request_type, data)
        if not data.strip():
            return {}
        try:
            parsed = json.loads(data)
        except ValueError as e:
            raise RpcError("invalid_argument", f"invalid JSON request: {e}") from e
        if not isinstance(parsed, dict):
            raise RpcError("invalid_argument", "request must be a JSON object")
        return camel_keys(parsed)

    def encode(self, message: dict) -> bytes:
        if self.binary:
            from hearth.envd import binary_codec

            return binary_codec.encode(self.method.response_type, message)
        return json.dumps(message, separators=(",", ":")).encode()


def envelope(flags: int, payload: bytes) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _gunzip(data: bytes) -> bytes:
    import gzip
    import zlib

    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise RpcError("invalid_argument", f"invalid gzip message: {e}") from e


def read_envelopes(body: Body, encoding: str = "identity") -> Iterator[tuple[int, bytes]]:
    """The enveloped messages of a streaming request body, as they arrive; compressed
    ones (flag 0x01) are inflated per `Connect-Content-Encoding`."""
    buf = bytearray()
    for piece in body:
        buf += piece
        while len(buf) >= 5:
            flags, size = struct.unpack(">BI", buf[:5])
            if size > MAX_MESSAGE_BYTES:
                raise RpcError("resource_exhausted", "message too large")
            if len(buf) < 5 + size:
                break
            payload = bytes(buf[5 : 5 + size])
            del buf[: 5 + size]
            if flags & FLAG_COMPRESSED:
                if encoding != "gzip":
                    raise RpcError("internal", f"unsupported message encoding '{encoding}'")
                payload = _gunzip(payload)
            yield flags, payload
    if buf:
        raise RpcError("invalid_argument", "truncated message envelope")


def end_stream(error: RpcError | None) -> bytes:
    payload = {} if error is None else {"error": {"code": error.code, "message": error.message}}
    return envelope(FLAG_END_STREAM, json.dumps(payload).encode())


def unary_error(error: RpcError) -> Response:
    body = json.dumps({"code": error.code, "message": error.message, "details": []}).encode()
    status = CONNECT_STATUS.get(error.code, 500)
    return Response(status, [("Content-Type", "application/json")], body)


def handle(request: Request, method: Method, make_context: Callable[[], Context]) -> Response:
    """Serve one Connect call of `method`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    streaming = method.kind != "unary"
    expected = (
        ("application/connect+json", "application/connect+proto")
        if streaming
        else (
            "application/json",
            "application/proto",
        )
    )
    if content_type not in expected:
        request.body.drain()
        return Response(
            415,
            [("Accept-Post", ", ".join(expected)), ("Content-Type", "text/plain")],
            f"unsupported content type '{content_type}'".encode(),
        )
    codec = Codec(content_type.endswith("proto"), method)
    if not streaming:
        return _unary(request, method, codec, make_context)
    return _stream(request, method, codec, make_context, content_type)


def _unary(request: Request, method: Method, codec: Codec, make_context) -> Response:
    message: dict | None = None
    try:
        data = request.body.read()
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            data = _gunzip(data)
        elif encoding != "identity":
            raise RpcError("unimplemented", f"unsupported content encoding '{encoding}'")
        message = codec.decode(data)
        reply = method.handler(make_context(), message)
        _log_call(request.path, None, message, reply)
        return Response(
            200, [("Content-Type", request.headers["content-type"])], codec.encode(reply)
        )
    except RpcError as e:
        _log_call(request.path, e, message)
        return unary_error(e)
    except BadRequest:
        raise
    except Exception as e:  # a handler bug must not kill the connection thread
        error = RpcError("internal", f"{type(e).__name__}: {e}")
        _log_call(request.path, error, message)
        return unary_error(error)


def _log_call(
    path: str,
    error: RpcError | None,
    message: object = None,
    reply: object = None,
    phase: str | None = None,
) -> None:
    """One line per unary call as E2B's envd interceptor writes it (info), or per start
    and end of a stream (`phase`; debug); error, with the Connect code, when it failed."""
    from hearth.envd import logs

    fields: dict = {"method": f"POST {path}"}
    if message is not None:
        fields["request"] = logs.short_request(message)
    if error is not None:
        fields["error"] = error.message
        fields["error_code"] = error.code
    elif reply is not None:
        fields["response"] = logs.short_request(reply)
    name = logs.rpc_name(path)
    level = "error" if error is not None else "info" if phase is None else "debug"
    text = name if phase is None else f"{name} ({phase})"
    logs.emit(level, logs.rpc_logger(path), text, **fields)


def _stream(request, method, codec, make_context, content_type) -> Response:
    """A streaming call. The request is read in full before any response byte is sent:
    some clients stop sending their body once response headers arrive."""
    headers = [("Content-Type", content_type)]
    encoding = request.headers.get("connect-content-encoding", "identity").strip().lower()
    path = request.path
    kind = "client stream" if method.kind == "client_stream" else "server stream"
    message = None
    try:
        ctx = make_context()
        if method.kind == "client_stream":
            _log_call(path, None, phase=f"{kind} start")
            inputs = (
                codec.decode(p) for f, p in read_envelopes(request.body, encoding) if not f & 2
            )
            reply = envelope(0, codec.encode(method.handler(ctx, inputs)))
            _log_call(path, None, phase=f"{kind} end")
            return Response(200, headers, reply + end_stream(None))
        first = next(read_envelopes(request.body, encoding), None)
        request.body.drain()
        if first is None:
            raise RpcError("invalid_argument", "missing request message")
        message = codec.decode(first[1])
        _log_call(path, None, message, phase=f"{kind} start")
        events = method.handler(ctx, message)
    except RpcError as e:
        _log_call(path, e, message, phase=f"{kind} end")
        return Response(200, headers, end_stream(e))
    except BadRequest as e:
        error = RpcError("invalid_argument", str(e))
        _log_call(path, error, message, phase=f"{kind} end")
        return Response(200, headers, end_stream(error))

    def frames() -> Iterator[bytes]:
        failure: RpcError | None = None
        try:
            for event in events:
                yield envelope(0, codec.encode(event))
            yield end_stream(None)
        except RpcError as e:
            failure = e
            yield end_stream(e)
        except Exception as e:  # noqa: BLE001 - a handler bug ends the stream, not envd
            failure = RpcError("internal", f"{type(e).__name__}: {e}")
            yield end_stream(failure)
        finally:
            _log_call(path, failure, phase=f"{kind} end")
            close = getattr(events, "close", None)
            if close:
                close()

    return Response(200, headers, frames())
