"""Run envd: `python -m hearth.envd [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def reap_as_init() -> None:
    """As PID 1 of a sandbox, fork: the child serves, this process reaps orphans.

    Orphaned grandchildren of the user's commands are re-parented to PID 1; without a
    reaper they would stay zombies for the sandbox's life.
    """
    child = os.fork()
    if child == 0:
        return
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda s, _f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="envd", description="Hearth's in-sandbox daemon")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=49983)
    args = parser.parse_args(argv)
    if os.getpid() == 1:
        reap_as_init()
    from hearth.envd.server import Envd

    try:
        Envd().serve(args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
