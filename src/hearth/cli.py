"""The `hearth` command line.

argparse rather than typer: it is in the standard library, so `hearth` adds no
dependency and starts fast, and each subcommand imports what it runs only when it runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hearth.node.runtime import RUNTIMES

if TYPE_CHECKING:
    from datetime import datetime

    import httpx
    from e2b import LogEntry, TemplateClass

    from hearth.store import Store, Team, TeamLimits

ENVD_DEFAULT_PORT = 49983
DEFAULT_API_URL = "http://localhost:3000"  # `hearth serve`'s, as E2B_API_URL says it
# hearth.template.builtins.names() for the help text, which imports no recipe.
BUILTIN_TEMPLATES = ("busybox", "debian", "base", "code-interpreter-v1")


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
        "--template",
        default="base",
        metavar="NAME[:TAG]",
        help="the files of this template for --isolated: a built-in one (built here if need"
        " be) or one built on this machine's server (default: %(default)s)",
    )
    envd.add_argument(
        "--root",
        choices=("busybox", "debian"),
        help="a bare built-in root for --isolated instead of --template",
    )
    envd.add_argument(
        "--team", default="default", help="whose --template to look up (default: %(default)s)"
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
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="certificate chain (PEM) for https on the same port (default: HEARTH_TLS_CERT,"
        " else certificates of a local CA made in DATA_DIR/tls)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        metavar="FILE",
        help="its private key (default: HEARTH_TLS_KEY, else in the --tls-cert file)",
    )
    serve.add_argument(
        "--no-trust-ca",
        dest="trust_ca",
        action="store_false",
        help="do not add the local CA to this machine's trust store",
    )
    serve.set_defaults(run=_serve)

    teams = commands.add_parser(
        "teams",
        help="create and list teams, and set their limits",
        description="Teams own sandboxes, templates and keys; each sees only its own.",
    )
    team_commands = teams.add_subparsers(dest="teams_command", required=True, metavar="COMMAND")
    limits = argparse.ArgumentParser(add_help=False)
    for flag, what in TEAM_LIMIT_FLAGS.items():
        limits.add_argument(
            f"--{flag}", type=_limit, metavar="N", help=f"{what} (0: no limit; 'default')"
        )
    team_create = team_commands.add_parser(
        "create", parents=[limits], help="create a team (then: hearth keys create --team NAME)"
    )
    team_create.add_argument("name", metavar="NAME")
    team_create.set_defaults(run=_teams_create)
    team_commands.add_parser("list", help="list teams and their limits").set_defaults(
        run=_teams_list
    )
    team_set = team_commands.add_parser(
        "set", parents=[limits], help="change a team's limits (others stay as they are)"
    )
    team_set.add_argument("name", metavar="NAME")
    team_set.set_defaults(run=_teams_set)

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

    template = commands.add_parser(
        "template",
        help="build, list and remove templates",
        description="Build templates (the built-in ones here, a Dockerfile through the"
        " server as the E2B SDK does), list and remove the server's.",
    )
    template_commands = template.add_subparsers(
        dest="template_command", required=True, metavar="COMMAND"
    )
    build = template_commands.add_parser(
        "build",
        help="build a built-in template here, or a Dockerfile through the server",
        description="Without -f, build (or find cached) the built-in template NAME"
        f" ({', '.join(BUILTIN_TEMPLATES)}) on this machine, with progress; no server"
        " needed, `hearth serve` uses the cache. With -f, build the Dockerfile as"
        " NAME[:TAG] through the running server (E2B_API_URL, default"
        f" {DEFAULT_API_URL}, with E2B_API_KEY) exactly as the E2B SDK's Template.build"
        " does, printing its build logs.",
    )
    build.add_argument("name", metavar="NAME[:TAG]")
    build.add_argument(
        "-f",
        "--file",
        dest="dockerfile",
        type=Path,
        metavar="DOCKERFILE",
        help="the Dockerfile to build",
    )
    build.add_argument(
        "-p",
        "--path",
        dest="context",
        type=Path,
        metavar="CONTEXT_DIR",
        help="the directory COPY takes files from (default: the Dockerfile's)",
    )
    build.add_argument(
        "--cpu-count", type=int, metavar="N", help="vCPUs of the template's sandboxes"
    )
    build.add_argument(
        "--memory-mb", type=int, metavar="N", help="memory of the template's sandboxes, MiB"
    )
    build.add_argument("--no-cache", action="store_true", help="rebuild every step")
    build.add_argument(
        "-c",
        "--cmd",
        dest="start_cmd",
        metavar="START",
        help="the command the template's sandboxes start with (needs --ready-cmd)",
    )
    build.add_argument(
        "--ready-cmd",
        metavar="READY",
        help="the command whose success means a sandbox is ready",
    )
    build.set_defaults(run=_template_build)
    ls = template_commands.add_parser(
        "ls",
        help="list the server's templates",
        description="List the templates the server's API key may use (GET /templates).",
    )
    ls.set_defaults(run=_template_ls)
    rm = template_commands.add_parser(
        "rm",
        help="remove a template from the server",
        description="Remove a template, its tags and its builds (DELETE /templates/NAME).",
    )
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(run=_template_rm)

    args = parser.parse_args(argv)
    sys.exit(args.run(args))


def _template_build(args: argparse.Namespace) -> int:
    if args.dockerfile is None:
        return _build_builtin(args)
    return _build_dockerfile(args)


def _build_builtin(args: argparse.Namespace) -> int:
    from hearth.node.guest.envd_bundle import ensure_bundle
    from hearth.node.interface import BuildFailed
    from hearth.template import builtins

    if args.name not in builtins.names():
        return _error(
            f"{args.name!r} is not a built-in template ({', '.join(builtins.names())}):"
            " pass -f Dockerfile to build it through the server",
            2,
        )
    given = {
        "-p": args.context,
        "--cpu-count": args.cpu_count,
        "--memory-mb": args.memory_mb,
        "--no-cache": args.no_cache,
        "-c": args.start_cmd,
        "--ready-cmd": args.ready_cmd,
    }
    if flags := [flag for flag, value in given.items() if value]:
        return _error(f"{', '.join(flags)}: only with -f (a built-in template is as it is)", 2)
    print(f"hearth: envd bundle {ensure_bundle()}", file=sys.stderr, flush=True)
    try:
        layers = _builtin_layers(args.name)
    except BuildFailed as e:
        return _error(f"building {args.name} failed: {e}", 1)
    print("\n".join(map(str, layers)))
    return 0


def _builtin_layers(name: str) -> list[Path]:
    """Build (or find cached) the built-in template `name` here, with progress on stderr:
    its layer directories (bottom first)."""
    import time

    from hearth.node.local import build_builtin
    from hearth.template.layers import LayerStore

    started = time.monotonic()

    def log(level: str, message: str, step: str | None) -> None:
        if level != "debug":
            label = "" if level == "info" else f"{level}: "
            elapsed = time.monotonic() - started
            print(f"{elapsed:6.1f}s {label}{message}", file=sys.stderr, flush=True)

    return LayerStore.of_cache().paths(build_builtin(name, log).layers)


def _build_dockerfile(args: argparse.Namespace) -> int:
    import time

    import httpx
    from e2b import AuthenticationException, BuildException, SandboxException, Template

    api_url, api_key = _api()
    if args.start_cmd and not args.ready_cmd:
        return _error("-c/--cmd needs --ready-cmd (the command that says it is ready)", 2)
    dockerfile = args.dockerfile.resolve()
    if not dockerfile.is_file():
        return _error(f"no Dockerfile at {args.dockerfile}", 2)
    context = (args.context or dockerfile.parent).resolve()
    started = time.monotonic()

    def log(entry: LogEntry) -> None:
        elapsed = time.monotonic() - started
        print(
            f"{elapsed:6.1f}s {entry.level.upper():5} {entry.message}", file=sys.stderr, flush=True
        )

    try:
        builder = Template(file_context_path=context).from_dockerfile(str(dockerfile))
        template: TemplateClass = builder
        if args.start_cmd:
            template = builder.set_start_cmd(args.start_cmd, args.ready_cmd)
        elif args.ready_cmd:
            template = builder.set_ready_cmd(args.ready_cmd)
        info = Template.build(
            template,
            args.name,
            cpu_count=args.cpu_count,
            memory_mb=args.memory_mb,
            skip_cache=args.no_cache,
            on_build_logs=log,
            api_key=api_key,
            api_url=api_url,
        )
    except BuildException as e:
        return _error(f"build failed: {e}", 1)
    except (AuthenticationException, SandboxException, ValueError) as e:
        # A key the server refuses, an API error, a Dockerfile the SDK cannot read.
        return _error(str(e), 1)
    except httpx.TransportError as e:
        return _error(f"cannot reach {api_url} ({e}): is hearth serve running?", 1)
    print(f"{info.name}: template {info.template_id}, build {info.build_id}")
    return 0


def _template_ls(args: argparse.Namespace) -> int:
    answer = _request("GET", "/templates")
    if isinstance(answer, int):
        return answer
    rows = [("NAMES", "TEMPLATE ID", "STATUS", "CPU", "MEMORY MB", "PUBLIC", "LAST BUILD")]
    for t in answer.json():
        names = t.get("names") or t.get("aliases") or []
        rows.append(
            (
                ",".join(names) or "-",
                t["templateID"],
                t.get("buildStatus", "-"),
                str(t["cpuCount"]),
                str(t["memoryMB"]),
                "yes" if t.get("public") else "no",
                t.get("buildID") or "-",
            )
        )
    _print_table(rows)
    return 0


def _template_rm(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    answer = _request("DELETE", f"/templates/{quote(args.name, safe='')}")
    if isinstance(answer, int):
        return answer
    print(f"removed {args.name}")
    return 0


def _api() -> tuple[str, str]:
    """The server's URL and API key, as the E2B SDK finds them (exits 2 without a key)."""
    api_key = os.environ.get("E2B_API_KEY")
    if not api_key:
        sys.exit(
            _error("set E2B_API_KEY to a key of the server (hearth keys create prints one)", 2)
        )
    return os.environ.get("E2B_API_URL") or DEFAULT_API_URL, api_key


