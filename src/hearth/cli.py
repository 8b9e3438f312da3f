"""The `hearth` command line.

argparse rather than typer: it is in the standard library, so `hearth` adds no
dependency and starts fast, and each subcommand imports what it runs only when it runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

ENVD_DEFAULT_PORT = 49983


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hearth", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envd = commands.add_parser(
        "envd",
        help="run envd on this machine (isolated, or directly on the host)",
        description="Run envd, the in-sandbox daemon, for the E2B SDK to talk to.",
    )
    envd.add_argument(
        "--isolated",
        action="store_true",
        help="run it in its own namespaces over a throwaway root (needs root)",
    )
    envd.add_argument("--port", type=int, default=ENVD_DEFAULT_PORT)
    envd.add_argument(
        "--root",
        choices=("busybox", "debian"),
        default="busybox",
        help="root filesystem for --isolated (default: %(default)s)",
    )
    envd.add_argument("--host", default="127.0.0.1", help="address to listen on without --isolated")
    envd.set_defaults(run=_envd)

    args = parser.parse_args(argv)
    sys.exit(args.run(args))


def _envd(args: argparse.Namespace) -> int:
    if not args.isolated:
        _envd_on_host(args.host, args.port)
    from hearth.node.runtime.isolated import IsolatedEnvd, IsolatedEnvdError

    # SIGTERM unwinds like Ctrl-C, so the sandbox is taken down either way; SIGINT is
    # set explicitly because a parent (a job control shell, make) may have ignored it.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    sandbox = IsolatedEnvd(args.root, args.port, stderr=sys.stderr.fileno())
    try:
        sandbox.start()
        _print_instructions(args.root, sandbox.port)
        code = sandbox.wait()
        print(f"hearth: envd exited ({code})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (IsolatedEnvdError, PermissionError) as e:
        print(f"hearth: {e}", file=sys.stderr)
        return 1
    finally:
        print("hearth: stopping envd and removing its sandbox", file=sys.stderr)
        sandbox.stop()


def _envd_on_host(host: str, port: int) -> NoReturn:
    print(
        "hearth: warning: envd runs directly on this host, without isolation: commands"
        " and file operations sent to it act on this machine as the user running it.",
        file=sys.stderr,
    )
    command = [sys.executable, "-m", "hearth.envd", "--host", host, "--port", str(port)]
    os.execv(sys.executable, command)


def _print_instructions(root: str, port: int) -> None:
    url = f"http://127.0.0.1:{port}"
    lines = [
        f"envd is running isolated over a {root} root at {url}",
        "Point the E2B SDK at it:",
        "  export E2B_DEBUG=true",
    ]
    if port != ENVD_DEFAULT_PORT:
        # In debug mode the SDK assumes localhost:49983 unless told otherwise.
        lines.append(f"  export E2B_SANDBOX_URL={url}")
    lines.append("Ctrl-C stops it and removes everything it created.")
    print("\n".join(lines), flush=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
