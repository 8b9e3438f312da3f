"""Run envd: `python -m hearth.envd [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="envd", description="Hearth's in-sandbox daemon")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=49983)
    args = parser.parse_args(argv)
    from hearth.envd.server import Envd

    if os.getpid() == 1:
        # As a sandbox's first process, envd inherits every orphan; reap them. The kernel
        # also drops signals to a namespace's init that have no handler, so stopping
        # envd with SIGTERM needs one.
        import signal
        import threading

        signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(0))
        from hearth.envd.process import reap_orphans

        threading.Thread(target=reap_orphans, name="reaper", daemon=True).start()

    try:
        Envd().serve(args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
