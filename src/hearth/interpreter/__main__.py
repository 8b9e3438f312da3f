"""`python3 -m hearth.interpreter [--host H] [--port P]`: serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket

from hearth.interpreter._app import DEFAULT_CWD, Interpreter
from hearth.interpreter._http import serve_connection

PORT = 49999


async def serve(host: str, port: int, cwd: str) -> None:
    interpreter = Interpreter(cwd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await serve_connection(interpreter.handle, reader, writer)

    # Listen at once (health says 503 until the python kernel is warm), then start it.
    server = await asyncio.start_server(connection, host, port, reuse_address=True, limit=2**20)
    starting = asyncio.create_task(interpreter.start())
    try:
        await asyncio.wait(
            {starting, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
        if starting.done():
            starting.result()  # a failed start ends the process; the supervisor retries
            await stop.wait()
    finally:
        server.close()
        starting.cancel()
        with contextlib.suppress(BaseException):
            await starting
        await interpreter.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m hearth.interpreter")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--cwd", default=DEFAULT_CWD, help="default contexts' directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("traitlets").setLevel(logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.cwd))


if __name__ == "__main__":
    main()
