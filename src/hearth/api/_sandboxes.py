"""Sandbox lifecycle as the API runs it: create, find, extend, kill, and the reaper.

The store says what exists and until when; the node runs it; `LiveSandboxes` tells the
proxy. A kill is decided by one conditional write in the store (so a kill racing the
reaper or another kill happens once), then the proxy forgets the sandbox, then the
node tears it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import string
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from hearth.api._errors import ApiError, sandbox_not_found
from hearth.api._live import LiveSandboxes
from hearth.api._settings import ApiSettings
from hearth.node.interface import Node, SandboxSpec
from hearth.store import Sandbox, SandboxState, Store, Team, Template

log = logging.getLogger(__name__)

ENVD_PORT = 49983
_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 20
_IDEMPOTENCY_KEY = re.compile(r"[a-z0-9-]{1,255}")
IDEMPOTENCY_TTL = 600.0
DEFAULT_TAGS = ("default", "latest")


def new_sandbox_id() -> str:
    """20 characters of [a-z0-9], never a `-`: the proxy splits host labels on it."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CreateRequest:
    template: str
    timeout: int
    secure: bool
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    public_traffic: bool = True
    auto_pause: bool = False
    auto_resume: bool = False
    network: dict[str, Any] | None = None


class Sandboxes:
    def __init__(
        self, store: Store, node: Node, settings: ApiSettings, live: LiveSandboxes
    ) -> None:
        self._store = store
        self._node = node
        self._settings = settings
        self._live = live
        self._client_id = hashlib.sha256(settings.node_id.encode()).hexdigest()[:8]
        self._team_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._starting: defaultdict[str, int] = defaultdict(int)
        self._idempotent: dict[tuple[str, str], tuple[float, asyncio.Future[Sandbox]]] = {}
        self._wake = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    # --- create ------------------------------------------------------------------------

    async def create(
        self, team: Team, request: CreateRequest, idempotency_key: str | None = None
    ) -> Sandbox:
        """Start a sandbox; with an idempotency key, repeats of the same key (within
        IDEMPOTENCY_TTL) get the first one's sandbox instead of another."""
        if idempotency_key is None:
            return await self._create(team, request)
        if not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise ApiError(400, "Idempotency-Key must be 1-255 characters of [a-z0-9-]")
        key = (team.id, idempotency_key)
        moment = time.monotonic()
        expired = [k for k, (at, _) in self._idempotent.items() if moment - at > IDEMPOTENCY_TTL]
        for old in expired:
            del self._idempotent[old]
        if key in self._idempotent:
            return await asyncio.shield(self._idempotent[key][1])
        future: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
        self._idempotent[key] = (moment, future)
        try:
            sandbox = await self._create(team, request)
        except BaseException as e:
            del self._idempotent[key]  # a failure is not remembered: the retry may succeed
            future.set_exception(e if isinstance(e, Exception) else ApiError(500, "cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        future.set_result(sandbox)
        return sandbox

    async def _create(self, team: Team, request: CreateRequest) -> Sandbox:
        self._check_timeout(request.timeout, create=True)
        if not request.public_traffic and not request.secure:
            raise ApiError(
                400,
                "You cannot create a sandbox without public access unless you enable"
                " secure envd access via 'secure' flag.",
            )
        template, alias = await self._template(team, request.template)
        async with self._reserve(team):
            sandbox_id = new_sandbox_id()
            envd_token = secrets.token_urlsafe(32) if request.secure else None
            traffic_token = None if request.public_traffic else secrets.token_urlsafe(32)
            spec = SandboxSpec(
                sandbox_id=sandbox_id,
                template_id=template.template_id,
                cpu_count=template.cpu_count or self._settings.cpu_count,
                memory_mb=template.memory_mb or self._settings.memory_mb,
                env_vars=dict(request.env_vars),
                envd_access_token=envd_token,
                allow_internet=request.allow_internet,
                metadata=dict(request.metadata),
            )
            try:
                await self._node.create(spec)
            except Exception as e:
                log.exception("node failed to create sandbox %s", sandbox_id)
                raise ApiError(500, f"Failed to create sandbox: {e}") from e
            try:
                started = now()
                sandbox = await self._store.insert_sandbox(
                    sandbox_id=sandbox_id,
                    team_id=team.id,
                    template_id=template.template_id,
                    alias=alias,
                    client_id=self._client_id,
                    end_at=started + timedelta(seconds=request.timeout),
                    started_at=started,
                    cpu_count=spec.cpu_count,
                    memory_mb=spec.memory_mb,
                    disk_size_mb=template.disk_size_mb or self._settings.disk_size_mb,
                    envd_version=self._settings.envd_version,
                    metadata=request.metadata,
                    envd_access_token=envd_token,
                    traffic_access_token=traffic_token,
                    allow_internet=request.allow_internet,
                    auto_pause=request.auto_pause,
                    auto_resume=request.auto_resume,
                    network=request.network,
                    node_id=self._settings.node_id,
                )
                self._live.add(sandbox)
            except BaseException:
                await self._node.kill(sandbox_id)
                raise
        with contextlib.suppress(Exception):
            await self._store.record_template_spawn(template.template_id, started)
            await self._event(sandbox, "sandbox.created", {"templateID": template.template_id})
        return sandbox

    @contextlib.asynccontextmanager
    async def _reserve(self, team: Team) -> AsyncIterator[None]:
        """Hold a place in the team's concurrency limit while its sandbox starts."""
        limit = self._settings.max_concurrent
        async with self._team_locks[team.id]:
            if limit:
                running = await self._store.count_running(team.id) + self._starting[team.id]
                if running >= limit:
                    raise ApiError(
                        429,
                        f"you have reached the maximum number of concurrent E2B sandboxes"
                        f" ({limit}). If you need more, please visit"
                        f" 'https://e2b.dev/docs/billing'",
                    )
            self._starting[team.id] += 1
        try:
            yield
        finally:
            self._starting[team.id] -= 1

    async def _template(self, team: Team, name: str) -> tuple[Template, str | None]:
        """The template `name` (an id or alias, optionally `:tag`) and the alias to report."""
        base, _, tag = name.partition(":")
        template = await self._store.get_template(team.id, base)
        if template is None:
            raise ApiError(404, f"template '{name}' not found")
        if tag and tag not in DEFAULT_TAGS:
            raise ApiError(404, f"tag '{tag}' of template '{base}' not found")
        alias = base if base in template.aliases else (template.aliases or (None,))[0]
        return template, alias

    def _check_timeout(self, seconds: int, *, create: bool = False) -> None:
        if create and seconds <= 0:
            raise ApiError(400, "Timeout must be greater than 0")
        if seconds < 0:
            raise ApiError(400, "Timeout must not be negative")
        if seconds > self._settings.max_timeout:
            hours = self._settings.max_timeout / 3600
            shown = f"{hours:g}"
            raise ApiError(400, f"Timeout cannot be greater than {shown} hours")

    # --- read --------------------------------------------------------------------------

    async def get(self, team: Team, sandbox_id: str) -> Sandbox:
        sandbox = await self._store.get_sandbox(team.id, sandbox_id)
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        return sandbox

    async def metrics(self, team: Team, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's current use, as envd measures it (one sample: no history kept)."""
        sandbox = await self.get(team, sandbox_id)
        address = self._node.address(sandbox_id)
        if sandbox.state is not SandboxState.RUNNING or address is None:
            return []
        headers = {}
        if sandbox.envd_access_token:
            headers["X-Access-Token"] = sandbox.envd_access_token
        url = f"http://{_host(address.host)}:{address.port(ENVD_PORT)}/metrics"
        try:
            response = await self._client().get(url, headers=headers, timeout=5)
            response.raise_for_status()
            m = response.json()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("metrics of %s unavailable: %s", sandbox_id, e)
            return []
        ts = int(m.get("ts") or time.time())
        return [
            {
                "timestamp": datetime.fromtimestamp(ts, UTC),
                "timestampUnix": ts,
                "cpuCount": int(m.get("cpu_count", sandbox.cpu_count)),
                "cpuUsedPct": float(m.get("cpu_used_pct", 0.0)),
                "memUsed": int(m.get("mem_used", 0)),
                "memTotal": int(m.get("mem_total", 0)),
                "memCache": int(m.get("mem_cache", 0)),
                "diskUsed": int(m.get("disk_used", 0)),
                "diskTotal": int(m.get("disk_total", 0)),
            }
        ]

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    # --- change ------------------------------------------------------------------------

    async def set_timeout(self, team: Team, sandbox_id: str, seconds: int) -> None:
        """`endAt = now + seconds`, in both directions; 0 expires it at once."""
        self._check_timeout(seconds)
        sandbox = await self._store.set_end_at(
            sandbox_id, now() + timedelta(seconds=seconds), team_id=team.id
        )
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        if seconds == 0:
            self._wake.set()

    async def refresh(self, team: Team, sandbox_id: str, seconds: int) -> None:
        """Extend to `now + seconds`, never shorten."""
        sandbox = await self._store.set_end_at(
            sandbox_id, now() + timedelta(seconds=seconds), team_id=team.id, only_extend=True
        )
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)

    async def connect(self, team: Team, sandbox_id: str, seconds: int) -> Sandbox:
        """A running sandbox's details, its end extended (never shortened) to now + seconds."""
        self._check_timeout(seconds)
        sandbox = await self.get(team, sandbox_id)
        if sandbox.state is SandboxState.PAUSED:
            raise ApiError(409, f"Sandbox {sandbox_id} is paused and cannot be resumed here")
        if self._node.address(sandbox_id) is None:
            # The node lost it (a crash): say so once, and forget it.
            await self.kill(team.id, sandbox_id)
            raise sandbox_not_found(sandbox_id)
        extended = await self._store.set_end_at(
            sandbox_id, now() + timedelta(seconds=seconds), team_id=team.id, only_extend=True
        )
        if extended is None:
            raise sandbox_not_found(sandbox_id)
        return extended

    async def kill(self, team_id: str | None, sandbox_id: str, reason: str = "killed") -> bool:
        """Kill a live sandbox (of `team_id`, unless None); False if there is none such."""
        sandbox = await self._store.set_sandbox_state(
            sandbox_id, SandboxState.KILLED, team_id=team_id
        )
        if sandbox is None:
            return False
        self._live.remove(sandbox_id)
        try:
            await self._node.kill(sandbox_id)
        except Exception:
            log.exception("node failed to kill sandbox %s", sandbox_id)
        with contextlib.suppress(Exception):
            await self._event(sandbox, "sandbox.killed", {"reason": reason})
        return True

    async def _event(self, sandbox: Sandbox, type: str, payload: dict[str, Any]) -> None:
        await self._store.add_event(sandbox.team_id, sandbox.sandbox_id, type, payload)

    # --- background --------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a start: sandboxes the store places here that the node does not run
        are gone; the ones it runs become reachable again."""
        running = set(await self._node.running())
        for sandbox in await self._store.running_on_node(self._settings.node_id):
            if sandbox.sandbox_id in running:
                self._live.add(sandbox)
            else:
                await self.kill(None, sandbox.sandbox_id, reason="lost")

    async def reap_forever(self) -> None:
        """Kill sandboxes past their end, every `reap_interval` or when woken."""
        while True:
            try:
                await self.reap()
            except Exception:
                log.exception("reaper failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reap_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def reap(self) -> None:
        expired = await self._store.expired_sandboxes(now())
        # Auto-pause needs pause, which the node cannot do yet: every expiry is a kill.
        await asyncio.gather(*(self.kill(s.team_id, s.sandbox_id, "timeout") for s in expired))

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
