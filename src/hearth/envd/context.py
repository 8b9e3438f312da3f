"""The per-request context handed to every RPC and HTTP handler."""

from __future__ import annotations

from dataclasses import dataclass

from hearth.envd.state import EnvdState
from hearth.envd.users import User


@dataclass
class Context:
    state: EnvdState
    # From `Authorization: Basic base64("<name>:")`, else the default user; None on
    # /files, whose handlers resolve the `username` parameter themselves.
    user: User | None
    headers: dict[str, str]  # lower-cased names
    timeout_ms: int | None  # Connect-Timeout-Ms, None when absent or 0
    # time.monotonic() at which the call's deadline passes, fixed when the request
    # arrived; None without a timeout.
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.timeout_ms and self.deadline is None:
            import time

            self.deadline = time.monotonic() + self.timeout_ms / 1000

    def keepalive_interval(self) -> float:
        """Seconds between keepalive events on a stream (header in seconds, default 90)."""
        try:
            value = int(self.headers.get("keepalive-ping-interval", ""))
        except ValueError:
            return 90.0
        return float(value) if value > 0 else 90.0
