"""`hearth serve`: the API, the proxy and a node in one process, on one port.

The gateway (`hearth.proxy`) owns the public listener: requests for a sandbox go to the
node's sandbox, the rest to the API, which uvicorn serves on a private abstract Unix
socket in the same event loop. One port therefore serves E2B_API_URL and
E2B_SANDBOX_URL alike (spec §1.6, recipe A), in plain HTTP and in TLS: with the
operator's certificate, or a local CA's that this machine trusts (`hearth.tls`), so that
`https://{sandbox.get_host(port)}` works as it does at E2B.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from hearth import config, tracing
from hearth._malloc import fix_mmap_threshold
from hearth.api import (
    ApiSettings,
    TemplateBuilds,
    create_app,
    ensure_builtin,
    live_sandboxes,
    start_builtin,
)
from hearth.dashboard import DASHBOARD_PATH
from hearth.node.interface import Node
from hearth.proxy import Gateway, Listener, TLSContexts, listen
from hearth.store import Build, Store
from hearth.store import open as open_store
from hearth.template.artifact import Artifact
from hearth.template.recipe import Recipe
from hearth.tls import LocalCA, certificate_context

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hearth.node.local import RuntimeKind

log = logging.getLogger(__name__)
T = TypeVar("T")

# The templates every installation has, built from their recipes at start: `base` (what
# `Sandbox.create()` asks for) before the server listens, the code interpreter's after.
DEFAULT_TEMPLATE = "base"
CODE_INTERPRETER_TEMPLATE = "code-interpreter-v1"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 3000
    data_dir: Path | None = None
    # Base domains of `{port}-{id}.{domain}` hosts; the first is the one advertised.
    # Empty: `localhost:PORT`, which browsers and curl resolve to this machine.
    domains: tuple[str, ...] = ()
    runtime: RuntimeKind = "container"
    proxy_port: int | None = None  # an extra proxy-only listener
    database_url: str | None = None  # default: SQLite in data_dir
    max_timeout: int = 24 * 3600
    # Template id -> sandboxes kept started ahead of its creates (the node's warm pool,
    # container runtime). Empty: none; the command line passes HEARTH_POOL_SIZE's.
    pool_sizes: Mapping[str, int] = field(default_factory=dict)
    # Template builds that run at once; None: HEARTH_BUILD_CONCURRENCY's.
    build_concurrency: int | None = None
    # Snapshots a team may keep; None: HEARTH_MAX_SNAPSHOTS's.
    max_snapshots: int | None = None
    # The certificate (chain) and key TLS clients get; no key: it is in the certificate's
    # file. No certificate: the local CA's, kept in `{data_dir}/tls`.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Add the local CA to this machine's trust store (`hearth serve` does; a program or
    # test that embeds the server trusts `Running.ca` itself, or asks for this).
    trust_ca: bool = False
    # The DNS servers sandboxes are given (and the egress proxy resolves with); empty:
    # HEARTH_SANDBOX_DNS's, else the host's.
    sandbox_dns: tuple[str, ...] = ()
    # The bearer token `GET /metrics` asks for; None: HEARTH_METRICS_TOKEN's (unset: none).
    metrics_token: str | None = None
    # The OTLP/HTTP URL traces are exported to (`http://collector:4318/v1/traces`); None:
    # the OTEL_EXPORTER_OTLP_ENDPOINT's (unset: none), "": none.
    otlp_endpoint: str | None = None


@dataclass
class Running:
    """What a started server tells whoever started it."""

    api_url: str
    sandbox_url: str
    domain: str
    api_key: str | None  # the default team's key, on the very first start only
    port: int
    proxy_port: int | None
    store: Store
    app: object = field(repr=False)
    # The local CA whose certificates the port presents to TLS clients; None: the
    # operator's certificate.
    ca: LocalCA | None = None
    ca_trusted: bool = False  # whether this machine's trust store holds it

    def environment(self) -> dict[str, str]:
        """The variables of spec §1.6 recipe A that point the SDKs here (the key only
        when it is known)."""
        key = {"E2B_API_KEY": self.api_key} if self.api_key else {}
        return {
            **key,
            "E2B_API_URL": self.api_url,
            "E2B_SANDBOX_URL": self.sandbox_url,
            "E2B_DOMAIN": self.domain,
        }

    def recipe(self) -> list[str]:
        """The `export` lines of recipe A."""
        return [f"export {name}={value}" for name, value in self.environment().items()]


async def serve(
    options: ServeOptions,
    *,
    node: Node | None = None,
    started: Callable[[Running], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or SIGINT/SIGTERM when run from the main thread)."""
    stop = stop or asyncio.Event()
    data_dir, url = _storage(options)
    # Before anything starts: a certificate that cannot be loaded is a bad option.
    tls, ca = await asyncio.to_thread(_tls, options, data_dir)
    trusted = ca is not None and (
        await asyncio.to_thread(ca.install) if options.trust_ca else ca.trusted()
    )
    store = await open_store(url)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        # From here on a signal stops the server cleanly, even one sent during start.
        stack.enter_context(_signals_set(stop))
        # Before anything starts a task: the tasks inherit the tracer (spans sent last).
        await stack.enter_async_context(_exporting(options))
        _, api_key = await store.ensure_default_team()
        # Bound before the node starts (its rules open these ports to sandboxes), served
        # once everything is ready.
        public = listen(options.host, options.port)
        stack.callback(public.close)  # a no-op once its server has closed it
        port = public.getsockname()[1]
        proxy_sock = None
        if options.proxy_port is not None:
            proxy_sock = listen(options.host, options.proxy_port)
            stack.callback(proxy_sock.close)
        ports = (port,) + ((proxy_sock.getsockname()[1],) if proxy_sock else ())
        if node is None:
            node = await _start_node(options, data_dir, ca, ports)
        elif (start := getattr(node, "start", None)) is not None:
            # A node given by the caller is started (and so reconciled) here too: the
            # API's reconcile below asks it what it runs and holds paused.
            await start()
        # Container and microVM sandboxes outlive a restart of the server and are
        # adopted by the next start; isolated ones cannot, so they are stopped.
        detach = getattr(node, "detach", None)
        keep = options.runtime in ("container", "microvm")
        stack.push_async_callback(detach if keep and detach is not None else node.close)

        environment = config.settings()
        settings = ApiSettings(
            max_timeout=options.max_timeout,
            data_dir=data_dir,
            build_concurrency=options.build_concurrency or environment.build_concurrency,
            max_snapshots=options.max_snapshots or environment.max_snapshots,
            metrics_token=options.metrics_token or environment.metrics_token,
            metrics_retention=environment.metrics_retention_hours * 3600,
            sandbox_log_max_bytes=environment.sandbox_log_max_bytes,
            sandbox_log_retention=environment.sandbox_log_retention,
        )
        builds = TemplateBuilds(
            store,
            node,
            concurrency=settings.build_concurrency,
            # A template that HEARTH_POOL_SIZE names is warmed with each new build of it.
            ready=lambda build: _warm_built(node, store, build, options.pool_sizes),
        )
        stack.push_async_callback(builds.close)  # before the node and the store close
        await builds.fail_unfinished()
        recipes = await asyncio.to_thread(_builtin_recipes)
        # Built before the first request, with progress on the console: built inside a
        # create, it would outlast the SDK's request timeout.
        ready = await ensure_builtin(
            store,
            builds,
            DEFAULT_TEMPLATE,
            recipes[DEFAULT_TEMPLATE],
            settings=settings,
            echo=_progress(DEFAULT_TEMPLATE),
        )
        if ready is None:
            raise RuntimeError(f"the {DEFAULT_TEMPLATE} template could not be built (see above)")
        # Recorded and started before the first request, so that an early create of it
        # waits for it; built in the background.
        interpreter = await start_builtin(
            store,
            builds,
            CODE_INTERPRETER_TEMPLATE,
            recipes[CODE_INTERPRETER_TEMPLATE],
            settings=settings,
            echo=_progress(CODE_INTERPRETER_TEMPLATE),
        )

        domains = options.domains or (f"localhost:{port}",)
        settings = settings.model_copy(update={"domain": domains[0]})
        app = create_app(store, node, settings, builds=builds)
        api_server, api_task, api_socket = await _start_api(app)
        stack.push_async_callback(_stop_api, api_server, api_task)

        directory = live_sandboxes(app)
        headers_for = getattr(node, "headers_for", None)
        traffic = app.state.metrics.traffic  # what /metrics tells of sandbox traffic
        gateway = Gateway(
            directory,
            domains=domains,
            api_socket=api_socket,
            headers_for=headers_for,
            traffic=traffic,
        )
        listeners = [Listener(public, gateway.handle, tls=tls)]
        gateways = [gateway]
        if proxy_sock is not None:
            proxy_only = Gateway(
                directory, domains=domains, headers_for=headers_for, traffic=traffic
            )
            listeners.append(Listener(proxy_sock, proxy_only.handle, tls=tls))
            gateways.append(proxy_only)
        for listener in listeners:
            listener.start()
        stack.push_async_callback(_stop_listeners, listeners, gateways)

        reachable = _reachable_host(options.host)
        base = f"http://{reachable}:{port}"
        running = Running(
            api_url=base,
            sandbox_url=(
                f"http://{reachable}:{proxy_sock.getsockname()[1]}" if proxy_sock else base
            ),
            domain=domains[0],
            api_key=api_key,
            port=port,
            proxy_port=proxy_sock.getsockname()[1] if proxy_sock else None,
            store=store,
            app=app,
            ca=ca,
            ca_trusted=trusted,
        )
        if started is not None:
            started(running)
        # After the start: the warm pools (which only speed creates up) of the templates
        # ready now; the others' are warmed as their builds become ready.
        later = asyncio.create_task(
            _after_start(store, node, interpreter, options.pool_sizes),
            name="hearth-after-start",
        )
        stack.push_async_callback(_cancel, later)
        names = asyncio.create_task(_check_names(domains), name="hearth-check-names")
        stack.push_async_callback(_cancel, names)
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, api_task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if api_task.done() and (error := api_task.exception()) is not None:
            raise RuntimeError("the API server stopped") from error


