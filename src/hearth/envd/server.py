"""envd's HTTP server: one thread per connection, routing, the access-token check."""

from __future__ import annotations

import base64
import contextlib
import importlib
import socket
import sys
import threading

from hearth.envd import api, connect, users
from hearth.envd.context import Context
from hearth.envd.errors import HttpError, RpcError
from hearth.envd.http11 import (
    BadRequest,
    Connection,
    Request,
    Response,
    read_request,
    write_response,
)
from hearth.envd.state import EnvdState

# Services are imported on their first call: envd answers /health before paying for them.
SERVICES = {
    "process.Process": "hearth.envd.process",
    "filesystem.Filesystem": "hearth.envd.filesystem",
}
UNAUTHORIZED = (
    "unauthorized access, please provide a valid access token or method signing if supported"
)
CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Expose-Headers",
        "Connect-Protocol-Version, Connect-Timeout-Ms, Grpc-Status, Grpc-Message, "
        "Location, Cache-Control, X-Content-Type-Options",
    ),
]


class Envd:
    """The daemon: its state and the request router."""

    def __init__(self, state: EnvdState | None = None) -> None:
        self.state = state or EnvdState()

    def context(self, req: Request) -> Context:
        auth = req.headers.get("authorization", "")
        name = self.state.default_user
        if auth[:6].lower() == "basic ":
            try:
                name = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0] or name
            except (ValueError, UnicodeDecodeError) as e:
                raise RpcError("unauthenticated", "invalid authorization header") from e
        try:
            user = users.lookup(name)
        except users.UnknownUser as e:
            raise RpcError("unauthenticated", f"invalid username: '{name}'") from e
        try:
            timeout = int(req.headers.get("connect-timeout-ms", "0")) or None
        except ValueError:
            timeout = None
        return Context(self.state, user, req.headers, timeout)

    def authorized(self, req: Request) -> bool:
        return self.state.accepts(req.headers.get("x-access-token"))

    def route(self, req: Request) -> Response:
        path, method = req.path, req.method
        if method == "OPTIONS":
            return Response(
                204,
                [
                    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS, HEAD"),
                    (
                        "Access-Control-Allow-Headers",
                        req.headers.get("access-control-request-headers", "*"),
                    ),
                    ("Access-Control-Max-Age", "7200"),
                ],
            )
        if path == "/health" and method in ("GET", "HEAD"):
            return api.health(req, self.state)
        if path == "/files":
            from hearth.envd import files

            ctx = Context(self.state, None, req.headers, None)  # files resolve `username`
            if method in ("GET", "HEAD"):
                resp = files.get_files(req, ctx)
            elif method == "POST":
                resp = files.post_files(req, ctx)
            else:
                return Response.error(405, "method not allowed")
            from hearth.envd import logs

            logs.log_files(req, resp)
            return resp
        if path == "/init" and method == "POST":
            return api.init(req, self.state)
        if not self.authorized(req):
            return Response.error(401, UNAUTHORIZED)
        if path == "/envs" and method == "GET":
            return api.envs(req, self.state)
        if path == "/metrics" and method == "GET":
            return api.metrics(req, self.state)
        if path == "/logs" and method == "GET":
            from hearth.envd import logs

            return logs.serve(req)
        service, _, name = path.strip("/").partition("/")
        if method == "POST" and service in SERVICES:
            rpc_method = importlib.import_module(SERVICES[service]).METHODS.get(name)
            if rpc_method is not None:
                return connect.handle(req, rpc_method, lambda: self.context(req))
        return Response.error(404, f"path '{path}' not found")

    def serve_connection(self, sock: socket.socket) -> None:
        conn = Connection(sock)
        try:
            while True:
                try:
                    req = read_request(conn)
                except BadRequest as e:
                    write_response(conn, Response.error(400, str(e)))
                    return
                if req is None:
                    return
                try:
                    resp = self.route(req)
                except HttpError as e:
                    resp = Response.error(e.status, e.message)
                except RpcError as e:
                    resp = connect.unary_error(e)
                except Exception as e:  # noqa: BLE001 - answer, and keep serving
                    log(f"{req.method} {req.path}: {type(e).__name__}: {e}")
                    resp = Response.error(500, f"internal error: {type(e).__name__}: {e}")
                resp.headers.extend(CORS_HEADERS)
                write_response(conn, resp, head_only=req.method == "HEAD")
                try:
                    req.body.drain()
                except BadRequest:
                    return
                if req.headers.get("connection", "").lower() == "close":
                    return
        except (OSError, BadRequest):
            return  # the client went away mid-request or mid-stream
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def serve(self, host: str, port: int, ready: threading.Event | None = None) -> None:
        listener = socket.create_server((host, port), backlog=1024, reuse_port=False)
        if ready is not None:
            ready.set()
        threading.stack_size(512 * 1024)
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.serve_connection, args=(sock,), daemon=True).start()


def log(message: str) -> None:
    print(f"envd: {message}", file=sys.stderr, flush=True)