def _request(method: str, path: str) -> httpx.Response | int:
    """One call to the server's REST API; an exit code (the error printed) if it fails."""
    import httpx

    api_url, api_key = _api()
    url = api_url.rstrip("/") + path
    try:
        with httpx.Client(trust_env=not _is_loopback(url), timeout=30) as client:
            response = client.request(method, url, headers={"X-API-Key": api_key})
    except httpx.TransportError as e:
        return _error(f"cannot reach {api_url} ({e}): is hearth serve running?", 1)
    if response.is_success:
        return response
    try:
        message = response.json()["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text or response.reason_phrase
    return _error(f"{method} {path}: {response.status_code} {message}", 1)


def _is_loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _error(message: str, code: int) -> int:
    print(f"hearth: {message}", file=sys.stderr)
    return code


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
        tls_cert=args.tls_cert or settings().tls_cert,
        tls_key=args.tls_key or settings().tls_key,
        trust_ca=args.trust_ca,
    )
    return main(options)


def _envd(args: argparse.Namespace) -> int:
    if not args.isolated:
        _envd_on_host(args.host, args.port)
    from hearth.node.runtime.isolated import IsolatedEnvd, IsolatedEnvdError

    root: str | list[Path]
    if args.root:
        root, what = args.root, f"a {args.root} root"
    else:
        found = _template_layers(args.template, args.team)
        if isinstance(found, int):
            return found
        root, what = found, f"the {args.template} template"
    # SIGTERM unwinds like Ctrl-C, so the sandbox is taken down either way; SIGINT is
    # set explicitly because a parent (a job control shell, make) may have ignored it.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    sandbox = IsolatedEnvd(root, args.port, stderr=sys.stderr.fileno())
    try:
        sandbox.start()
        _print_instructions(what, sandbox.port)
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