def _storage(options: ServeOptions) -> tuple[Path, str]:
    """The data directory and database URL: the options', else the settings'. A
    `--data-dir` moves the default SQLite file with it; HEARTH_DATABASE_URL still wins."""
    settings = config.settings()
    data_dir = (options.data_dir or settings.data_dir).expanduser()
    url = options.database_url or settings.database_url
    if options.data_dir is not None and options.database_url is None:
        default = config.settings({"HEARTH_DATA_DIR": str(settings.data_dir)}).database_url
        if url == default:  # not chosen explicitly: follow the data directory
            url = config.settings({"HEARTH_DATA_DIR": str(data_dir)}).database_url
    # Searchable by all (the container runtime's users reach sandboxes under it), listable
    # by its owner only; the database file itself is the owner's alone.
    data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    return data_dir, url


def _exporting(options: ServeOptions) -> contextlib.AbstractAsyncContextManager[object]:
    """Traces exported where the options, else the OTEL_* variables, say; or none."""
    settings = config.settings()
    endpoint = options.otlp_endpoint
    if endpoint is None:
        endpoint = settings.otlp_traces_endpoint
    return tracing.exporting(endpoint or None, service_name=settings.otel_service_name)


def _builtin_recipes() -> dict[str, Recipe]:
    """The built-in templates' recipes; the files they copy are kept (once, by content)
    where the node keeps its own copies of them."""
    from hearth.template import builtins

    files = config.settings().cache_dir / "builtin-files"
    return {
        name: builtins.recipe(name, files) for name in (DEFAULT_TEMPLATE, CODE_INTERPRETER_TEMPLATE)
    }


