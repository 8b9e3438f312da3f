"""The running sandboxes this API knows, kept in memory for the proxy to route by, and
the paused ones that traffic resumes (autoResume)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from hearth.node.interface import Node, SandboxAddress
from hearth.store import Sandbox


@dataclass(frozen=True, slots=True)
class _Access:
    envd_access_token: str | None
    traffic_access_token: str | None
    mask_request_host: str | None


@dataclass(frozen=True, slots=True)
class Route:
    address: SandboxAddress
    envd_access_token: str | None
    traffic_access_token: str | None
    mask_request_host: str | None


class LiveSandboxes:
    """How to reach each running sandbox; where it runs is asked of the node each time.

    The proxy looks a sandbox up on every request, so this is a dict, not a query. The
    API adds a sandbox once it runs and removes it the moment it is killed, before the
    node has finished tearing it down.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._access: dict[str, _Access] = {}
        # Paused sandboxes that traffic resumes: id -> team id, for `resumer`.
        self._wakeable: dict[str, str] = {}
        # Resumes a paused sandbox of a team (set by the API); True once it runs.
        self.resumer: Callable[[str, str], Awaitable[bool]] | None = None

    def add(self, sandbox: Sandbox) -> None:
        mask = (sandbox.network or {}).get("maskRequestHost")
        self._wakeable.pop(sandbox.sandbox_id, None)
        self._access[sandbox.sandbox_id] = _Access(
            sandbox.envd_access_token, sandbox.traffic_access_token, mask or None
        )

    def add_paused(self, sandbox: Sandbox) -> None:
        """A paused sandbox that the next request to it resumes (autoResume)."""
        self._access.pop(sandbox.sandbox_id, None)
        self._wakeable[sandbox.sandbox_id] = sandbox.team_id

    def remove(self, sandbox_id: str) -> None:
        self._access.pop(sandbox_id, None)
        self._wakeable.pop(sandbox_id, None)

    async def wake(self, sandbox_id: str) -> bool:
        """Resume a paused sandbox with autoResume (concurrent requests resume it once);
        True if it runs now, False if it is not one to resume."""
        team_id = self._wakeable.get(sandbox_id)
        if team_id is None or self.resumer is None:
            return False
        return await self.resumer(team_id, sandbox_id)

    def __contains__(self, sandbox_id: object) -> bool:
        return sandbox_id in self._access

    def route(self, sandbox_id: str) -> Route | None:
        access = self._access.get(sandbox_id)
        if access is None:
            return None
        address = self._node.address(sandbox_id)
        if address is None:
            return None
        return Route(
            address,
            access.envd_access_token,
            access.traffic_access_token,
            access.mask_request_host,
        )

    def secured(self) -> Iterator[tuple[str, str]]:
        for sandbox_id, access in list(self._access.items()):
            if access.envd_access_token:
                yield sandbox_id, access.envd_access_token
