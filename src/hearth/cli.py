"""The `hearth` command line.

argparse rather than typer: it is in the standard library, so `hearth` adds no
dependency and starts fast, and each subcommand imports what it runs only when it runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hearth.node.runtime import RUNTIMES

if TYPE_CHECKING:
    from datetime import datetime

    from hearth.store import Store, Team

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

    serve = commands.add_parser(
        "serve",
        help="run the E2B API, the sandbox proxy and a node on this machine",
        description="Run Hearth on one machine: API and sandbox traffic on one port.",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument(
        "--data-dir",
        type=Path,
        help="the database and the sandboxes' state (default: $HEARTH_DATA_DIR or /var/lib/hearth)",
    )
    serve.add_argument(
        "--domain",
        action="append",
        default=[],
        help="base domain of {port}-{id}.DOMAIN sandbox hosts (repeatable; the first is"
        " advertised; default: localhost:PORT)",
    )
    serve.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="what runs sandboxes (default: HEARTH_RUNTIME, else auto: microvm where the"
        " CPU has hardware virtualization, container elsewhere)",
    )
    serve.add_argument("--proxy-port", type=int, help="also serve sandbox traffic alone here")
    serve.set_defaults(run=_serve)

    keys = commands.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Manage the API keys that the E2B SDKs send as X-API-Key.",
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    team = argparse.ArgumentParser(add_help=False)
    team.add_argument("--team", default="default", help="team name (default: %(default)s)")
    create = key_commands.add_parser(
        "create", parents=[team], help="create a key and print it (it is shown only once)"
    )
    create.add_argument("--name", default="cli", help="a label for the key (default: %(default)s)")
    create.set_defaults(run=_keys_create)
    listing = key_commands.add_parser("list", parents=[team], help="list the team's keys")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    listing.set_defaults(run=_keys_list)
    revoke = key_commands.add_parser("revoke", parents=[team], help="revoke a key by its ID")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(run=_keys_revoke)

    template = commands.add_parser("template", help="build the built-in templates")
    template_commands = template.add_subparsers(dest="template_command", required=True)
    build_base = template_commands.add_parser(
        "build-base",
        help="build (or check) the base template's root and the envd bundle",
        description="Build the `base` template (Debian with python3, pip, venv, nodejs,"
        " npm, git, curl, sudo and the user `user`) and the envd bundle, with progress."
        " `hearth serve` does this at its first start; the result is cached.",
    )
    build_base.set_defaults(run=_template_build_base)
    build_interpreter = template_commands.add_parser(
        "build-code-interpreter",
        help="build (or check) the code-interpreter-v1 template's root",
        description="Build the `code-interpreter-v1` template: the base template plus"
        " Jupyter kernels (python, javascript/typescript on deno, bash, R), the data stack"
        " (numpy, pandas, matplotlib, scipy, scikit-learn, ...) and Hearth's interpreter"
        " server on port 49999, with progress. `hearth serve` builds it in the background"
        " after base; the result is cached.",
    )
    build_interpreter.set_defaults(run=_template_build_code_interpreter)

    args = parser.parse_args(argv)
    sys.exit(args.run(args))


def _template_build_base(args: argparse.Namespace) -> int:
    from hearth.node.disk.rootfs import ensure_root
    from hearth.node.guest.envd_bundle import ensure_bundle

    print(ensure_bundle())
    print(ensure_root("base"))
    return 0


def _template_build_code_interpreter(args: argparse.Namespace) -> int:
    from hearth.node.disk.rootfs import ensure_root
    from hearth.node.guest.envd_bundle import ensure_bundle

    print(ensure_bundle())
    print(ensure_root("code-interpreter"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from hearth.config import settings
    from hearth.node.runtime import choose_runtime
    from hearth.serve import ServeOptions, main

    try:
        runtime = choose_runtime(args.runtime or settings().runtime)
    except ValueError as e:  # a bad HEARTH_RUNTIME
        print(f"hearth serve: {e}", file=sys.stderr)
        return 2
    print(f"hearth: runtime {runtime}", file=sys.stderr)
    options = ServeOptions(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        domains=tuple(args.domain),
        runtime=runtime,
        proxy_port=args.proxy_port,
        pool_sizes=settings().pool_sizes,
    )
    return main(options)


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


def _keys_create(args: argparse.Namespace) -> int:
    async def create(store: Store, team: Team) -> int:
        key, record = await store.create_api_key(team.id, args.name)
        print(key, flush=True)
        print(
            f"hearth: created key {record.id} ({record.name}) for team {team.name};"
            " it is shown only this once",
            file=sys.stderr,
        )
        return 0

    # On a fresh installation the default team is made here, and its first key is this one.
    return _in_team(args.team, create, create_default=True)


def _keys_list(args: argparse.Namespace) -> int:
    async def show(store: Store, team: Team) -> int:
        header = ("ID", "NAME", "KEY", "CREATED", "LAST USED", "REVOKED")[: 6 if args.all else 5]
        rows = [header]
        for key in await store.list_api_keys(team.id, include_revoked=args.all):
            when = (key.created_at, key.last_used_at, key.revoked_at)
            rows.append((key.id, key.name, key.masked, *map(_when, when))[: len(header)])
        widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return _in_team(args.team, show)


def _keys_revoke(args: argparse.Namespace) -> int:
    async def revoke(store: Store, team: Team) -> int:
        if not await store.revoke_api_key(team.id, args.id):
            print(f"hearth: team {team.name} has no live key {args.id}", file=sys.stderr)
            return 1
        print(f"hearth: revoked key {args.id}", file=sys.stderr)
        return 0

    return _in_team(args.team, revoke)


def _in_team(
    name: str,
    command: Callable[[Store, Team], Awaitable[int]],
    create_default: bool = False,
) -> int:
    """Run `command` on the store that the settings name, for the team called `name`."""
    import asyncio

    from hearth import store
    from hearth.config import settings

    async def run() -> int:
        async with await store.open(settings().database_url) as opened:
            team = await opened.get_team_by_name(name)
            if team is None and create_default and name == store.DEFAULT_TEAM:
                team = await opened.create_team(name)
            if team is None:
                print(f"hearth: no team named {name!r}", file=sys.stderr)
                return 1
            return await command(opened, team)

    return asyncio.run(run())


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