def _progress(name: str) -> Callable[[str, str, str | None], None]:
    """A built-in template's build on the console, one line an entry (debug ones aside):
    the builder's messages say what is slow."""

    def echo(level: str, message: str, step: str | None) -> None:
        if level != "debug":
            print(f"hearth: {name}: {message}", file=sys.stderr, flush=True)

    return echo


def _tls(options: ServeOptions, data_dir: Path) -> tuple[TLSContexts, LocalCA | None]:
    """The TLS contexts of the listeners, and the local CA unless the operator gave a
    certificate. A client that sends no SNI (it connected to an IP address) gets the
    local CA's leaf for the address it connected to."""
    if options.tls_cert is None:
        if options.tls_key is not None:
            raise ValueError("--tls-key (HEARTH_TLS_KEY) needs --tls-cert (HEARTH_TLS_CERT)")
        ca = LocalCA.load_or_create(data_dir / "tls")
        return ca.sni_context, ca
    context = certificate_context(options.tls_cert, options.tls_key)
    return (lambda _address: context), None


async def _check_names(domains: Sequence[str]) -> None:
    """Say what to do if sandbox hosts (`1-x.{domain}`) do not resolve on this machine."""
    loop = asyncio.get_running_loop()
    for domain in domains:
        bare = domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain
        name = f"1-x.{bare}"
        try:
            await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            pass
        else:
            continue
        if bare == "localhost" or bare.endswith(".localhost"):
            log.warning(
                "sandbox hosts such as %s do not resolve on this machine (curl and browsers"
                " resolve *.localhost themselves, other programs ask glibc): install"
                " libnss-myhostname (apt-get install libnss-myhostname; it adds"
                " `myhostname` to the hosts line of /etc/nsswitch.conf)",
                name,
            )
        else:
            log.warning(
                "sandbox hosts such as %s do not resolve: add the DNS records *.%s and %s"
                " (A or AAAA) pointing at this machine",
                name,
                bare,
                bare,
            )


