"""What the gateways relay for sandboxes, tallied as it goes (`/metrics` reads it).

Plain integers on the event loop: an increment per request and per chunk relayed, no
lock, nothing to do when nobody reads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ByteTally:
    """Bytes of one side's connections: read from them, written to them."""

    read: int = 0
    written: int = 0

    def count_read(self, size: int) -> None:
        self.read += size

    def count_written(self, size: int) -> None:
        self.written += size


@dataclass
class Traffic:
    """One server's sandbox traffic, over all its gateways."""

    requests: int = 0  # relayed to a sandbox's port (an upgrade counts once)
    refusals: Counter[int] = field(default_factory=Counter)  # answered by the gateway, by status
    sandbox_bytes: ByteTally = field(default_factory=ByteTally)  # of the sandboxes' side