def _template_layers(name: str, team_name: str) -> list[Path] | int:
    """The layer directories of template `name` (bottom first): a built-in one's, built
    here if need be, else those of the build the team's template's tag names (`:tag`,
    default `default`), which must be on this machine. An exit code if there are none."""
    from hearth.template import builtins

    if name in builtins.names():
        from hearth.node.interface import BuildFailed

        try:
            return _builtin_layers(name)
        except BuildFailed as e:
            return _error(f"building {name} failed: {e}", 1)

    from hearth.template.artifact import Artifact
    from hearth.template.layers import LayerStore

    alias, _, tag = name.partition(":")
    artifacts: list[Artifact] = []

    async def find(store: Store, team: Team) -> int:
        template = await store.get_template(team.id, alias)
        if template is None:
            return _error(f"team {team.name} has no template {alias!r}", 1)
        build = await store.tagged_build(template.template_id, tag or "default")
        if build is None or build.artifact is None:
            return _error(f"template {alias} has no ready build tagged {tag or 'default'}", 1)
        artifacts.append(Artifact.from_json(build.artifact))
        return 0

    code = _in_team(team_name, find)
    if code:
        return code
    layers = LayerStore.of_cache()
    if missing := layers.missing(artifacts[0].layers):
        return _error(
            f"the layers of {name} ({', '.join(missing)}) are not on this machine: build it again",
            1,
        )
    return layers.paths(artifacts[0].layers)