async def _start_node(
    options: ServeOptions, data_dir: Path, ca: LocalCA | None, ports: tuple[int, ...]
) -> Node:
    """The in-process node, started (and so reconciled) before the API reconciles; `ca`
    is the local CA (None with the operator's certificate), `ports` the server's own,
    which sandboxes may reach (another sandbox's ports through the proxy)."""
    from hearth.node.local import LocalNode

    node = LocalNode(
        data_dir / "node",
        runtime=options.runtime,
        ca=ca,
        public_ports=ports,
        dns_servers=list(options.sandbox_dns) or config.settings().sandbox_dns or None,
    )
    try:
        await node.start()
    except BaseException:
        await node.close()
        raise
    return node


async def _after_start(
    store: Store,
    node: Node,
    interpreter: Awaitable[object],
    sizes: Mapping[str, int],
) -> None:
    """Warm the pools of the templates that are ready (base is), then wait for the code
    interpreter's build (a failure is logged: a create of it says it has no ready build;
    its pool is warmed by the builds' `ready` hook)."""
    await _warm(node, store, sizes)
    try:
        await interpreter
    except Exception as e:  # noqa: BLE001 - the server serves on without it
        log.error("building the %s template failed: %s", CODE_INTERPRETER_TEMPLATE, e)


async def _warm_built(node: Node, store: Store, build: Build, sizes: Mapping[str, int]) -> None:
    """Warm the pool of the template of a build that just became ready, if asked for."""
    template = await store.find_template(build.template_id)
    names = [build.template_id, *(template.aliases if template else ())]
    await _warm(node, store, {name: sizes[name] for name in names if name in sizes})


