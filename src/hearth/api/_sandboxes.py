"""Sandbox lifecycle as the API runs it: create, find, extend, pause, resume, kill, and
the reaper.

The store says what exists and until when; the node runs it; `LiveSandboxes` tells the
proxy. A kill is decided by one conditional write in the store (so a kill racing the
reaper or another kill happens once), then the proxy forgets the sandbox, then the
node tears it down.

Pause, resume and kill of one sandbox take its lock, one at a time: a connect that
arrives during a pause waits for it and then resumes, concurrent connects resume once
(the first 201, the rest 200, none before the sandbox answers), and pauses that arrive
while one is under way share its outcome (all 204).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from hearth import tracing
from hearth.api._builds import TemplateBuilds
from hearth.api._errors import ApiError, sandbox_not_found
from hearth.api._live import LiveSandboxes
from hearth.api._logs import LogLine, SandboxLogs, event_line
from hearth.api._metrics import RangeError, at_step, step, time_range
from hearth.api._names import new_id
from hearth.api._network import egress_from, egress_of
from hearth.api._quota import Quota, StartWindow
from hearth.api._sampler import MetricsSampler
from hearth.api._settings import ApiSettings
from hearth.api._templates import forget_artifacts, ready_build
from hearth.node.guest.envd_client import ENVD_PORT
from hearth.node.interface import (
    EgressNotSupported,
    Node,
    PauseNotSupported,
    SandboxNotFound,
    SandboxSpec,
)
from hearth.node.network.policy import UNRESTRICTED, Egress
from hearth.store import Sandbox, SandboxMetric, SandboxState, Store, Team
from hearth.template.artifact import Artifact

log = logging.getLogger(__name__)

_IDEMPOTENCY_KEY = re.compile(r"[a-z0-9-]{1,255}")
IDEMPOTENCY_TTL = 600.0
# An auto-resume runs for the create-time timeout, or this long if there was none.
AUTO_RESUME_TIMEOUT = 300
MAX_FORK_COUNT = 100  # infra's bound on the copies one fork request makes


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Origin:
    """What a sandbox starts from: a template's ready build, or a fork's captured state."""

    template_id: str
    alias: str | None
    artifact: Artifact
    cpu_count: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str


@dataclass(frozen=True)
class CreateRequest:
    template: str
    timeout: int
    secure: bool
    metadata: dict[str, str] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    allow_internet: bool = True
    egress: Egress = UNRESTRICTED  # allowOut, denyOut and rules, checked
    public_traffic: bool = True
    auto_pause: bool = False
    auto_resume: bool = False
    auto_pause_memory: bool = True
    network: dict[str, Any] | None = None


class Sandboxes:
    def __init__(
        self,
        store: Store,
        node: Node,
        settings: ApiSettings,
        live: LiveSandboxes,
        builds: TemplateBuilds | None = None,
        sampler: MetricsSampler | None = None,
    ) -> None:
        self._store = store
        # Sandboxes' use, sampled into the store; a metrics read of a sandbox not
        # sampled yet asks it for a sample at once.
        self._sampler = sampler or MetricsSampler(store, node)
        self._builds = builds  # a create of a built-in waits for its first build
        self._node = node
        self._settings = settings
        self._live = live
        self._client_id = hashlib.sha256(settings.node_id.encode()).hexdigest()[:8]
        self._team_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # What each team's starts hold while they start: sandboxes, vCPUs, MiB.
        self._starting: defaultdict[str, tuple[int, int, int]] = defaultdict(lambda: (0, 0, 0))
        self._start_window = StartWindow()
        self._idempotent: dict[tuple[str, str], tuple[float, asyncio.Future[Sandbox]]] = {}
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._pausing: dict[str, asyncio.Future[None]] = {}
        self._capturing: set[str] = set()  # sandboxes whose snapshot is being taken
        self._http: httpx.AsyncClient | None = None  # envd's, for its logs
        self.logs = SandboxLogs(
            settings.data_dir / "sandbox-logs" if settings.data_dir else None,
            max_bytes=settings.sandbox_log_max_bytes,
            retention=settings.sandbox_log_retention,
            max_age=settings.sandbox_log_max_age,
        )
        live.resumer = self.auto_resume

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
        self._check_timeout(request.timeout, create=True, team=team)
        if not request.public_traffic and not request.secure:
            raise ApiError(
                400,
                "You cannot create a sandbox without public access unless you enable"
                " secure envd access via 'secure' flag.",
            )
        # The ready build the template's tag names, its resources the sandbox's.
        template, build, alias = await ready_build(
            self._store, team, request.template, self._builds
        )
        assert build.artifact is not None  # ready_build returns only builds that have one
        request_span = tracing.current_span()  # the request's
        request_span.set_attributes({"team.id": team.id, "template.id": template.template_id})
        sandbox = await self._start(
            team,
            request,
            _Origin(
                template_id=template.template_id,
                alias=alias,
                artifact=Artifact.from_json(build.artifact),
                cpu_count=build.cpu_count or self._settings.cpu_count,
                memory_mb=build.memory_mb or self._settings.memory_mb,
                disk_size_mb=build.disk_size_mb or self._settings.disk_size_mb,
                envd_version=build.envd_version or self._settings.envd_version,
            ),
        )
        request_span.set_attribute("sandbox.id", sandbox.sandbox_id)
        with contextlib.suppress(Exception):
            await self._store.record_template_spawn(template.template_id, sandbox.started_at)
        return sandbox

    async def _start(self, team: Team, request: CreateRequest, origin: _Origin) -> Sandbox:
        """Start a sandbox of `origin` for `request` in the team's limit and record it."""
        self._start_window.admit(team.id, self._quota(team).starts_per_second)
        async with self._reserve(team, origin.cpu_count, origin.memory_mb):
            sandbox_id = new_id()
            envd_token = secrets.token_urlsafe(32) if request.secure else None
            traffic_token = None if request.public_traffic else secrets.token_urlsafe(32)
            spec = SandboxSpec(
                sandbox_id=sandbox_id,
                template_id=origin.template_id,
                cpu_count=origin.cpu_count,
                memory_mb=origin.memory_mb,
                env_vars=dict(request.env_vars),
                envd_access_token=envd_token,
                egress=request.egress,
                metadata=dict(request.metadata),
                artifact=origin.artifact,
                disk_mb=origin.disk_size_mb or None,
            )
            try:
                await self._node.create(spec)
            except EgressNotSupported as e:
                raise ApiError(400, str(e)) from None
            except Exception as e:
                log.exception("node failed to create sandbox %s", sandbox_id)
                raise ApiError(500, f"Failed to create sandbox: {e}") from e
            try:
                started = now()
                sandbox = await self._store.insert_sandbox(
                    sandbox_id=sandbox_id,
                    team_id=team.id,
                    template_id=origin.template_id,
                    alias=origin.alias,
                    client_id=self._client_id,
                    end_at=started + timedelta(seconds=request.timeout),
                    started_at=started,
                    cpu_count=spec.cpu_count,
                    memory_mb=spec.memory_mb,
                    disk_size_mb=origin.disk_size_mb,
                    envd_version=origin.envd_version,
                    metadata=request.metadata,
                    envd_access_token=envd_token,
                    traffic_access_token=traffic_token,
                    allow_internet=request.allow_internet,
                    auto_pause=request.auto_pause,
                    auto_resume=request.auto_resume,
                    auto_pause_memory=request.auto_pause_memory,
                    timeout=request.timeout,
                    env_vars=request.env_vars,
                    network=request.network,
                    node_id=self._settings.node_id,
                )
                self._live.add(sandbox)
            except BaseException:
                await self._node.kill(sandbox_id)
                raise
        with contextlib.suppress(Exception):
            await self._event(sandbox, "sandbox.created", {"templateID": origin.template_id})
        return sandbox

    def _quota(self, team: Team) -> Quota:
        return Quota.of(team.limits, self._settings)

    @contextlib.asynccontextmanager
    async def _reserve(self, team: Team, cpu_count: int, memory_mb: int) -> AsyncIterator[None]:
        """Hold a place (and the vCPUs and memory) in the team's limits while its
        sandbox starts (or resumes)."""
        quota = self._quota(team)
        held = (1, cpu_count, memory_mb)
        async with self._team_locks[team.id]:
            if quota.concurrent or quota.vcpus or quota.memory_mb:
                running = await self._store.running_totals(team.id)
                starting = self._starting[team.id]
                count, vcpus, memory = (a + b for a, b in zip(running, starting, strict=True))
                quota.check(count, vcpus + cpu_count, memory + memory_mb)
            self._starting[team.id] = _add(self._starting[team.id], held)
        try:
            yield
        finally:
            left = _add(self._starting[team.id], held, sign=-1)
            if left == (0, 0, 0):
                del self._starting[team.id]
            else:
                self._starting[team.id] = left

    def _check_timeout(self, seconds: int, *, team: Team, create: bool = False) -> None:
        if create and seconds <= 0:
            raise ApiError(400, "Timeout must be greater than 0")
        if seconds < 0:
            raise ApiError(400, "Timeout must not be negative")
        longest = self._quota(team).max_timeout
        if seconds > longest:
            hours = longest / 3600
            shown = f"{hours:g}"
            raise ApiError(400, f"Timeout cannot be greater than {shown} hours")

    # --- read --------------------------------------------------------------------------

    async def get(self, team: Team, sandbox_id: str) -> Sandbox:
        sandbox = await self._store.get_sandbox(team.id, sandbox_id)
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        return sandbox

    async def metrics(
        self, team: Team, sandbox_id: str, start: int | None, end: int | None
    ) -> list[SandboxMetric]:
        """The sandbox's sampled use from `start` to `end` (Unix seconds; by default its
        whole life so far), one point per step of the range. Paused and killed
        sandboxes keep their history for the retention, as infra's store keeps it; a
        running one not sampled yet is sampled now."""
        sandbox = await self._store.get_sandbox(team.id, sandbox_id, include_killed=True)
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        moment = now()
        try:
            begin, until = time_range(start, end, sandbox.started_at, moment)
        except RangeError as e:
            raise ApiError(400, f"Error when validating metrics time range: {e}") from None
        samples = await self._store.sandbox_metrics(sandbox_id, begin, until)
        recent = until >= moment - timedelta(seconds=self._sampler.interval)
        if (
            not samples
            and recent
            and sandbox.state is SandboxState.RUNNING
            # Younger than the sampler's round (a poller between rounds waits for it).
            and not await self._store.latest_sandbox_metrics(team.id, [sandbox_id])
        ):
            taken = await self._sampler.sample([sandbox_id])
            # Taken after `now` was read: within a range that ends now unless told.
            samples = [
                s for s in taken if begin <= s.timestamp and (end is None or s.timestamp <= until)
            ]
        every = step(begin, until)
        # Under an hour the step is the sampling interval: the samples are the points.
        return (
            at_step(samples, begin, every)
            if every.total_seconds() > self._sampler.interval
            else samples
        )

    async def read_logs(
        self,
        team: Team,
        sandbox_id: str,
        start: datetime | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[LogLine]:
        """What the sandbox's envd logged and its lifecycle events, from `start` on,
        oldest first: all, or the oldest `limit` (the newest, with `newest`); a killed
        sandbox's too, while they are kept. 404 for a sandbox the team never had."""
        sandbox = await self._store.get_sandbox(team.id, sandbox_id, include_killed=True)
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        if sandbox.state is SandboxState.RUNNING:
            await self._collect_logs(sandbox)
        lines = await self.logs.read(sandbox_id, start, limit, newest)
        events = await self._store.sandbox_events(team.id, sandbox_id, start=start)
        lines.extend(event_line(e) for e in events)
        lines.sort(key=lambda line: line.timestamp)
        if limit is None:
            return lines
        return lines[-limit:] if newest and limit else lines[:limit]

    async def _collect_logs(self, sandbox: Sandbox) -> None:
        """Take what envd logged so far into the kept logs (before the sandbox goes)."""
        address = self._node.address(sandbox.sandbox_id)
        if address is None:
            return
        base = f"http://{_host(address.host)}:{address.port(ENVD_PORT)}"
        await self.logs.pull(sandbox.sandbox_id, self._client(), base, sandbox.envd_access_token)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    # --- change ------------------------------------------------------------------------

    async def set_timeout(self, team: Team, sandbox_id: str, seconds: int) -> None:
        """`endAt = now + seconds`, in both directions; 0 expires it at once. A paused
        sandbox has no end to set: 404, as infra answers (SDKs 2.0-2.5 resume on it)."""
        self._check_timeout(seconds, team=team)
        current = await self._store.get_sandbox(team.id, sandbox_id)
        if current is None or current.state is SandboxState.PAUSED:
            raise sandbox_not_found(sandbox_id)
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

    async def connect(
        self, team: Team, sandbox_id: str, seconds: int, memory: bool | None = None
    ) -> tuple[Sandbox, bool]:
        """A running sandbox's details, its end extended (never shortened) to now +
        seconds; a paused one is resumed first. Returns it and whether it was resumed."""
        self._check_timeout(seconds, team=team)
        await self._refuse_resume_while_captured(team, sandbox_id)
        async with self._lock(sandbox_id):
            sandbox = await self.get(team, sandbox_id)
            if sandbox.state is SandboxState.PAUSED:
                return await self._resume(sandbox, seconds, memory), True
            if self._node.address(sandbox_id) is None:
                # The node lost it (a crash): say so once, and forget it.
                await self._kill(team.id, sandbox_id, "lost")
                raise sandbox_not_found(sandbox_id)
            extended = await self._store.set_end_at(
                sandbox_id, now() + timedelta(seconds=seconds), team_id=team.id, only_extend=True
            )
        if extended is None:
            raise sandbox_not_found(sandbox_id)
        return extended, False

    async def resume(
        self, team: Team, sandbox_id: str, seconds: int, memory: bool | None = None
    ) -> Sandbox:
        """The deprecated `POST .../resume`: 409 unless the sandbox is paused."""
        self._check_timeout(seconds, team=team)
        await self._refuse_resume_while_captured(team, sandbox_id)
        async with self._lock(sandbox_id):
            sandbox = await self.get(team, sandbox_id)
            if sandbox.state is not SandboxState.PAUSED:
                raise ApiError(409, f"Sandbox {sandbox_id} is already running")
            return await self._resume(sandbox, seconds, memory)

    async def _refuse_resume_while_captured(self, team: Team, sandbox_id: str) -> None:
        """409 for resuming a paused sandbox whose snapshot is being taken (infra's)."""
        if sandbox_id in self._capturing:
            sandbox = await self.get(team, sandbox_id)
            if sandbox.state is SandboxState.PAUSED:
                raise ApiError(409, f"Sandbox '{sandbox_id}' is being snapshotted, try again")

    async def auto_resume(self, team_id: str, sandbox_id: str) -> bool:
        """Resume a paused sandbox that traffic reached, if its autoResume says so and
        its memory was kept (a filesystem-only pause is resumed only by connect)."""
        async with self._lock(sandbox_id):
            sandbox = await self._store.get_sandbox(team_id, sandbox_id)
            if sandbox is None:
                return False
            if sandbox.state is SandboxState.RUNNING:
                return True  # a request that waited for another's resume
            if not (sandbox.auto_resume and sandbox.pause_memory):
                return False
            try:
                await self._resume(sandbox, sandbox.timeout or AUTO_RESUME_TIMEOUT, None)
            except ApiError as e:
                log.warning("auto-resume of %s failed: %s", sandbox_id, e.message)
                return False
            return True

    async def _resume(self, sandbox: Sandbox, seconds: int, memory: bool | None) -> Sandbox:
        """Resume a paused sandbox (its lock held): same id, same envd token, envVars set
        again; running for `seconds` from now. A memory pause resumes its processes
        unless `memory` is False (the SDK's `on_resume="reboot"`): then it boots again
        over its files, as a filesystem-only pause does."""
        sandbox_id = sandbox.sandbox_id
        spec = SandboxSpec(
            sandbox_id=sandbox_id,
            template_id=sandbox.template_id,
            cpu_count=sandbox.cpu_count,
            memory_mb=sandbox.memory_mb,
            env_vars=dict(sandbox.env_vars or {}),
            envd_access_token=sandbox.envd_access_token,
            egress=egress_of(sandbox),
            metadata=dict(sandbox.metadata),
        )
        try:
            team = await self._store.get_team(sandbox.team_id)
            assert team is not None  # a sandbox's team outlives it
            async with self._reserve(team, sandbox.cpu_count, sandbox.memory_mb):
                await self._node.resume(spec)
                if memory is False and sandbox.pause_memory:
                    await self._reboot(spec)
        except SandboxNotFound:
            # The node no longer holds it (its files are gone): it cannot come back.
            await self._kill(sandbox.team_id, sandbox_id, "lost")
            raise sandbox_not_found(sandbox_id) from None
        except ApiError:
            raise  # 429: the team's limit
        except Exception as e:
            log.exception("node failed to resume sandbox %s", sandbox_id)
            raise ApiError(500, f"Failed to resume sandbox: {e}") from e
        resumed = await self._store.set_sandbox_state(
            sandbox_id,
            SandboxState.RUNNING,
            expected=[SandboxState.PAUSED],
            end_at=now() + timedelta(seconds=seconds),
        )
        self.logs.frozen(sandbox_id, False)
        if resumed is None:
            raise sandbox_not_found(sandbox_id)
        self._live.add(resumed)
        with contextlib.suppress(Exception):
            await self._event(resumed, "sandbox.resumed", {"memory": bool(sandbox.pause_memory)})
        return resumed

    async def _reboot(self, spec: SandboxSpec) -> None:
        """Drop what a memory pause kept: pause the just-resumed sandbox to its files
        and boot it again from them (where the runtime has files to pause to)."""
        try:
            await self._node.pause(spec.sandbox_id, memory=False)
        except PauseNotSupported as e:
            log.info("sandbox %s resumes with its memory: %s", spec.sandbox_id, e)
            return
        await self._node.resume(spec)

    async def update_network(
        self, team: Team, sandbox_id: str, network: dict[str, Any], allow_internet: bool
    ) -> None:
        """Replace a sandbox's egress rules (`PUT .../network`): at once if it runs, on
        its resume if it is paused. `network` holds the new allowOut, denyOut and rules;
        the rest of its recorded config (public traffic, host mask) stays."""
        async with self._lock(sandbox_id):
            sandbox = await self._store.get_sandbox(team.id, sandbox_id)
            if sandbox is None:
                raise sandbox_not_found(sandbox_id)
            kept = {
                k: v
                for k, v in (sandbox.network or {}).items()
                if k not in ("allowOut", "denyOut", "rules")
            }
            recorded = {**kept, **network}
            egress = egress_from(recorded, allow_internet)
            if sandbox.state is SandboxState.RUNNING:
                try:
                    await self._node.update_network(sandbox_id, egress)
                except SandboxNotFound:
                    raise sandbox_not_found(sandbox_id) from None
                except EgressNotSupported as e:
                    raise ApiError(400, str(e)) from None
            await self._store.set_sandbox_network(
                sandbox_id, recorded, allow_internet=allow_internet, team_id=team.id
            )

    async def pause(
        self,
        team_id: str,
        sandbox_id: str,
        *,
        memory: bool = True,
        expired: bool = False,
    ) -> None:
        """Pause a running sandbox: 409 if it is paused already, 404 if there is none
        such. Pauses that arrive while one is under way end with it. `expired`: the
        reaper's auto-pause, skipped if the sandbox's end moved meanwhile."""
        under_way = self._pausing.get(sandbox_id)
        if under_way is not None:
            if await self._store.get_sandbox(team_id, sandbox_id) is None:
                raise sandbox_not_found(sandbox_id)
            await asyncio.shield(under_way)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pausing[sandbox_id] = done
        try:
            async with self._lock(sandbox_id):
                await self._pause(team_id, sandbox_id, memory, expired)
        except BaseException as e:
            done.set_exception(e if isinstance(e, Exception) else ApiError(500, "cancelled"))
            done.exception()  # retrieved: no warning when nobody joined
            raise
        else:
            done.set_result(None)
        finally:
            del self._pausing[sandbox_id]

    async def _pause(self, team_id: str, sandbox_id: str, memory: bool, expired: bool) -> None:
        sandbox = await self._store.get_sandbox(team_id, sandbox_id)
        if sandbox is None:
            raise sandbox_not_found(sandbox_id)
        if sandbox.state is SandboxState.PAUSED:
            raise ApiError(409, f"Sandbox {sandbox_id} is already paused")
        if expired and sandbox.end_at > now():
            return  # extended since the reaper looked
        await self._collect_logs(sandbox)
        # The proxy stops routing to it first: nothing reaches a half-paused sandbox.
        self._live.remove(sandbox_id)
        try:
            kept = await self._node.pause(sandbox_id, memory=memory)
        except SandboxNotFound:
            await self._kill(team_id, sandbox_id, "lost")
            raise sandbox_not_found(sandbox_id) from None
        except PauseNotSupported as e:
            self._live.add(sandbox)
            raise ApiError(501, str(e)) from e
        except Exception as e:
            self._live.add(sandbox)
            log.exception("node failed to pause sandbox %s", sandbox_id)
            raise ApiError(500, f"Failed to pause sandbox: {e}") from e
        self.logs.frozen(sandbox_id, True)
        paused = await self._store.set_sandbox_state(
            sandbox_id, SandboxState.PAUSED, expected=[SandboxState.RUNNING], pause_memory=kept
        )
        if paused is None:  # cannot happen while the lock is held; be safe anyway
            await self._node.kill(sandbox_id)
            raise sandbox_not_found(sandbox_id)
        if paused.auto_resume and kept:
            self._live.add_paused(paused)
        with contextlib.suppress(Exception):
            await self._event(paused, "sandbox.paused", {"memory": kept})

    # --- snapshots and forks ------------------------------------------------------------

    async def capture(
        self, team: Team, sandbox_id: str, *, memory: bool, fork: bool = False
    ) -> tuple[Sandbox, Artifact]:
        """The sandbox's state now as an artifact (`Node.snapshot`), with the envVars it
        was created with: a sandbox started from it has them as its template's. The
        sandbox goes on running (or stays paused). 404 unknown; 409 while another
        capture of it runs, and for a fork of a paused sandbox."""
        if sandbox_id in self._capturing:
            await self.get(team, sandbox_id)
            raise ApiError(409, f"Sandbox '{sandbox_id}' is being snapshotted already")
        self._capturing.add(sandbox_id)
        try:
            async with self._lock(sandbox_id):
                sandbox = await self.get(team, sandbox_id)
                if fork and sandbox.state is SandboxState.PAUSED:
                    raise ApiError(
                        409,
                        f"Sandbox '{sandbox_id}' is paused and cannot be forked; resume it first",
                    )
                try:
                    artifact = await self._node.snapshot(sandbox_id, memory=memory)
                except SandboxNotFound:
                    await self._kill(team.id, sandbox_id, "lost")
                    raise sandbox_not_found(sandbox_id) from None
                except PauseNotSupported as e:
                    raise ApiError(400, str(e)) from e
                except Exception as e:
                    log.exception("node failed to snapshot sandbox %s", sandbox_id)
                    raise ApiError(500, f"Error creating snapshot: {e}") from e
        finally:
            self._capturing.discard(sandbox_id)
        env = {**artifact.env, **(sandbox.env_vars or {})}
        return sandbox, replace(artifact, env=env)

    async def fork(
        self, team: Team, sandbox_id: str, *, count: int, timeout: int
    ) -> list[Sandbox | ApiError]:
        """`count` new sandboxes of the running sandbox's state now, each started (or
        failed) on its own, the source going on as it was. Its settings are theirs:
        metadata, envVars, network, lifecycle, secured access (each its own token)."""
        if count < 1:
            raise ApiError(400, "Count must be at least 1")
        if count > MAX_FORK_COUNT:
            raise ApiError(400, f"Count cannot be greater than {MAX_FORK_COUNT}")
        limit = self._quota(team).concurrent
        if limit and count >= limit:  # the source holds a place too
            raise ApiError(
                400,
                f"Count must be lower than the maximum number of concurrent sandboxes ({limit})",
            )
        self._check_timeout(timeout, create=True, team=team)
        source, artifact = await self.capture(team, sandbox_id, memory=True, fork=True)
        request = CreateRequest(
            template=source.template_id,
            timeout=timeout,
            secure=source.envd_access_token is not None,
            metadata=dict(source.metadata),
            env_vars=dict(source.env_vars or {}),
            allow_internet=source.allow_internet is not False,
            egress=egress_of(source),
            public_traffic=source.traffic_access_token is None,
            auto_pause=source.auto_pause,
            auto_resume=source.auto_resume,
            auto_pause_memory=source.auto_pause_memory,
            network=source.network,
        )
        origin = _Origin(
            template_id=source.template_id,
            alias=source.alias,
            artifact=artifact,
            cpu_count=source.cpu_count,
            memory_mb=source.memory_mb,
            disk_size_mb=source.disk_size_mb,
            envd_version=source.envd_version,
        )
        try:
            started = await asyncio.gather(
                *(self._start(team, request, origin) for _ in range(count)),
                return_exceptions=True,
            )
        finally:
            # No template keeps the captured state: it goes with the last of its forks.
            await self.forget([artifact])
        results: list[Sandbox | ApiError] = []
        for outcome in started:
            if isinstance(outcome, Sandbox | ApiError):
                results.append(outcome)
            else:
                log.error("fork of %s failed: %r", sandbox_id, outcome)
                results.append(ApiError(500, "Error forking sandbox"))
        return results

    async def forget(self, dropped: list[Artifact]) -> None:
        """Let the node free what only `dropped` (no template's build) used."""
        await forget_artifacts(self._store, self._node, dropped)

    async def kill(self, team_id: str | None, sandbox_id: str, reason: str = "killed") -> bool:
        """Kill a live sandbox, running or paused (of `team_id`, unless None); False if
        there is none such."""
        async with self._lock(sandbox_id):
            killed = await self._kill(team_id, sandbox_id, reason)
        if killed:
            self._locks.pop(sandbox_id, None)
        return killed

    async def _kill(self, team_id: str | None, sandbox_id: str, reason: str) -> bool:
        sandbox = await self._store.set_sandbox_state(
            sandbox_id, SandboxState.KILLED, team_id=team_id
        )
        if sandbox is None:
            return False
        self._live.remove(sandbox_id)
        await self._collect_logs(sandbox)  # kept for `retention` after the kill
        self.logs.closed(sandbox_id)
        try:
            await self._node.kill(sandbox_id)
        except Exception:
            log.exception("node failed to kill sandbox %s", sandbox_id)
        with contextlib.suppress(Exception):
            await self._event(sandbox, "sandbox.killed", {"reason": reason})
        return True

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _event(self, sandbox: Sandbox, type: str, payload: dict[str, Any]) -> None:
        await self._store.add_event(sandbox.team_id, sandbox.sandbox_id, type, payload)

    # --- background --------------------------------------------------------------------

    async def reconcile(self) -> None:
        """After a start: sandboxes the store places here that the node neither runs
        nor holds paused are gone; the ones it runs become reachable again, and the
        paused ones resumable (a memory pause the node lost meanwhile, as a container's
        does with a reboot, is a filesystem-only pause now)."""
        running = set(await self._node.running())
        paused = await self._node.paused()
        known = set()
        node_id = self._settings.node_id
        for sandbox in await self._store.running_on_node(node_id, include_paused=True):
            sandbox_id = sandbox.sandbox_id
            known.add(sandbox_id)
            if sandbox_id in paused:
                self.logs.frozen(sandbox_id, True)
                kept = paused[sandbox_id]
                # A node that stopped mid-pause has it paused before the store does.
                now_paused = await self._store.set_sandbox_state(
                    sandbox_id, SandboxState.PAUSED, pause_memory=kept
                )
                if now_paused is not None and now_paused.auto_resume and kept:
                    self._live.add_paused(now_paused)
            elif sandbox_id in running:
                if sandbox.state is SandboxState.PAUSED:  # stopped mid-resume
                    sandbox = (
                        await self._store.set_sandbox_state(sandbox_id, SandboxState.RUNNING)
                        or sandbox
                    )
                self._live.add(sandbox)
            else:
                await self.kill(None, sandbox_id, reason="lost")
        for sandbox_id in (running | set(paused)) - known:
            # Paused on the node but killed (or never recorded) in the store.
            await self._node.kill(sandbox_id)

    async def reap_forever(self) -> None:
        """Expire sandboxes past their end, every `reap_interval` or when woken."""
        while True:
            try:
                await self.reap()
            except Exception:
                log.exception("reaper failed")
            try:
                await self._expire_logs()
            except Exception:
                log.exception("sandbox log retention failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.reap_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def reap(self) -> None:
        """Expire running sandboxes past their end: pause those created with autoPause
        (paused ones never expire: they are kept until killed), kill the rest."""
        expired = await self._store.expired_sandboxes(now())
        await asyncio.gather(*(self._expire(s) for s in expired))
        # A host short of memory lets go of frozen containers' memory: those pauses are
        # filesystem-only from now on (pauseMode), and no longer resumed by traffic.
        for sandbox_id in await self._node.relieve_memory():
            async with self._lock(sandbox_id):
                self._live.remove(sandbox_id)
                await self._store.set_sandbox_state(
                    sandbox_id,
                    SandboxState.PAUSED,
                    expected=[SandboxState.PAUSED],
                    pause_memory=False,
                )

    async def _expire_logs(self) -> None:
        """Delete the kept logs of sandboxes gone for longer than the retention (a live
        one, paused for as long, keeps its own)."""
        if not self.logs.due_sweep():
            return
        expired = await asyncio.to_thread(self.logs.expired)
        if not expired:
            return
        live = await self._store.running_on_node(self._settings.node_id, include_paused=True)
        gone = set(expired) - {s.sandbox_id for s in live}
        await asyncio.to_thread(self.logs.delete, gone)

    async def _expire(self, sandbox: Sandbox) -> None:
        if sandbox.auto_pause:
            try:
                await self.pause(
                    sandbox.team_id,
                    sandbox.sandbox_id,
                    memory=sandbox.auto_pause_memory,
                    expired=True,
                )
                return
            except ApiError as e:
                if e.status in (404, 409):
                    return
                log.warning("auto-pause of %s failed, killing it: %s", sandbox.sandbox_id, e)
        await self.kill(sandbox.team_id, sandbox.sandbox_id, "timeout")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _add(a: tuple[int, int, int], b: tuple[int, int, int], sign: int = 1) -> tuple[int, int, int]:
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])