def _envd_on_host(host: str, port: int) -> NoReturn:
    print(
        "hearth: warning: envd runs directly on this host, without isolation: commands"
        " and file operations sent to it act on this machine as the user running it.",
        file=sys.stderr,
    )
    command = [sys.executable, "-m", "hearth.envd", "--host", host, "--port", str(port)]
    os.execv(sys.executable, command)


def _print_instructions(what: str, port: int) -> None:
    url = f"http://127.0.0.1:{port}"
    lines = [
        f"envd is running isolated over {what} at {url}",
        "Point the E2B SDK at it:",
        "  export E2B_DEBUG=true",
    ]
    if port != ENVD_DEFAULT_PORT:
        # In debug mode the SDK assumes localhost:49983 unless told otherwise.
        lines.append(f"  export E2B_SANDBOX_URL={url}")
    lines.append("Ctrl-C stops it and removes everything it created.")
    print("\n".join(lines), flush=True)


# `hearth teams` flags -> what they bound; each is a `TeamLimits` field (dashes for
# underscores). Unset: the server's default for every team.
TEAM_LIMIT_FLAGS = {
    "concurrent-sandboxes": "running sandboxes at once",
    "starts-per-second": "sandbox creates per second",
    "vcpus": "vCPUs of its running sandboxes together",
    "memory-mb": "MiB of memory of its running sandboxes together",
    "max-timeout": "seconds a sandbox may be given at a time",
}
_DEFAULT = -1  # `--flag default`: back to the server's


def _limit(text: str) -> int:
    if text == "default":
        return _DEFAULT
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("a limit is 0 (none) or more, or 'default'")
    return value


def _limits_of(args: argparse.Namespace, limits: TeamLimits) -> TeamLimits:
    from dataclasses import replace

    given = {}
    for flag in TEAM_LIMIT_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            given[flag.replace("-", "_")] = None if value == _DEFAULT else value
    return replace(limits, **given)


def _describe_limits(limits: TeamLimits) -> str:
    own = limits.to_json()
    return ", ".join(f"{k.replace('_', '-')}={v}" for k, v in own.items()) or "server defaults"


def _teams_create(args: argparse.Namespace) -> int:
    import asyncio

    from hearth import store
    from hearth.config import settings
    from hearth.store import Conflict, TeamLimits

    async def create() -> int:
        async with await store.open(settings().database_url) as opened:
            try:
                team = await opened.create_team(args.name)
            except Conflict:
                return _error(f"a team named {args.name!r} exists", 1)
            limits = _limits_of(args, TeamLimits())
            await opened.set_team_limits(team.id, limits)
        print(team.id)
        print(
            f"hearth: created team {team.name} ({_describe_limits(limits)});"
            f" make its first key with: hearth keys create --team {team.name}",
            file=sys.stderr,
        )
        return 0

    return asyncio.run(create())


def _teams_list(args: argparse.Namespace) -> int:
    import asyncio

    from hearth import store
    from hearth.config import settings

    async def show() -> int:
        async with await store.open(settings().database_url) as opened:
            rows = [("ID", "NAME", "CREATED", "LIMITS")]
            for team in await opened.list_teams():
                limits = _describe_limits(team.limits)
                rows.append((team.id, team.name, _when(team.created_at), limits))
        _print_table(rows)
        return 0

    return asyncio.run(show())


def _teams_set(args: argparse.Namespace) -> int:
    async def change(opened: Store, team: Team) -> int:
        limits = _limits_of(args, team.limits)
        await opened.set_team_limits(team.id, limits)
        print(f"hearth: team {team.name}: {_describe_limits(limits)}", file=sys.stderr)
        return 0

    return _in_team(args.name, change)


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
        _print_table(rows)
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