async def _warm(node: Node, store: Store, sizes: Mapping[str, int]) -> None:
    """Start the node's warm pools with each template's ready build and resources."""
    warm = getattr(node, "warm", None)
    if warm is None:
        return
    for name, size in sizes.items():
        template = await store.find_template(name)
        build = await store.tagged_build(template.template_id) if template else None
        if size <= 0 or template is None or build is None or build.artifact is None:
            continue
        try:
            await warm(
                template.template_id,
                artifact=Artifact.from_json(build.artifact),
                cpu_count=build.cpu_count,
                memory_mb=build.memory_mb,
                size=size,
                disk_mb=build.disk_size_mb or None,
            )
        except Exception as e:  # noqa: BLE001 - the pool only speeds creates up
            log.warning("could not keep %s sandboxes ready: %s", name, e)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _start_api(app: FastAPI) -> tuple[_Uvicorn, asyncio.Task[None], str]:
    """uvicorn on an abstract Unix socket: private to this host's processes that know
    its random name, gone with the process, nothing to clean up on disk."""
    name = f"\0hearth-api-{os.getpid()}-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)
    sock.listen(1024)
    sock.setblocking(False)
    server = _Uvicorn(
        uvicorn.Config(
            app,
            lifespan="on",
            log_level="warning",
            access_log=False,
            # The gateway keeps its connection to the API while a client keeps its own.
            timeout_keep_alive=3600,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]), name="hearth-api")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises the startup error
            raise RuntimeError("the API server did not start")
        await asyncio.sleep(0.01)
    return server, task, name


async def _stop_api(server: _Uvicorn, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(asyncio.shield(task), 10)
    if not task.done():
        server.force_exit = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _stop_listeners(listeners: list[Listener], gateways: list[Gateway]) -> None:
    for listener in listeners:
        listener.close()
    for gateway in gateways:
        await gateway.aclose()
    for listener in listeners:
        await listener.wait_closed()


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (only the main thread may handle signals)."""
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _reachable_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(options: ServeOptions) -> int:
    """Run `hearth serve` in the foreground; print recipe A once it listens."""
    logging.basicConfig(level=logging.WARNING, format="hearth: %(message)s", stream=sys.stderr)
    logging.getLogger("hearth").setLevel(logging.INFO)  # our progress; libraries' warnings
    fix_mmap_threshold()

    def announce(running: Running) -> None:
        if running.api_key is None:
            log.info(
                "the default team's API key was printed at its first start;"
                " `hearth keys create` makes another"
            )
        if running.ca is not None:
            trust = (
                "which this machine trusts"
                if running.ca_trusted
                else "which is not in this machine's trust store: clients must trust it"
            )
            log.info(
                "https on the same port, with certificates of the local CA %s, %s",
                running.ca.cert_path,
                trust,
            )
        else:
            log.info("https on the same port, with the certificate given")
        log.info("the dashboard: %s%s/ (log in with an API key)", running.api_url, DASHBOARD_PATH)
        log.info("listening on %s; point the E2B SDK at it with:", running.api_url)
        print("\n".join(running.recipe()), flush=True)

    try:
        asyncio.run(serve(options, started=announce))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        log.debug("serve failed", exc_info=True)
        log.error("%s", e)
        return 1
    return 0


class ServerThread:
    """`serve()` in a thread with its own event loop, for tests, benchmarks and programs
    that embed Hearth; `stop()` shuts it down as SIGTERM would."""

    def __init__(self, options: ServeOptions) -> None:
        self._options = options
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.running: Running | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hearth-serve", daemon=True)

    def start(self, timeout: float = 900) -> Running:
        """Wait until it listens. The timeout guards against a hang, not a slow start: a
        first start builds the base template."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("hearth serve did not start")
        if self.error is not None:
            raise self.error
        assert self.running is not None
        return self.running

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        """Run `coroutine` on the server's loop and wait for its result (benchmarks
        and tests that reach into the running node or store)."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, timeout: float = 120) -> bool:
        """Stop it; True once the thread has ended."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def started(running: Running) -> None:
                self.running = running
                self._ready.set()

            await serve(self._options, started=started, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported to whoever waits in start()
            self.error = e
        finally:
            self._ready.set()
