"""A stand-in for the control plane's directory of running sandboxes, as the gateway
sees it (`hearth.proxy.SandboxDirectory`): the tests put routes in and take them out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from hearth.node.interface import SandboxAddress


@dataclass(frozen=True)
class Route:
    address: SandboxAddress
    envd_access_token: str | None = None
    traffic_access_token: str | None = None
    mask_request_host: str | None = None


@dataclass
class Directory:
    routes: dict[str, Route] = field(default_factory=dict)

    def route(self, sandbox_id: str) -> Route | None:
        return self.routes.get(sandbox_id)

    def secured(self) -> Iterator[tuple[str, str]]:
        for sandbox_id, route in self.routes.items():
            if route.envd_access_token:
                yield sandbox_id, route.envd_access_token

    async def wake(self, sandbox_id: str) -> bool:
        return False  # nothing here is paused
